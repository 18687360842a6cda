//! Several control planes on one PostgreSQL database, at the store's level: claims that never
//! overlap (also when made at once from threads), a claim that keeps a job from another's
//! assignment, leases that run out and are reaped by another node (whose reports are then
//! fenced by the epoch), renewals that keep them, adoption by the node an agent failed over
//! to (after which the old holder cannot end the attempt), and the notices a commit sends
//! (`LISTEN/NOTIFY`), retried failures waiting out their backoff, and a pool of connections
//! keeping each job's changes in order. Against a real PostgreSQL the test starts; skipped,
//! saying so, where its server binaries are not installed.

use std::collections::HashSet;
use std::time::Duration;

use valkyrie_jobs::notice::{self, Notice};
use valkyrie_jobs::pg_temp::Pg;
use valkyrie_jobs::{Applied, Change, JobSpec, JobState, PgStore, Store, job_id};

fn start() -> Option<Pg> {
    let pg = Pg::start();
    if pg.is_none() {
        eprintln!("SKIPPED: no PostgreSQL server binaries in /usr/lib/postgresql/*/bin");
    }
    pg
}

fn node(url: &str, name: &str, lease_ms: u64) -> PgStore {
    PgStore::connect(url)
        .unwrap()
        .with_holder(name, Duration::from_millis(lease_ms))
}

fn submit(s: &mut PgStore, n: u32) {
    let spec = JobSpec {
        command: vec!["true".into()],
        max_attempts: 3,
        ..JobSpec::default()
    };
    let changes: Vec<Change> = (0..n)
        .map(|i| Change::Submit {
            job_id: job_id(1_000, i),
            spec: Box::new(spec.clone()),
            at: 1_000,
        })
        .collect();
    s.commit(&changes).unwrap();
}

fn one(s: &mut PgStore, c: Change) -> Applied {
    s.commit(&[c]).unwrap().pop().unwrap()
}

fn claimed(a: Applied) -> Vec<String> {
    match a {
        Applied::Claimed { jobs } => jobs.into_iter().map(|j| j.job_id).collect(),
        other => panic!("not a claim: {other:?}"),
    }
}

#[test]
fn claims_do_not_overlap_and_keep_jobs_from_other_nodes() {
    let Some(pg) = start() else { return };
    let url = pg.database("claims");
    let (mut a, mut b) = (node(&url, "a", 10_000), node(&url, "b", 10_000));
    submit(&mut a, 10);
    let mine = claimed(one(
        &mut a,
        Change::Claim {
            limit: 4,
            at: 2_000,
        },
    ));
    assert_eq!(mine.len(), 4);
    assert_eq!(mine[0], job_id(1_000, 0), "oldest first");
    let theirs = claimed(one(
        &mut b,
        Change::Claim {
            limit: 100,
            at: 2_000,
        },
    ));
    assert_eq!(theirs.len(), 6, "the rest");
    assert!(mine.iter().all(|j| !theirs.contains(j)));
    // b may not assign what a claimed while a's claim holds ...
    let assign = |job: &str, agent: &str, at| Change::Assign {
        job_id: job.into(),
        agent: agent.into(),
        at,
    };
    assert_eq!(
        one(&mut b, assign(&mine[0], "agent-b", 3_000)),
        Applied::Refused {
            state: JobState::Queued
        }
    );
    // ... a may, and b may take a's other claims once they ran out.
    assert!(matches!(
        one(&mut a, assign(&mine[0], "agent-a", 3_000)),
        Applied::Assigned { epoch: 1, .. }
    ));
    let later = claimed(one(
        &mut b,
        Change::Claim {
            limit: 100,
            at: 20_000,
        },
    ));
    assert_eq!(
        later.len(),
        9,
        "every claim ran out (not the assignment): {later:?}"
    );
    assert!(!later.contains(&mine[0]));
}

#[test]
fn claims_made_at_once_from_threads_take_every_job_once() {
    let Some(pg) = start() else { return };
    let url = pg.database("racing");
    let mut first = node(&url, "n0", 60_000);
    submit(&mut first, 400);
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || {
                let mut s = node(&url, &format!("n{i}"), 60_000);
                let mut got = Vec::new();
                loop {
                    let ids = claimed(one(
                        &mut s,
                        Change::Claim {
                            limit: 7,
                            at: 2_000,
                        },
                    ));
                    if ids.is_empty() {
                        return got;
                    }
                    got.extend(ids);
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.join().unwrap());
    }
    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!(all.len(), 400, "every job claimed");
    assert_eq!(unique.len(), 400, "none twice");
}

#[test]
fn a_quiet_holders_jobs_are_reaped_and_its_reports_fenced() {
    let Some(pg) = start() else { return };
    let url = pg.database("reap");
    let (mut a, mut b) = (node(&url, "a", 1_000), node(&url, "b", 1_000));
    submit(&mut a, 2);
    let (started, waiting) = (job_id(1_000, 0), job_id(1_000, 1));
    for j in [&started, &waiting] {
        one(
            &mut a,
            Change::Assign {
                job_id: j.clone(),
                agent: "agent-a".into(),
                at: 10_000,
            },
        );
    }
    one(
        &mut a,
        Change::Start {
            job_id: started.clone(),
            epoch: 1,
            at: 10_100,
        },
    );
    // Renewed at 10,500: held until 11,500; nothing to reap before.
    assert_eq!(
        one(&mut a, Change::Renew { at: 10_500 }),
        Applied::Renewed { jobs: 2 }
    );
    assert_eq!(
        one(
            &mut b,
            Change::Reap {
                limit: 10,
                at: 11_400
            }
        ),
        Applied::Reaped { jobs: vec![] }
    );
    let Applied::Reaped { mut jobs } = one(
        &mut b,
        Change::Reap {
            limit: 10,
            at: 11_600,
        },
    ) else {
        panic!("a reap")
    };
    jobs.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        jobs,
        vec![
            (started.clone(), JobState::Queued),
            (waiting.clone(), JobState::Queued)
        ]
    );
    let job = b.job(&started).unwrap().unwrap();
    let last = job.attempts.last().unwrap();
    assert!(
        last.reason.as_deref().unwrap().contains("control plane a"),
        "{last:?}"
    );
    assert_eq!(last.state, JobState::Failed, "it had started: a failure");
    let not_started = b.job(&waiting).unwrap().unwrap();
    assert!(
        not_started.attempts[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("before it started")
    );
    // a comes back: its agent's result for the reaped attempt is refused ...
    let end = Change::End {
        job_id: started.clone(),
        epoch: 1,
        state: JobState::Succeeded,
        exit_code: Some(0),
        signal: None,
        reason: None,
        at: 12_000,
    };
    assert!(matches!(one(&mut a, end), Applied::Refused { .. }));
    // ... and b (or anyone) runs it again as a new attempt.
    assert!(
        claimed(one(
            &mut b,
            Change::Claim {
                limit: 10,
                at: 12_000
            }
        ))
        .contains(&started)
    );
    assert!(matches!(
        one(
            &mut b,
            Change::Assign {
                job_id: started.clone(),
                agent: "agent-b".into(),
                at: 12_001
            }
        ),
        Applied::Assigned { epoch: 2, .. }
    ));
}

#[test]
fn an_agent_that_fails_over_has_its_attempt_adopted() {
    let Some(pg) = start() else { return };
    let url = pg.database("adopt");
    let (mut a, mut b) = (node(&url, "a", 5_000), node(&url, "b", 5_000));
    submit(&mut a, 1);
    let j = job_id(1_000, 0);
    one(
        &mut a,
        Change::Assign {
            job_id: j.clone(),
            agent: "agent-1".into(),
            at: 10_000,
        },
    );
    one(
        &mut a,
        Change::Start {
            job_id: j.clone(),
            epoch: 1,
            at: 10_001,
        },
    );
    let adopt = |agent: &str, epoch| Change::Adopt {
        job_id: j.clone(),
        epoch,
        agent: agent.into(),
        at: 10_500,
    };
    assert!(
        matches!(one(&mut b, adopt("agent-2", 1)), Applied::Refused { .. }),
        "another agent cannot take it"
    );
    assert!(matches!(
        one(&mut b, adopt("agent-1", 0)),
        Applied::Stale { current: 1 }
    ));
    let Applied::Adopted { job } = one(&mut b, adopt("agent-1", 1)) else {
        panic!("adopted")
    };
    assert_eq!(job.state, JobState::Running);
    // a then loses the agent: the attempt is b's now, a cannot end it.
    assert!(matches!(
        one(
            &mut a,
            Change::Lose {
                job_id: j.clone(),
                epoch: 1,
                at: 11_000
            }
        ),
        Applied::Refused { .. }
    ));
    // b renews it; nobody reaps it while b does.
    one(&mut b, Change::Renew { at: 14_000 });
    assert_eq!(
        one(
            &mut a,
            Change::Reap {
                limit: 10,
                at: 16_000
            }
        ),
        Applied::Reaped { jobs: vec![] }
    );
    // The agent's result, through b, ends it.
    let end = Change::End {
        job_id: j.clone(),
        epoch: 1,
        state: JobState::Succeeded,
        exit_code: Some(0),
        signal: None,
        reason: None,
        at: 16_001,
    };
    assert_eq!(
        one(&mut b, end),
        Applied::Ended {
            state: JobState::Succeeded
        }
    );
}

#[test]
fn commits_tell_the_other_nodes_what_they_queued_and_signalled() {
    let Some(pg) = start() else { return };
    let url = pg.database("notices");
    let (tx, rx) = crossbeam_channel::unbounded();
    let _listener = notice::listen(&url, move |n| {
        let _ = tx.send(n);
    })
    .unwrap();
    // The first notice says the listener is connected (and may have missed some).
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        Notice::Queued
    );
    let mut a = node(&url, "a", 5_000);
    submit(&mut a, 3);
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(5)).unwrap(),
        Notice::Queued,
        "one notice for the batch"
    );
    let j = job_id(1_000, 0);
    one(
        &mut a,
        Change::Assign {
            job_id: j.clone(),
            agent: "agent-1".into(),
            at: 10_000,
        },
    );
    one(
        &mut a,
        Change::Cancel {
            job_id: j.clone(),
            at: 10_001,
        },
    );
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(5)).unwrap(),
        Notice::Op {
            op: "cancel".into(),
            job_id: j,
            epoch: 1,
            from: "a".into()
        }
    );
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "nothing else"
    );
}

#[test]
fn a_retried_failure_waits_out_its_backoff_on_every_node() {
    let Some(pg) = start() else { return };
    let url = pg.database("backoff");
    let (mut a, mut b) = (node(&url, "a", 1_000), node(&url, "b", 1_000));
    let spec = JobSpec {
        command: vec!["false".into()],
        max_attempts: 3,
        backoff_ms: 500,
        ..JobSpec::default()
    };
    let j = job_id(1_000, 7);
    one(
        &mut a,
        Change::Submit {
            job_id: j.clone(),
            spec: Box::new(spec),
            at: 1_000,
        },
    );
    one(
        &mut a,
        Change::Assign {
            job_id: j.clone(),
            agent: "agent-a".into(),
            at: 2_000,
        },
    );
    let fail = Change::End {
        job_id: j.clone(),
        epoch: 1,
        state: JobState::Queued,
        exit_code: Some(1),
        signal: None,
        reason: None,
        at: 2_100,
    };
    assert_eq!(
        one(&mut a, fail),
        Applied::Ended {
            state: JobState::Queued
        }
    );
    // a's hold ran out at 3,100; the backoff (500 ms after the first failure) at 2,600.
    let early = claimed(one(
        &mut b,
        Change::Claim {
            limit: 9,
            at: 2_500,
        },
    ));
    assert!(early.is_empty(), "claimed during its backoff: {early:?}");
    let late = claimed(one(
        &mut b,
        Change::Claim {
            limit: 9,
            at: 3_200,
        },
    ));
    assert_eq!(late, vec![j]);
}

#[test]
fn a_pool_keeps_each_jobs_changes_in_order() {
    let Some(pg) = start() else { return };
    let url = pg.database("pool");
    let stores = (0..3).map(|_| node(&url, "a", 60_000)).collect();
    let c = valkyrie_jobs::Committer::spawn_pool(stores, 4096);
    let (tx, rx) = std::sync::mpsc::channel();
    let n = 200u32;
    for i in 0..n {
        let id = job_id(1_000, i);
        for change in [
            Change::Submit {
                job_id: id.clone(),
                spec: Box::new(JobSpec {
                    command: vec!["true".into()],
                    ..JobSpec::default()
                }),
                at: 1,
            },
            Change::Assign {
                job_id: id.clone(),
                agent: "a".into(),
                at: 2,
            },
            Change::End {
                job_id: id.clone(),
                epoch: 1,
                state: JobState::Succeeded,
                exit_code: Some(0),
                signal: None,
                reason: None,
                at: 3,
            },
        ] {
            let tx = tx.clone();
            c.change(change, move |r| tx.send(r).unwrap()).unwrap();
        }
    }
    for _ in 0..n * 3 {
        let r = rx.recv().unwrap().unwrap();
        assert!(
            !matches!(r, Applied::NotFound | Applied::Refused { .. }),
            "{r:?}"
        );
    }
    let done = c
        .read(|s| s.jobs(Some(JobState::Succeeded), 1000, None))
        .unwrap()
        .unwrap();
    assert_eq!(done.len(), n as usize);
}
