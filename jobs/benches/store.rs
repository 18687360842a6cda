//! The durable store's floor: job submissions committed in batches of 1, 64 and 1,024 rows
//! (one transaction and one fsync a batch, WAL, `synchronous=FULL`), no network and no
//! scheduler — what the control plane can never beat (#18's `jobs` scenario sets its rates
//! beside this). `cargo bench -p valkyrie-jobs --bench store`
#![allow(missing_docs)]

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use valkyrie_jobs::{Change, JobSpec, SqliteStore, Store, job_id};

fn floor(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("valkyrie-jobs-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut store = SqliteStore::open(&dir.join("jobs.db")).unwrap();
    let spec = Box::new(JobSpec {
        builtin: Some("noop".into()),
        ..JobSpec::default()
    });
    let mut seq = 0u32;
    let mut g = c.benchmark_group("store_submit");
    g.measurement_time(Duration::from_secs(5));
    for batch in [1usize, 64, 1024] {
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_function(format!("batch_{batch}"), |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let changes: Vec<Change> = (0..batch)
                        .map(|_| {
                            seq += 1;
                            Change::Submit {
                                job_id: job_id(1, seq),
                                spec: spec.clone(),
                                at: 1,
                            }
                        })
                        .collect();
                    let t = Instant::now();
                    store.commit(&changes).unwrap();
                    spent += t.elapsed();
                }
                spent
            })
        });
    }
    g.finish();
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, floor);
criterion_main!(benches);
