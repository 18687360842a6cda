//! `/metrics` read by the real tools: `promtool check metrics` finds nothing to say, and a
//! Prometheus server started here scrapes a running node and answers a query about it.
//! Both need Debian's `prometheus` package (`.ci/run` installs it); without it they say so
//! and skip.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use valkyrie_protocol::MessageType;
use valkyrie_runtime::{Client, Echo, Node};

fn have(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        eprintln!("SKIPPED: {tool} is not installed (apt-get install -y prometheus)");
    }
    found
}

/// A node with some traffic behind it: a client that pinged and made requests.
fn busy_node() -> (Node, Client) {
    let node = Node::builder()
        .listen("tcp://127.0.0.1:0")
        .unwrap()
        .shards(2)
        .service(|_| Echo)
        .start()
        .unwrap();
    let mut c = Client::connect(&node.url()).unwrap();
    for _ in 0..10 {
        c.ping(b"x").unwrap();
        c.request(
            3,
            MessageType::LogEntry,
            Bytes::from_static(b"\x80"),
            Duration::from_secs(5),
        )
        .unwrap();
    }
    (node, c)
}

fn get(url: &str) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", url])
        .output()
        .expect("curl runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn promtool_finds_nothing_wrong_with_the_exposition() {
    if !have("promtool") {
        return;
    }
    let (node, c) = busy_node();
    let text = get(&format!(
        "http://{}/metrics",
        node.url().trim_start_matches("tcp://")
    ));
    assert!(text.contains("valkyrie_connections_active"), "{text}");
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}"
    );
    let _ = c.close();
    node.shutdown();
    node.join();
}

/// Kills the Prometheus server and removes its directory when the test ends, however it ends.
struct Server {
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn prometheus_scrapes_a_running_node() {
    if !have("prometheus") {
        return;
    }
    let (node, c) = busy_node();
    let target = node.url().trim_start_matches("tcp://").to_owned();
    let dir = std::env::temp_dir().join(format!("valkyrie-prometheus-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: valkyrie\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("prometheus starts");
    let mut server = Server { child, dir };
    let query =
        format!("http://127.0.0.1:{port}/api/v1/query?query=sum(valkyrie_connections_active)");
    let t0 = Instant::now();
    // Polled every 200 ms: two scrapes a second apart are enough.
    let answer = loop {
        let body = get(&query);
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&body)
            && let Some(first) = v["data"]["result"].as_array().and_then(|r| r.first())
        {
            break first.clone();
        }
        if t0.elapsed() > Duration::from_secs(30) {
            let mut log = String::new();
            if let Some(mut e) = server.child.stderr.take() {
                let _ = e.read_to_string(&mut log);
            }
            panic!("prometheus never had the node's metrics: {body}\n{log}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // The client is connected, and so (kept alive) is the scraper itself.
    let open: f64 = answer["value"][1].as_str().unwrap().parse().unwrap();
    assert!((1.0..=2.0).contains(&open), "{answer}");
    // The scrapes were OpenMetrics (Prometheus asks for it first), and what the node serves
    // in that format ends as it must.
    let targets = get(&format!("http://127.0.0.1:{port}/api/v1/targets"));
    assert!(targets.contains("\"lastError\":\"\""), "{targets}");
    let out = Command::new("curl")
        .args([
            "-sS",
            "-D",
            "-",
            "-H",
            "accept: application/openmetrics-text;version=1.0.0",
        ])
        .arg(format!("http://{target}/metrics"))
        .output()
        .expect("curl runs");
    let om = String::from_utf8_lossy(&out.stdout);
    assert!(
        om.contains("content-type: application/openmetrics-text"),
        "{om}"
    );
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(
        om.contains("# TYPE valkyrie_connections_accepted counter"),
        "{om}"
    );
    let up = get(&format!("http://127.0.0.1:{port}/api/v1/query?query=up"));
    assert!(up.contains("\"1\""), "the target is up: {up}");
    // A histogram quantile: the median size of the frames the service got (25-byte
    // LOG_ENTRY requests: in the 32-byte bucket, so between 0 and 32).
    let q = "histogram_quantile(0.5,%20sum%20by%20(le)%20(valkyrie_message_size_bytes_bucket))";
    let body = get(&format!("http://127.0.0.1:{port}/api/v1/query?query={q}"));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let median: f64 = v["data"]["result"][0]["value"][1]
        .as_str()
        .unwrap_or("NaN")
        .parse()
        .unwrap();
    assert!(median > 0.0 && median <= 32.0, "{body}");
    // Durations in seconds that resolve microseconds: the plaintext handshakes of this test.
    let q = "histogram_quantile(0.99,%20sum%20by%20(le)%20(valkyrie_handshake_duration_seconds_bucket))";
    let body = get(&format!("http://127.0.0.1:{port}/api/v1/query?query={q}"));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let p99: f64 = v["data"]["result"][0]["value"][1]
        .as_str()
        .unwrap_or("NaN")
        .parse()
        .unwrap();
    assert!(p99 > 0.0 && p99 < 1.0, "a handshake p99 in seconds: {body}");
    drop(server);
    let _ = c.close();
    node.shutdown();
    node.join();
}
