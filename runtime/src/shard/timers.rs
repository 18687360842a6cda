//! The shard's timers: one heap of (deadline, slot, generation), at most about one live entry
//! per connection (an entry that no longer matches its connection's `timer` is stale and
//! dropped when it comes up). A due entry runs the connection's protocol timers, or closes it
//! as a slow consumer when its output has waited on a peer that took nothing for the
//! slow-consumer timeout.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use valkyrie_protocol::{CloseReason, ErrorCode, Tick};

use super::Shard;
use crate::ConnRef;
use crate::metrics::ShardMetrics;

/// A reference to connection `slot` of shard `shard`.
fn conn_ref(shard: usize, slot: u32, generation: u32) -> ConnRef {
    ConnRef {
        shard: shard as u16,
        slot,
        generation,
    }
}

/// The heap and the instant its ticks count from.
pub(super) struct Timers {
    heap: BinaryHeap<Reverse<(Tick, u32, u32)>>,
    epoch: Instant,
}

impl Timers {
    /// Timers counting from `epoch`, room reserved for `capacity` (one per connection).
    pub(super) fn new(epoch: Instant, capacity: usize) -> Timers {
        Timers {
            heap: BinaryHeap::with_capacity(capacity),
            epoch,
        }
    }

    /// The instant the ticks count from.
    pub(super) fn epoch(&self) -> Instant {
        self.epoch
    }

    pub(super) fn tick(&self, t: Instant) -> Tick {
        Tick::since(self.epoch, t)
    }

    pub(crate) fn at(&self, t: Tick) -> Instant {
        t.at(self.epoch)
    }

    /// The earliest deadline, if any.
    pub(super) fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((t, _, _))| self.at(*t))
    }

    pub(super) fn push(&mut self, t: Tick, slot: u32, generation: u32) {
        self.heap.push(Reverse((t, slot, generation)));
    }

    /// The earliest entry if it is due at `now`.
    fn pop_due(&mut self, now: Instant) -> Option<(Tick, u32, u32)> {
        let Reverse(entry) = *self.heap.peek()?;
        if self.at(entry.0) > now {
            return None;
        }
        self.heap.pop();
        Some(entry)
    }
}

impl Shard {
    /// Arm the connection's timer for the earlier of its protocol deadline and its
    /// slow-consumer deadline (a new heap entry only when it moves earlier).
    pub(super) fn arm_timer(&mut self, slot: u32) {
        let slow = self.cfg.slow_consumer_timeout;
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        let mut deadline = match c.extra.as_ref().and_then(|e| e.http.as_deref()) {
            // An HTTP connection's own limits: the request arriving, or the idle wait.
            Some(h) => match (h.since, h.answering, h.gateway) {
                (_, _, Some(g)) => Some(g.deadline),
                (Some(s), _, _) => Some(s + self.cfg.http.request_timeout),
                (None, crate::conn::http::Answering::Idle, _) => {
                    Some(h.idle_since + self.cfg.http.idle_timeout)
                }
                (None, _, _) => None,
            },
            None => c.proto.poll_timeout().map(|d| self.timers.tick(d)),
        };
        if let Some(since) = c.stalled_since() {
            let t = since + slow;
            deadline = Some(deadline.map_or(t, |d| d.min(t)));
        }
        if let Some(t) = c.extra.as_mut().and_then(|e| e.requests.next_deadline()) {
            deadline = Some(deadline.map_or(t, |d| d.min(t)));
        }
        if let Some(t) = deadline
            && c.timer.is_none_or(|cur| t < cur)
        {
            c.timer = Some(t);
            let generation = c.generation;
            self.timers.push(t, slot, generation);
        }
    }

    /// Run the timers due now. Returns whether any was.
    pub(super) fn run_timers(&mut self) -> bool {
        let mut any = false;
        let slow = self.cfg.slow_consumer_timeout;
        // Each turn removes one entry: bounded by the heap's size.
        while let Some((t, slot, generation)) = self.timers.pop_due(self.now) {
            let now = self.now;
            let Some(c) = self.conns.live(slot, generation) else {
                continue;
            };
            if c.timer != Some(t) {
                continue;
            }
            c.timer = None;
            any = true;
            if c.is_lingering() {
                self.close_now(slot);
                continue;
            }
            let stalled = c
                .stalled_since()
                .is_some_and(|s| now.saturating_duration_since(self.timers.at(s)) >= slow);
            if stalled {
                // The peer has not taken a single byte for the whole timeout: a reader that
                // stays too slow is closed.
                tracing::debug!(shard = self.id, slot, "closing a slow consumer");
                let reason = CloseReason::ProtocolError {
                    code: ErrorCode::SLOW_CONSUMER,
                    message: "peer did not read for the slow-consumer timeout".into(),
                };
                // Its requests are lost, its service told, its link (if any) reconnects.
                self.dispatch(slot, valkyrie_protocol::Event::Closed(reason));
                self.start_close(slot);
                continue;
            }
            if c.is_http() {
                self.http_timeout(slot);
                continue;
            }
            // A connection whose timer fires has been quiet: release its idle buffers first.
            c.proto.shrink_buffers();
            c.proto.handle_timeout(now);
            self.expire_requests(slot, conn_ref(self.id, slot, generation));
            self.mark(slot);
        }
        any
    }

    /// Report the requests of `slot` whose deadline has passed, each once.
    fn expire_requests(&mut self, slot: u32, conn: ConnRef) {
        let now = self.timers.tick(self.now);
        let Some(due) = self
            .conns
            .get_mut(slot)
            .and_then(|c| c.extra.as_mut())
            .map(|e| e.requests.expire(now))
        else {
            return;
        };
        ShardMetrics::add(&self.metrics.requests_timed_out, due.len() as u64);
        for corr in due {
            let (service, mut ctx) = self.ctx();
            service.on_reply(&mut ctx, conn, corr, crate::Reply::TimedOut);
        }
    }
}
