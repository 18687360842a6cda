//! A control plane under zero_trust (over noise_xk): agents authenticate with their own keys,
//! and the policy's project grants decide which agent runs which project's jobs — by the
//! identity the handshake proved, not by what the agent says of itself.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::json;

mod common;

use common::jobs::Cluster;

/// `valkyrie keygen noise DIR/NAME`; the public key's hex.
fn noise_key(dir: &Path, name: &str) -> String {
    let ok = Command::new(env!("CARGO_BIN_EXE_valkyrie"))
        .args(["keygen", "noise"])
        .arg(dir.join(name))
        .status()
        .unwrap()
        .success();
    assert!(ok, "keygen noise {name}");
    std::fs::read_to_string(dir.join(format!("{name}.pub")))
        .unwrap()
        .trim()
        .to_owned()
}

#[test]
fn projects_go_to_the_agents_the_policy_grants_them() {
    let mut c = Cluster::start_with("zero-trust", 2000, |dir| {
        noise_key(dir, "plane");
        // HTTP clients of a secured control plane carry bearer tokens made from this file.
        let ok = Command::new(env!("CARGO_BIN_EXE_valkyrie"))
            .args(["keygen", "token"])
            .arg(dir.join("tokens"))
            .args(["--key-id", "ops"])
            .status()
            .unwrap()
            .success();
        assert!(ok, "keygen token");
        let web = noise_key(dir, "web");
        let bare = noise_key(dir, "bare");
        let policy = dir.join("policy.txt");
        std::fs::write(
            &policy,
            format!("noise:{web} * projects=web\nnoise:{bare} *\n"),
        )
        .unwrap();
        vec![
            "--security".into(),
            "zero_trust".into(),
            "--noise-key".into(),
            dir.join("plane.key").display().to_string(),
            "--policy".into(),
            policy.display().to_string(),
            "--token-file".into(),
            dir.join("tokens").display().to_string(),
            "--open-probes".into(),
        ]
    });
    let minted = Command::new(env!("CARGO_BIN_EXE_valkyrie"))
        .args(["token", "mint", "--token-file"])
        .arg(c.dir.join("tokens"))
        .output()
        .unwrap();
    c.bearer = Some(String::from_utf8_lossy(&minted.stdout).trim().to_owned());
    assert_eq!(
        common::curl(c.port, &[], "/api/v1/agents").0,
        401,
        "no token, no API"
    );
    let url = format!("tcp://127.0.0.1:{}", c.port);
    let secure = |key: &str| -> Vec<String> {
        vec![
            "--security".into(),
            "zero_trust".into(),
            "--noise-key".into(),
            c.dir.join(format!("{key}.key")).display().to_string(),
            "--server-key".into(),
            c.dir.join("plane.pub").display().to_string(),
        ]
    };
    let web_args = secure("web");
    let bare_args = secure("bare");
    let web_refs: Vec<&str> = web_args.iter().map(String::as_str).collect();
    let bare_refs: Vec<&str> = bare_args.iter().map(String::as_str).collect();
    // The bare agent even claims the web label: projects follow identities, not words.
    let _web = c.agent_with("web-box", &[], 2, &url, &web_refs);
    let _bare = c.agent_with("bare-box", &["web"], 2, &url, &bare_refs);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while c.agents().iter().filter(|a| a["connected"] == true).count() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "agents: {:?}",
            c.agents()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let ids: Vec<String> = (0..4)
        .map(|_| c.submit(&json!({"command": ["true"], "project": "web"})))
        .collect();
    for id in &ids {
        let job = c.wait_state(id, "succeeded", 30);
        assert_eq!(job["attempts"][0]["agent"], "web-box", "{job}");
    }
    let anyone = c.submit(&json!({"command": ["true"]}));
    c.wait_state(&anyone, "succeeded", 30);
    let infra = c.submit(&json!({"command": ["true"], "project": "infra"}));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(c.job(&infra)["state"], "queued", "nobody is granted infra");
}
