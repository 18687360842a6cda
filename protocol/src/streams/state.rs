//! Per-stream state: which halves are open, and the flow-control state of windowed streams.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use super::{RecvWindow, SendCredit, StreamClass, WindowStrategy, initiator};
use crate::Side;
use crate::error::ErrorCode;

/// A stream operation that cannot be done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// The id is 0, or its parity says the peer must open it.
    #[error("stream {0} cannot be used for this operation")]
    InvalidId(u32),
    /// The stream is not open.
    #[error("stream {0} is not open")]
    Unknown(u32),
    /// Our sending half is closed.
    #[error("stream {0} is closed for sending")]
    Closed(u32),
    /// Too many concurrent streams.
    #[error("stream limit of {0} reached")]
    Limit(u32),
    /// Not enough flow-control credit; wait for [`crate::Event::StreamWritable`].
    #[error("stream {id} has {available} bytes of credit, {wanted} needed")]
    Blocked {
        /// The stream.
        id: u32,
        /// Credit available.
        available: u64,
        /// Bytes wanted.
        wanted: u64,
    },
}

impl StreamError {
    /// The wire code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            StreamError::InvalidId(_) => ErrorCode::INVALID_STREAM_ID,
            StreamError::Unknown(_) => ErrorCode::UNKNOWN_STREAM,
            StreamError::Closed(_) => ErrorCode::STREAM_CLOSED,
            StreamError::Limit(_) => ErrorCode::STREAM_LIMIT,
            StreamError::Blocked { .. } => ErrorCode::FLOW_CONTROL_VIOLATION,
        }
    }
}

/// The visible state of one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamInfo {
    /// The stream's class.
    pub class: StreamClass,
    /// Whether this side opened it.
    pub local: bool,
    /// Whether we may still send.
    pub send_open: bool,
    /// Whether the peer may still send.
    pub recv_open: bool,
    /// Send credit available now (`u64::MAX` for unwindowed classes).
    pub send_credit: u64,
}

#[derive(Debug, Clone)]
struct Stream {
    class: StreamClass,
    local: bool,
    send_open: bool,
    recv_open: bool,
    send: SendCredit,
    recv: RecvWindow,
}

/// The tables of a connection that has streams; absent (and costing nothing) otherwise.
#[derive(Debug, Default)]
struct Tables {
    map: HashMap<u32, Stream>,
    /// Streams this side reset whose reset the peer has not confirmed yet: frames for them
    /// are dropped and their ids are not reused until the confirmation arrives.
    reset_pending: HashSet<u32>,
    open_local: u32,
    open_remote: u32,
    /// Where the next id search starts, per class.
    next_id: [u32; 5],
    /// Open streams per class (index: `StreamClass::index`), and what the last report told.
    open_by_class: [u32; 5],
    reported: [u32; 5],
    /// Receive windows granted since the last report (class index, bytes); past
    /// [`WINDOW_SAMPLES`] the rest are not kept.
    windows: [(u8, u32); WINDOW_SAMPLES],
    windows_len: u8,
    /// Something changed since the last report.
    report_due: bool,
}

/// Receive-window samples a connection keeps between two reports.
const WINDOW_SAMPLES: usize = 16;

/// The streams of one connection.
///
/// A connection with no open stream and no unconfirmed reset holds no tables: idle
/// connections stay small.
#[derive(Debug)]
pub struct Streams {
    side: Side,
    /// Concurrent streams the peer may open (ours to enforce).
    max_remote: u32,
    /// Concurrent streams we may open (the peer's limit).
    max_local: u32,
    /// Credit the peer grants per stream (from its HELLO / HELLO_ACK).
    peer_window: u32,
    /// Credit we grant per stream.
    strategy: WindowStrategy,
    tables: Option<Box<Tables>>,
}

impl Streams {
    /// Stream state for `side`, letting the peer open `max_remote` streams and granting
    /// credit by `strategy`.
    pub fn new(side: Side, max_remote: u32, strategy: WindowStrategy) -> Self {
        Streams {
            side,
            max_remote,
            max_local: max_remote,
            peer_window: strategy.initial(),
            strategy,
            tables: None,
        }
    }

    fn first_id(side: Side, class: StreamClass) -> u32 {
        let start = *class.range().start();
        let want_odd = side == Side::Client;
        if (start % 2 == 1) == want_odd {
            start
        } else {
            start + 1
        }
    }

    fn tables(&mut self) -> &mut Tables {
        let side = self.side;
        self.tables.get_or_insert_with(|| {
            let mut t = Box::<Tables>::default();
            for (i, c) in StreamClass::ALL.iter().enumerate() {
                t.next_id[i] = Self::first_id(side, *c);
            }
            t
        })
    }

    fn get(&self, id: u32) -> Option<&Stream> {
        self.tables.as_ref().and_then(|t| t.map.get(&id))
    }

    fn get_mut(&mut self, id: u32) -> Option<&mut Stream> {
        self.tables.as_mut().and_then(|t| t.map.get_mut(&id))
    }

    /// Release the tables when nothing is in them (and nothing is left to report).
    pub fn shrink(&mut self) {
        if self.tables.as_ref().is_some_and(|t| {
            t.map.is_empty() && t.reset_pending.is_empty() && !t.report_due && t.reported == [0; 5]
        }) {
            self.tables = None;
        }
    }

    /// Apply the peer's limits from the HELLO exchange.
    pub fn set_peer_limits(&mut self, peer_window: u32, peer_max_streams: u32) {
        self.peer_window = peer_window;
        self.max_local = peer_max_streams;
    }

    /// The credit we grant on each new stream.
    pub fn local_window(&self) -> u32 {
        self.strategy.initial()
    }

    /// Streams open now.
    pub fn len(&self) -> usize {
        self.tables.as_ref().map_or(0, |t| t.map.len())
    }

    /// True when no stream is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The state of stream `id`, if open.
    pub fn info(&self, id: u32) -> Option<StreamInfo> {
        self.get(id).map(|s| StreamInfo {
            class: s.class,
            local: s.local,
            send_open: s.send_open,
            recv_open: s.recv_open,
            send_credit: if s.class.is_windowed() {
                s.send.available()
            } else {
                u64::MAX
            },
        })
    }

    /// Whether `id` is one the peer numbers.
    pub fn is_remote_id(&self, id: u32) -> bool {
        initiator(id).is_some_and(|s| s != self.side)
    }

    fn insert(&mut self, id: u32, local: bool, send_credit: u32) {
        let class = StreamClass::of(id);
        let recv_window = self.strategy.initial();
        let recv = RecvWindow::new(self.strategy, recv_window);
        let t = self.tables();
        t.map.insert(
            id,
            Stream {
                class,
                local,
                send_open: true,
                recv_open: true,
                send: SendCredit::new(send_credit),
                recv,
            },
        );
        if local {
            t.open_local += 1;
        } else {
            t.open_remote += 1;
        }
        t.open_by_class[class.index()] += 1;
        t.report_due = true;
        if class.is_windowed() {
            t.window_sample(class, recv_window);
        }
    }

    /// Whether [`Streams::take_report`] has anything to say (one branch: a connection
    /// without streams has no tables).
    #[inline]
    pub fn report_due(&self) -> bool {
        self.tables.as_ref().is_some_and(|t| t.report_due)
    }

    /// What changed since the last report, for a runtime's metrics: the change in open
    /// streams per class is added to `open_delta` (index: [`StreamClass::index`]), and each
    /// receive window granted since (at stream open and at each credit update; at most 16
    /// kept between two reports) is handed to `window`. One branch when nothing changed.
    pub fn take_report(
        &mut self,
        open_delta: &mut [i64; 5],
        mut window: impl FnMut(StreamClass, u32),
    ) {
        let Some(t) = self.tables.as_mut() else {
            return;
        };
        if !std::mem::take(&mut t.report_due) {
            return;
        }
        for (i, d) in open_delta.iter_mut().enumerate() {
            *d += i64::from(t.open_by_class[i]) - i64::from(t.reported[i]);
        }
        t.reported = t.open_by_class;
        for &(class, w) in &t.windows[..t.windows_len as usize] {
            window(StreamClass::ALL[class as usize], w);
        }
        t.windows_len = 0;
    }

    /// The connection is gone: what the reports counted as open is taken back out of
    /// `open_delta`.
    pub fn forget_reported(&mut self, open_delta: &mut [i64; 5]) {
        if let Some(t) = self.tables.as_mut() {
            for (d, r) in open_delta.iter_mut().zip(t.reported) {
                *d -= i64::from(r);
            }
            t.reported = [0; 5];
        }
    }

    fn open_local(&self) -> u32 {
        self.tables.as_ref().map_or(0, |t| t.open_local)
    }

    /// Pick a free id of our parity in `class` and open it.
    pub fn open(&mut self, class: StreamClass) -> Result<u32, StreamError> {
        if class == StreamClass::Control {
            return Err(StreamError::InvalidId(0));
        }
        if self.open_local() >= self.max_local {
            return Err(StreamError::Limit(self.max_local));
        }
        let idx = class as usize;
        let hi = *class.range().end();
        let first = Self::first_id(self.side, class);
        let max_local = self.max_local;
        let t = self.tables();
        let mut id = t.next_id[idx];
        // Bounded search: at most max_local ids can be taken, so a free one is near.
        for _ in 0..=max_local {
            let next = id.checked_add(2).filter(|n| *n <= hi).unwrap_or(first);
            if !t.map.contains_key(&id) && !t.reset_pending.contains(&id) {
                t.next_id[idx] = next;
                let window = self.peer_window;
                self.insert(id, true, window);
                return Ok(id);
            }
            id = next;
        }
        Err(StreamError::Limit(self.max_local))
    }

    /// Open stream `id` chosen by the application (it must have our parity).
    pub fn open_id(&mut self, id: u32) -> Result<(), StreamError> {
        if id == 0 || self.is_remote_id(id) {
            return Err(StreamError::InvalidId(id));
        }
        if self.get(id).is_some() {
            return Ok(());
        }
        if self.is_reset_pending(id) {
            return Err(StreamError::Closed(id));
        }
        if self.open_local() >= self.max_local {
            return Err(StreamError::Limit(self.max_local));
        }
        let window = self.peer_window;
        self.insert(id, true, window);
        Ok(())
    }

    /// Accept a stream the peer opened (implicitly by its first frame, or by STREAM_OPEN,
    /// whose `window` sets our send credit). `Ok(true)` when newly opened.
    pub fn accept(&mut self, id: u32, send_credit: Option<u32>) -> Result<bool, StreamError> {
        if !self.is_remote_id(id) {
            return Err(StreamError::InvalidId(id));
        }
        if let Some(s) = self.get_mut(id) {
            if let Some(w) = send_credit {
                s.send.update(u64::from(w));
            }
            return Ok(false);
        }
        if self.tables.as_ref().map_or(0, |t| t.open_remote) >= self.max_remote {
            return Err(StreamError::Limit(self.max_remote));
        }
        let credit = send_credit.unwrap_or(self.peer_window);
        self.insert(id, false, credit);
        Ok(true)
    }

    /// Check and take send credit for `len` payload bytes on `id`, and apply EOS.
    pub fn on_send(&mut self, id: u32, len: usize, eos: bool) -> Result<(), StreamError> {
        let s = self.get_mut(id).ok_or(StreamError::Unknown(id))?;
        if !s.send_open {
            return Err(StreamError::Closed(id));
        }
        if s.class.is_windowed() && !s.send.consume(len as u64) {
            return Err(StreamError::Blocked {
                id,
                available: s.send.available(),
                wanted: len as u64,
            });
        }
        if eos {
            s.send_open = false;
            self.reap(id);
        }
        Ok(())
    }

    /// Account received payload bytes on `id` (credit check on windowed classes).
    pub fn on_receive(&mut self, id: u32, len: usize) -> Result<(), ReceiveError> {
        let s = self.get_mut(id).ok_or(ReceiveError::Unknown)?;
        if !s.recv_open {
            return Err(ReceiveError::Closed);
        }
        if s.class.is_windowed() {
            s.recv
                .on_receive(len as u64)
                .map_err(|_| ReceiveError::FlowControl)?;
        }
        Ok(())
    }

    /// The application released `n` received bytes of `id`. Returns a credit update to send.
    pub fn release(&mut self, id: u32, n: u64, now: Instant, rtt: Duration) -> Option<u64> {
        let s = self.get_mut(id)?;
        if !s.class.is_windowed() || !s.recv_open {
            return None;
        }
        let (class, update) = (s.class, s.recv.on_consume(n, now, rtt));
        let window = s.recv.window();
        if update.is_some()
            && let Some(t) = self.tables.as_mut()
        {
            t.window_sample(class, window);
        }
        update
    }

    /// Bytes received so far on `id`.
    pub fn received(&self, id: u32) -> Option<u64> {
        self.get(id).map(|s| s.recv.received())
    }

    /// The peer finished its half (EOS or STREAM_CLOSE). Returns `true` if it was open.
    pub fn finish_remote(&mut self, id: u32) -> bool {
        let Some(s) = self.get_mut(id) else {
            return false;
        };
        let was = s.recv_open;
        s.recv_open = false;
        self.reap(id);
        was
    }

    /// A credit update from the peer. `true` when a blocked sender may retry.
    pub fn on_credit(&mut self, id: u32, max_data: u64) -> bool {
        self.get_mut(id).is_some_and(|s| s.send.update(max_data))
    }

    /// Remove a stream (reset by either side). `true` if it existed.
    pub fn remove(&mut self, id: u32) -> bool {
        let Some(t) = self.tables.as_mut() else {
            return false;
        };
        match t.map.remove(&id) {
            Some(s) => {
                t.open_by_class[s.class.index()] -= 1;
                t.report_due = true;
                if s.local {
                    t.open_local -= 1;
                } else {
                    t.open_remote -= 1;
                }
                true
            }
            None => false,
        }
    }

    /// This side resets `id`: remove it and hold the id until the peer confirms. `false`
    /// when too many resets are unconfirmed (more than twice the stream limits): the peer
    /// is not answering them.
    pub fn reset_local(&mut self, id: u32) -> bool {
        self.remove(id);
        let bound = 2 * (self.max_local as usize + self.max_remote as usize).max(1);
        let t = self.tables();
        if t.reset_pending.len() >= bound {
            return false;
        }
        t.reset_pending.insert(id);
        true
    }

    /// Whether `id` awaits the peer's confirmation of our reset.
    pub fn is_reset_pending(&self, id: u32) -> bool {
        self.tables
            .as_ref()
            .is_some_and(|t| t.reset_pending.contains(&id))
    }

    /// The peer confirmed our reset of `id`; the id may be used again.
    pub fn confirm_reset(&mut self, id: u32) {
        if let Some(t) = self.tables.as_mut() {
            t.reset_pending.remove(&id);
        }
    }

    fn reap(&mut self, id: u32) {
        if self.get(id).is_some_and(|s| !s.send_open && !s.recv_open) {
            self.remove(id);
        }
    }
}

/// Why received data was refused on a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReceiveError {
    /// No such stream.
    Unknown,
    /// The peer already finished its half.
    Closed,
    /// The peer exceeded its credit.
    FlowControl,
}

impl Tables {
    /// Keep a receive-window sample for the next report (dropped when full).
    fn window_sample(&mut self, class: StreamClass, window: u32) {
        if let Some(slot) = self.windows.get_mut(self.windows_len as usize) {
            *slot = (class.index() as u8, window);
            self.windows_len += 1;
        }
        self.report_due = true;
    }
}

#[cfg(test)]
mod tests;
