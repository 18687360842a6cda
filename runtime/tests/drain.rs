//! Drain and rolling restart: a node started on the same port with `SO_REUSEPORT` takes the
//! new connections while the old one drains (none refused); clients told "going away"
//! reconnect and send again what was not answered (none failed).
//!
//! The kernel moves connections queued on a closing listener to the other listeners of its
//! group only with `net.ipv4.tcp_migrate_req = 1` (docs/RUNTIME.md, "Drain"); these tests
//! set it for their run (they run as root in CI) and put it back.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use valkyrie_protocol::MessageType;
use valkyrie_runtime::{Client, Node, Reply};

mod common;

use common::free_port;

fn node(port: u16) -> Node {
    common::accept_node(port, 2)
}

const MIGRATE: &str = "/proc/sys/net/ipv4/tcp_migrate_req";

/// `net.ipv4.tcp_migrate_req = 1` while it lives (the old value back afterwards); one test
/// at a time.
struct MigrateReq {
    old: String,
    _alone: std::sync::MutexGuard<'static, ()>,
}

impl MigrateReq {
    fn on() -> MigrateReq {
        static ALONE: Mutex<()> = Mutex::new(());
        let alone = ALONE.lock().unwrap_or_else(|e| e.into_inner());
        let old = std::fs::read_to_string(MIGRATE).expect("kernel 5.14 or newer");
        std::fs::write(MIGRATE, "1").expect("setting net.ipv4.tcp_migrate_req needs root");
        MigrateReq { old, _alone: alone }
    }
}

impl Drop for MigrateReq {
    fn drop(&mut self) {
        let _ = std::fs::write(MIGRATE, self.old.trim());
    }
}

#[test]
fn no_connection_is_refused_across_a_rolling_restart() {
    let _migrate = MigrateReq::on();
    let port = free_port();
    let url = format!("tcp://127.0.0.1:{port}");
    let old = node(port);
    assert!(old.is_ready());
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let told_to_go = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(Mutex::new(Vec::new()));
    // New connections from eight threads at once, each answering one request, throughout.
    let connectors: Vec<_> = (0..8)
        .map(|_| {
            let (stop, served, told_to_go, refused, url) = (
                stop.clone(),
                served.clone(),
                told_to_go.clone(),
                refused.clone(),
                url.clone(),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let outcome = Client::connect(&url).and_then(|mut c| {
                        c.request(
                            101,
                            MessageType::JobRequest,
                            Bytes::from_static(b"hi"),
                            Duration::from_secs(5),
                        )?;
                        let _ = c.close();
                        Ok(())
                    });
                    match outcome {
                        Ok(()) => served.fetch_add(1, Ordering::Relaxed),
                        // A cue to connect again, not a failure.
                        Err(e) if e.is_going_away() => told_to_go.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            refused.lock().unwrap().push(e.to_string());
                            0
                        }
                    };
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // The replacement binds the same port, then the old node drains.
    let new = node(port);
    std::thread::sleep(Duration::from_millis(100));
    let before = served.load(Ordering::Relaxed);
    old.drain();
    assert!(!old.is_ready(), "readiness turns false first");
    old.join();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for c in connectors {
        c.join().unwrap();
    }
    let refused = refused.lock().unwrap();
    assert!(
        refused.is_empty(),
        "refused across the restart: {refused:?}"
    );
    let after = served.load(Ordering::Relaxed) - before;
    assert!(
        before > 20 && after > 20,
        "served {before} before and {after} after"
    );
    eprintln!(
        "served {} connections, {} told to go away",
        served.load(Ordering::Relaxed),
        told_to_go.load(Ordering::Relaxed)
    );
    new.shutdown();
    new.join();
}

#[test]
fn a_client_pinging_at_ten_thousand_a_second_loses_nothing_across_a_rolling_restart() {
    let _migrate = MigrateReq::on();
    let port = free_port();
    let old = node(port);
    let client = Arc::new(
        Client::builder()
            .connect([format!("tcp://127.0.0.1:{port}")])
            .unwrap(),
    );
    let answered = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(Mutex::new(Vec::new()));
    let sent = Arc::new(AtomicU64::new(0));
    // 10 requests every millisecond for 2.5 s.
    let pinger = {
        let (client, answered, failed, sent) = (
            client.clone(),
            answered.clone(),
            failed.clone(),
            sent.clone(),
        );
        std::thread::spawn(move || {
            let start = Instant::now();
            let mut tick = 0u64;
            while start.elapsed() < Duration::from_millis(2_500) {
                for _ in 0..10 {
                    let (a, f) = (answered.clone(), failed.clone());
                    client
                        .request_with(
                            101,
                            MessageType::JobRequest,
                            Bytes::from_static(b"ping"),
                            Duration::from_secs(5),
                            move |r| match r {
                                Reply::Answer(_) => {
                                    a.fetch_add(1, Ordering::Relaxed);
                                }
                                other => f.lock().unwrap().push(format!("{other:?}")),
                            },
                        )
                        .unwrap();
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                tick += 1;
                let next = start + Duration::from_millis(tick);
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(700));
    let new = node(port);
    std::thread::sleep(Duration::from_millis(100));
    old.drain();
    old.join();
    pinger.join().unwrap();
    let total = sent.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(10);
    while answered.load(Ordering::Relaxed) + (failed.lock().unwrap().len() as u64) < total {
        assert!(Instant::now() < deadline, "replies missing");
        std::thread::sleep(Duration::from_millis(5));
    }
    let failed = failed.lock().unwrap();
    assert!(
        failed.is_empty(),
        "failed requests: {:?}",
        &failed[..failed.len().min(5)]
    );
    assert_eq!(answered.load(Ordering::Relaxed), total);
    assert!(total >= 20_000, "only {total} requests sent");
    eprintln!(
        "{total} requests, all answered; {} sent again after the old node went away",
        client.retried()
    );
    Arc::try_unwrap(client).unwrap().close();
    new.shutdown();
    new.join();
}

#[test]
fn a_blocking_client_on_the_link_loses_nothing_across_a_rolling_restart() {
    let _migrate = MigrateReq::on();
    let port = free_port();
    let old = node(port);
    let mut client = Client::builder()
        .blocking([format!("tcp://127.0.0.1:{port}")])
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // One request at a time, as fast as they are answered, throughout the restart.
    let requester = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut answered, mut failed) = (0u64, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match client.request(
                    101,
                    MessageType::JobRequest,
                    Bytes::from_static(b"ping"),
                    Duration::from_secs(5),
                ) {
                    Ok(f) if f.payload.as_ref() == b"ping" => answered += 1,
                    other => {
                        failed.push(format!("{other:?}"));
                        // A few show what went wrong; a client stuck failing stops here.
                        if failed.len() >= 100 {
                            break;
                        }
                    }
                }
            }
            (answered, failed, client)
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let new = node(port);
    std::thread::sleep(Duration::from_millis(100));
    old.drain();
    old.join();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let (answered, failed, client) = requester.join().unwrap();
    assert!(
        failed.is_empty(),
        "{} failed requests, the first: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(answered > 100, "only {answered} answered");
    assert_eq!(
        client.reconnects(),
        1,
        "the client moved to the new node once, when the old one went away"
    );
    eprintln!(
        "{answered} requests answered one at a time, {} sent again after the old node went away",
        client.retried()
    );
    let _ = client.close();
    new.shutdown();
    new.join();
}
