//! Secrets: sealed with the control plane's key before they are stored (the database never
//! holds them in the clear), shown as `***`, given to the job in its environment, masked in
//! its output; a control plane without a key refuses them.

use std::process::Command;

use serde_json::json;

mod common;

use common::jobs::{Cluster, lines_of};

#[test]
fn secrets_reach_the_job_and_nothing_else() {
    let c = Cluster::start_with("secrets", 2000, |dir| {
        let key = dir.join("secrets.key");
        let ok = Command::new(env!("CARGO_BIN_EXE_valkyrie"))
            .args(["keygen", "secrets"])
            .arg(&key)
            .status()
            .unwrap()
            .success();
        assert!(ok, "keygen secrets");
        vec!["--secrets-key".into(), key.display().to_string()]
    });
    let _a = c.agent("a", &[], 1);
    let value = "tok-9f8e7d6c5b4a";
    let id = c.submit(&json!({
        "command": ["sh", "-c", "echo \"the token is $API_TOKEN\"; test ${#API_TOKEN} -eq 16"],
        "secrets": {"API_TOKEN": value},
    }));
    let job = c.wait_state(&id, "succeeded", 30);
    assert_eq!(job["spec"]["secrets"]["API_TOKEN"], "***", "{job}");
    assert_eq!(lines_of(&c.logs(&id), "stdout"), ["the token is ***"]);
    // Nowhere in the store's files.
    for f in std::fs::read_dir(c.dir.join("data")).unwrap() {
        let p = f.unwrap().path();
        if p.is_file() {
            let bytes = std::fs::read(&p).unwrap();
            assert!(
                !bytes.windows(value.len()).any(|w| w == value.as_bytes()),
                "{} holds the secret",
                p.display()
            );
        }
    }
}

#[test]
fn a_control_plane_without_a_key_refuses_secrets() {
    let c = Cluster::start("secrets-none", 2000);
    let (code, r) = common::curl(
        c.port,
        &[
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"command": ["true"], "secrets": {"X": "y"}}"#,
        ],
        "/api/v1/jobs",
    );
    assert_eq!(code, 400, "{r}");
    assert!(r["message"].as_str().unwrap().contains("--secrets-key"));
}
