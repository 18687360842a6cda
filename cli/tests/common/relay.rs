//! A TCP relay that delays what it forwards by a fixed time each way (this kernel has no
//! netem): for multi-host tests, between hosts that should be 1 or 10 ms apart. Each
//! direction of each connection has a reader and a writer thread; the writer sends every
//! chunk when its time comes, so delay adds latency, not a limit on throughput.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A relay listening on `addr`; stops taking connections when dropped.
pub struct Relay {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Relay {
    /// Relay from a new port on `ip` to `target`, `delay` each way.
    pub fn start(ip: &str, target: SocketAddr, delay: Duration) -> Relay {
        let listener = TcpListener::bind((ip, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((inbound, _)) => {
                        inbound.set_nonblocking(false).unwrap();
                        let Ok(outbound) =
                            TcpStream::connect_timeout(&target, Duration::from_secs(3))
                        else {
                            continue;
                        };
                        for s in [&inbound, &outbound] {
                            let _ = s.set_nodelay(true);
                            // A peer that vanished (its packets dropped) is found out in
                            // seconds, as a real proxy's timeouts would: the other side's
                            // connection is then ended too.
                            let ka = socket2::TcpKeepalive::new()
                                .with_time(Duration::from_secs(2))
                                .with_interval(Duration::from_secs(1))
                                .with_retries(3);
                            let _ = socket2::SockRef::from(s).set_tcp_keepalive(&ka);
                        }
                        pipe(
                            inbound.try_clone().unwrap(),
                            outbound.try_clone().unwrap(),
                            delay,
                        );
                        pipe(outbound, inbound, delay);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Relay { addr, stop }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Forward `from` to `to`, each chunk `delay` after it was read.
fn pipe(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = tx.send((Instant::now() + delay, Vec::new()));
                    // Both ways end: the far side learns at once.
                    let _ = from.shutdown(Shutdown::Both);
                    return;
                }
                Ok(n) => {
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    });
    std::thread::spawn(move || {
        while let Ok((due, bytes)) = rx.recv() {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if bytes.is_empty() || to.write_all(&bytes).is_err() {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
        }
    });
}
