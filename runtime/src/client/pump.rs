//! The blocking client's I/O loop: what is queued is written (reading meanwhile, so that a
//! node applying back-pressure is never waited on for ever), what arrives is fed to the
//! protocol and its events collected, and a call waits for the event it wants. An upgraded
//! connection writes and reads through `upgrade.rs`'s choice of socket or segment.

use std::io::{self, Read};
use std::time::{Duration, Instant};

use bytes::Buf;
use valkyrie_protocol::Event;

use super::{Client, ClientError, WRITE_CHUNK};

impl Client {
    /// Send everything queued. While the node takes no bytes, read what it sends: a node
    /// applying back-pressure stops reading a connection until its answers are read, so a
    /// client that only wrote would wait on it forever. Bytes not yet sent when this returns
    /// an error (a full event backlog, a timeout) stay first in line for the next call.
    pub(super) fn flush(&mut self) -> Result<(), ClientError> {
        let mut deadline = None;
        // Each turn writes, reads, or waits; bounded by the write timeout without progress.
        // At most WRITE_CHUNK bytes leave the connection's (bounded) queues ahead of the
        // socket, so what waits for the kernel stays bounded too.
        loop {
            if self.wbuf.is_empty() {
                self.conn.write_transmits(&mut self.wbuf, WRITE_CHUNK);
            }
            if self.wbuf.is_empty() && !self.wsock().has_pending_output() {
                return Ok(());
            }
            let wbuf = std::mem::take(&mut self.wbuf);
            let wrote = self.wsock().try_write(&wbuf);
            self.wbuf = wbuf;
            match wrote {
                Ok(0) if !self.wbuf.is_empty() => {
                    return Err(io::Error::from(io::ErrorKind::WriteZero).into());
                }
                Ok(n) => {
                    self.wbuf.advance(n);
                    deadline = None;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if self.fall_back(self.writes_to_segment()) {
                        continue;
                    }
                    return Err(self.broken(e));
                }
            }
            if self.read_now()? {
                deadline = None;
                continue;
            }
            let t = *deadline.get_or_insert_with(|| Instant::now() + self.cfg.write_timeout);
            if Instant::now() >= t {
                return Err(ClientError::Timeout);
            }
            if !self.cfg.busy_poll {
                self.wsock().wait_io(Duration::from_millis(10))?;
            }
        }
    }

    /// Take what the node has sent, without blocking (while a send waits). Returns whether
    /// anything came.
    pub(super) fn read_now(&mut self) -> Result<bool, ClientError> {
        if !self.conn.wants_input() {
            return Ok(false);
        }
        if self.events.len() >= self.cfg.max_pending_events {
            return Err(ClientError::Backlog(self.events.len()));
        }
        let mut rbuf = std::mem::take(&mut self.rbuf);
        let read = self.rsock().try_read(&mut rbuf);
        self.rbuf = rbuf;
        let n = match read {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                return Ok(false);
            }
            Err(e) => {
                if self.fall_back(self.reads_from_segment()) {
                    return Ok(false);
                }
                return Err(self.broken(e));
            }
        };
        self.take_input(n);
        match &self.closed {
            Some(r) => Err(ClientError::Closed(r.clone())),
            None => Ok(true),
        }
    }

    /// The socket failed: the connection is over (its Closed event is queued, as for an end
    /// of stream), and the error goes to the caller.
    pub(super) fn broken(&mut self, e: io::Error) -> ClientError {
        self.conn.handle_eof(Instant::now());
        self.collect();
        e.into()
    }

    /// Feed the `n` bytes just read into `rbuf` (`0`: end of stream) and collect events.
    pub(super) fn take_input(&mut self, n: usize) {
        let now = Instant::now();
        if n == 0 {
            self.conn.handle_eof(now);
        } else {
            self.conn.handle_input(&self.rbuf[..n], now);
        }
        self.collect();
    }

    pub(super) fn collect(&mut self) {
        while let Some(e) = self.conn.poll_event() {
            match &e {
                Event::Closed(r) => self.closed = Some(r.clone()),
                Event::Upgrade {
                    kind: valkyrie_protocol::UpgradeKind::Fence,
                    ..
                } => {
                    // The node's last frame on the socket: the rest comes on the segment.
                    self.node_fenced();
                    continue;
                }
                // A node asks nothing; a client does not move twice.
                Event::Upgrade {
                    kind: valkyrie_protocol::UpgradeKind::Request,
                    ..
                } => continue,
                _ => {}
            }
            self.events.push_back(e);
        }
    }

    /// One round: send what is queued, wait for input until `deadline` (or the next protocol
    /// timer), feed it in, run timers.
    pub(super) fn pump(&mut self, deadline: Instant) -> Result<(), ClientError> {
        self.flush()?;
        let now = Instant::now();
        if let Some(t) = self.conn.poll_timeout()
            && t <= now
        {
            self.conn.handle_timeout(now);
            self.collect();
            self.flush()?;
        }
        if self.closed.is_some() {
            return Ok(());
        }
        if self.events.len() >= self.cfg.max_pending_events {
            return Err(ClientError::Backlog(self.events.len()));
        }
        self.check_control()?;
        if self.closed.is_some() {
            return Ok(());
        }
        let until = self
            .conn
            .poll_timeout()
            .map_or(deadline, |t| t.min(deadline));
        let mut rbuf = std::mem::take(&mut self.rbuf);
        let read = self.read_into(&mut rbuf, until);
        self.rbuf = rbuf;
        let n = match read {
            Ok(Some(n)) => n,
            Ok(None) => return Ok(()),
            Err(e) => {
                if self.fall_back(self.reads_from_segment()) {
                    return Ok(());
                }
                return Err(self.broken(e));
            }
        };
        self.take_input(n);
        Ok(())
    }

    /// Read into `rbuf` until `until` (busy or blocking as configured): `None` when nothing
    /// came in time.
    pub(super) fn read_into(
        &mut self,
        rbuf: &mut [u8],
        until: Instant,
    ) -> io::Result<Option<usize>> {
        let busy = self.cfg.busy_poll;
        let sock = self.rsock();
        let n = if busy {
            loop {
                match sock.read(rbuf) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if Instant::now() >= until {
                            return Ok(None);
                        }
                        std::hint::spin_loop();
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        } else {
            let wait = until
                .saturating_duration_since(Instant::now())
                .max(Duration::from_micros(100));
            // An upgraded connection also looks at its socket now and then.
            let wait = if self.upgrade.is_some() {
                wait.min(Duration::from_millis(10))
            } else {
                wait
            };
            let sock = self.rsock();
            sock.set_read_timeout(Some(wait))?;
            match sock.read(rbuf) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
        };
        Ok(Some(n))
    }

    pub(super) fn wait_for<T>(
        &mut self,
        timeout: Duration,
        pick: impl FnMut(&Event) -> Option<Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        self.wait_until(Instant::now() + timeout, pick)
    }

    pub(super) fn wait_until<T>(
        &mut self,
        deadline: Instant,
        mut pick: impl FnMut(&Event) -> Option<Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        loop {
            if let Some(i) = self.events.iter().position(|e| pick(e).is_some()) {
                let e = self.events.remove(i).expect("index from position");
                return pick(&e).expect("matched above");
            }
            if let Some(r) = &self.closed {
                return Err(ClientError::Closed(r.clone()));
            }
            if Instant::now() >= deadline {
                return Err(ClientError::Timeout);
            }
            self.pump(deadline)?;
        }
    }
}
