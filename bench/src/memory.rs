//! Where the memory figures come from: the process's resident set, its heap (glibc's
//! `mallinfo2`), the kernel's slab, and how the idle-memory and connections scenarios report
//! bytes per connection from them.

use serde_json::Value;

use crate::report::Report;

pub(crate) fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// Bytes the allocator has handed out and not had back (glibc `mallinfo2`: small chunks in
/// every arena plus mmapped ones); 0 where glibc is not the allocator.
pub(crate) fn heap_bytes() -> u64 {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads the allocator's counters.
        #[allow(unsafe_code)]
        let m = unsafe { libc::mallinfo2() };
        (m.uordblks + m.hblkhd) as u64
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        0
    }
}

pub(crate) fn slab_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("Slab:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// Memory per connection as BENCH.md defines it (server RSS growth / N; Slab growth / N / 2,
/// both loopback ends being on this host), added to the report under `connections`.
pub(crate) fn report_memory(
    report: &mut Report,
    held: usize,
    (rss0, slab0): (u64, u64),
    (rss1, slab1): (u64, u64),
    params: &Value,
) -> (f64, f64) {
    let n = held.max(1) as f64;
    let user = rss1.saturating_sub(rss0) as f64 / n;
    let kernel = slab1.saturating_sub(slab0) as f64 / n / 2.0;
    for (metric, unit, value) in [
        ("connections_held", "count", held as f64),
        ("bytes_per_connection", "B", user + kernel),
        ("bytes_per_connection_user", "B", user),
        ("bytes_per_connection_kernel", "B", kernel),
    ] {
        report.add(
            "connections",
            "valkyrie",
            metric,
            unit,
            value,
            params.clone(),
        );
    }
    (user, kernel)
}
