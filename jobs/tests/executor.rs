//! The executor against real processes: output line by line from both streams, numbered
//! without gaps; exit codes and signals; cancel ends the whole group (a grandchild too) with
//! SIGTERM, then SIGKILL for one that ignores it; pause stops the output and resume brings it
//! back; the environment and directory; the built-in no-op.

use std::time::{Duration, Instant};

use valkyrie_jobs::JobSpec;
use valkyrie_jobs::executor::{ExecEvent, Output, Running, spawn};

fn sh(script: &str) -> JobSpec {
    JobSpec {
        command: vec!["sh".into(), "-c".into(), script.into()],
        ..JobSpec::default()
    }
}

/// Everything until the end (10 s at most): lines and the exit.
fn run_all(r: &mut Running) -> (Vec<(u64, Output, String)>, ExecEvent) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut lines = Vec::new();
    while Instant::now() < deadline {
        match r.next(Duration::from_millis(100)) {
            Some(ExecEvent::Line { seq, output, line }) => lines.push((seq, output, line)),
            Some(exit) => return (lines, exit),
            None => {}
        }
    }
    panic!("the job did not end: {lines:?}");
}

fn exit_of(e: &ExecEvent) -> (Option<i32>, Option<i32>) {
    match e {
        ExecEvent::Exited {
            exit_code, signal, ..
        } => (*exit_code, *signal),
        other => panic!("{other:?}"),
    }
}

#[test]
fn both_streams_come_line_by_line_numbered_and_the_exit_code_after() {
    let dir = std::env::temp_dir();
    let mut r = spawn(
        &sh("for i in 1 2 3; do echo out $i; echo err $i >&2; done; printf 'no newline'; exit 3"),
        &dir,
        4,
    )
    .unwrap();
    let (lines, exit) = run_all(&mut r);
    assert_eq!(exit_of(&exit), (Some(3), None));
    let seqs: Vec<u64> = lines.iter().map(|l| l.0).collect();
    assert_eq!(seqs, (1..=7).collect::<Vec<_>>(), "numbered from 1, no gap");
    let out: Vec<&str> = lines
        .iter()
        .filter(|l| l.1 == Output::Stdout)
        .map(|l| l.2.as_str())
        .collect();
    assert_eq!(out, ["out 1", "out 2", "out 3", "no newline"]);
    let err = lines.iter().filter(|l| l.1 == Output::Stderr).count();
    assert_eq!(err, 3);
    assert!(
        r.next(Duration::from_millis(10)).is_none(),
        "nothing after the end"
    );
}

#[test]
fn a_slow_reader_loses_nothing() {
    // 20,000 lines through a queue of 8: the job waits for its reader.
    let mut r = spawn(&sh("seq 1 20000"), &std::env::temp_dir(), 8).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let (lines, exit) = run_all(&mut r);
    assert_eq!(exit_of(&exit), (Some(0), None));
    assert_eq!(lines.len(), 20_000);
    assert!(
        lines
            .iter()
            .enumerate()
            .all(|(i, l)| l.2 == (i + 1).to_string())
    );
}

#[test]
fn cancel_ends_the_group_with_sigterm_then_sigkill() {
    // The job starts a grandchild that would outlive it.
    let mut r = spawn(
        &sh("sleep 30 & echo started; wait"),
        &std::env::temp_dir(),
        4,
    )
    .unwrap();
    assert!(matches!(
        r.next(Duration::from_secs(5)),
        Some(ExecEvent::Line { line, .. }) if line == "started"
    ));
    let t = Instant::now();
    r.cancel(Duration::from_secs(5));
    let (_, exit) = run_all(&mut r);
    assert_eq!(exit_of(&exit).1, Some(libc_sigterm()));
    assert!(t.elapsed() < Duration::from_secs(3), "SIGTERM was enough");
    // One that ignores SIGTERM is killed after the grace period.
    let mut r = spawn(
        &sh("trap '' TERM; echo ready; while true; do sleep 0.05; done"),
        &std::env::temp_dir(),
        4,
    )
    .unwrap();
    assert!(r.next(Duration::from_secs(5)).is_some());
    let t = Instant::now();
    r.cancel(Duration::from_millis(300));
    let (_, exit) = run_all(&mut r);
    assert_eq!(exit_of(&exit).1, Some(9), "SIGKILL");
    assert!(t.elapsed() >= Duration::from_millis(300));
}

fn libc_sigterm() -> i32 {
    15
}

#[test]
fn pause_stops_the_output_and_resume_brings_it_back() {
    let mut r = spawn(
        &sh("i=0; while [ $i -lt 40 ]; do echo $i; i=$((i+1)); sleep 0.02; done"),
        &std::env::temp_dir(),
        64,
    )
    .unwrap();
    assert!(r.next(Duration::from_secs(5)).is_some());
    assert!(r.pause());
    // Whatever was written before the stop drains; then nothing for a while.
    while r.next(Duration::from_millis(150)).is_some() {}
    assert!(r.next(Duration::from_millis(300)).is_none(), "paused");
    assert!(r.resume());
    let (lines, exit) = run_all(&mut r);
    assert!(!lines.is_empty(), "resumed");
    assert_eq!(exit_of(&exit), (Some(0), None));
    assert_eq!(lines.last().unwrap().2, "39");
}

#[test]
fn the_environment_and_directory_are_the_specs_and_noop_spawns_nothing() {
    let dir = std::env::temp_dir().join(format!("valkyrie-exec-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    let mut spec = sh("echo $GREETING; pwd");
    spec.env.insert("GREETING".into(), "hello".into());
    spec.cwd = Some("sub".into());
    let mut r = spawn(&spec, &dir, 4).unwrap();
    let (lines, _) = run_all(&mut r);
    assert_eq!(lines[0].2, "hello");
    assert!(lines[1].2.ends_with("/sub"), "{lines:?}");
    let noop = JobSpec {
        builtin: Some("noop".into()),
        ..JobSpec::default()
    };
    let mut r = spawn(&noop, &dir, 4).unwrap();
    assert_eq!(r.pgid(), None);
    let (lines, exit) = run_all(&mut r);
    assert!(lines.is_empty());
    assert_eq!(exit_of(&exit), (Some(0), None));
    let _ = std::fs::remove_dir_all(&dir);
}
