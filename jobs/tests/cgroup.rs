//! Jobs in cgroups of their own, where this host offers them (the v1 controllers here): the
//! limits from `resources` set, a child that left the process group with `setsid` ended with
//! the job, pause by freezing. Skipped with a message where no cgroup can be made.

use std::time::{Duration, Instant};

use valkyrie_jobs::cgroup::{JobCgroup, Limits};
use valkyrie_jobs::executor::{ExecEvent, spawn_in};
use valkyrie_jobs::{JobSpec, Resources};

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.split_whitespace().nth(2).is_none_or(|st| st != "Z"))
}

#[test]
fn a_job_in_its_cgroup_is_limited_frozen_and_ended_whole() {
    let name = format!("valkyrie-test-{}", std::process::id());
    let limits = Limits {
        memory_bytes: Some(64 << 20),
        cpu_millis: Some(500),
        pids: Some(64),
    };
    let Some(cg) = JobCgroup::create(&name, &limits) else {
        eprintln!("SKIPPED: this host offers no cgroup this process may write");
        return;
    };
    let procs = cg.procs_files();
    let spec = JobSpec {
        // A child escapes the process group (setsid) and would outlive a killpg.
        command: vec![
            "sh".into(),
            "-c".into(),
            "setsid sleep 1234 & echo $! > escaped.pid; echo ready; while true; do echo tick; sleep 0.02; done".into(),
        ],
        resources: Resources {
            memory_bytes: limits.memory_bytes,
            ..Resources::default()
        },
        ..JobSpec::default()
    };
    let work = std::env::temp_dir().join(format!("{name}-work"));
    std::fs::create_dir_all(&work).unwrap();
    let mut job = spawn_in(&spec, &work, 64, Some(cg)).unwrap();
    let t = Instant::now();
    let mut ticks = 0;
    while ticks < 3 {
        assert!(t.elapsed() < Duration::from_secs(10));
        if let Some(ExecEvent::Line { line, .. }) = job.next(Duration::from_millis(50))
            && line == "tick"
        {
            ticks += 1;
        }
    }
    let escaped: i32 = std::fs::read_to_string(work.join("escaped.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let in_cgroup = job.cgroup().unwrap().pids();
    assert!(
        in_cgroup.contains(&escaped),
        "the setsid child is in the cgroup: {in_cgroup:?}"
    );
    // The limit where the memory controller keeps it.
    let mem_dir = procs[0].parent().unwrap();
    for f in ["memory.limit_in_bytes", "memory.max"] {
        if let Ok(v) = std::fs::read_to_string(mem_dir.join(f)) {
            assert_eq!(v.trim(), (64u64 << 20).to_string());
        }
    }
    // Frozen: no tick while paused.
    assert!(job.pause());
    while job.next(Duration::from_millis(100)).is_some() {}
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        job.next(Duration::from_millis(100)).is_none(),
        "a tick while frozen"
    );
    assert!(job.resume());
    assert!(matches!(
        job.next(Duration::from_secs(2)),
        Some(ExecEvent::Line { .. })
    ));
    // Cancel ends everything in the cgroup, the escaped child too.
    job.cancel(Duration::from_millis(200));
    let t = Instant::now();
    loop {
        if let Some(ExecEvent::Exited { .. }) = job.next(Duration::from_millis(50)) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "the job did not end");
    }
    let t = Instant::now();
    while alive(escaped) {
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "the setsid child outlived its job"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(job);
    // Removed once the job and its cancel's grace are done with it.
    let t = Instant::now();
    while mem_dir.exists() {
        assert!(t.elapsed() < Duration::from_secs(3), "the cgroup stays");
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = std::fs::remove_dir_all(&work);
}
