//! The embedded store through the committer, as the control plane will drive it: a job's
//! life with its attempts and epochs, stale results refused, idempotent submission, group
//! commit under concurrent submitters, and durability — everything acknowledged is
//! there after the store reopens, and after the process that wrote it is killed with
//! SIGKILL mid-stream.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use valkyrie_jobs::{Applied, Change, Committer, JobSpec, JobState, SqliteStore, job_id};

/// A directory removed when the test ends.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("valkyrie-jobs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }

    fn db(&self) -> PathBuf {
        self.0.join("jobs.db")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn spec(cmd: &str) -> JobSpec {
    JobSpec {
        command: vec![cmd.into()],
        max_attempts: 3,
        ..JobSpec::default()
    }
}

fn open(path: &Path) -> Committer {
    Committer::spawn(SqliteStore::open(path).unwrap(), 4096)
}

#[test]
fn a_job_lives_through_its_attempts_and_stale_results_are_refused() {
    let dir = TempDir::new("life");
    let c = open(&dir.db());
    let id = job_id(1000, 1);
    let submit = Change::Submit {
        job_id: id.clone(),
        spec: Box::new(spec("make")),
        at: 1000,
    };
    assert!(matches!(
        c.apply(submit).unwrap(),
        Applied::Submitted { created: true, .. }
    ));
    // First attempt on agent a, lost: back to the queue.
    let assign = |agent: &str, at| Change::Assign {
        job_id: id.clone(),
        agent: agent.into(),
        at,
    };
    assert_eq!(
        c.apply(assign("a", 1001)).unwrap(),
        Applied::Assigned {
            attempt: 1,
            epoch: 1,
            log_seq: 0
        }
    );
    assert_eq!(
        c.apply(assign("b", 1001)).unwrap(),
        Applied::Refused {
            state: JobState::Assigned
        },
        "an assigned job is not assigned twice"
    );
    let start = |epoch, at| Change::Start {
        job_id: id.clone(),
        epoch,
        at,
    };
    assert_eq!(c.apply(start(1, 1002)).unwrap(), Applied::Done);
    let end = |epoch, state, code: Option<i32>, reason: &str, at| Change::End {
        job_id: id.clone(),
        epoch,
        state,
        exit_code: code,
        signal: None,
        reason: Some(reason.into()),
        at,
    };
    assert_eq!(
        c.apply(end(1, JobState::Queued, None, "agent lost", 1003))
            .unwrap(),
        Applied::Ended {
            state: JobState::Queued
        }
    );
    // Second attempt on agent b, succeeds; agent a's late result is refused.
    assert_eq!(
        c.apply(assign("b", 1004)).unwrap(),
        Applied::Assigned {
            attempt: 2,
            epoch: 2,
            log_seq: 0
        }
    );
    assert_eq!(c.apply(start(2, 1005)).unwrap(), Applied::Done);
    assert_eq!(
        c.apply(end(1, JobState::Failed, Some(1), "late", 1006))
            .unwrap(),
        Applied::Stale { current: 2 },
        "the partitioned agent's result is not recorded"
    );
    assert_eq!(
        c.apply(end(2, JobState::Succeeded, Some(0), "exited", 1007))
            .unwrap(),
        Applied::Ended {
            state: JobState::Succeeded
        }
    );
    assert_eq!(
        c.apply(end(2, JobState::Failed, Some(1), "again", 1008))
            .unwrap(),
        Applied::Refused {
            state: JobState::Succeeded
        },
        "one outcome"
    );
    // Everything above survives the store closing and opening again.
    drop(c);
    let c = open(&dir.db());
    let id2 = id.clone();
    let job = c.read(move |s| s.job(&id2)).unwrap().unwrap().unwrap();
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(job.exit_code, Some(0));
    assert_eq!(job.epoch, 2);
    let attempts: Vec<(u32, &str, u64, JobState)> = job
        .attempts
        .iter()
        .map(|a| (a.attempt, a.agent.as_str(), a.epoch, a.state))
        .collect();
    assert_eq!(
        attempts,
        [
            (1, "a", 1, JobState::Failed),
            (2, "b", 2, JobState::Succeeded)
        ]
    );
    assert_eq!(job.attempts[0].reason.as_deref(), Some("agent lost"));
    assert_eq!(
        (job.attempts[1].started_at, job.attempts[1].ended_at),
        (Some(1005), Some(1007))
    );
}

#[test]
fn concurrent_submitters_share_commits_and_all_are_durable() {
    let dir = TempDir::new("group");
    let c = Arc::new(open(&dir.db()));
    let threads: Vec<_> = (0..8u32)
        .map(|t| {
            let c = c.clone();
            std::thread::spawn(move || {
                for i in 0..250u32 {
                    let seq = t * 1000 + i;
                    let r = c
                        .apply(Change::Submit {
                            job_id: job_id(3000, seq),
                            spec: Box::new(spec("true")),
                            at: 3000,
                        })
                        .unwrap();
                    assert!(matches!(r, Applied::Submitted { created: true, .. }));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let commits = c.commits();
    eprintln!("2,000 jobs from 8 threads in {commits} commits");
    assert!(
        commits < 2000,
        "8 threads waiting on their commits share them: {commits} commits for 2,000 jobs"
    );
    drop(c);
    let c = open(&dir.db());
    let n = c
        .read(|s| s.jobs(None, 10_000, None))
        .unwrap()
        .unwrap()
        .len();
    assert_eq!(n, 2000);
}

/// Run by the test below in a child process: submit jobs as fast as the store takes them,
/// and print each id once its commit is on disk.
#[test]
fn child_writer() {
    let Some(path) = std::env::var_os("VALKYRIE_JOBS_CHILD_DB") else {
        return;
    };
    let c = open(Path::new(&path));
    let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    for seq in 0u32.. {
        let id = job_id(4000, seq);
        let out = out.clone();
        let printed = id.clone();
        c.change(
            Change::Submit {
                job_id: id,
                spec: Box::new(spec("true")),
                at: 4000,
            },
            move |r| {
                if r.is_ok() {
                    let mut o = out.lock().unwrap();
                    let _ = writeln!(o, "acked {printed}");
                    let _ = o.flush();
                }
            },
        )
        .unwrap();
    }
}

#[test]
fn what_was_acknowledged_survives_kill_9() {
    let dir = TempDir::new("kill");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_writer",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("VALKYRIE_JOBS_CHILD_DB", dir.db())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut acked = Vec::new();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.len() < 3000 && Instant::now() < deadline {
        match lines.next() {
            Some(Ok(l)) => {
                if let Some(id) = l.strip_prefix("acked ") {
                    acked.push(id.to_owned());
                }
            }
            _ => break,
        }
    }
    // Killed mid-stream: commits in flight, replies unsent.
    child.kill().unwrap();
    let _ = child.wait();
    assert!(acked.len() >= 500, "the child acknowledged {}", acked.len());
    let c = open(&dir.db());
    let stored: std::collections::HashSet<String> = c
        .read(|s| s.jobs(None, 1_000_000, None))
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|j| j.job_id)
        .collect();
    let missing: Vec<&String> = acked.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged jobs lost: {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
}

#[test]
fn a_control_plane_started_again_under_another_node_id_still_owns_its_embedded_store() {
    let dir = TempDir::new("renamed");
    let id = job_id(1_000, 1);
    {
        let s = SqliteStore::open(&dir.db())
            .unwrap()
            .with_holder("old-name", Duration::from_secs(60));
        let c = Committer::spawn(s, 16);
        c.apply(Change::Submit {
            job_id: id.clone(),
            spec: Box::new(spec("true")),
            at: 1_000,
        })
        .unwrap();
        c.apply(Change::Assign {
            job_id: id.clone(),
            agent: "a".into(),
            at: 2_000,
        })
        .unwrap();
    }
    let s = SqliteStore::open(&dir.db())
        .unwrap()
        .with_holder("new-name", Duration::from_secs(60));
    let c = Committer::spawn(s, 16);
    // Its agent never came back: the new name ends the old name's attempt.
    let lost = c
        .apply(Change::Lose {
            job_id: id.clone(),
            epoch: 1,
            at: 3_000,
        })
        .unwrap();
    assert_eq!(
        lost,
        Applied::Ended {
            state: JobState::Queued
        }
    );
    assert!(matches!(
        c.apply(Change::Assign {
            job_id: id,
            agent: "b".into(),
            at: 3_001,
        })
        .unwrap(),
        Applied::Assigned { epoch: 2, .. }
    ));
}
