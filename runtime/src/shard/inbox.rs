//! Messages from the other shards through the mesh: frames and closes for this shard's
//! connections, security failures and bans, and messages for this shard's service. Each
//! inbound ring is drained in one batch of what it held when the turn began.

use super::Shard;
use crate::conn::Life;
use crate::mesh::MeshMsg;

impl Shard {
    /// Drain every inbound mesh ring. Returns whether anything came.
    pub(super) fn drain_mesh(&mut self) -> bool {
        let mut any = false;
        for i in 0..self.mesh_rx.len() {
            // What the ring holds now: messages pushed meanwhile wait for the next turn.
            let n = self.mesh_rx[i].slots();
            any |= n > 0;
            for _ in 0..n {
                let Ok(msg) = self.mesh_rx[i].pop() else {
                    break;
                };
                self.on_mesh(msg);
            }
        }
        any
    }

    fn on_mesh(&mut self, msg: MeshMsg) {
        match msg {
            MeshMsg::Send {
                to,
                stream_id,
                msg_type,
                payload,
                opts,
            } => {
                if let Some(c) = self.conns.live(to.slot, to.generation)
                    && c.life != Life::Refused
                {
                    if let Some(h) = c.http() {
                        let now = self.timers.tick(self.now);
                        match h.gateway_answer(msg_type, &payload, &opts, now) {
                            Some(status) => crate::service::count(&self.metrics, status),
                            None => tracing::debug!(
                                shard = self.id,
                                "routed frame for an HTTP connection dropped"
                            ),
                        }
                    } else if let Err(e) = c.proto.send(stream_id, msg_type, payload, opts) {
                        tracing::debug!(shard = self.id, error = %e, "routed frame refused");
                    }
                    self.mark(to.slot);
                }
            }
            MeshMsg::Close { to, code, reason } => {
                if let Some(c) = self.conns.live(to.slot, to.generation) {
                    c.proto.close(code, &reason);
                    self.mark(to.slot);
                }
            }
            MeshMsg::Failure { ip } => self.count_failure(ip),
            MeshMsg::Ban { ip, until } => {
                if let Some(g) = self.guard.as_mut() {
                    g.ban(ip, until, self.now);
                }
            }
            MeshMsg::Datagram(d) => {
                let ecn = d.ecn.and_then(quinn_proto::EcnCodepoint::from_bits);
                // The owner's listener of the same endpoint (client endpoints are never shared).
                if let Some(li) = self
                    .quic
                    .listeners
                    .iter()
                    .position(|l| l.node_endpoint == d.endpoint)
                    .filter(|_| d.endpoint != crate::conn::NO_ENDPOINT)
                {
                    self.quic_datagram(li as u8, d.from, ecn, d.data, false);
                }
            }
            MeshMsg::User { from, msg } => {
                let (service, mut ctx) = self.ctx();
                service.on_message(&mut ctx, from, msg);
            }
        }
    }
}
