//! The store's rules, as every store must keep them: retries counted against `max_attempts`
//! (a rejected attempt is not a failure), the queue by priority then age and lists paged by id,
//! cancels, pauses and migrations of queued and running jobs, a job's output numbered without
//! gap or duplicate, capped, pruned, and read back from any line. Each takes a committer on a fresh store (`store_rules.rs` runs them on SQLite,
//! `store_postgres.rs` on PostgreSQL).
#![allow(dead_code)]

use valkyrie_jobs::{Applied, Change, Committer, JobSpec, JobState, LogLine, job_id};

pub fn submit(c: &Committer, seq: u32, max_attempts: u32) -> String {
    let spec = JobSpec {
        command: vec!["true".into()],
        max_attempts,
        ..JobSpec::default()
    };
    let id = job_id(5000, seq);
    c.apply(Change::Submit {
        job_id: id.clone(),
        spec: Box::new(spec),
        at: 5000,
    })
    .unwrap();
    id
}

pub fn assign(c: &Committer, id: &str) -> u64 {
    match c
        .apply(Change::Assign {
            job_id: id.into(),
            agent: "a".into(),
            at: 1,
        })
        .unwrap()
    {
        Applied::Assigned { epoch, .. } => epoch,
        other => panic!("{other:?}"),
    }
}

pub fn fail(c: &Committer, id: &str, epoch: u64) -> Applied {
    c.apply(Change::End {
        job_id: id.into(),
        epoch,
        state: JobState::Queued,
        exit_code: Some(1),
        signal: None,
        reason: Some("exit 1".into()),
        at: 2,
    })
    .unwrap()
}

pub fn ended(state: JobState) -> Applied {
    Applied::Ended { state }
}

pub fn moved(state: JobState, running: Option<u64>) -> Applied {
    Applied::Moved { state, running }
}

pub fn failures_are_retried_up_to_max_attempts_and_rejections_do_not_count(c: &Committer) {
    let id = submit(c, 1, 2);
    let e = assign(c, &id);
    let rejected = c
        .apply(Change::Requeue {
            job_id: id.clone(),
            epoch: e,
            reason: "rejected: no slot".into(),
            at: 1,
        })
        .unwrap();
    assert_eq!(rejected, ended(JobState::Queued));
    let e = assign(c, &id);
    assert_eq!(
        fail(c, &id, e),
        ended(JobState::Queued),
        "one failure of two allowed"
    );
    let e = assign(c, &id);
    assert_eq!(
        fail(c, &id, e),
        ended(JobState::Failed),
        "the second is final"
    );
    let i = id.clone();
    let job = c.read(move |s| s.job(&i)).unwrap().unwrap().unwrap();
    assert_eq!(
        job.attempts.len(),
        3,
        "every attempt recorded, the rejected one too"
    );
    assert_eq!(job.attempts[0].reason.as_deref(), Some("rejected: no slot"));
    assert_eq!(
        job.attempts[0].started_at, None,
        "a rejected attempt never ran"
    );
    // An attempt that reports an exit without a JOB_START before it (a no-op job) ran.
    assert_eq!(job.attempts[1].started_at, job.attempts[1].ended_at);
}

pub fn cancel_and_pause_apply_now_to_queued_jobs_and_wait_for_running_ones(c: &Committer) {
    let q = submit(c, 1, 3);
    let at = 3;
    assert_eq!(
        c.apply(Change::Pause {
            job_id: q.clone(),
            at
        })
        .unwrap(),
        moved(JobState::Paused, None)
    );
    assert_eq!(
        c.apply(Change::Assign {
            job_id: q.clone(),
            agent: "a".into(),
            at
        })
        .unwrap(),
        Applied::Refused {
            state: JobState::Paused
        },
        "a paused job is not dispatched"
    );
    assert_eq!(
        c.apply(Change::Resume {
            job_id: q.clone(),
            at
        })
        .unwrap(),
        moved(JobState::Queued, None)
    );
    assert_eq!(
        c.apply(Change::Cancel {
            job_id: q.clone(),
            at
        })
        .unwrap(),
        moved(JobState::Cancelled, None)
    );

    let r = submit(c, 2, 3);
    let e = assign(c, &r);
    c.apply(Change::Start {
        job_id: r.clone(),
        epoch: e,
        at,
    })
    .unwrap();
    assert_eq!(
        c.apply(Change::Pause {
            job_id: r.clone(),
            at
        })
        .unwrap(),
        moved(JobState::Paused, Some(e))
    );
    assert_eq!(
        c.apply(Change::Resume {
            job_id: r.clone(),
            at
        })
        .unwrap(),
        moved(JobState::Running, Some(e))
    );
    assert_eq!(
        c.apply(Change::Cancel {
            job_id: r.clone(),
            at
        })
        .unwrap(),
        moved(JobState::Running, Some(e)),
        "a running job is cancelled by its agent"
    );
    // However the attempt ends, the job ends cancelled and is not retried.
    assert_eq!(fail(c, &r, e), ended(JobState::Cancelled));
    assert_eq!(
        c.apply(Change::Cancel {
            job_id: r.clone(),
            at
        })
        .unwrap(),
        Applied::Refused {
            state: JobState::Cancelled
        }
    );
}

pub fn lines(from: u64, n: u64) -> Vec<LogLine> {
    (from..from + n)
        .map(|i| LogLine {
            stream: if i % 2 == 0 { "stdout" } else { "stderr" }.into(),
            line: format!("line {i} \"quoted\""),
        })
        .collect()
}

pub fn output_has_no_gap_and_no_duplicate_and_reads_back_from_any_line(c: &Committer) {
    let id = submit(c, 1, 1);
    let e = assign(c, &id);
    let log = |first: u64, n: u64, epoch: u64| Change::Log {
        job_id: id.clone(),
        epoch,
        first_seq: first,
        lines: lines(first, n),
    };
    assert_eq!(
        c.apply(log(1, 10, e)).unwrap(),
        Applied::Logged { acked: 10 }
    );
    // Sent again after a reconnect, overlapping: only the new lines are kept.
    assert_eq!(
        c.apply(log(6, 10, e)).unwrap(),
        Applied::Logged { acked: 15 }
    );
    // A gap is refused with the number to go back to.
    assert_eq!(
        c.apply(log(20, 5, e)).unwrap(),
        Applied::Logged { acked: 15 }
    );
    assert_eq!(
        c.apply(log(16, 1, e + 1)).unwrap(),
        Applied::Stale { current: e }
    );
    let i = id.clone();
    let page = c.read(move |s| s.logs(&i, 1, 1 << 20)).unwrap().unwrap();
    let got: Vec<serde_json::Value> = page
        .ndjson
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got.len(), 15);
    for (n, v) in got.iter().enumerate() {
        let seq = n as u64 + 1;
        assert_eq!(v["seq"], seq);
        assert_eq!(v["line"], format!("line {seq} \"quoted\""));
    }
    assert_eq!(page.next, 16);
    let i = id.clone();
    let tail = c.read(move |s| s.logs(&i, 13, 1 << 20)).unwrap().unwrap();
    assert_eq!(
        tail.ndjson.lines().count(),
        3,
        "from line 13: {}",
        tail.ndjson
    );
    // Past the cap, lines are acknowledged and counted but not kept; one line says so.
    assert_eq!(
        c.apply(log(16, 200, e)).unwrap(),
        Applied::Logged { acked: 215 }
    );
    let i = id.clone();
    let all = c.read(move |s| s.logs(&i, 1, 1 << 20)).unwrap().unwrap();
    let last = all.ndjson.lines().last().unwrap();
    assert!(
        last.contains("\"stream\":\"valkyrie\"") && last.contains("not kept"),
        "{last}"
    );
    let kept: usize = all
        .ndjson
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["stream"] != "valkyrie")
        .map(|v| v["line"].as_str().unwrap().len())
        .sum();
    assert!(kept <= 2_000, "{kept} bytes of output kept");
    assert_eq!(
        c.apply(log(216, 1, e)).unwrap(),
        Applied::Logged { acked: 216 }
    );
}

pub fn a_migrated_attempt_is_queued_again_without_a_failure_unless_it_succeeded(c: &Committer) {
    let id = submit(c, 1, 1);
    let at = 4;
    assert_eq!(
        c.apply(Change::Migrate {
            job_id: id.clone(),
            at
        })
        .unwrap(),
        moved(JobState::Queued, None),
        "a queued job: nothing to stop"
    );
    let e = assign(c, &id);
    c.apply(Change::Start {
        job_id: id.clone(),
        epoch: e,
        at,
    })
    .unwrap();
    assert_eq!(
        c.apply(Change::Migrate {
            job_id: id.clone(),
            at
        })
        .unwrap(),
        moved(JobState::Running, Some(e))
    );
    let stopped = Change::End {
        job_id: id.clone(),
        epoch: e,
        state: JobState::Cancelled,
        exit_code: None,
        signal: Some(15),
        reason: Some("cancelled".into()),
        at,
    };
    assert_eq!(
        c.apply(stopped).unwrap(),
        ended(JobState::Queued),
        "max_attempts 1, yet queued"
    );
    let e2 = assign(c, &id);
    c.apply(Change::Migrate {
        job_id: id.clone(),
        at,
    })
    .unwrap();
    let done = Change::End {
        job_id: id.clone(),
        epoch: e2,
        state: JobState::Succeeded,
        exit_code: Some(0),
        signal: None,
        reason: None,
        at,
    };
    assert_eq!(
        c.apply(done).unwrap(),
        ended(JobState::Succeeded),
        "it finished first"
    );
    let i = id.clone();
    let job = c.read(move |s| s.job(&i)).unwrap().unwrap().unwrap();
    assert_eq!(job.attempts[0].state, JobState::Cancelled);
    assert_eq!(job.attempts[0].reason.as_deref(), Some("migrated"));
}

pub fn output_of_jobs_ended_before_the_retention_is_pruned_and_the_rest_kept(c: &Committer) {
    let log = |id: &str, e: u64| Change::Log {
        job_id: id.into(),
        epoch: e,
        first_seq: 1,
        lines: lines(1, 3),
    };
    let old = submit(c, 1, 1);
    let e = assign(c, &old);
    c.apply(log(&old, e)).unwrap();
    c.apply(Change::End {
        job_id: old.clone(),
        epoch: e,
        state: JobState::Succeeded,
        exit_code: Some(0),
        signal: None,
        reason: None,
        at: 1_000,
    })
    .unwrap();
    let running = submit(c, 2, 1);
    let e2 = assign(c, &running);
    c.apply(log(&running, e2)).unwrap();
    assert_eq!(
        c.apply(Change::Prune { before: 2_000 }).unwrap(),
        Applied::Pruned { chunks: 1 }
    );
    let count = |id: String| {
        c.read(move |s| s.logs(&id, 1, 1 << 20))
            .unwrap()
            .unwrap()
            .ndjson
            .lines()
            .count()
    };
    assert_eq!(count(old.clone()), 0, "the ended job's output is gone");
    assert_eq!(count(running), 3, "a running job's stays");
    let i = old.clone();
    assert!(
        c.read(move |s| s.job(&i)).unwrap().unwrap().is_some(),
        "the job stays"
    );
}

pub fn the_queue_is_by_priority_then_age_and_lists_page_by_id(c: &Committer) {
    for (i, prio) in [(1u32, 10u8), (2, 200), (3, 10), (4, 200), (5, 128)] {
        let spec = JobSpec {
            priority: prio,
            command: vec!["true".into()],
            max_attempts: 3,
            ..JobSpec::default()
        };
        c.apply(Change::Submit {
            job_id: job_id(2000 + u64::from(i), i),
            spec: Box::new(spec),
            at: 2000 + u64::from(i),
        })
        .unwrap();
    }
    let order: Vec<String> = c
        .read(|s| s.queued(10))
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|j| j.job_id)
        .collect();
    let ids: Vec<String> = [2u32, 4, 5, 1, 3]
        .iter()
        .map(|&i| job_id(2000 + u64::from(i), i))
        .collect();
    assert_eq!(order, ids);
    // Pages of two, by id.
    let first = c.read(|s| s.jobs(None, 2, None)).unwrap().unwrap();
    let after = first.last().unwrap().job_id.clone();
    let second = c
        .read(move |s| s.jobs(Some(JobState::Queued), 2, Some(&after)))
        .unwrap()
        .unwrap();
    assert_eq!(first.len() + second.len(), 4);
    assert!(first[1].job_id < second[0].job_id);
}

/// A rule: it panics when the store breaks it.
pub type Rule = fn(&Committer);

/// Every rule, by name.
pub const ALL: &[(&str, Rule)] = &[
    (
        "the_queue_is_by_priority_then_age_and_lists_page_by_id",
        the_queue_is_by_priority_then_age_and_lists_page_by_id,
    ),
    (
        "failures_are_retried_up_to_max_attempts_and_rejections_do_not_count",
        failures_are_retried_up_to_max_attempts_and_rejections_do_not_count,
    ),
    (
        "cancel_and_pause_apply_now_to_queued_jobs_and_wait_for_running_ones",
        cancel_and_pause_apply_now_to_queued_jobs_and_wait_for_running_ones,
    ),
    (
        "output_has_no_gap_and_no_duplicate_and_reads_back_from_any_line",
        output_has_no_gap_and_no_duplicate_and_reads_back_from_any_line,
    ),
    (
        "a_migrated_attempt_is_queued_again_without_a_failure_unless_it_succeeded",
        a_migrated_attempt_is_queued_again_without_a_failure_unless_it_succeeded,
    ),
    (
        "output_of_jobs_ended_before_the_retention_is_pruned_and_the_rest_kept",
        output_of_jobs_ended_before_the_retention_is_pruned_and_the_rest_kept,
    ),
];
