//! The store's rules (tests/common/rules.rs) on the PostgreSQL store, against a real
//! PostgreSQL started by the test (each rule in a database of its own); and the schema
//! migrated once when two stores connect to a new database together. Skipped, saying so,
//! where PostgreSQL's server binaries are not installed (`.ci/run` installs them).

use valkyrie_jobs::{Change, Committer, JobSpec, PgStore, Store, job_id};

mod common;

use common::rules;
use valkyrie_jobs::pg_temp::Pg;

#[test]
fn every_rule_holds_on_postgres() {
    let Some(pg) = Pg::start() else {
        eprintln!("SKIPPED: no PostgreSQL server binaries in /usr/lib/postgresql/*/bin");
        return;
    };
    for (i, (name, rule)) in rules::ALL.iter().enumerate() {
        let url = pg.database(&format!("rule_{i}"));
        let store = PgStore::connect(&url).unwrap().with_log_cap(2_000);
        let c = Committer::spawn(store, 64);
        rule(&c);
        drop(c);
        eprintln!("{name}: ok on PostgreSQL");
    }
}

#[test]
fn stores_connecting_together_migrate_once_and_share_what_is_committed() {
    let Some(pg) = Pg::start() else {
        eprintln!("SKIPPED: no PostgreSQL server binaries in /usr/lib/postgresql/*/bin");
        return;
    };
    let url = pg.database("shared");
    let handles: Vec<_> = (0..3)
        .map(|_| {
            let u = url.clone();
            std::thread::spawn(move || PgStore::connect(&u).unwrap())
        })
        .collect();
    let mut stores: Vec<PgStore> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let spec = JobSpec {
        command: vec!["true".into()],
        max_attempts: 1,
        idempotency_key: Some("once".into()),
        ..JobSpec::default()
    };
    let submit = |id: u32| Change::Submit {
        job_id: job_id(1, id),
        spec: Box::new(spec.clone()),
        at: 1,
    };
    stores[0].commit(&[submit(1)]).unwrap();
    // The same key through another store: the first job.
    let again = stores[1].commit(&[submit(2)]).unwrap();
    assert_eq!(
        again[0],
        valkyrie_jobs::Applied::Submitted {
            job_id: job_id(1, 1),
            created: false
        }
    );
    assert!(stores[2].job(&job_id(1, 1)).unwrap().is_some());
}
