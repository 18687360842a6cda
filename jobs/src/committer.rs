//! Group commit: one thread owns the store; changes sent to it from anywhere (shards, the
//! REST side) wait in a bounded queue, and each turn takes everything waiting (up to
//! [`MAX_BATCH`]) into one transaction — one fsync acknowledges them all. A change's reply
//! is called only after its transaction is on disk, so nobody is told of a state change that
//! a crash could undo. Reads go through the same thread, in order with the changes before
//! them.

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

/// The store's thread, and the queue to it.
pub struct Committer {
    tx: Option<Sender<Request>>,
    thread: Option<JoinHandle<()>>,
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
        let shared = store.shared();
        let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
        let commits = Arc::new(AtomicU64::new(0));
        let counted = commits.clone();
        let thread = std::thread::Builder::new()
            .name("valkyrie-store".into())
            .spawn(move || run(store, rx, counted))
            .expect("the store's thread starts");
        Committer {
            tx: Some(tx),
            thread: Some(thread),
            commits,
            shared,
        }
    }

    /// Whether its store is shared with other control planes ([`Store::shared`]).
    pub fn shared(&self) -> bool {
        self.shared
    }

    fn sender(&self) -> Result<&Sender<Request>, StoreError> {
        self.tx.as_ref().ok_or(StoreError::Stopped)
    }

    /// Queue `change`; `reply` is called on the store's thread once it is durable. Blocks
    /// while the queue is full (back-pressure on whoever submits).
    pub fn change(
        &self,
        change: Change,
        reply: impl FnOnce(Result<Applied, StoreError>) + Send + 'static,
    ) -> Result<(), StoreError> {
        self.sender()?
            .send(Request::Change(change, Box::new(reply)))
            .map_err(|_| StoreError::Stopped)
    }

    /// Queue `change` without waiting: `Err` gives it back when the queue is full (a caller
    /// that must not block — a shard — holds it and tries again).
    pub fn try_change(&self, change: Change, reply: Reply) -> Result<(), (Change, Reply)> {
        let Ok(tx) = self.sender() else {
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
        self.sender()?
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
        let Ok(tx) = self.sender() else {
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
        // Closing the queue ends the thread once everything queued is committed.
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
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
