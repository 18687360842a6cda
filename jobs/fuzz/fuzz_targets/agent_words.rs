//! What a control plane takes from agents and clients, on arbitrary bytes: a job's output
//! batch (LOG_ENTRY) decoded and applied to a store (the numbers it claims never make the
//! store allocate or leave a gap), an agent's STATUS_UPDATE, an upload's transfer id and
//! name, a job spec from a REST body, and on the agent's side a JOB_REQUEST's spec. Nothing
//! panics; every refusal is a typed error.
#![no_main]

use std::sync::OnceLock;
use std::sync::Mutex;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use valkyrie_jobs::{Applied, Change, JobSpec, SecretsKey, SqliteStore, Store, job_id, wire};
use valkyrie_protocol::message::{FileTransferStart, JobRequest, LogEntry, Payload, StatusUpdate};

/// One store for the run, with one job on its first attempt.
fn store() -> &'static Mutex<SqliteStore> {
    static S: OnceLock<Mutex<SqliteStore>> = OnceLock::new();
    S.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("valkyrie-fuzz-jobs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = SqliteStore::open(&dir.join("jobs.db")).unwrap().with_log_cap(1 << 20);
        let spec = JobSpec {
            command: vec!["true".into()],
            max_attempts: 1,
            ..JobSpec::default()
        };
        s.commit(&[
            Change::Submit { job_id: job_id(0, 0), spec: Box::new(spec), at: 0 },
            Change::Assign { job_id: job_id(0, 0), agent: "a".into(), at: 0 },
        ])
        .unwrap();
        Mutex::new(s)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let bytes = Bytes::copy_from_slice(rest);
    match which % 5 {
        0 => {
            let Ok(entry) = LogEntry::from_bytes(&bytes) else {
                return;
            };
            let Ok(b) = wire::parse_log_batch(entry) else {
                return;
            };
            assert!(b.lines.len() <= wire::MAX_BATCH_LINES);
            let mut s = store().lock().unwrap();
            let before = s.logs(&job_id(0, 0), 1, usize::MAX).unwrap().next;
            let change = Change::Log {
                job_id: job_id(0, 0),
                epoch: b.epoch,
                first_seq: b.seq,
                lines: b.lines,
            };
            match s.commit(&[change]).unwrap().as_slice() {
                [Applied::Logged { acked }] => assert!(*acked + 1 >= before, "acked went back"),
                [Applied::Stale { .. }] => assert_ne!(b.epoch, 1),
                other => panic!("{other:?}"),
            }
            // Stored lines stay numbered one after another.
            let page = s.logs(&job_id(0, 0), 1, usize::MAX).unwrap();
            for (i, l) in page.ndjson.lines().enumerate() {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                assert_eq!(v["seq"].as_u64(), Some(i as u64 + 1));
            }
        }
        1 => {
            if let Ok(st) = StatusUpdate::from_bytes(&bytes) {
                let info = wire::agent_info(&st);
                assert_eq!(info.labels.len(), st.labels.len());
            }
        }
        2 => {
            if let Ok(start) = FileTransferStart::from_bytes(&bytes)
                && let Some((_, _, name)) = wire::parse_transfer(&start.transfer_id)
                && wire::valid_name(&name)
            {
                assert!(!name.contains('/') && name != ".." && name != ".");
            }
        }
        3 => {
            if let Ok(spec) = serde_json::from_slice::<JobSpec>(rest) {
                let _ = spec.validate();
                let key = SecretsKey::from_bytes(&[1; 32]);
                if let Ok(sealed) = spec.clone().sealed(&key) {
                    assert_eq!(sealed.opened(&key).unwrap(), spec);
                }
                assert!(spec.redacted().secrets.values().all(|v| v == "***"));
            }
        }
        _ => {
            if let Ok(req) = JobRequest::from_bytes(&bytes) {
                let _ = serde_json::from_value::<JobSpec>(req.spec);
            }
        }
    }
});
