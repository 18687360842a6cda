//! What control planes sharing a PostgreSQL store tell each other, through its
//! `LISTEN/NOTIFY` (channel `valkyrie_jobs`): that jobs were queued (a node claims them at
//! once rather than at its next poll), and that a job's attempt was cancelled, paused,
//! resumed or migrated through one node while another holds it (the holder signals its
//! agent). A notice is sent inside the transaction that made the change, so it arrives only
//! if the change is committed; one lost while a listener reconnects is made up for by the
//! nodes' periodic claims.
//!
//! [`listen`] is a thread with a connection of its own that hands each notice on.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;

use crate::store::{Applied, Change};

/// The channel.
pub const CHANNEL: &str = "valkyrie_jobs";

/// A notice from a control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Jobs were queued: claim.
    Queued,
    /// A job's attempt on an agent was cancelled, paused, resumed or migrated through
    /// `from`: its holder tells the agent.
    Op {
        /// `cancel`, `pause`, `resume` or `migrate`.
        op: String,
        /// The job.
        job_id: String,
        /// The attempt's epoch.
        epoch: u64,
        /// The control plane it was asked of.
        from: String,
    },
}

impl Notice {
    /// Its payload (`queued`, or `op OP JOB EPOCH FROM`).
    pub fn payload(&self) -> String {
        match self {
            Notice::Queued => "queued".into(),
            Notice::Op {
                op,
                job_id,
                epoch,
                from,
            } => format!("op {op} {job_id} {epoch} {from}"),
        }
    }

    /// Read a payload; none when it is not one (another program's on the channel).
    pub fn parse(payload: &str) -> Option<Notice> {
        let mut w = payload.split(' ');
        match w.next()? {
            "queued" => Some(Notice::Queued),
            "op" => {
                let op = w.next()?;
                if !matches!(op, "cancel" | "pause" | "resume" | "migrate") {
                    return None;
                }
                let job_id = w.next()?.to_owned();
                let epoch = w.next()?.parse().ok()?;
                let from = w.next()?.to_owned();
                Some(Notice::Op {
                    op: op.to_owned(),
                    job_id,
                    epoch,
                    from,
                })
            }
            _ => None,
        }
    }
}

/// The notices a committed batch sends (`node` made it): one `queued` for all the jobs it
/// queued, one `op` for each attempt it signalled.
pub(crate) fn of_batch(node: &str, changes: &[Change], applied: &[Applied]) -> Vec<Notice> {
    let mut out = Vec::new();
    let mut queued = false;
    for (c, a) in changes.iter().zip(applied) {
        match a {
            Applied::Submitted { created: true, .. } => queued = true,
            Applied::Ended { state } if *state == crate::JobState::Queued => queued = true,
            Applied::Reaped { jobs } if !jobs.is_empty() => queued = true,
            Applied::Moved {
                state,
                running: None,
                ..
            } if *state == crate::JobState::Queued => queued = true,
            Applied::Moved {
                running: Some(epoch),
                ..
            } => {
                let (op, job_id) = match c {
                    Change::Cancel { job_id, .. } => ("cancel", job_id),
                    Change::Pause { job_id, .. } => ("pause", job_id),
                    Change::Resume { job_id, .. } => ("resume", job_id),
                    Change::Migrate { job_id, .. } => ("migrate", job_id),
                    _ => continue,
                };
                out.push(Notice::Op {
                    op: op.into(),
                    job_id: job_id.clone(),
                    epoch: *epoch,
                    from: node.to_owned(),
                });
            }
            _ => {}
        }
    }
    if queued {
        out.insert(0, Notice::Queued);
    }
    out
}

/// The thread that listens for notices ([`listen`]); dropping it stops the thread.
#[derive(Debug)]
pub struct Listener {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Listen on the database at `url` and hand every notice to `on`, on a thread of its own.
/// The connection is made again when it breaks (every second until it is back); each time
/// it is (and at first), `on` is given [`Notice::Queued`], since notices sent meanwhile
/// were missed.
pub fn listen(url: &str, on: impl Fn(Notice) + Send + 'static) -> Result<Listener, String> {
    let config: postgres::Config = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let thread = std::thread::Builder::new()
        .name("valkyrie-listen".into())
        .spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match crate::pg_client::connect(&config) {
                    Ok(mut client) => {
                        if let Err(e) = client.batch_execute(&format!("LISTEN {CHANNEL}")) {
                            tracing::warn!(error = %e, "LISTEN failed");
                        } else {
                            on(Notice::Queued);
                            pass_on(&mut client, &stopped, &on);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "the notices' connection failed"),
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(Listener {
        stop,
        thread: Some(thread),
    })
}

/// Hand on notices until the connection breaks or the listener stops.
fn pass_on(client: &mut postgres::Client, stop: &AtomicBool, on: &impl Fn(Notice)) {
    while !stop.load(Ordering::Relaxed) {
        let mut n = client.notifications();
        let mut it = n.timeout_iter(Duration::from_secs(1));
        loop {
            match it.next() {
                Ok(Some(note)) => {
                    if let Some(notice) = Notice::parse(note.payload()) {
                        on(notice);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "the notices' connection broke");
                    return;
                }
            }
        }
        drop(it);
        drop(n);
        // A connection that died quietly shows when it is used.
        if client.is_valid(Duration::from_secs(2)).is_err() {
            tracing::warn!("the notices' connection is gone");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Notice;

    #[test]
    fn payloads_read_back() {
        for n in [
            Notice::Queued,
            Notice::Op {
                op: "cancel".into(),
                job_id: "j1".into(),
                epoch: 3,
                from: "cp-a".into(),
            },
        ] {
            assert_eq!(Notice::parse(&n.payload()), Some(n));
        }
        assert_eq!(Notice::parse("op drop j1 3 a"), None);
        assert_eq!(Notice::parse("op cancel j1 x a"), None);
        assert_eq!(Notice::parse(""), None);
    }
}
