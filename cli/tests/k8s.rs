//! The Kubernetes manifest in `deploy/k8s/`: valid against the Kubernetes schemas (offline,
//! `kubernetes-validate --strict`, which `.ci/run` installs; without it the test says so and
//! skips), and what it asks of the node holds — the binary takes its args, and the probes'
//! paths answer on the port it names.

use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MANIFEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/k8s/node.yaml");

fn validate(path: &str) -> Option<bool> {
    let out = Command::new("kubernetes-validate")
        .args(["--strict", path])
        .output();
    match out {
        Ok(o) => {
            eprintln!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            Some(o.status.success())
        }
        Err(_) => {
            eprintln!(
                "SKIPPED: kubernetes-validate is not installed (pip install kubernetes-validate)"
            );
            None
        }
    }
}

#[test]
fn the_manifest_fits_the_kubernetes_schemas_and_a_broken_one_does_not() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR")
        .map(|d| format!("{d}/../deploy/k8s/node.yaml"))
        .unwrap_or_else(|_| MANIFEST.to_owned());
    let Some(ok) = validate(&manifest) else {
        return;
    };
    assert!(ok, "deploy/k8s/node.yaml does not validate");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let broken = std::env::temp_dir().join(format!("valkyrie-k8s-{}.yaml", std::process::id()));
    std::fs::write(&broken, text.replace("livenessProbe", "livenesProbe")).unwrap();
    let bad = validate(broken.to_str().unwrap());
    let _ = std::fs::remove_file(&broken);
    assert_eq!(bad, Some(false), "a misspelt field must fail validation");
}

#[test]
fn the_node_runs_with_the_manifests_args_and_answers_its_probes() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR")
        .map(|d| format!("{d}/../deploy/k8s/node.yaml"))
        .unwrap_or_else(|_| MANIFEST.to_owned());
    let text = std::fs::read_to_string(manifest).unwrap();
    // args: ["node", "--listen", "tcp://0.0.0.0:7420", ...] on one line.
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("args:"))
        .expect("the container's args");
    let inner = &line[line.find('[').unwrap() + 1..line.rfind(']').unwrap()];
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let args: Vec<String> = inner
        .split(',')
        .map(|a| a.trim().trim_matches('"').to_owned())
        // The pod's address, here a free loopback port.
        .map(|a| a.replace("tcp://0.0.0.0:7420", &format!("tcp://127.0.0.1:{port}")))
        .collect();
    assert_eq!(args[0], "node");
    for path in ["/healthz", "/readyz"] {
        assert!(text.contains(&format!("path: {path}")), "probe {path}");
    }
    let mut node = Command::new(env!("CARGO_BIN_EXE_valkyrie"))
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the node did not listen"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    for path in ["/healthz", "/readyz"] {
        let out = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "5",
            ])
            .arg(format!("http://127.0.0.1:{port}{path}"))
            .output()
            .expect("curl runs");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "{path}");
    }
    let _ = node.kill();
    let _ = node.wait();
}
