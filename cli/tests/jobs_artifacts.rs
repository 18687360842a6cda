//! Artifacts: a job's listed files uploaded by its agent (FILE_TRANSFER_*, BLAKE3-verified),
//! listed and served by the control plane; an upload cut by the control plane's SIGKILL goes
//! on from what it held once it is back.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

mod common;

use common::jobs::Cluster;

/// `GET` a file from the control plane into bytes.
fn download(c: &Cluster, path: &str) -> (u16, Vec<u8>) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30", "-o", "-", "-w", "%{http_code}"])
        .arg(format!("http://127.0.0.1:{}{path}", c.port))
        .output()
        .unwrap();
    let mut body = out.stdout;
    let code: Vec<u8> = body.split_off(body.len() - 3);
    (String::from_utf8_lossy(&code).parse().unwrap(), body)
}

#[test]
fn a_jobs_files_are_uploaded_listed_and_served() {
    let c = Cluster::start("artifacts", 2000);
    let _a = c.agent("a", &[], 1);
    let id = c.submit(&json!({
        "command": ["sh", "-c", "mkdir -p out && head -c 3000000 /dev/urandom > out/big.bin && echo hello > small.txt"],
        "artifacts": ["out/big.bin", "small.txt", "never-made.txt"],
    }));
    c.wait_state(&id, "succeeded", 30);
    let (code, list) = common::curl(c.port, &[], &format!("/api/v1/jobs/{id}/artifacts"));
    assert_eq!(code, 200, "{list}");
    let names: Vec<&str> = list["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["big.bin", "small.txt"],
        "the missing one is not there: {list}"
    );
    let made = std::fs::read(c.dir.join("work/a/out/big.bin")).unwrap();
    let (code, got) = download(&c, &format!("/api/v1/jobs/{id}/artifacts/big.bin"));
    assert_eq!(code, 200);
    assert!(
        got == made,
        "{} bytes served, {} made",
        got.len(),
        made.len()
    );
    assert_eq!(list["artifacts"][0]["size"], 3_000_000);
    assert_eq!(list["artifacts"][0]["blake3"].as_str().unwrap().len(), 64);
    assert_eq!(
        download(&c, &format!("/api/v1/jobs/{id}/artifacts/small.txt")),
        (200, b"hello\n".to_vec())
    );
    assert_eq!(
        download(&c, &format!("/api/v1/jobs/{id}/artifacts/none")).0,
        404
    );
    assert_eq!(
        download(&c, &format!("/api/v1/jobs/{id}/artifacts/..")).0,
        404
    );
}

#[test]
fn an_upload_cut_by_a_kill_goes_on_from_what_was_held() {
    let mut c = Cluster::start("artifacts-kill", 3000);
    let _a = c.agent("a", &[], 1);
    let id = c.submit(&json!({
        "command": ["sh", "-c", "head -c 40000000 /dev/urandom > big.bin"],
        "artifacts": ["big.bin"],
    }));
    let part = c.dir.join("data/artifacts").join(&id).join("big.bin.part");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::metadata(&part).map_or(0, |m| m.len()) < 5_000_000 {
        assert!(Instant::now() < deadline, "the upload did not start");
        std::thread::sleep(Duration::from_millis(2));
    }
    c.kill_plane();
    let held = std::fs::metadata(&part).unwrap().len();
    assert!(
        held < 100_000_000,
        "the kill came after the upload ({held} bytes)"
    );
    c.restart_plane();
    c.wait_state(&id, "succeeded", 60);
    let made = std::fs::read(c.dir.join("work/a/big.bin")).unwrap();
    let (code, got) = download(&c, &format!("/api/v1/jobs/{id}/artifacts/big.bin"));
    assert_eq!(code, 200);
    assert!(
        got == made,
        "{} bytes served, {} made",
        got.len(),
        made.len()
    );
    eprintln!("the upload was cut at {held} of 40000000 bytes and went on from there");
}

#[test]
fn an_artifact_uploaded_through_one_control_plane_is_served_by_another() {
    let Some(pg) = common::jobs::postgres() else {
        return;
    };
    let url = pg.database("shared_files");
    let (c0, c1) = (
        Cluster::on_postgres("files-0", 2000, &url, "cp-0"),
        Cluster::on_postgres("files-1", 2000, &url, "cp-1"),
    );
    let _a = c0.agent("a", &[], 1);
    let id = c0.submit(&json!({
        "command": ["sh", "-c", "head -c 2500000 /dev/urandom > big.bin"],
        "artifacts": ["big.bin"],
    }));
    c0.wait_state(&id, "succeeded", 30);
    let made = std::fs::read(c0.dir.join("work/a/big.bin")).unwrap();
    // The other node never saw the upload: the bytes come from the database.
    let (code, got) = download(&c1, &format!("/api/v1/jobs/{id}/artifacts/big.bin"));
    assert_eq!(code, 200);
    assert!(
        got == made,
        "{} bytes served, {} made",
        got.len(),
        made.len()
    );
    assert!(
        !c0.dir
            .join("data/artifacts")
            .join(&id)
            .join("big.bin")
            .exists(),
        "no copy kept beside a shared store"
    );
    let (code, again) = download(&c0, &format!("/api/v1/jobs/{id}/artifacts/big.bin"));
    assert_eq!((code, again.len()), (200, made.len()));
}
