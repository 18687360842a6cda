//! QUIC through the CLI: `valkyrie node --listen quic://…` with a certificate made by
//! `valkyrie keygen`, reached by an independent implementation — Python's aioquic, installed
//! by this test from PyPI into a virtual environment — with ALPN `valkyrie/2`: HELLO and PINGs
//! on its first bidirectional stream, then a resumed connection whose HELLO and PING go as
//! 0-RTT early data and whose PONG comes in the node's first flight, then a request in early
//! data answered with 706 (scripts/quic-interop.py); and `valkyrie ping quic://…`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A Python with aioquic: a virtual environment under the build's temporary directory,
/// made (and aioquic installed from PyPI) the first time.
fn aioquic_python() -> PathBuf {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("aioquic-venv");
    let python = venv.join("bin/python");
    let has = |p: &Path| {
        Command::new(p)
            .args(["-c", "import aioquic"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if has(&python) {
        return python;
    }
    let ok = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "python3 -m venv failed (Debian: apt-get install python3-venv)"
    );
    let ok = Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "aioquic>=1.2"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok && has(&python), "pip install aioquic failed");
    python
}

fn keygen(dir: &Path, args: &[&str]) {
    let ok = Command::new(env!("CARGO_BIN_EXE_valkyrie"))
        .arg("keygen")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "keygen {args:?}");
}

#[test]
fn aioquic_speaks_valkyrie_over_quic_with_0rtt() {
    let python = aioquic_python();
    let dir = std::env::temp_dir().join(format!("valkyrie-quic-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    keygen(&dir, &["ca", "ca"]);
    keygen(
        &dir,
        &[
            "cert",
            "node",
            "--ca",
            "ca",
            "--subject",
            "node-a",
            "--role",
            "server",
        ],
    );
    let (tcp, quic) = (common::free_port(), common::free_port());
    let quic_url = format!("quic://127.0.0.1:{quic}");
    let mut node = common::valkyrie_listening(
        [
            "node",
            "--listen",
            &format!("tcp://127.0.0.1:{tcp}"),
            "--listen",
            &quic_url,
            "--tls-cert",
            dir.join("node.crt").to_str().unwrap(),
            "--tls-key",
            dir.join("node.key").to_str().unwrap(),
            "--shards",
            "2",
            "--echo",
        ],
        tcp,
    );
    let out = Command::new(&python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../scripts/quic-interop.py"
        ))
        .arg(format!("127.0.0.1:{quic}"))
        .arg(dir.join("ca.crt"))
        .arg("node-a")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("0-RTT accepted, PONG in the node's first flight"),
        "{said}"
    );
    assert!(said.contains("ERROR 706"), "{said}");

    // The CLI's own client, trusting the CA alone.
    let ping = Command::new(env!("CARGO_BIN_EXE_valkyrie"))
        .args([
            "ping",
            &quic_url,
            "--count",
            "200",
            "--tls-server-name",
            "node-a",
            "--tls-ca",
        ])
        .arg(dir.join("ca.crt"))
        .output()
        .unwrap();
    assert!(
        ping.status.success(),
        "{}",
        String::from_utf8_lossy(&ping.stderr)
    );
    node.kill().unwrap();
    node.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
