//! The live status page in a real browser: headless Chromium (Debian's `chromium`; `.ci/run`
//! installs it, and without it the test says so and skips) loads `GET /` from a running node
//! while a client sends requests, the page's figures move between two loads, and a
//! screenshot is kept in the target directory.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use valkyrie_protocol::MessageType;
use valkyrie_runtime::{Client, Echo, Node};

/// Headless Chromium with a fresh profile: `args` then `url`; stdout.
fn chromium(profile: &std::path::Path, args: &[&str], url: &str) -> Option<String> {
    let out = Command::new("chromium")
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The text of the element with `id` in a dumped DOM.
fn text_of(dom: &str, id: &str) -> String {
    let marker = format!("id=\"{id}\">");
    dom.find(&marker)
        .map(|i| &dom[i + marker.len()..])
        .and_then(|rest| rest.split('<').next())
        .unwrap_or("")
        .to_owned()
}

fn number(s: &str) -> u64 {
    s.chars()
        .filter(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or(0)
}

#[test]
fn the_status_page_shows_the_node_moving_in_headless_chromium() {
    if Command::new("chromium").arg("--version").output().is_err() {
        eprintln!("SKIPPED: chromium is not installed (apt-get install -y chromium)");
        return;
    }
    let node = Node::builder()
        .listen("tcp://127.0.0.1:0")
        .unwrap()
        .shards(2)
        .service(|_| Echo)
        .start()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (url, stop) = (node.url(), stop.clone());
        std::thread::spawn(move || {
            let mut c = Client::connect(&url).unwrap();
            while !stop.load(Ordering::Relaxed) {
                c.request(
                    5,
                    MessageType::LogEntry,
                    Bytes::from_static(b"\x80"),
                    Duration::from_secs(5),
                )
                .unwrap();
                std::thread::sleep(Duration::from_micros(200));
            }
            let _ = c.close();
        })
    };
    let page = format!("http://{}/", node.url().trim_start_matches("tcp://"));
    let dir = std::env::temp_dir().join(format!("valkyrie-chromium-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let load = |n: u32| {
        let profile = dir.join(format!("profile-{n}"));
        std::fs::create_dir_all(&profile).unwrap();
        chromium(
            &profile,
            &["--virtual-time-budget=3000", "--dump-dom"],
            &page,
        )
        .expect("chromium runs")
    };
    let first = load(1);
    assert!(first.contains("Valkyrie node"), "{first}");
    assert!(
        number(&text_of(&first, "polls")) >= 2,
        "the page read its feed: {first}"
    );
    assert!(number(&text_of(&first, "conn-active")) >= 1, "{first}");
    std::thread::sleep(Duration::from_millis(500));
    let second = load(2);
    let (before, after) = (
        number(&text_of(&first, "msgs-in-total")),
        number(&text_of(&second, "msgs-in-total")),
    );
    assert!(after > before, "the figures moved: {before} then {after}");
    assert!(
        number(&text_of(&second, "msgs-in-rate")) > 0,
        "messages per second while the client sends: {second}"
    );
    // A screenshot, kept.
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    let profile = dir.join("profile-shot");
    std::fs::create_dir_all(&profile).unwrap();
    chromium(
        &profile,
        &[
            "--virtual-time-budget=2000",
            "--window-size=1000,700",
            &format!("--screenshot={}", shot.display()),
        ],
        &page,
    );
    let png = std::fs::read(&shot).expect("the screenshot was written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 5_000,
        "{} bytes",
        png.len()
    );
    eprintln!("screenshot: {}", shot.display());
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    node.shutdown();
    node.join();
}
