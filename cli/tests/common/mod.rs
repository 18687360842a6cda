//! What the CLI's test binaries share: a free loopback port, waiting for a condition, and
//! the `valkyrie` binary started with arguments and waited for until it listens.
#![allow(dead_code, unreachable_pub)]

use std::ffi::OsStr;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A loopback port nothing listens on (bound, then let go).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Wait (10 s at most) until `f` holds.
pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `valkyrie ARGS...`, once it listens on loopback `port` (its output discarded).
pub fn valkyrie_listening<I, S>(args: I, port: u16) -> Child
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let child = Command::new(env!("CARGO_BIN_EXE_valkyrie"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("valkyrie to listen", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    child
}
