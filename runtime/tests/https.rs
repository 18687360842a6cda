//! HTTP inside TLS on a node whose mode requires certificates: curl offers ALPN `http/1.1`
//! with a client certificate from the node's CA, and is served — the probes, and the REST
//! gateway under the zero_trust policy for the certificate's identity — while a binary mtls
//! client works on the same port; without a certificate TLS refuses the client.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use valkyrie_protocol::security::mtls::{DevPki, Mtls};
use valkyrie_protocol::security::zero_trust::{Policy, ZeroTrust};
use valkyrie_protocol::{Config, MessageType, SecurityMode};
use valkyrie_runtime::{Client, ClientConfig, Echo, Node};

struct Files {
    dir: std::path::PathBuf,
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// curl over https with the client certificate (when `cert`): (status, body).
fn curl(
    files: &Files,
    cert: bool,
    port: u16,
    method_path: (&str, &str),
    body: &str,
) -> (u16, String) {
    let d = &files.dir;
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "5",
        "--http1.1",
        "-w",
        "\n%{http_code}",
    ])
    .arg("--cacert")
    .arg(d.join("ca.pem"));
    if cert {
        cmd.arg("--cert")
            .arg(d.join("client.pem"))
            .arg("--key")
            .arg(d.join("client.key"));
    }
    if method_path.0 == "POST" {
        cmd.args([
            "-H",
            "content-type: application/json",
            "--data-binary",
            body,
        ]);
    }
    let out = cmd
        .arg(format!("https://127.0.0.1:{port}{}", method_path.1))
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

#[test]
fn https_with_a_client_certificate_is_served_and_the_policy_applies() {
    let pki = DevPki::generate(&["127.0.0.1"], &["agent-7"]).unwrap();
    let dir = std::env::temp_dir().join(format!("valkyrie-https-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ca.pem"), &pki.ca_pem).unwrap();
    std::fs::write(dir.join("client.pem"), pki.client_chain_pem(0)).unwrap();
    std::fs::write(dir.join("client.key"), pki.client_key_pem(0)).unwrap();
    let files = Files { dir };
    let policy = Policy::parse("x509:agent-7 JOB_REQUEST\n").unwrap();
    let node = Node::builder()
        .listen("tcp://127.0.0.1:0")
        .unwrap()
        .protocol(Config {
            security: vec![SecurityMode::ZeroTrust],
            handshakes: vec![Arc::new(ZeroTrust::over(Mtls))],
            policy: Some(Arc::new(policy)),
            ..Config::new("control")
        })
        .tls(pki.server_config(0).unwrap())
        .shards(2)
        .service(|_| Echo)
        .start()
        .unwrap();
    let port: u16 = node.url().rsplit(':').next().unwrap().parse().unwrap();
    // Probes need no open flag for a client the node verified.
    let (code, body) = curl(&files, true, port, ("GET", "/healthz"), "");
    assert_eq!(code, 200, "{body}");
    // The policy lets agent-7 send JOB_REQUEST...
    let job = r#"{"job_id": "j1", "spec": {"command": ["true"]}}"#;
    let (code, body) = curl(
        &files,
        true,
        port,
        ("POST", "/api/v1/messages/job_request"),
        job,
    );
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"job_id\":\"j1\""), "{body}");
    // ...and nothing else: 701 is 403.
    let (code, body) = curl(
        &files,
        true,
        port,
        ("POST", "/api/v1/messages/job_cancel"),
        r#"{"job_id": "j1"}"#,
    );
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("\"code\":701"), "{body}");
    // Without a certificate TLS refuses the client (curl reports no status).
    let (code, _) = curl(&files, false, port, ("GET", "/healthz"), "");
    assert_eq!(code, 0);
    // A binary client with the same certificate, no ALPN, speaks Valkyrie on the same port.
    let mut c = Client::connect_with(
        &node.url(),
        common::mtls_client(ClientConfig::default(), &pki, &pki.ca_pem, true),
    )
    .unwrap();
    let r = c
        .request(
            1,
            MessageType::JobRequest,
            Bytes::from_static(b"go"),
            Duration::from_secs(5),
        )
        .unwrap();
    assert_eq!(&r.payload[..], b"go");
    let _ = c.close();
    node.shutdown();
    node.join();
}
