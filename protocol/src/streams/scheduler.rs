//! The outbound frame scheduler.
//!
//! Four queues, one per [`Qos`] level:
//! - critical (stream 0 and stream-management frames): FIFO, always served first;
//! - high, normal, low: ordered by the header's priority byte (higher first, FIFO among
//!   equals), served by weighted round robin (4 : 2 : 1 frames a round) so that no class is
//!   starved by a busier one.
//!
//! Every queue is bounded. Best-effort (low) frames are shed, and counted, once the queued
//! bytes pass the pressure mark (three quarters of the byte limit) or the low queue is full:
//! they never take the room that higher classes need and never make a sender wait. High and
//! normal frames meet back-pressure ([`QueueFull`]) at the limits, after queued low frames have
//! been shed to make room.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};

use bytes::Bytes;

use super::Qos;
use crate::frame::{HEADER_LEN, Header};

/// Bounds of a [`Scheduler`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerLimits {
    /// Most frames queued in the critical queue.
    pub max_critical_frames: usize,
    /// Most bytes (headers included) queued in the critical queue; one frame is always
    /// admitted into an empty one, whatever its size.
    pub max_critical_bytes: usize,
    /// Most frames queued in the high, normal and low queues together.
    pub max_frames: usize,
    /// Most bytes (headers included) queued in the high, normal and low queues together.
    pub max_bytes: usize,
    /// Most frames in the low queue.
    pub max_low_frames: usize,
}

impl Default for SchedulerLimits {
    fn default() -> Self {
        SchedulerLimits {
            max_critical_frames: 1024,
            max_critical_bytes: 1024 * 1024,
            max_frames: 4096,
            max_bytes: 8 * 1024 * 1024,
            max_low_frames: 1024,
        }
    }
}

/// A frame could not be queued: the queue for its class is at its bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("outbound queue full for {0:?} frames")]
pub struct QueueFull(pub Qos);

/// What happened to a frame handed to [`Scheduler::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// Queued for sending.
    Queued,
    /// A best-effort frame dropped under pressure (counted in [`Scheduler::shed_frames`]).
    Shed,
}

/// A queued frame and its ordering key.
#[derive(Debug, Clone)]
pub(crate) struct Queued {
    pub(crate) header: Header,
    pub(crate) payload: Bytes,
    /// Whether the record layer seals this frame (decided when it was queued).
    pub(crate) seal: bool,
    seq: u64,
}

impl Queued {
    fn size(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    /// Max-heap order: higher priority first, then lower sequence number (older) first.
    fn cmp(&self, other: &Self) -> Ordering {
        self.header
            .priority
            .cmp(&other.header.priority)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

const WEIGHTS: [u32; 3] = [4, 2, 1];

/// The queues themselves, allocated while frames wait and released by
/// [`Scheduler::shrink`] once they are empty (an idle connection holds none).
#[derive(Debug)]
struct Queues {
    critical: VecDeque<Queued>,
    /// High, normal, low.
    classes: [BinaryHeap<Queued>; 3],
    quota: [u32; 3],
}

impl Default for Queues {
    fn default() -> Self {
        Queues {
            critical: VecDeque::new(),
            classes: [BinaryHeap::new(), BinaryHeap::new(), BinaryHeap::new()],
            quota: WEIGHTS,
        }
    }
}

/// The outbound scheduler of one connection.
#[derive(Debug)]
pub struct Scheduler {
    limits: SchedulerLimits,
    queues: Option<Box<Queues>>,
    /// Bytes in the critical queue (headers included).
    critical_bytes: usize,
    queued_bytes: usize,
    /// Bytes queued in the low class (part of `queued_bytes`).
    low_bytes: usize,
    queued_frames: usize,
    seq: u64,
    shed_frames: u64,
    shed_bytes: u64,
}

impl Scheduler {
    /// An empty scheduler with these bounds.
    pub fn new(limits: SchedulerLimits) -> Self {
        Scheduler {
            limits,
            queues: None,
            critical_bytes: 0,
            queued_bytes: 0,
            low_bytes: 0,
            queued_frames: 0,
            seq: 0,
            shed_frames: 0,
            shed_bytes: 0,
        }
    }

    /// The bounds.
    pub fn limits(&self) -> SchedulerLimits {
        self.limits
    }

    fn critical_len(&self) -> usize {
        self.queues.as_ref().map_or(0, |q| q.critical.len())
    }

    fn low_len(&self) -> usize {
        self.queues.as_ref().map_or(0, |q| q.classes[2].len())
    }

    fn queues(&mut self) -> &mut Queues {
        self.queues.get_or_insert_with(Box::default)
    }

    /// Whether nothing waits in the critical queue.
    pub fn is_critical_empty(&self) -> bool {
        self.critical_len() == 0
    }

    /// Frames queued in all classes.
    pub fn len(&self) -> usize {
        self.critical_len() + self.queued_frames
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the queues have reached their high-water mark: half of any bound (critical
    /// frames, frames, bytes). A connection stops decoding input there, so what its peer
    /// provokes waits in the transport (back-pressure) while the other half absorbs the
    /// answers to the frame already in hand.
    pub fn is_high(&self) -> bool {
        let l = &self.limits;
        self.critical_len() >= l.max_critical_frames / 2
            || self.critical_bytes >= l.max_critical_bytes / 2
            || self.queued_frames >= l.max_frames / 2
            || self.queued_bytes >= l.max_bytes / 2
    }

    /// Whether the queues are at or below their low-water mark: a quarter of every bound.
    /// Input held at [`Scheduler::is_high`] resumes here.
    pub fn is_low(&self) -> bool {
        let l = &self.limits;
        self.critical_len() <= l.max_critical_frames / 4
            && self.critical_bytes <= l.max_critical_bytes / 4
            && self.queued_frames <= l.max_frames / 4
            && self.queued_bytes <= l.max_bytes / 4
    }

    /// Bytes queued outside the critical queue.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Bytes queued in all classes, the critical queue included.
    pub fn total_bytes(&self) -> usize {
        self.critical_bytes + self.queued_bytes
    }

    /// Best-effort frames shed so far.
    pub fn shed_frames(&self) -> u64 {
        self.shed_frames
    }

    /// Payload and header bytes of the frames shed so far.
    pub fn shed_bytes(&self) -> u64 {
        self.shed_bytes
    }

    /// Whether a frame of `qos` and `size` bytes (header included) would be queued now.
    pub fn has_room(&self, qos: Qos, size: usize) -> bool {
        match qos {
            Qos::Critical => self.critical_has_room(size),
            Qos::High | Qos::Normal => {
                // Queued low frames are shed to make room, so they do not count when over.
                let (low_frames, low_bytes) = if self.over(size) {
                    (self.low_len(), self.low_bytes)
                } else {
                    (0, 0)
                };
                let frames = self.queued_frames - low_frames;
                frames < self.limits.max_frames
                    && self.queued_bytes - low_bytes + size <= self.limits.max_bytes
            }
            Qos::Low => true,
        }
    }

    fn critical_has_room(&self, size: usize) -> bool {
        let n = self.critical_len();
        n == 0
            || (n < self.limits.max_critical_frames
                && self.critical_bytes + size <= self.limits.max_critical_bytes)
    }

    fn over(&self, size: usize) -> bool {
        self.queued_frames >= self.limits.max_frames
            || self.queued_bytes + size > self.limits.max_bytes
    }

    /// Queue a frame of class `qos`.
    pub(crate) fn push(
        &mut self,
        qos: Qos,
        header: Header,
        payload: Bytes,
        seal: bool,
    ) -> Result<Enqueued, QueueFull> {
        let item = Queued {
            header,
            payload,
            seal,
            seq: self.seq,
        };
        let size = item.size();
        match qos {
            Qos::Critical => {
                if !self.critical_has_room(size) {
                    return Err(QueueFull(qos));
                }
                self.critical_bytes += size;
                self.seq += 1;
                self.queues().critical.push_back(item);
                return Ok(Enqueued::Queued);
            }
            Qos::Low => {
                let pressure = self.limits.max_bytes / 4 * 3;
                if self.low_len() >= self.limits.max_low_frames
                    || self.queued_frames >= self.limits.max_frames
                    || self.queued_bytes + size > pressure
                {
                    self.shed_frames += 1;
                    self.shed_bytes += size as u64;
                    return Ok(Enqueued::Shed);
                }
            }
            Qos::High | Qos::Normal => {
                if !self.has_room(qos, size) {
                    return Err(QueueFull(qos));
                }
                if self.over(size) {
                    self.shed_all_low();
                }
            }
        }
        self.seq += 1;
        self.queued_frames += 1;
        self.queued_bytes += size;
        if qos == Qos::Low {
            self.low_bytes += size;
        }
        self.queues().classes[Self::index(qos)].push(item);
        self.debug_check();
        Ok(Enqueued::Queued)
    }

    /// The counters agree with each other and with the limits (checked on push and pop).
    fn debug_check(&self) {
        debug_assert!(
            self.low_bytes <= self.queued_bytes,
            "low bytes beyond all bytes"
        );
        debug_assert!(
            (self.queued_frames == 0) == (self.queued_bytes == 0),
            "frames and bytes disagree: {} frames, {} bytes",
            self.queued_frames,
            self.queued_bytes
        );
        debug_assert!(
            self.queued_frames <= self.limits.max_frames,
            "more frames queued than the limit"
        );
        debug_assert!(
            self.critical_len() <= self.limits.max_critical_frames,
            "more critical frames queued than the limit"
        );
        debug_assert!(
            self.critical_len() <= 1 || self.critical_bytes <= self.limits.max_critical_bytes,
            "more critical bytes queued than the limit"
        );
    }

    fn shed_all_low(&mut self) {
        let Some(q) = self.queues.as_mut() else {
            return;
        };
        for item in q.classes[2].drain() {
            self.shed_frames += 1;
            self.shed_bytes += item.size() as u64;
            self.queued_frames -= 1;
            self.queued_bytes -= item.size();
        }
        self.low_bytes = 0;
    }

    fn index(qos: Qos) -> usize {
        match qos {
            Qos::High => 0,
            Qos::Normal => 1,
            Qos::Low | Qos::Critical => 2,
        }
    }

    /// The next frame to transmit: critical first, then weighted round robin.
    pub(crate) fn pop(&mut self) -> Option<Queued> {
        let queues = self.queues.as_mut()?;
        if let Some(q) = queues.critical.pop_front() {
            self.critical_bytes -= q.size();
            return Some(q);
        }
        if self.queued_frames == 0 {
            return None;
        }
        for _ in 0..2 {
            for i in 0..3 {
                if queues.quota[i] > 0
                    && let Some(q) = queues.classes[i].pop()
                {
                    queues.quota[i] -= 1;
                    self.queued_frames -= 1;
                    self.queued_bytes -= q.size();
                    if i == 2 {
                        self.low_bytes -= q.size();
                    }
                    self.debug_check();
                    return Some(q);
                }
            }
            // Every non-empty class has spent its quota: start a new round.
            queues.quota = WEIGHTS;
        }
        unreachable!("queued_frames > 0 but every class queue is empty")
    }

    /// Release the queues' memory when nothing is queued.
    pub fn shrink(&mut self) {
        if self.is_empty() {
            self.queues = None;
        }
    }

    /// Drop the frames queued for `stream_id` (after it was reset). Returns how many.
    pub(crate) fn purge_stream(&mut self, stream_id: u32) -> usize {
        let before = self.len();
        let Some(queues) = self.queues.as_mut() else {
            return 0;
        };
        queues.critical.retain(|q| q.header.stream_id != stream_id);
        self.critical_bytes = queues.critical.iter().map(Queued::size).sum();
        for c in &mut queues.classes {
            c.retain(|q| q.header.stream_id != stream_id);
        }
        let (frames, bytes) = queues
            .classes
            .iter()
            .flat_map(|c| c.iter())
            .fold((0, 0), |(f, b), q| (f + 1, b + q.size()));
        self.queued_frames = frames;
        self.queued_bytes = bytes;
        self.low_bytes = queues.classes[2].iter().map(Queued::size).sum();
        before - self.len()
    }

    /// Drop everything queued (after a fatal error). Returns the number of frames dropped.
    pub(crate) fn clear(&mut self) -> usize {
        let n = self.len();
        self.queues = None;
        self.critical_bytes = 0;
        self.queued_frames = 0;
        self.queued_bytes = 0;
        self.low_bytes = 0;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MessageType;

    fn h(stream: u32, priority: u8) -> Header {
        let mut h = Header::new(MessageType::StreamData, stream, 0);
        h.priority = priority;
        h
    }

    fn push(
        s: &mut Scheduler,
        qos: Qos,
        stream: u32,
        prio: u8,
        len: usize,
    ) -> Result<Enqueued, QueueFull> {
        s.push(qos, h(stream, prio), Bytes::from(vec![0u8; len]), false)
    }

    #[test]
    fn critical_is_never_starved() {
        let mut s = Scheduler::new(SchedulerLimits::default());
        for _ in 0..100 {
            push(&mut s, Qos::High, 1, 255, 10).unwrap();
        }
        push(&mut s, Qos::Critical, 0, 0, 10).unwrap();
        assert_eq!(s.pop().unwrap().header.stream_id, 0);
    }

    #[test]
    fn weighted_round_robin_serves_every_class() {
        let mut s = Scheduler::new(SchedulerLimits::default());
        for _ in 0..70 {
            push(&mut s, Qos::High, 1, 128, 10).unwrap();
            push(&mut s, Qos::Normal, 101, 128, 10).unwrap();
            push(&mut s, Qos::Low, 10_001, 128, 10).unwrap();
        }
        let first: Vec<u32> = (0..70).map(|_| s.pop().unwrap().header.stream_id).collect();
        let count = |id| first.iter().filter(|&&x| x == id).count();
        assert_eq!((count(1), count(101), count(10_001)), (40, 20, 10));
    }

    #[test]
    fn priority_orders_within_a_class_and_equal_priorities_stay_fifo() {
        let mut s = Scheduler::new(SchedulerLimits::default());
        s.push(Qos::Normal, h(101, 10), Bytes::from_static(b"a"), false)
            .unwrap();
        s.push(Qos::Normal, h(103, 200), Bytes::from_static(b"b"), false)
            .unwrap();
        s.push(Qos::Normal, h(101, 10), Bytes::from_static(b"c"), false)
            .unwrap();
        let order: Vec<Bytes> = (0..3).map(|_| s.pop().unwrap().payload).collect();
        assert_eq!(order, [&b"b"[..], b"a", b"c"]);
    }

    #[test]
    fn the_critical_queue_is_bounded_in_bytes_but_always_takes_one_frame() {
        let limits = SchedulerLimits {
            max_critical_bytes: 1000,
            ..SchedulerLimits::default()
        };
        let mut s = Scheduler::new(limits);
        // A frame larger than the bound still goes into an empty queue.
        assert!(s.has_room(Qos::Critical, 5000));
        push(&mut s, Qos::Critical, 0, 0, 5000 - HEADER_LEN).unwrap();
        assert!(s.is_high(), "past half the byte bound");
        assert!(!s.has_room(Qos::Critical, HEADER_LEN));
        assert_eq!(
            push(&mut s, Qos::Critical, 0, 0, 0),
            Err(QueueFull(Qos::Critical))
        );
        assert!(s.pop().is_some());
        assert!(s.is_low());
        for _ in 0..10 {
            push(&mut s, Qos::Critical, 0, 0, 100 - HEADER_LEN).unwrap();
        }
        assert!(s.is_high());
        assert_eq!(
            push(&mut s, Qos::Critical, 0, 0, 0),
            Err(QueueFull(Qos::Critical))
        );
        assert_eq!(s.clear(), 10);
        assert!(s.has_room(Qos::Critical, 1000));
    }

    #[test]
    fn logs_are_shed_under_pressure_and_never_block() {
        let limits = SchedulerLimits {
            max_bytes: 4000,
            ..SchedulerLimits::default()
        };
        let mut s = Scheduler::new(limits);
        let mut shed = 0;
        for _ in 0..100 {
            if push(&mut s, Qos::Low, 10_001, 128, 76).unwrap() == Enqueued::Shed {
                shed += 1;
            }
        }
        // 3000 bytes of pressure mark / 100 bytes a frame.
        assert_eq!(shed, 70);
        assert_eq!(s.shed_frames(), 70);
        // Normal traffic takes the room back from queued logs, then meets back-pressure.
        for _ in 0..40 {
            push(&mut s, Qos::Normal, 101, 128, 76).unwrap();
        }
        assert_eq!(s.shed_frames(), 100, "queued logs were shed to make room");
        assert_eq!(
            push(&mut s, Qos::Normal, 101, 128, 76),
            Err(QueueFull(Qos::Normal))
        );
        assert!(!s.has_room(Qos::Normal, 100));
        assert_eq!(s.len(), 40);
    }
}
