//! Processing a dirty connection at the end of a turn: its events go to the service (after
//! the shard's own bookkeeping: metrics, the audit log, intrusion detection), what it queued
//! is flushed, its timer is re-armed, and a connection that has ended and drained is closed.

use std::net::IpAddr;

use valkyrie_protocol::{CloseReason, ErrorCode, Event, Flags};

use super::Shard;
use crate::ConnRef;
use crate::Reply;
use crate::audit::AuditEvent;
use crate::conn::Io;
use crate::conn::requests::Matched;
use crate::guard::Escalation;
use crate::mesh::MeshMsg;
use crate::metrics::ShardMetrics;

impl Shard {
    pub(super) fn process_dirty(&mut self) {
        // A slot is in the dirty list at most once; processing may mark others (a service
        // sending to another connection), which this loop takes too.
        while let Some(slot) = self.conns.pop_dirty() {
            self.process(slot);
        }
    }

    /// Drain a connection's events into the service, send what it queued, re-arm its timer,
    /// and close it once it is drained.
    fn process(&mut self, slot: u32) {
        if self.conns.get(slot).is_some_and(|c| c.is_http()) {
            self.serve_http(slot);
            return;
        }
        // Each turn consumes events decoded from input already received (the protocol answers
        // what it decodes without growing its queues past their bounds), so this ends when
        // the input does.
        loop {
            loop {
                let Some(c) = self.conns.get_mut(slot) else {
                    return;
                };
                if !c.is_open() {
                    return;
                }
                let Some(ev) = c.proto.poll_event() else {
                    break;
                };
                self.dispatch(slot, ev);
            }
            self.flush(slot);
            let Some(c) = self.conns.get_mut(slot) else {
                return;
            };
            match c.proto.poll_event() {
                Some(ev) => self.dispatch(slot, ev),
                None => break,
            }
        }
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        let output_waits = match &c.io {
            Io::Socket(s) => s.send.in_kernel(),
            Io::Shm(s) => s.pending.is_some(),
            Io::Quic(q) => q.pending.is_some(),
        };
        if c.proto.stream_report_due() {
            self.report_streams(slot, false);
        }
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        if c.proto.is_drained() && !output_waits {
            self.start_close(slot);
            return;
        }
        if c.fresh || self.cfg.shrink_when_drained {
            // Nothing is buffered or queued now (the send buffer holds what is in flight):
            // release the connection's buffers so that a quiet connection holds none.
            c.fresh = false;
            c.proto.shrink_buffers();
        }
        self.steer_input(slot);
        self.arm_timer(slot);
    }

    pub(super) fn dispatch(&mut self, slot: u32, ev: Event) {
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        let conn = ConnRef {
            shard: self.id as u16,
            slot,
            generation: c.generation,
        };
        let ip = c.peer_ip();
        let link = c.link();
        let mut span = None;
        match &ev {
            Event::Connected(peer) => {
                c.connected = true;
                c.fresh = true;
                // From the fields, not `&self`: the connection is borrowed.
                let now_us = super::micros_since(self.timers.epoch(), self.now);
                let took = now_us.wrapping_sub(c.opened_us);
                let mode = peer.security.as_str();
                let i = crate::metrics::SECURITY_LABELS
                    .iter()
                    .position(|m| *m == mode)
                    .unwrap_or(crate::metrics::SECURITY_LABELS.len() - 1);
                self.metrics.handshakes.observe(i, u64::from(took));
                if self.cfg.audit.is_some() {
                    self.audit(
                        serde_json::json!({"event": AuditEvent::HandshakeOk.as_str(),
                        "peer": ip.map(|i| i.to_string()), "node_id": peer.node_id,
                        "mode": peer.security.as_str(), "identity": peer.identity}),
                    );
                }
            }
            Event::Denied {
                identity,
                msg_type,
                stream_id,
            } => {
                ShardMetrics::add(&self.metrics.frames_refused[msg_type.to_u8() as usize], 1);
                self.audit(serde_json::json!({"event": AuditEvent::Denied.as_str(),
                    "peer": ip.map(|i| i.to_string()), "identity": identity,
                    "type": msg_type.name(), "stream": stream_id,
                    "code": ErrorCode::UNAUTHORISED.0}));
            }
            Event::Frame(f) => {
                self.metrics.frame_in(&f.header, f.payload.len());
                if f.header.flags.contains(Flags::TRACE) {
                    let via = crate::metrics::TRANSPORTS[c.transport() as usize];
                    span = self
                        .spans
                        .begin(self.id, slot, conn.generation, f, via, true);
                }
                let h = &f.header;
                if h.correlation_id != 0 && !h.flags.contains(Flags::RESPONSE) {
                    let at = super::micros_since(self.timers.epoch(), self.now);
                    self.latency.request_in(
                        slot,
                        conn.generation,
                        h.correlation_id,
                        h.msg_type.to_u8(),
                        at,
                    );
                }
            }
            Event::Closed(reason) => {
                match reason {
                    CloseReason::HandshakeTimeout => {
                        ShardMetrics::add(&self.metrics.handshake_timeouts, 1)
                    }
                    CloseReason::HeartbeatTimeout => {
                        ShardMetrics::add(&self.metrics.heartbeat_timeouts, 1)
                    }
                    CloseReason::ProtocolError { code, .. }
                        if *code == ErrorCode::SLOW_CONSUMER =>
                    {
                        ShardMetrics::add(&self.metrics.slow_consumers, 1)
                    }
                    _ => {}
                }
                ShardMetrics::add(&self.metrics.shed_frames, c.proto.shed_frames());
                // The status page's recent events: connections that ended by a fault.
                if !matches!(
                    reason,
                    CloseReason::Local { .. }
                        | CloseReason::Peer { .. }
                        | CloseReason::TransportClosed
                ) {
                    let ms = self.node.ms(self.now);
                    self.metrics.note(
                        ms,
                        format!("shard {}: connection closed: {reason}", self.id),
                    );
                }
                if let Some((kind, code, message)) = AuditEvent::of_close(reason, c.connected) {
                    let mut record = serde_json::json!({"event": kind.as_str(),
                        "code": code.0, "reason": message});
                    self.security_failure(&mut record, ip);
                }
            }
            _ => {}
        }
        if let Event::Upgrade {
            kind,
            to,
            correlation_id,
            ..
        } = &ev
        {
            // The node's own business (moving the connection), not the service's.
            if link.is_none() {
                self.on_upgrade(slot, kind.clone(), to, *correlation_id);
            }
            return;
        }
        let ev = match self.take_reply(slot, conn, ev) {
            Some(ev) => ev,
            None => return,
        };
        let (service, mut ctx) = self.ctx();
        match ev {
            Event::Connected(peer) => {
                service.on_connect(&mut ctx, conn, &peer);
                if let Some(link) = link {
                    self.link_up(link, conn);
                }
            }
            Event::Frame(f) => {
                let _entered = span.as_ref().map(tracing::Span::enter);
                service.on_frame(&mut ctx, conn, f)
            }
            Event::Closed(reason) => {
                service.on_close(&mut ctx, conn, &reason);
                if let Some(link) = link {
                    self.link_down(link, &reason);
                }
            }
            other => service.on_event(&mut ctx, conn, &other),
        }
    }

    /// Hand the service the reply an event is to one of its requests (and `None` back), or
    /// the event itself when it is not one. A connection's end settles every request still
    /// in flight on it, before the service hears of the end.
    fn take_reply(&mut self, slot: u32, conn: ConnRef, ev: Event) -> Option<Event> {
        let Some(requests) = self
            .conns
            .get_mut(slot)
            .and_then(|c| c.extra.as_mut())
            .map(|e| &mut e.requests)
        else {
            return Some(ev);
        };
        let (corr, stream_id, reply) = match ev {
            Event::Frame(f)
                if f.header.flags.contains(Flags::RESPONSE) && f.header.correlation_id != 0 =>
            {
                (
                    f.header.correlation_id,
                    f.header.stream_id,
                    Reply::Answer(f),
                )
            }
            Event::PeerError {
                code,
                message,
                correlation_id,
                stream_id,
            } if correlation_id != 0 => (correlation_id, stream_id, Reply::Error { code, message }),
            Event::Closed(reason) => {
                let lost = requests.drain();
                ShardMetrics::add(&self.metrics.requests_lost, lost.len() as u64);
                for corr in lost {
                    let (service, mut ctx) = self.ctx();
                    service.on_reply(&mut ctx, conn, corr, Reply::Lost(reason.clone()));
                }
                return Some(Event::Closed(reason));
            }
            other => return Some(other),
        };
        match requests.answer(corr) {
            Matched::Pending => {
                let counter = match reply {
                    Reply::Answer(_) => &self.metrics.requests_answered,
                    _ => &self.metrics.requests_errored,
                };
                ShardMetrics::add(counter, 1);
                let (service, mut ctx) = self.ctx();
                service.on_reply(&mut ctx, conn, corr, reply);
                None
            }
            Matched::Late => {
                ShardMetrics::add(&self.metrics.requests_late, 1);
                None
            }
            Matched::Unknown => Some(match reply {
                Reply::Answer(f) => Event::Frame(f),
                Reply::Error { code, message } => Event::PeerError {
                    code,
                    message,
                    stream_id,
                    correlation_id: corr,
                },
                _ => unreachable!("only answers and errors are matched"),
            }),
        }
    }

    /// Send a record to the audit log, with this shard's id.
    pub(super) fn audit(&self, mut v: serde_json::Value) {
        if let Some(log) = &self.cfg.audit {
            v["shard"] = serde_json::Value::from(self.id);
            log.record(v);
        }
    }

    /// Audit a failure (`record` gets the peer's address) and count it against the address.
    pub(super) fn security_failure(&mut self, record: &mut serde_json::Value, ip: Option<IpAddr>) {
        record["peer"] = ip.map(|i| i.to_string()).into();
        self.audit(record.take());
        if let Some(ip) = ip {
            self.count_failure(ip);
        }
    }

    /// Count a security failure against an address; ban it when over the limit and tell the
    /// other shards.
    pub(super) fn count_failure(&mut self, ip: IpAddr) {
        if self.guard.is_none() {
            return;
        }
        // Each address is counted by one shard (its home, by hash), so that failures spread
        // over shards by the kernel still add up; the home shard broadcasts the ban.
        let home = {
            use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
            BuildHasherDefault::<DefaultHasher>::default().hash_one(ip) as usize
                % self.mesh.shards().max(1)
        };
        if home != self.id {
            if self.mesh.push(home, MeshMsg::Failure { ip }).is_err() {
                ShardMetrics::add(&self.metrics.mesh_full, 1);
            }
            return;
        }
        let Some(escalation) = self.guard.as_mut().map(|g| g.failure(ip, self.now)) else {
            return;
        };
        let until = match escalation {
            Escalation::Counted | Escalation::Trusted => return,
            Escalation::Throttled(d) => {
                ShardMetrics::add(&self.metrics.guard_throttles, 1);
                let reason = "repeated security failures";
                tracing::warn!(shard = self.id, %ip, reason, seconds = d.as_secs(),
                    "address throttled: one connection per throttle interval");
                self.audit(serde_json::json!({"event": AuditEvent::Throttle.as_str(),
                    "peer": ip.to_string(), "reason": reason, "seconds": d.as_secs()}));
                return;
            }
            Escalation::Banned(until) => until,
        };
        ShardMetrics::add(&self.metrics.guard_bans, 1);
        let secs = until.saturating_duration_since(self.now).as_secs();
        let reason = "too many security failures";
        tracing::warn!(shard = self.id, %ip, reason, seconds = secs, "address banned");
        self.audit(serde_json::json!({"event": AuditEvent::Ban.as_str(),
            "peer": ip.to_string(), "reason": reason, "seconds": secs}));
        for to in (0..self.mesh.shards()).filter(|&to| to != self.id) {
            if self.mesh.push(to, MeshMsg::Ban { ip, until }).is_err() {
                ShardMetrics::add(&self.metrics.mesh_full, 1);
            }
        }
    }

    /// Carry what changed in a connection's streams into the shard's gauges: open streams by
    /// class, and the receive windows granted. With `gone`, the connection is leaving: what
    /// it had open is taken back out.
    pub(super) fn report_streams(&mut self, slot: u32, gone: bool) {
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        let mut delta = [0i64; 5];
        let windows = &self.metrics.windows;
        c.proto.take_stream_report(&mut delta, |class, w| {
            windows.observe(class.index(), u64::from(w))
        });
        if gone {
            c.proto.forget_stream_report(&mut delta);
        }
        for (gauge, d) in self.metrics.streams_active.iter().zip(delta) {
            if d != 0 {
                gauge.fetch_add(d, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}
