//! What the CLI's test binaries share: a free loopback port, waiting for a condition, the
//! `valkyrie` binary started with arguments and waited for until it listens, and curl.
#![allow(dead_code, unreachable_pub)]

use std::ffi::OsStr;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod jobs;
pub mod netns;
pub mod relay;

/// A loopback port nothing listens on (bound, then let go).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Wait (10 s at most) until `f` holds.
pub fn wait_until(what: &str, f: impl FnMut() -> bool) {
    wait_secs(what, 10, f);
}

/// Wait (`secs` at most) until `f` holds.
pub fn wait_secs(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what} ({secs} s)"
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

/// `curl` with `args` against `path` on loopback `port`: the status and the JSON body (Null
/// when it is not JSON).
pub fn curl(port: u16, args: &[&str], path: &str) -> (u16, serde_json::Value) {
    curl_at(&format!("127.0.0.1:{port}"), args, path)
}

/// The same against `addr` (`HOST:PORT`).
pub fn curl_at(addr: &str, args: &[&str], path: &str) -> (u16, serde_json::Value) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "-w", "\n%{http_code}"])
        .args(args)
        .arg(format!("http://{addr}{path}"))
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    let json = serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
    (code.trim().parse().unwrap_or(0), json)
}
