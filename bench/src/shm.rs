//! The `shm` scenario: two processes on one host, 64-byte ping-pong and a one-way stream, over
//! valkyrie-shm and over iceoryx2 in the same run.
//!
//! The parent process (pinned to core 0) leads; the peer is this binary started again with the
//! internal `shm-peer` command (pinned to core 1). Both sides busy-poll in the `busy-poll` mode.
//! In the `futex` mode (valkyrie-shm only) each side waits with a zero spin budget: it polls the
//! ring 64 times (about 100 ns) and then sleeps on the segment's futex word, so a reply that is
//! not back within that window costs a futex wake-up on each side.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use iceoryx2::prelude::*;
use serde_json::json;
use valkyrie_shm::{ShmConfig, ShmListener, ShmStream, WaitMode};

use crate::peers::pin;
use crate::report::{Report, median, progress};

/// Payload of every frame and sample.
type Msg = [u8; 64];
/// The leader's core and the peer's core.
const LEADER_CORE: usize = 0;
const PEER_CORE: usize = 1;
/// Frames per batch in the valkyrie stream (one tail publication per batch).
const BATCH: u64 = 64;

fn wait_mode(mode: &str) -> WaitMode {
    match mode {
        "futex" => WaitMode::Adaptive {
            spin: Duration::ZERO,
        },
        _ => WaitMode::BusyPoll,
    }
}

struct Peer {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl Peer {
    fn spawn(system: &str, name: &str, role: &str, mode: &str, n: u64) -> Peer {
        let mut child = Command::new(std::env::current_exe().expect("own path"))
            .args(["shm-peer", system, name, role, mode, &n.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn shm peer");
        let out = BufReader::new(child.stdout.take().expect("piped"));
        Peer { child, out }
    }

    fn line(&mut self) -> String {
        let mut s = String::new();
        self.out.read_line(&mut s).expect("peer output");
        s.trim().to_owned()
    }

    fn wait_for(&mut self, what: &str) -> String {
        loop {
            let l = self.line();
            assert!(!l.is_empty(), "shm peer exited before {what}");
            if l.starts_with(what) {
                return l;
            }
        }
    }

    fn finish(mut self) {
        let _ = self.child.wait();
    }
}

/// Round trips from the leader's side, as a histogram in nanoseconds.
fn valkyrie_pingpong(name: &str, mode: &str, samples: usize) -> Histogram<u64> {
    let l = ShmListener::bind_with(
        name,
        ShmConfig {
            ring_capacity: 64 * 1024,
            wait: wait_mode(mode),
            ..ShmConfig::default()
        },
    )
    .expect("bind");
    let peer = Peer::spawn("valkyrie", name, "echo", mode, 0);
    let mut s = l.accept().expect("accept");
    let ping: Msg = [0xA5; 64];
    let mut h = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).expect("histogram");
    for i in 0..samples + samples / 10 {
        let t = Instant::now();
        s.send(&ping).expect("send");
        let r = s.recv().expect("echo");
        debug_assert_eq!(r.len(), 64);
        drop(r);
        if i >= samples / 10 {
            h.saturating_record(t.elapsed().as_nanos() as u64);
        }
    }
    drop(s);
    peer.finish();
    h
}

/// Frames per second measured by the receiving peer.
fn valkyrie_stream(name: &str, frames: u64) -> f64 {
    let l = ShmListener::bind_with(
        name,
        ShmConfig {
            ring_capacity: 1 << 20,
            wait: WaitMode::BusyPoll,
            ..ShmConfig::default()
        },
    )
    .expect("bind");
    let mut peer = Peer::spawn("valkyrie", name, "sink", "busy-poll", frames);
    let mut s = l.accept().expect("accept");
    for i in 0..frames {
        let mut c = s.claim(64).expect("claim");
        c[..8].copy_from_slice(&i.to_le_bytes());
        if i % BATCH == BATCH - 1 {
            c.commit();
        } else {
            c.commit_deferred();
        }
    }
    s.flush();
    let rate = peer
        .wait_for("rate")
        .split(' ')
        .nth(1)
        .map_or(0.0, |v| v.parse().unwrap_or(0.0));
    drop(s);
    peer.finish();
    rate
}

fn ice_node() -> Node<ipc::Service> {
    set_log_level(LogLevel::Error);
    NodeBuilder::new()
        .create::<ipc::Service>()
        .expect("iceoryx2 node")
}

fn ice_service(
    node: &Node<ipc::Service>,
    name: &str,
    buffer: usize,
) -> iceoryx2::service::port_factory::publish_subscribe::PortFactory<ipc::Service, Msg, ()> {
    let sn: ServiceName = name.try_into().expect("service name");
    node.service_builder(&sn)
        .publish_subscribe::<Msg>()
        .max_publishers(1)
        .max_subscribers(1)
        .history_size(0)
        .subscriber_max_buffer_size(buffer)
        .enable_safe_overflow(false)
        .open_or_create()
        .expect("iceoryx2 service")
}

fn iceoryx2_pingpong(name: &str, samples: usize) -> Histogram<u64> {
    let node = ice_node();
    let a2b = ice_service(&node, &format!("{name}/a2b"), 1);
    let b2a = ice_service(&node, &format!("{name}/b2a"), 1);
    let publisher = a2b
        .publisher_builder()
        .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
        .create()
        .expect("publisher");
    let subscriber = b2a.subscriber_builder().create().expect("subscriber");
    let mut peer = Peer::spawn("iceoryx2", name, "echo", "busy-poll", 0);
    peer.wait_for("ready");
    // The peer's subscriber exists now: connect to it before the first sample.
    let _ = iceoryx2::port::update_connections::UpdateConnections::update_connections(&publisher);
    let ping: Msg = [0xA5; 64];
    let mut h = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).expect("histogram");
    for i in 0..samples + samples / 10 {
        let t = Instant::now();
        let sample = publisher.loan_uninit().expect("loan").write_payload(ping);
        sample.send().expect("send");
        loop {
            if let Some(s) = subscriber.receive().expect("receive") {
                debug_assert_eq!(s.payload()[0], 0xA5);
                break;
            }
            std::hint::spin_loop();
        }
        if i >= samples / 10 {
            h.saturating_record(t.elapsed().as_nanos() as u64);
        }
    }
    let mut stop: Msg = [0; 64];
    stop[0] = 0xFF;
    publisher
        .loan_uninit()
        .expect("loan")
        .write_payload(stop)
        .send()
        .expect("send");
    peer.finish();
    h
}

fn iceoryx2_stream(name: &str, frames: u64) -> f64 {
    let node = ice_node();
    let svc = ice_service(&node, &format!("{name}/stream"), 4096);
    let publisher = svc
        .publisher_builder()
        .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
        .create()
        .expect("publisher");
    let mut peer = Peer::spawn("iceoryx2", name, "sink", "busy-poll", frames);
    peer.wait_for("ready");
    // The subscriber exists now; make sure the publisher sees it before the first sample.
    let _ = iceoryx2::port::update_connections::UpdateConnections::update_connections(&publisher);
    for i in 0..frames {
        let mut m: Msg = [0; 64];
        m[..8].copy_from_slice(&i.to_le_bytes());
        loop {
            match publisher.loan_uninit() {
                Ok(s) => {
                    s.write_payload(m).send().expect("send");
                    break;
                }
                Err(_) => std::hint::spin_loop(),
            }
        }
    }
    let rate = peer
        .wait_for("rate")
        .split(' ')
        .nth(1)
        .map_or(0.0, |v| v.parse().unwrap_or(0.0));
    peer.finish();
    rate
}

/// The peer process: `shm-peer SYSTEM NAME ROLE MODE N`.
pub(crate) fn peer(system: &str, name: &str, role: &str, mode: &str, n: u64) {
    // The leader is pinned and this process inherited its mask: widen it to every core first
    // (core_affinity only offers the cores the current mask allows).
    crate::peers::unpin();
    pin(PEER_CORE);
    match (system, role) {
        ("valkyrie", "echo") => {
            let mut s = ShmStream::connect_with(
                name,
                ShmConfig {
                    wait: wait_mode(mode),
                    ..ShmConfig::default()
                },
            )
            .expect("connect");
            let mut buf = [0u8; 64];
            loop {
                match s.recv() {
                    Ok(f) => {
                        let len = f.len().min(64);
                        buf[..len].copy_from_slice(&f[..len]);
                    }
                    Err(_) => return,
                }
                if s.send(&buf).is_err() {
                    return;
                }
            }
        }
        ("valkyrie", "sink") => {
            let mut s = ShmStream::connect_with(
                name,
                ShmConfig {
                    wait: WaitMode::BusyPoll,
                    ..ShmConfig::default()
                },
            )
            .expect("connect");
            let mut got = 0u64;
            let mut start = None;
            while got < n {
                let k = s
                    .recv_batch(1024, |f| {
                        debug_assert_eq!(f.len(), 64);
                    })
                    .expect("receive");
                if k > 0 && start.is_none() {
                    start = Some(Instant::now());
                }
                got += k as u64;
            }
            let secs = start.map_or(1.0, |t| t.elapsed().as_secs_f64());
            println!("rate {}", n as f64 / secs);
        }
        ("iceoryx2", "echo") => {
            let node = ice_node();
            let a2b = ice_service(&node, &format!("{name}/a2b"), 1);
            let b2a = ice_service(&node, &format!("{name}/b2a"), 1);
            let subscriber = a2b.subscriber_builder().create().expect("subscriber");
            let publisher = b2a
                .publisher_builder()
                .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
                .create()
                .expect("publisher");
            println!("ready");
            loop {
                let Some(s) = subscriber.receive().expect("receive") else {
                    std::hint::spin_loop();
                    continue;
                };
                let m = *s.payload();
                drop(s);
                if m[0] == 0xFF {
                    return;
                }
                publisher
                    .loan_uninit()
                    .expect("loan")
                    .write_payload(m)
                    .send()
                    .expect("send");
            }
        }
        ("iceoryx2", "sink") => {
            let node = ice_node();
            let svc = ice_service(&node, &format!("{name}/stream"), 4096);
            let subscriber = svc.subscriber_builder().create().expect("subscriber");
            println!("ready");
            let mut got = 0u64;
            let mut start = None;
            while got < n {
                match subscriber.receive().expect("receive") {
                    Some(_) => {
                        if start.is_none() {
                            start = Some(Instant::now());
                        }
                        got += 1;
                    }
                    None => std::hint::spin_loop(),
                }
            }
            let secs = start.map_or(1.0, |t| t.elapsed().as_secs_f64());
            println!("rate {}", n as f64 / secs);
        }
        other => panic!("unknown shm peer {other:?}"),
    }
}

/// Run the scenario: `rounds` rounds, systems alternating, medians reported.
pub(crate) fn scenario(report: &mut Report, rounds: usize, samples: usize, frames: u64) {
    println!(
        "\nshm: two processes, leader on core {LEADER_CORE}, peer on core {PEER_CORE}; 64-byte ping-pong ({samples} round trips) and a one-way stream of {frames} 64-byte frames; {rounds} rounds, medians"
    );
    println!(
        "  {:<10} {:<10} {:>9} {:>9} {:>9} {:>12}   p99 vs iceoryx2",
        "mode", "system", "p50 us", "p99 us", "p999 us", "M frames/s"
    );
    pin(LEADER_CORE);
    let runs: [(&str, &str); 3] = [
        ("busy-poll", "valkyrie"),
        ("busy-poll", "iceoryx2"),
        ("futex", "valkyrie"),
    ];
    let bar = progress((rounds * runs.len()) as u64, "shm");
    // (mode, system) -> [p50, p99, p999, rate]
    let mut per: BTreeMap<(&str, &str), [Vec<f64>; 4]> = BTreeMap::new();
    let pid = std::process::id();
    for round in 0..rounds {
        for &(mode, system) in &runs {
            let name = format!("bench-{pid}-{round}-{system}-{mode}");
            let h = match system {
                "valkyrie" => valkyrie_pingpong(&name, mode, samples),
                _ => iceoryx2_pingpong(&name, samples),
            };
            let rate = match (mode, system) {
                ("busy-poll", "valkyrie") => valkyrie_stream(&format!("{name}-s"), frames),
                ("busy-poll", _) => iceoryx2_stream(&format!("{name}-s"), frames),
                _ => f64::NAN,
            };
            let e = per.entry((mode, system)).or_default();
            for (i, q) in [0.5, 0.99, 0.999].into_iter().enumerate() {
                e[i].push(h.value_at_quantile(q) as f64 / 1000.0);
            }
            e[3].push(rate);
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let ice_p99 = per
        .get(&("busy-poll", "iceoryx2"))
        .map_or(f64::NAN, |v| median(v[1].clone()));
    for &(mode, system) in &runs {
        let v = &per[&(mode, system)];
        let (p50, p99, p999, rate) = (
            median(v[0].clone()),
            median(v[1].clone()),
            median(v[2].clone()),
            median(v[3].clone()),
        );
        let rate_s = if rate.is_nan() {
            "-".to_owned()
        } else {
            format!("{:.1}", rate / 1e6)
        };
        let ratio = if mode == "busy-poll" {
            format!("{:.2}", p99 / ice_p99)
        } else {
            "-".to_owned()
        };
        println!(
            "  {mode:<10} {system:<10} {p50:>9.2} {p99:>9.2} {p999:>9.2} {rate_s:>12}   {ratio}"
        );
        let params = json!({"mode": mode, "size": 64, "transport": "shm",
            "leader_core": LEADER_CORE, "peer_core": PEER_CORE});
        for (metric, value) in [("rtt_p50", p50), ("rtt_p99", p99), ("rtt_p999", p999)] {
            report.add("shm", system, metric, "us", value, params.clone());
        }
        if !rate.is_nan() {
            let mut p = params.clone();
            if system == "valkyrie" {
                p["batch"] = json!(BATCH);
            }
            report.add("shm", system, "msgs_per_sec", "msgs/s", rate, p);
        }
    }
}
