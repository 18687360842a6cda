//! A handle another thread keeps to call a shard's [`Service::on_nudge`](crate::Service::on_nudge):
//! how work done off the shard — a store's commit, a blocking lookup — hands its result back
//! through a queue of the service's own, without a lock on the shard's path.

use std::sync::Arc;

use crate::mesh::Waker;

/// Calls one shard's `on_nudge` soon, waking the shard if it sleeps (an atomic flag, and a
/// wake-up only when it sleeps). Cheap to clone and to send to any thread.
#[derive(Clone)]
pub struct Nudger {
    wakers: Arc<Vec<Waker>>,
    shard: usize,
}

impl std::fmt::Debug for Nudger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nudger")
            .field("shard", &self.shard)
            .finish()
    }
}

impl Nudger {
    pub(crate) fn new(wakers: Arc<Vec<Waker>>, shard: usize) -> Nudger {
        Nudger { wakers, shard }
    }

    /// The shard it nudges.
    pub fn shard(&self) -> usize {
        self.shard
    }

    /// Have the shard's service look at its queues (`on_nudge`) soon. Nudges raised while one
    /// waits are one.
    pub fn nudge(&self) {
        if let Some(w) = self.wakers.get(self.shard) {
            w.nudge();
        }
    }
}
