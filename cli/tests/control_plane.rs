//! `valkyrie control-plane` as a user runs it, driven with curl: jobs submitted (an
//! idempotency key used twice gives the first job back), read back and listed by state and
//! page; the process killed with SIGKILL and started again on the same data directory: every
//! job it answered for is still there.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

mod common;

struct Plane {
    child: Child,
}

impl Drop for Plane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(port: u16, data: &std::path::Path) -> Plane {
    let listen = format!("tcp://127.0.0.1:{port}");
    let args: [&std::ffi::OsStr; 7] = [
        "control-plane".as_ref(),
        "--listen".as_ref(),
        listen.as_ref(),
        "--data".as_ref(),
        data.as_os_str(),
        "--shards".as_ref(),
        "2".as_ref(),
    ];
    let child = common::valkyrie_listening(args, port);
    let deadline = Instant::now() + Duration::from_secs(10);
    // Ready as a probe sees it: /readyz answers 200. Right after the previous process on
    // this port was killed, the kernel still holds its connections (TIME_WAIT), and a new
    // connection whose four-tuple meets one of them can be reset: wait as a load balancer
    // would. (With a fresh port each time no connection is reset: 0 of 15 tries.)
    while common::curl(port, &[], "/readyz").0 != 200 {
        assert!(
            Instant::now() < deadline,
            "the control plane did not become ready"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Plane { child }
}

fn submit(port: u16, body: &str) -> (u16, serde_json::Value) {
    common::curl(
        port,
        &[
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
            body,
        ],
        "/api/v1/jobs",
    )
}

#[test]
fn jobs_are_submitted_read_listed_and_survive_kill_9() {
    let data = std::env::temp_dir().join(format!("valkyrie-cp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let port = common::free_port();
    let plane = start(port, &data);
    let (code, first) = submit(
        port,
        r#"{"command": ["make", "-j8"], "labels": ["linux"], "idempotency_key": "build-42"}"#,
    );
    assert_eq!(code, 201, "{first}");
    assert_eq!(first["state"], "queued");
    let id = first["job_id"].as_str().unwrap().to_owned();
    // The same key again: the first job, not a second one.
    let (code, again) = submit(
        port,
        r#"{"command": ["make"], "idempotency_key": "build-42"}"#,
    );
    assert_eq!((code, again["job_id"].as_str()), (200, Some(id.as_str())));
    // Refused specs say why.
    let (code, bad) = submit(port, r#"{"comand": ["typo"]}"#);
    assert_eq!((code, bad["code"].as_u64()), (400, Some(104)), "{bad}");
    let (code, bad) = submit(port, r#"{"labels": ["x"]}"#);
    assert_eq!(code, 400, "{bad}");
    let mut ids = vec![id.clone()];
    for i in 0..5 {
        let (code, j) = submit(port, &format!(r#"{{"builtin": "noop", "priority": {i}}}"#));
        assert_eq!(code, 201);
        ids.push(j["job_id"].as_str().unwrap().to_owned());
    }
    let (code, job) = common::curl(port, &[], &format!("/api/v1/jobs/{id}"));
    assert_eq!(code, 200);
    assert_eq!(job["state"], "queued");
    assert_eq!(job["spec"]["command"][1], "-j8");
    assert_eq!(job["attempts"].as_array().map(Vec::len), Some(0));
    let (code, _) = common::curl(port, &[], "/api/v1/jobs/j0000000000000000000");
    assert_eq!(code, 404);
    // Pages of four, in submission order.
    let (code, page) = common::curl(port, &[], "/api/v1/jobs?state=queued&limit=4");
    assert_eq!(code, 200);
    let listed: Vec<&str> = page["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed.len(), 4);
    let next = page["next"].as_str().unwrap().to_owned();
    let (_, rest) = common::curl(port, &[], &format!("/api/v1/jobs?limit=4&after={next}"));
    assert_eq!(rest["jobs"].as_array().unwrap().len(), 2);
    assert!(rest["next"].is_null());
    // The same through `valkyrie job`.
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_valkyrie"))
            .arg("job")
            .args(args)
            .output()
            .unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        (out.status.success(), json)
    };
    let base = format!("http://127.0.0.1:{port}");
    let (ok, made) = cli(&[
        "submit", &base, "--key", "cli-1", "--label", "linux", "--", "make", "test",
    ]);
    assert!(ok, "{made}");
    let cli_id = made["job_id"].as_str().unwrap().to_owned();
    ids.push(cli_id.clone());
    let (ok, job) = cli(&["status", &base, &cli_id]);
    assert!(ok);
    assert_eq!(job["spec"]["command"], serde_json::json!(["make", "test"]));
    assert_eq!(job["spec"]["labels"], serde_json::json!(["linux"]));
    let (ok, list) = cli(&["list", &base, "--state", "queued", "--limit", "100"]);
    assert!(ok);
    assert_eq!(list["jobs"].as_array().unwrap().len(), ids.len());
    let (ok, _) = cli(&["status", &base, "j-none"]);
    assert!(!ok, "a 404 is an error");
    // No agent took it: a cancel ends it now; a second is refused.
    let (code, c) = common::curl(port, &["-X", "POST"], &format!("/api/v1/jobs/{id}/cancel"));
    assert_eq!((code, c["state"].as_str()), (200, Some("cancelled")), "{c}");
    let (code, _) = common::curl(port, &["-X", "POST"], &format!("/api/v1/jobs/{id}/cancel"));
    assert_eq!(code, 409);

    // SIGKILL, and again on the same data: every job answered for is there.
    drop(plane);
    let plane = start(port, &data);
    let (code, all) = common::curl(port, &[], "/api/v1/jobs?limit=100");
    assert_eq!(code, 200);
    let after: Vec<String> = all["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_str().unwrap().to_owned())
        .collect();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(after, want);
    drop(plane);
    let _ = std::fs::remove_dir_all(&data);
}
