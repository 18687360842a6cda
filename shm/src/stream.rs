//! One end of a shared-memory connection: the stream over one segment, its waits and its
//! peer's liveness.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixStream};
use std::sync::atomic::{AtomicU32, Ordering, fence};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};

use crate::claim::{Claim, Received};
use crate::config::{ShmConfig, WaitMode};
use crate::error::{Result, ShmError};
use crate::futex;
use crate::layout::{CTRL_OFFSET, STATE_CLOSED, STATE_OPEN};
use crate::ring::{Arm, Consumer, Producer, RingPtrs};
use crate::segment::{self, Segment};

/// What a blocking call waits for.
#[derive(Debug, Clone, Copy)]
enum Want {
    /// A frame to read.
    Data,
    /// Room for a frame of this many bytes.
    Space(usize),
}

/// The abstract socket address a listener named `name` binds.
pub(crate) fn abstract_addr(name: &str) -> io::Result<SocketAddr> {
    SocketAddr::from_abstract_name(abstract_name(name).as_bytes())
}

/// The name in Linux's abstract Unix-socket namespace that a listener named `name` binds
/// (for a connector that makes its own socket, such as an event loop's non-blocking one;
/// then [`ShmStream::connect_over`] once the listener's offer is readable).
pub fn abstract_name(name: &str) -> String {
    format!("valkyrie-shm/{name}")
}

/// A futex word an event loop may wait on (with io_uring's `FUTEX_WAIT`, process-shared, 32
/// bits) while it holds [`FutexWord::EXPECTED`]. Valid while its stream lives.
#[derive(Debug, Clone, Copy)]
pub struct FutexWord(*const AtomicU32);

// SAFETY: a plain address into a shared mapping; the stream that owns it outlives its use.
unsafe impl Send for FutexWord {}

impl FutexWord {
    /// The value the word holds while the waiter should sleep.
    pub const EXPECTED: u32 = 1;

    /// The word's address.
    pub fn as_ptr(&self) -> *const u32 {
        self.0.cast()
    }
}

/// One end of a shared-memory connection: a frame ring to send on and one to receive from.
///
/// Frames are byte strings of up to [`ShmStream::max_frame`] bytes, delivered whole and in
/// order. Sending blocks (or returns `WouldBlock`) while the peer's ring is full: nothing is
/// dropped. Both ends blocking in `send` on full rings wait for each other, as with sockets.
#[derive(Debug)]
pub struct ShmStream {
    tx: Producer,
    rx: Consumer,
    side: usize,
    // Dropped after the rings (field order): the rings point into it.
    seg: Segment,
    sock: UnixStream,
    wait: WaitMode,
    liveness: Duration,
    last_check: Instant,
    closed: bool,
    /// Set once the peer was found closed or dead: sending fails from then on.
    peer_gone: Option<PeerGone>,
}

#[derive(Debug, Clone, Copy)]
enum PeerGone {
    Closed,
    Died,
}

impl ShmStream {
    /// Connect to the listener named `name` with the default settings.
    pub fn connect(name: &str) -> Result<ShmStream> {
        ShmStream::connect_with(name, ShmConfig::default())
    }

    /// Connect to `name`; `config.wait` and `config.liveness_interval` apply to this end (the
    /// ring geometry is the listener's).
    pub fn connect_with(name: &str, config: ShmConfig) -> Result<ShmStream> {
        let sock = UnixStream::connect_addr(&abstract_addr(name)?)?;
        ShmStream::connect_over(sock, config)
    }

    /// The rendezvous socket of the listener named `name`, connected, before anything is
    /// exchanged on it (write what the listener expects first, then
    /// [`ShmStream::connect_over`]).
    pub fn rendezvous(name: &str) -> Result<UnixStream> {
        Ok(UnixStream::connect_addr(&abstract_addr(name)?)?)
    }

    /// Connector side of the rendezvous over a socket already connected to a listener
    /// (one that first wrote something of its own on it, such as a token the listener
    /// checks): wait for the segment, map it, and return the stream.
    pub fn connect_over(sock: UnixStream, config: ShmConfig) -> Result<ShmStream> {
        sock.set_read_timeout(Some(Duration::from_secs(5)))?;
        let seg = segment::accept_offer(&sock)?;
        sock.set_read_timeout(None)?;
        Ok(ShmStream::from_segment(seg, 1, sock, &config))
    }

    /// Listener side of the rendezvous over an already accepted socket: create the segment,
    /// send it, and return the stream. Does not block.
    pub fn serve(sock: UnixStream, config: &ShmConfig) -> Result<ShmStream> {
        let (seg, fd) = segment::create(config.ring_capacity, config.max_frame())?;
        segment::offer(&sock, &seg, &fd)?;
        drop(fd);
        Ok(ShmStream::from_segment(seg, 0, sock, config))
    }

    fn from_segment(seg: Segment, side: usize, sock: UnixStream, config: &ShmConfig) -> Self {
        let base = seg.base();
        let ring = |i: usize| {
            // SAFETY: control blocks and data areas are inside the mapping, which the stream
            // keeps alive (and drops after the rings).
            unsafe { RingPtrs::new(base.add(CTRL_OFFSET[i]), seg.data(i), seg.capacity) }
        };
        // Ring 0 carries listener -> connector, ring 1 connector -> listener.
        let (tx, rx) = if side == 0 { (0, 1) } else { (1, 0) };
        let tx = Producer::new(ring(tx), seg.max_frame);
        let rx = Consumer::new(ring(rx), seg.max_frame);
        seg.state(side).store(STATE_OPEN, Ordering::Release);
        ShmStream {
            tx,
            rx,
            side,
            seg,
            sock,
            wait: config.wait,
            liveness: config.liveness_interval,
            last_check: Instant::now(),
            closed: false,
            peer_gone: None,
        }
    }

    /// The largest frame this connection carries.
    pub fn max_frame(&self) -> usize {
        self.tx.max_frame()
    }

    /// Bytes per direction.
    pub fn ring_capacity(&self) -> usize {
        self.seg.capacity
    }

    /// Change how blocking calls wait.
    pub fn set_wait_mode(&mut self, wait: WaitMode) {
        self.wait = wait;
    }

    /// The rendezvous socket: it stays open for the connection's life and reports the peer's
    /// death as hang-up (poll it for `POLLRDHUP` in an event loop).
    pub fn socket(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    /// Fail with the reason if the connection can no longer be used. Cheap when the peer is
    /// fine: one load and one `poll(2)` with zero timeout.
    pub fn check_peer(&mut self) -> Result<()> {
        if self.closed {
            return Err(ShmError::Closed);
        }
        self.last_check = Instant::now();
        match self.peer_gone {
            Some(PeerGone::Closed) => return Err(ShmError::PeerClosed),
            Some(PeerGone::Died) => return Err(ShmError::PeerDied),
            None => {}
        }
        if self.seg.state(1 - self.side).load(Ordering::Acquire) == STATE_CLOSED {
            self.peer_gone = Some(PeerGone::Closed);
            return Err(ShmError::PeerClosed);
        }
        let mut fds = [PollFd::new(&self.sock, PollFlags::RDHUP | PollFlags::IN)];
        let zero = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        if rustix::event::poll(&mut fds, Some(&zero)).map_err(io::Error::from)? > 0 {
            let ev = fds[0].revents();
            if ev.intersects(PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR) {
                // The peer closes its socket after marking its state: look again.
                fence(Ordering::SeqCst);
                if self.seg.state(1 - self.side).load(Ordering::Acquire) == STATE_CLOSED {
                    self.peer_gone = Some(PeerGone::Closed);
                    return Err(ShmError::PeerClosed);
                }
                self.peer_gone = Some(PeerGone::Died);
                return Err(ShmError::PeerDied);
            }
        }
        Ok(())
    }

    fn check_due(&mut self) -> Result<()> {
        if self.last_check.elapsed() >= self.liveness
            || self.seg.state(1 - self.side).load(Ordering::Relaxed) != STATE_OPEN
        {
            self.check_peer()?;
        }
        Ok(())
    }

    /// Turn an error into a closed connection (the peer sees the close).
    fn fail<T>(&mut self, e: ShmError) -> Result<T> {
        if matches!(e, ShmError::Corrupt(_)) {
            self.shutdown();
        }
        Err(e)
    }

    fn usable(&self) -> Result<()> {
        if self.closed {
            Err(ShmError::Closed)
        } else {
            Ok(())
        }
    }

    // ---- sending ----

    /// Reserve `len` bytes in the send ring without blocking: `WouldBlock` when full.
    pub fn try_claim(&mut self, len: usize) -> Result<Claim<'_>> {
        self.usable()?;
        if self.peer_gone.is_some()
            || self.seg.state(1 - self.side).load(Ordering::Relaxed) != STATE_OPEN
        {
            // Nobody would read it.
            self.check_peer()?;
        }
        match self.tx.try_claim(len) {
            Ok(Some(off)) => Ok(Claim {
                tx: &mut self.tx,
                off,
                len,
            }),
            Ok(None) => {
                // Publish what is committed so the consumer can make room.
                self.tx.flush();
                self.check_due()?;
                Err(ShmError::WouldBlock)
            }
            Err(e) => self.fail(e),
        }
    }

    /// Reserve `len` bytes in the send ring, waiting for room (see [`WaitMode`]).
    pub fn claim(&mut self, len: usize) -> Result<Claim<'_>> {
        self.wait_for(Want::Space(len), None)?;
        self.try_claim(len)
    }

    fn nap(&self, deadline: Option<Instant>) -> Duration {
        let mut d = self.liveness;
        if let Some(dl) = deadline {
            d = d.min(dl.saturating_duration_since(Instant::now()));
        }
        d.max(Duration::from_micros(1))
    }

    /// Send one frame, waiting while the ring is full. Wakes a sleeping receiver.
    pub fn send(&mut self, frame: &[u8]) -> Result<()> {
        let mut c = self.claim(frame.len())?;
        c.copy_from_slice(frame);
        c.commit();
        Ok(())
    }

    /// Send one frame without blocking: `WouldBlock` when the ring is full.
    pub fn try_send(&mut self, frame: &[u8]) -> Result<()> {
        let mut c = self.try_claim(frame.len())?;
        c.copy_from_slice(frame);
        c.commit();
        Ok(())
    }

    /// Publish the frames committed with [`Claim::commit_deferred`] and wake the receiver.
    pub fn flush(&mut self) {
        self.tx.flush();
    }

    // ---- receiving ----

    /// The next frame if one is there; `Ok(None)` when the ring is empty and the peer lives.
    /// Once the peer has closed, the frames it sent are still delivered, then
    /// [`ShmError::PeerClosed`] (or [`ShmError::PeerDied`]).
    pub fn try_recv(&mut self) -> Result<Option<Received<'_>>> {
        self.usable()?;
        match self.rx.peek() {
            Ok(Some(f)) => Ok(Some(Received {
                rx: &mut self.rx,
                found: f,
            })),
            Ok(None) => {
                if let Err(e) = self.check_due() {
                    // The peer commits before it closes: look once more before reporting.
                    return match self.rx.peek() {
                        Ok(Some(f)) => Ok(Some(Received {
                            rx: &mut self.rx,
                            found: f,
                        })),
                        Ok(None) => Err(e),
                        Err(e) => self.fail(e),
                    };
                }
                Ok(None)
            }
            Err(e) => self.fail(e),
        }
    }

    /// The next frame, waiting for it (see [`WaitMode`]).
    pub fn recv(&mut self) -> Result<Received<'_>> {
        self.wait_for(Want::Data, None)?;
        self.try_recv()?.ok_or(ShmError::WouldBlock)
    }

    /// The next frame, waiting at most `timeout`: `WouldBlock` if none came.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Received<'_>> {
        self.wait_for(Want::Data, Some(Instant::now() + timeout))?;
        self.try_recv()?.ok_or(ShmError::WouldBlock)
    }

    /// Copy the next frame into `buf` (cleared first), waiting for it. Returns its length.
    pub fn recv_into(&mut self, buf: &mut Vec<u8>) -> Result<usize> {
        let r = self.recv()?;
        buf.clear();
        buf.extend_from_slice(&r);
        Ok(buf.len())
    }

    /// Hand up to `max` waiting frames to `f` without blocking, releasing their space in one
    /// step at the end. Returns how many were handed over.
    pub fn recv_batch(&mut self, max: usize, mut f: impl FnMut(&[u8])) -> Result<usize> {
        self.usable()?;
        let mut n = 0;
        while n < max {
            match self.rx.peek() {
                Ok(Some(found)) => {
                    f(self.rx.payload(found));
                    self.rx.release(found);
                    n += 1;
                }
                Ok(None) => break,
                Err(e) => {
                    self.rx.flush();
                    return self.fail(e);
                }
            }
        }
        self.rx.flush();
        if n == 0 {
            self.check_due()?;
        }
        Ok(n)
    }

    /// Whether what `want` waits for is there.
    fn ready(&mut self, want: Want) -> Result<bool> {
        let r = match want {
            Want::Data => self.rx.has_data(),
            Want::Space(len) => self.tx.fits(len),
        };
        r.or_else(|e| self.fail(e))
    }

    /// Announce the sleep on `want`'s futex word.
    fn arm(&mut self, want: Want) -> Result<Arm> {
        let r = match want {
            Want::Data => self.rx.arm_data_wait(),
            Want::Space(len) => self.tx.arm_space_wait(len),
        };
        r.or_else(|e| self.fail(e))
    }

    fn word(&self, want: Want) -> &AtomicU32 {
        match want {
            Want::Data => self.rx.ring().data_waiter(),
            Want::Space(_) => self.tx.ring().space_waiter(),
        }
    }

    /// The peer check of a waiter: a reader still gets what a closed peer committed.
    fn peer_check(&mut self, want: Want) -> Result<()> {
        match want {
            Want::Data => self.check_peer_or_data(),
            Want::Space(_) => self.check_peer(),
        }
    }

    /// Wait for `want` at most until `deadline`: poll the ring, then spin or sleep on its
    /// futex word as [`WaitMode`] says, checking the peer every liveness interval.
    fn wait_for(&mut self, want: Want, deadline: Option<Instant>) -> Result<()> {
        self.usable()?;
        // Fast path: no clock read.
        if self.ready(want)? {
            return Ok(());
        }
        if let Want::Space(_) = want {
            // The consumer can only free space it has seen: publish the batch.
            self.tx.flush();
        }
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            if self.ready(want)? {
                return Ok(());
            }
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(64) {
                std::hint::spin_loop();
                continue;
            }
            let now = Instant::now();
            if self.seg.state(1 - self.side).load(Ordering::Relaxed) != STATE_OPEN
                || now - self.last_check >= self.liveness
            {
                self.peer_check(want)?;
            }
            if let Some(d) = deadline
                && now >= d
            {
                return Err(ShmError::WouldBlock);
            }
            let sleep = match self.wait {
                WaitMode::BusyPoll => false,
                WaitMode::Adaptive { spin } => now - start >= spin,
            };
            if !sleep {
                continue;
            }
            if self.arm(want)? == Arm::Ready {
                return Ok(());
            }
            let nap = self.nap(deadline);
            futex::wait(self.word(want), 1, nap);
            self.word(want).store(0, Ordering::Relaxed);
            self.peer_check(want)?;
        }
    }

    /// The peer's liveness, except that frames it committed before closing still count.
    fn check_peer_or_data(&mut self) -> Result<()> {
        match self.check_peer() {
            Ok(()) => Ok(()),
            Err(e) => match self.rx.has_data() {
                Ok(true) => Ok(()),
                Ok(false) => Err(e),
                Err(c) => self.fail(c),
            },
        }
    }

    // ---- event-loop integration ----

    /// Announce that this end will sleep until a frame arrives. `None`: one is already there,
    /// do not sleep. `Some(word)`: wait on `word` (see [`FutexWord`]); the peer's next commit
    /// wakes it. Used by event loops (the runtime arms io_uring's `FUTEX_WAIT` with it).
    pub fn recv_wakeup(&mut self) -> Result<Option<FutexWord>> {
        self.usable()?;
        match self.rx.arm_data_wait() {
            Ok(Arm::Ready) => Ok(None),
            Ok(Arm::Wait) => Ok(Some(FutexWord(self.rx.ring().data_waiter()))),
            Err(e) => self.fail(e),
        }
    }

    /// Announce that this end will sleep until a `len`-byte frame fits; as
    /// [`ShmStream::recv_wakeup`].
    pub fn send_wakeup(&mut self, len: usize) -> Result<Option<FutexWord>> {
        self.usable()?;
        match self.tx.arm_space_wait(len) {
            Ok(Arm::Ready) => Ok(None),
            Ok(Arm::Wait) => Ok(Some(FutexWord(self.tx.ring().space_waiter()))),
            Err(e) => self.fail(e),
        }
    }

    /// Whether the peer has released every frame sent so far.
    pub fn is_send_drained(&mut self) -> Result<bool> {
        match self.tx.is_drained() {
            Ok(d) => Ok(d),
            Err(e) => self.fail(e),
        }
    }

    /// Close this end: the peer receives what was sent, then [`ShmError::PeerClosed`].
    /// Dropping the stream does the same.
    pub fn shutdown(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.seg
            .state(self.side)
            .store(STATE_CLOSED, Ordering::Release);
        fence(Ordering::SeqCst);
        // Wake the peer wherever it sleeps on this connection.
        for w in [self.tx.ring().data_waiter(), self.rx.ring().space_waiter()] {
            w.store(0, Ordering::Relaxed);
            futex::wake(w);
        }
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
    }
}

impl Drop for ShmStream {
    fn drop(&mut self) {
        self.shutdown();
    }
}
