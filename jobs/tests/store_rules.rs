//! The store's rules (tests/common/rules.rs) on the embedded SQLite store.

use std::path::PathBuf;

use valkyrie_jobs::{Committer, SqliteStore};

mod common;

use common::rules;

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A committer on a fresh SQLite store (output capped at 2,000 bytes a job).
fn sqlite(name: &str) -> (TempDir, Committer) {
    let d = std::env::temp_dir().join(format!("valkyrie-rules-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let store = SqliteStore::open(&d.join("jobs.db"))
        .unwrap()
        .with_log_cap(2_000);
    (TempDir(d), Committer::spawn(store, 64))
}

macro_rules! on_sqlite {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let (_dir, c) = sqlite(stringify!($name));
                rules::$name(&c);
            }
        )*
    };
}

on_sqlite!(
    the_queue_is_by_priority_then_age_and_lists_page_by_id,
    failures_are_retried_up_to_max_attempts_and_rejections_do_not_count,
    cancel_and_pause_apply_now_to_queued_jobs_and_wait_for_running_ones,
    output_has_no_gap_and_no_duplicate_and_reads_back_from_any_line,
    a_migrated_attempt_is_queued_again_without_a_failure_unless_it_succeeded,
    output_of_jobs_ended_before_the_retention_is_pruned_and_the_rest_kept,
);
