//! The requests a connection has in flight through [`Ctx::request`](crate::Ctx::request): each
//! correlation id with its deadline, so that the answer (or an ERROR answering it) is handed to
//! the service as a [`Reply`](crate::Reply), a request whose deadline passes is reported once
//! as timed out, and an answer that comes after that is recognised as late, dropped and
//! counted. Pure bookkeeping: the shard feeds it answers, times and closes.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};

use valkyrie_protocol::Tick;

/// How many timed-out correlation ids a connection remembers, to tell a late answer from a
/// frame the service did not ask for.
pub(crate) const REMEMBERED_LATE: usize = 4096;

/// What an incoming answer is to the requests of its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Matched {
    /// It answers a request in flight (now settled).
    Pending,
    /// It answers a request whose deadline already passed: drop it, count it.
    Late,
    /// Not one of ours: the service's own correlation.
    Unknown,
}

/// The requests in flight on one connection.
#[derive(Debug, Default)]
pub(crate) struct Requests {
    /// Correlation id → deadline.
    live: HashMap<u32, Tick>,
    /// Deadlines in order (an entry whose request was answered is skipped when it comes up).
    deadlines: BinaryHeap<Reverse<(Tick, u32)>>,
    /// Recently timed-out ids, oldest first, at most [`REMEMBERED_LATE`].
    expired: VecDeque<u32>,
    expired_set: HashSet<u32>,
}

impl Requests {
    /// Requests in flight.
    pub(crate) fn len(&self) -> usize {
        self.live.len()
    }

    /// Track request `corr` until `deadline`.
    pub(crate) fn add(&mut self, corr: u32, deadline: Tick) {
        debug_assert!(
            !self.live.contains_key(&corr),
            "a correlation id used twice"
        );
        self.live.insert(corr, deadline);
        self.deadlines.push(Reverse((deadline, corr)));
        // A reused id is no longer late.
        if self.expired_set.remove(&corr) {
            self.expired.retain(|&c| c != corr);
        }
    }

    /// An answer (or an ERROR) with correlation id `corr` arrived.
    pub(crate) fn answer(&mut self, corr: u32) -> Matched {
        if self.live.remove(&corr).is_some() {
            Matched::Pending
        } else if self.expired_set.remove(&corr) {
            // One late answer per request: a second one is not ours any more.
            self.expired.retain(|&c| c != corr);
            Matched::Late
        } else {
            Matched::Unknown
        }
    }

    /// The earliest deadline of a request in flight.
    pub(crate) fn next_deadline(&mut self) -> Option<Tick> {
        // Each turn drops one settled entry: bounded by the heap's size.
        while let Some(&Reverse((t, corr))) = self.deadlines.peek() {
            if self.live.get(&corr) == Some(&t) {
                return Some(t);
            }
            self.deadlines.pop();
        }
        None
    }

    /// The requests whose deadline is at or before `now`, each reported once (and remembered
    /// so that its answer, if it still comes, is known as late).
    pub(crate) fn expire(&mut self, now: Tick) -> Vec<u32> {
        let mut due = Vec::new();
        // Each turn pops one entry: bounded by the heap's size.
        while let Some(&Reverse((t, corr))) = self.deadlines.peek() {
            if t > now {
                break;
            }
            self.deadlines.pop();
            if self.live.get(&corr) == Some(&t) {
                self.live.remove(&corr);
                self.remember(corr);
                due.push(corr);
            }
        }
        due
    }

    /// Every request still in flight (the connection is gone), in no particular order.
    pub(crate) fn drain(&mut self) -> Vec<u32> {
        self.deadlines.clear();
        self.live.drain().map(|(corr, _)| corr).collect()
    }

    fn remember(&mut self, corr: u32) {
        if self.expired.len() == REMEMBERED_LATE
            && let Some(old) = self.expired.pop_front()
        {
            self.expired_set.remove(&old);
        }
        self.expired.push_back(corr);
        self.expired_set.insert(corr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Tick {
        Tick::from_nanos(ms * 1_000_000)
    }

    #[test]
    fn answers_settle_requests_and_deadlines_report_the_rest_once() {
        let mut r = Requests::default();
        r.add(1, t(10));
        r.add(2, t(5));
        r.add(3, t(20));
        assert_eq!(r.next_deadline(), Some(t(5)));
        assert_eq!(r.answer(2), Matched::Pending);
        assert_eq!(
            r.next_deadline(),
            Some(t(10)),
            "an answered request's deadline is gone"
        );
        assert_eq!(r.expire(t(9)), Vec::<u32>::new());
        assert_eq!(r.expire(t(10)), vec![1]);
        assert_eq!(r.expire(t(10)), Vec::<u32>::new(), "reported once");
        assert_eq!(r.answer(1), Matched::Late);
        assert_eq!(r.answer(1), Matched::Unknown, "one late answer per request");
        assert_eq!(
            r.answer(77),
            Matched::Unknown,
            "the service's own correlation"
        );
        assert_eq!(r.len(), 1);
        assert_eq!(r.drain(), vec![3]);
        assert_eq!(r.len(), 0);
        assert_eq!(r.next_deadline(), None);
    }

    #[test]
    fn the_memory_of_late_requests_is_bounded() {
        let mut r = Requests::default();
        let n = REMEMBERED_LATE as u32 + 10;
        for corr in 0..n {
            r.add(corr, t(1));
        }
        assert_eq!(r.expire(t(1)).len(), n as usize);
        assert_eq!(r.expired.len(), REMEMBERED_LATE);
        assert_eq!(r.answer(0), Matched::Unknown, "the oldest were forgotten");
        assert_eq!(r.answer(n - 1), Matched::Late);
        // A reused id is a new request, not a late one.
        r.add(n - 2, t(5));
        assert_eq!(r.answer(n - 2), Matched::Pending);
    }
}
