//! Hosts for multi-host tests: network namespaces made by the test (`ip netns`), each with a
//! veth into a bridge in this namespace, one /24 per test process; programs started inside
//! them with `ip netns exec`; partitions made with iptables inside a namespace. Removed when
//! dropped. [`Net::create`] is `None` (the test skips, saying so) where namespaces cannot be
//! made (not root, no `ip`).

use std::process::{Command, Stdio};

/// A test's namespaces and bridge.
pub struct Net {
    tag: String,
    hosts: Vec<String>,
    subnet: String,
}

fn run(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Net {
    /// Namespaces for `hosts` (short names), joined by a bridge that this namespace is on
    /// too (at `.1`), so the test reaches every host.
    pub fn create(hosts: &[&str]) -> Option<Net> {
        let pid = std::process::id();
        let net = Net {
            tag: format!("vk{}", pid % 100_000),
            hosts: Vec::new(),
            subnet: format!("10.{}.{}", 100 + (pid / 250) % 100, pid % 250),
        };
        let bridge = net.bridge();
        if !run(&["ip", "link", "add", &bridge, "type", "bridge"]) {
            eprintln!("SKIPPED: cannot make network namespaces here (needs root and ip)");
            return None;
        }
        let mut net = net;
        let host_ip = format!("{}.1/24", net.subnet);
        assert!(run(&["ip", "addr", "add", &host_ip, "dev", &bridge]));
        assert!(run(&["ip", "link", "set", &bridge, "up"]));
        for (i, h) in hosts.iter().enumerate() {
            let ns = net.ns(h);
            let (outer, inner) = (format!("{}o{i}", net.tag), format!("{}i{i}", net.tag));
            assert!(run(&["ip", "netns", "add", &ns]));
            net.hosts.push((*h).to_owned());
            assert!(run(&[
                "ip", "link", "add", &outer, "type", "veth", "peer", "name", &inner
            ]));
            assert!(run(&["ip", "link", "set", &outer, "master", &bridge]));
            assert!(run(&["ip", "link", "set", &outer, "up"]));
            assert!(run(&["ip", "link", "set", &inner, "netns", &ns]));
            let addr = format!("{}/24", net.addr(h));
            for cmd in [
                vec!["ip", "addr", "add", &addr, "dev", &inner],
                vec!["ip", "link", "set", &inner, "up"],
                vec!["ip", "link", "set", "lo", "up"],
            ] {
                let mut full = vec!["ip", "netns", "exec", &ns];
                full.extend(cmd);
                assert!(run(&full), "{full:?}");
            }
        }
        Some(net)
    }

    fn bridge(&self) -> String {
        format!("{}br", self.tag)
    }

    /// The namespace of `host`.
    pub fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.tag)
    }

    /// The address of `host`.
    pub fn addr(&self, host: &str) -> String {
        let i = self
            .hosts
            .iter()
            .position(|h| h == host)
            .map_or(self.hosts.len(), |i| i);
        format!("{}.{}", self.subnet, 10 + i)
    }

    /// This namespace's address on the bridge.
    pub fn here(&self) -> String {
        format!("{}.1", self.subnet)
    }

    /// `program` to run in `host`'s namespace.
    pub fn command(&self, host: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(host), program]);
        c
    }

    /// Cut `host` off from TCP port `port` at `addr` (both ways), or mend it (`cut` false).
    pub fn partition(&self, host: &str, addr: &str, port: u16, cut: bool) {
        let op = if cut { "-A" } else { "-D" };
        let port = port.to_string();
        let ns = self.ns(host);
        for rule in [
            ["OUTPUT", "-d", addr, "--dport", &port],
            ["INPUT", "-s", addr, "--sport", &port],
        ] {
            let ok = run(&[
                "ip", "netns", "exec", &ns, "iptables", op, rule[0], "-p", "tcp", rule[1], rule[2],
                rule[3], rule[4], "-j", "DROP",
            ]);
            assert!(ok, "iptables {op} in {ns}");
        }
    }
}

impl Net {
    /// Drop `percent` % of `host`'s TCP packets to `addr` (iptables' `statistic` match), or
    /// stop (`on` false).
    pub fn loss(&self, host: &str, addr: &str, percent: u32, on: bool) {
        let op = if on { "-A" } else { "-D" };
        let p = format!("{:.2}", f64::from(percent) / 100.0);
        let ok = run(&[
            "ip",
            "netns",
            "exec",
            &self.ns(host),
            "iptables",
            op,
            "OUTPUT",
            "-p",
            "tcp",
            "-d",
            addr,
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            &p,
            "-j",
            "DROP",
        ]);
        assert!(ok, "iptables {op} loss in {host}");
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for h in &self.hosts {
            let _ = run(&["ip", "netns", "del", &self.ns(h)]);
        }
        let _ = run(&["ip", "link", "del", &self.bridge()]);
    }
}
