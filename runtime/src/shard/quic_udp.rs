//! A shard's QUIC datagrams through its ring: the multishot `recvmsg` of each listener's
//! UDP socket into the provided 64 KiB buffers (a GRO burst cut at its segment size), and the
//! bounded pool of `sendmsg`s a connection's `poll_transmit` fills (up to 16 datagrams of one
//! size per send with `UDP_SEGMENT`, one at a time once the device refused GSO).

use bytes::BytesMut;
use io_uring::cqueue;
use quinn_proto::Transmit;

use super::Shard;
use super::quic::{MAX_SENDS, UDP_BGID, UDP_BUF, UDP_BUFS, qconn};
use crate::metrics::ShardMetrics;
use crate::quic::udp::{MAX_GSO_SEGMENTS, UdpSend};
use crate::uring::{BufRing, Op, ud};

impl Shard {
    /// Register the UDP receive buffers and arm every QUIC listener's receive.
    pub(super) fn start_quic(&mut self) -> std::io::Result<()> {
        if self.quic.listeners.is_empty() {
            return Ok(());
        }
        self.quic_bufs()?;
        for li in 0..self.quic.listeners.len() {
            self.arm_udp_recv(li as u8);
        }
        Ok(())
    }

    /// The provided buffers every QUIC socket of the shard receives into (registered once).
    pub(super) fn quic_bufs(&mut self) -> std::io::Result<()> {
        if self.quic.bufs.is_none() {
            self.quic.bufs = Some(BufRing::whole(
                self.ring.inner(),
                UDP_BGID,
                UDP_BUFS,
                UDP_BUF,
            )?);
        }
        Ok(())
    }

    pub(super) fn arm_udp_recv(&mut self, li: u8) {
        if self.stopping {
            return;
        }
        let Some(l) = self.quic.listeners.get_mut(li as usize) else {
            return;
        };
        if l.armed {
            return;
        }
        l.armed = true;
        let e = l
            .hdr
            .entry(&l.fd, UDP_BGID, ud(Op::UdpRecv, u32::from(li), 0));
        self.ring.push(e);
    }

    /// A UDP receive completed: each datagram goes to its owner shard or this endpoint.
    pub(super) fn on_udp_recv(&mut self, li: u8, res: i32, flags: u32) {
        let more = cqueue::more(flags);
        if !more && let Some(l) = self.quic.listeners.get_mut(li as usize) {
            l.armed = false;
        }
        if let Some(bid) = cqueue::buffer_select(flags) {
            if res > 0 {
                self.udp_datagrams(li, bid, res as usize);
            }
            if let Some(b) = self.quic.bufs.as_mut() {
                b.release(bid, res.max(0) as usize, flags);
            }
        } else if res < 0 && res != -libc::ENOBUFS && res != -libc::ECANCELED {
            tracing::debug!(shard = self.id, error = res, "udp receive");
        }
        if !more {
            self.arm_udp_recv(li);
        }
    }

    fn udp_datagrams(&mut self, li: u8, bid: u16, len: usize) {
        let Some(bufs) = self.quic.bufs.as_ref() else {
            return;
        };
        let buf = bufs.data(bid, len);
        let Some(l) = self.quic.listeners.get(li as usize) else {
            return;
        };
        let Some(got) = l.hdr.parse(buf) else {
            return;
        };
        ShardMetrics::add(&self.metrics.bytes_in, got.payload.len() as u64);
        let seg = got.segment.unwrap_or(got.payload.len()).max(1);
        // One copy of the burst; each datagram is a view of it (QUIC decrypts in place).
        let mut all = BytesMut::from(got.payload);
        let (from, ecn) = (got.from, got.ecn);
        // A client endpoint's socket is this shard's alone: nothing there is another's.
        let shared = l.node_endpoint != crate::conn::NO_ENDPOINT;
        while !all.is_empty() {
            let d = all.split_to(seg.min(all.len()));
            self.quic_datagram(li, from, ecn, d, shared);
        }
    }

    /// Hand `buf[..t.size]` to the kernel as one send (several datagrams with GSO).
    pub(super) fn udp_send(&mut self, li: u8, t: Transmit, buf: &[u8]) -> bool {
        let Some(i) = self.take_send() else {
            return false;
        };
        let s = &mut self.quic.sends[i as usize];
        s.buf.clear();
        s.buf.extend_from_slice(&buf[..t.size]);
        self.submit_udp_send(li, i, t);
        true
    }

    fn take_send(&mut self) -> Option<u32> {
        if let Some(i) = self.quic.free_sends.pop() {
            return Some(i);
        }
        if self.quic.sends.len() >= MAX_SENDS {
            return None;
        }
        self.quic.sends.push(UdpSend::new());
        self.quic.send_segmented.push(false);
        Some(self.quic.sends.len() as u32 - 1)
    }

    fn submit_udp_send(&mut self, li: u8, i: u32, t: Transmit) {
        let Some(l) = self.quic.listeners.get(li as usize) else {
            self.quic.free_sends.push(i);
            return;
        };
        let segment = t.segment_size.filter(|&s| s < t.size);
        self.quic.send_segmented[i as usize] = segment.is_some();
        ShardMetrics::add(&self.metrics.bytes_out, t.size as u64);
        let e = self.quic.sends[i as usize].entry(
            &l.fd,
            t.destination,
            t.ecn,
            segment,
            ud(Op::UdpSend, i, 0),
        );
        self.ring.push(e);
    }

    /// A UDP send completed: its buffer is free again, and a connection waiting for one
    /// goes on.
    pub(super) fn on_udp_send(&mut self, i: u32, res: i32) {
        if res == -libc::EIO && self.quic.send_segmented.get(i as usize) == Some(&true) {
            // The device cannot segment: send one datagram at a time from now on (the lost
            // batch is sent again by QUIC).
            if self.quic.gso {
                tracing::info!(shard = self.id, "UDP GSO refused (EIO): off");
            }
            self.quic.gso = false;
        } else if res < 0 {
            tracing::debug!(shard = self.id, error = res, "udp send");
        }
        self.quic.free_sends.push(i);
        if let Some((li, h)) = self.quic.starved.pop() {
            self.quic.mark(li, h);
        }
    }

    /// Send what the QUIC connection has to send, a GSO batch at a time.
    pub(super) fn quic_transmit(&mut self, li: u8, h: u32) {
        let max = if self.quic.gso { MAX_GSO_SEGMENTS } else { 1 };
        loop {
            let Some(i) = self.take_send() else {
                if !self.quic.starved.contains(&(li, h)) {
                    self.quic.starved.push((li, h));
                }
                return;
            };
            let now = self.now;
            let Some(q) = qconn(&mut self.quic.listeners, li, h) else {
                self.quic.free_sends.push(i);
                return;
            };
            let mut buf = std::mem::take(&mut self.quic.sends[i as usize].buf);
            buf.clear();
            let t = q.conn.poll_transmit(now, max, &mut buf);
            self.quic.sends[i as usize].buf = buf;
            match t {
                Some(t) => self.submit_udp_send(li, i, t),
                None => {
                    self.quic.free_sends.push(i);
                    return;
                }
            }
        }
    }

    /// Unregister the UDP receive buffers (before the ring goes).
    pub(super) fn unregister_quic(&mut self) {
        if let Some(b) = &self.quic.bufs {
            b.unregister(self.ring.inner());
        }
    }
}
