//! Group commit: one thread owns the store; changes sent to it from anywhere (shards, the
//! REST side) wait in a bounded queue, and each turn takes everything waiting (up to
//! [`MAX_BATCH`]) into one transaction — one fsync acknowledges them all. A change's reply
//! is called only after its transaction is on disk, so nobody is told of a state change that
//! a crash could undo. Reads go through the same thread, in order with the changes before
//! them.
//!
//! A store a server keeps (PostgreSQL) may be given several connections
//! ([`Committer::spawn_pool`]): a thread each, a job's changes always on the same one (so
//! they stay in order), the others' transactions committing meanwhile.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::store::{Applied, Change, Store, StoreError};

/// Changes one transaction takes at most.
pub const MAX_BATCH: usize = 4096;

/// Called with a change's result once it is durable (or with the error that undid it).
pub type Reply = Box<dyn FnOnce(Result<Applied, StoreError>) + Send>;

type Read = Box<dyn FnOnce(&mut dyn Store) + Send>;

enum Request {
    Change(Change, Reply),
    Read(Read),
}

/// The store's thread (or threads), and the queue to each.
pub struct Committer {
    lanes: Vec<Sender<Request>>,
    threads: Vec<JoinHandle<()>>,
    commits: Arc<AtomicU64>,
    shared: bool,
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committer")
            .field("commits", &self.commits())
            .finish()
    }
}

impl Committer {
    /// Start the thread that owns `store`, with room for `capacity` requests waiting.
    pub fn spawn<S: Store>(store: S, capacity: usize) -> Committer {
        Committer::spawn_pool(vec![store], capacity)
    }

    /// Start a thread for each of `stores` (connections to one database), each with room for
    /// `capacity` requests waiting: a change goes to the thread its job's id picks (a job's
    /// changes stay in order), changes of no job and every read to the first (reads run one
    /// after another, each after what was queued on that thread before it).
    ///
    /// # Panics
    /// With no store.
    pub fn spawn_pool<S: Store>(stores: Vec<S>, capacity: usize) -> Committer {
        assert!(!stores.is_empty(), "a committer needs a store");
        let shared = stores[0].shared();
        let commits = Arc::new(AtomicU64::new(0));
        let mut lanes = Vec::with_capacity(stores.len());
        let mut threads = Vec::with_capacity(stores.len());
        for (i, store) in stores.into_iter().enumerate() {
            let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
            let counted = commits.clone();
            let thread = std::thread::Builder::new()
                .name(format!("valkyrie-store-{i}"))
                .spawn(move || run(store, rx, counted))
                .expect("the store's thread starts");
            lanes.push(tx);
            threads.push(thread);
        }
        Committer {
            lanes,
            threads,
            commits,
            shared,
        }
    }

    /// Whether its store is shared with other control planes ([`Store::shared`]).
    pub fn shared(&self) -> bool {
        self.shared
    }

    /// The queue `change` goes to: its job's, by a hash of the id.
    fn lane_of(&self, change: &Change) -> Result<&Sender<Request>, StoreError> {
        let n = self.lanes.len();
        let i = match job_of(change) {
            Some(id) if n > 1 => {
                let h = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                    (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
                });
                (h % n as u64) as usize
            }
            _ => 0,
        };
        self.lanes.get(i).ok_or(StoreError::Stopped)
    }

    /// The queue reads go to: the first, so that they run one after another (an upload's
    /// file steps rely on it), each after the changes of no job queued before it.
    fn read_lane(&self) -> Result<&Sender<Request>, StoreError> {
        self.lanes.first().ok_or(StoreError::Stopped)
    }

    /// Queue `change`; `reply` is called on the store's thread once it is durable. Blocks
    /// while the queue is full (back-pressure on whoever submits).
    pub fn change(
        &self,
        change: Change,
        reply: impl FnOnce(Result<Applied, StoreError>) + Send + 'static,
    ) -> Result<(), StoreError> {
        self.lane_of(&change)?
            .send(Request::Change(change, Box::new(reply)))
            .map_err(|_| StoreError::Stopped)
    }

    /// Queue `change` without waiting: `Err` gives it back when the queue is full (a caller
    /// that must not block — a shard — holds it and tries again).
    pub fn try_change(&self, change: Change, reply: Reply) -> Result<(), (Change, Reply)> {
        let Ok(tx) = self.lane_of(&change) else {
            return Err((change, reply));
        };
        match tx.try_send(Request::Change(change, reply)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(Request::Change(c, r)))
            | Err(TrySendError::Disconnected(Request::Change(c, r))) => Err((c, r)),
            Err(_) => unreachable!("a change was sent"),
        }
    }

    /// Queue `change` and wait until it is durable.
    pub fn apply(&self, change: Change) -> Result<Applied, StoreError> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.change(change, move |r| {
            let _ = tx.send(r);
        })?;
        rx.recv().map_err(|_| StoreError::Stopped)?
    }

    /// Run `f` on the store (after every change queued before it), and wait for its result.
    pub fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn Store) -> T + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.read_lane()?
            .send(Request::Read(Box::new(move |s| {
                let _ = tx.send(f(s));
            })))
            .map_err(|_| StoreError::Stopped)?;
        rx.recv().map_err(|_| StoreError::Stopped)
    }

    /// Run `f` on the store (after every change queued before it) and hand its result to
    /// `reply`, both on the store's thread, without waiting: false when the queue is full (a
    /// caller that must not block — a shard — answers "busy").
    pub fn try_read<T: 'static>(
        &self,
        f: impl FnOnce(&mut dyn Store) -> T + Send + 'static,
        reply: impl FnOnce(T) + Send + 'static,
    ) -> bool {
        let Ok(tx) = self.read_lane() else {
            return false;
        };
        tx.try_send(Request::Read(Box::new(move |s| reply(f(s)))))
            .is_ok()
    }

    /// Transactions committed so far.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        // Closing the queues ends the threads once everything queued is committed.
        self.lanes.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The job a change is about, if one.
fn job_of(change: &Change) -> Option<&str> {
    match change {
        Change::Submit { job_id, .. }
        | Change::Assign { job_id, .. }
        | Change::Start { job_id, .. }
        | Change::End { job_id, .. }
        | Change::Requeue { job_id, .. }
        | Change::Cancel { job_id, .. }
        | Change::Migrate { job_id, .. }
        | Change::Pause { job_id, .. }
        | Change::Resume { job_id, .. }
        | Change::Progress { job_id, .. }
        | Change::Artifact { job_id, .. }
        | Change::Adopt { job_id, .. }
        | Change::Lose { job_id, .. }
        | Change::Log { job_id, .. } => Some(job_id),
        Change::Claim { .. }
        | Change::Renew { .. }
        | Change::Reap { .. }
        | Change::Prune { .. } => None,
    }
}

/// The store's thread: a batch of the changes waiting, one transaction, the replies; reads
/// in their turn.
fn run<S: Store>(mut store: S, rx: Receiver<Request>, commits: Arc<AtomicU64>) {
    let mut changes = Vec::with_capacity(MAX_BATCH);
    let mut replies: Vec<Reply> = Vec::with_capacity(MAX_BATCH);
    let mut next = None;
    loop {
        let first = match next.take() {
            Some(r) => r,
            None => match rx.recv() {
                Ok(r) => r,
                Err(_) => return,
            },
        };
        let mut read = None;
        match first {
            Request::Read(f) => read = Some(f),
            Request::Change(c, r) => {
                changes.push(c);
                replies.push(r);
                while changes.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(Request::Change(c, r)) => {
                            changes.push(c);
                            replies.push(r);
                        }
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
            }
        }
        if !changes.is_empty() {
            let result = store.commit(&changes);
            commits.fetch_add(1, Ordering::Relaxed);
            match result {
                Ok(applied) => {
                    for (reply, a) in replies.drain(..).zip(applied) {
                        reply(Ok(a));
                    }
                }
                Err(e) => {
                    for reply in replies.drain(..) {
                        reply(Err(e.clone()));
                    }
                }
            }
            changes.clear();
        }
        if let Some(f) = read {
            f(&mut store);
        }
    }
}
