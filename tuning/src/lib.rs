//! # valkyrie-tuning
//!
//! Reads the limits of the host a node runs on and says how many concurrent connections it can
//! hold, and which limit binds first. Everything is read from `/proc` (no privileges needed);
//! `tuning/profiles/` holds the sysctl and limits settings for 1,000,000 connections and
//! `scripts/tune-host.sh` applies them.
//!
//! ```
//! use valkyrie_tuning::{Deployment, HostLimits};
//!
//! let host = HostLimits::read();
//! let one_process = Deployment::single_process();
//! let report = host.capacity(&one_process);
//! println!("{report}");
//! assert!(report.connections <= report.limits.iter().map(|l| l.connections).max().unwrap());
//! ```

use std::fmt;

/// The limits read from this host. `None` where the value could not be read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostLimits {
    /// RLIMIT_NOFILE of this process: (soft, hard).
    pub nofile: Option<(u64, u64)>,
    /// `fs.nr_open`: the ceiling any process's RLIMIT_NOFILE can be raised to.
    pub nr_open: Option<u64>,
    /// `fs.file-max`: open files system-wide.
    pub file_max: Option<u64>,
    /// `net.ipv4.ip_local_port_range`.
    pub port_range: Option<(u64, u64)>,
    /// `net.ipv4.tcp_mem` (pages): low, pressure, high.
    pub tcp_mem: Option<(u64, u64, u64)>,
    /// `net.core.somaxconn`.
    pub somaxconn: Option<u64>,
    /// `net.ipv4.tcp_max_syn_backlog`.
    pub syn_backlog: Option<u64>,
    /// `net.netfilter.nf_conntrack_max`, when connection tracking is loaded.
    pub conntrack_max: Option<u64>,
    /// MemTotal and MemAvailable, bytes.
    pub memory: Option<(u64, u64)>,
    /// Online CPUs.
    pub cpus: usize,
}

fn read_u64s(path: &str) -> Option<Vec<u64>> {
    let s = std::fs::read_to_string(path).ok()?;
    let v: Vec<u64> = s
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    (!v.is_empty()).then_some(v)
}

fn nofile_from_proc_limits(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let mut it = line["Max open files".len()..].split_whitespace();
    let parse = |s: Option<&str>| {
        s.and_then(|v| {
            if v == "unlimited" {
                Some(u64::MAX)
            } else {
                v.parse().ok()
            }
        })
    };
    Some((parse(it.next())?, parse(it.next())?))
}

fn meminfo(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()
        .map(|kb| kb * 1024)
}

impl HostLimits {
    /// Read the limits from `/proc`.
    pub fn read() -> HostLimits {
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        HostLimits {
            nofile: nofile_from_proc_limits(&limits),
            nr_open: read_u64s("/proc/sys/fs/nr_open").map(|v| v[0]),
            file_max: read_u64s("/proc/sys/fs/file-max").map(|v| v[0]),
            port_range: read_u64s("/proc/sys/net/ipv4/ip_local_port_range")
                .and_then(|v| Some((*v.first()?, *v.get(1)?))),
            tcp_mem: read_u64s("/proc/sys/net/ipv4/tcp_mem")
                .and_then(|v| Some((*v.first()?, *v.get(1)?, *v.get(2)?))),
            somaxconn: read_u64s("/proc/sys/net/core/somaxconn").map(|v| v[0]),
            syn_backlog: read_u64s("/proc/sys/net/ipv4/tcp_max_syn_backlog").map(|v| v[0]),
            conntrack_max: read_u64s("/proc/sys/net/netfilter/nf_conntrack_max").map(|v| v[0]),
            memory: meminfo(&mem, "MemTotal:").zip(meminfo(&mem, "MemAvailable:")),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }

    /// The connections this host can hold under `d`, with every limit considered.
    pub fn capacity(&self, d: &Deployment) -> Capacity {
        let mut limits = Vec::new();
        let mut push = |name: &str, value: String, connections: u64, note: &str| {
            limits.push(Limit {
                name: name.into(),
                value,
                connections,
                note: note.into(),
            });
        };
        if let Some((soft, hard)) = self.nofile {
            // Server side: direct descriptors are not in the file table, but each ring's table
            // is capped at RLIMIT_NOFILE. Client side (when on this host): one fd each.
            let per_ring = hard.min(self.nr_open.unwrap_or(hard));
            push(
                "RLIMIT_NOFILE per process",
                format!("{soft} soft / {hard} hard"),
                per_ring
                    .saturating_mul(d.server_rings)
                    .min(if d.clients_on_host {
                        per_ring
                            .saturating_sub(64)
                            .saturating_mul(d.client_processes)
                    } else {
                        u64::MAX
                    }),
                "caps each io_uring direct-descriptor table (one per ring) and each client process's sockets; needs CAP_SYS_RESOURCE or limits.conf to raise",
            );
        }
        if let Some(file_max) = self.file_max {
            let per_conn = if d.clients_on_host { 2 } else { 1 };
            push(
                "fs.file-max",
                file_max.to_string(),
                file_max / per_conn,
                "every socket end is an open file system-wide",
            );
        }
        if let Some((lo, hi)) = self.port_range {
            let ports = hi.saturating_sub(lo) + 1;
            push(
                "net.ipv4.ip_local_port_range",
                format!("{lo}-{hi}"),
                ports.saturating_mul(d.source_addresses),
                "ephemeral ports per (source address, destination) pair; more 127.x.y.z source addresses multiply it",
            );
        }
        if let Some(ct) = self.conntrack_max {
            push(
                "net.netfilter.nf_conntrack_max",
                ct.to_string(),
                ct,
                "when connection tracking is loaded, every connection takes an entry",
            );
        }
        if let Some((_, avail)) = self.memory {
            let per = d.bytes_per_connection.max(1);
            push(
                "memory (MemAvailable)",
                format!("{:.1} GiB", avail as f64 / (1u64 << 30) as f64),
                avail / per,
                "at the measured bytes per connection (user + kernel, both loopback ends when clients are local)",
            );
        }
        let connections = limits.iter().map(|l| l.connections).min().unwrap_or(0);
        let binding = limits
            .iter()
            .filter(|l| l.connections == connections)
            .map(|l| l.name.clone())
            .collect();
        Capacity {
            connections,
            binding,
            limits,
        }
    }
}

/// How the node and its clients are laid out on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployment {
    /// io_uring rings (shards) the node spreads its connections over.
    pub server_rings: u64,
    /// Whether the clients run on this host too (loopback benchmarks).
    pub clients_on_host: bool,
    /// Client processes, when they are on this host.
    pub client_processes: u64,
    /// Distinct source addresses the clients connect from.
    pub source_addresses: u64,
    /// Memory per connection (user + kernel, counting both ends when clients are local).
    pub bytes_per_connection: u64,
}

impl Deployment {
    /// One node process with one ring, clients in one process on the same host, one source
    /// address: the most constrained layout.
    pub fn single_process() -> Deployment {
        Deployment {
            server_rings: 1,
            clients_on_host: true,
            client_processes: 1,
            source_addresses: 1,
            bytes_per_connection: 2 * 4_600,
        }
    }

    /// The layout the bench uses for 1,000,000 connections: 56 rings, 56 client processes,
    /// 56 source addresses.
    pub fn spread(n: u64) -> Deployment {
        let k = n.div_ceil(18_000).max(1);
        Deployment {
            server_rings: k,
            clients_on_host: true,
            client_processes: k,
            source_addresses: k,
            bytes_per_connection: 2 * 4_600,
        }
    }
}

/// One limit and how many connections it allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    /// What is limited.
    pub name: String,
    /// Its current value.
    pub value: String,
    /// Connections it allows in the deployment considered.
    pub connections: u64,
    /// Why it matters.
    pub note: String,
}

/// What a host can hold, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capacity {
    /// Connections the host can hold: the least any limit allows.
    pub connections: u64,
    /// The limits that bind first.
    pub binding: Vec<String>,
    /// Every limit considered.
    pub limits: Vec<Limit>,
}

impl fmt::Display for Capacity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<34} {:>22} {:>14}  note",
            "limit", "value", "connections"
        )?;
        for l in &self.limits {
            let c = if l.connections == u64::MAX {
                "-".to_string()
            } else {
                l.connections.to_string()
            };
            writeln!(f, "{:<34} {:>22} {:>14}  {}", l.name, l.value, c, l.note)?;
        }
        write!(
            f,
            "can hold {} connections; binds first: {}",
            self.connections,
            self.binding.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> HostLimits {
        HostLimits {
            nofile: Some((20_000, 20_000)),
            nr_open: Some(1_048_576),
            file_max: Some(2_466_174),
            port_range: Some((32_768, 60_999)),
            tcp_mem: Some((287_898, 383_866, 575_796)),
            somaxconn: Some(4096),
            syn_backlog: Some(2048),
            conntrack_max: Some(262_144),
            memory: Some((24 << 30, 23 << 30)),
            cpus: 2,
        }
    }

    #[test]
    fn a_single_process_is_bound_by_its_descriptor_limit() {
        let c = host().capacity(&Deployment::single_process());
        assert_eq!(c.binding, vec!["RLIMIT_NOFILE per process".to_string()]);
        assert_eq!(c.connections, 19_936);
    }

    #[test]
    fn spread_over_processes_and_addresses_conntrack_binds_next() {
        let c = host().capacity(&Deployment::spread(1_000_000));
        assert_eq!(
            c.binding,
            vec!["net.netfilter.nf_conntrack_max".to_string()]
        );
        let mut h = host();
        h.conntrack_max = Some(2_000_000);
        let c = h.capacity(&Deployment::spread(1_000_000));
        // 56 processes x (20,000 - 64) client sockets: just above a million.
        assert_eq!(c.binding, vec!["RLIMIT_NOFILE per process".to_string()]);
        assert_eq!(c.connections, 1_116_416);
    }

    #[test]
    fn proc_limits_are_parsed() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \nMax open files            1024                 20000                files     \n";
        assert_eq!(nofile_from_proc_limits(text), Some((1024, 20_000)));
    }
}
