//! What a connection's protocol has to send, taken into a send buffer and counted: the one
//! place a socket's flush and a WebSocket's framing both take frames from.

use bytes::BytesMut;
use valkyrie_protocol::Connection;

use crate::metrics::{Answers, ShardMetrics};

/// Move what `proto` has to send into `buf`: the PONGs it answers in place, then queued
/// frames until `buf` holds `batch` bytes; each is counted, answers timed (`answers`).
pub(super) fn protocol_output(
    proto: &mut Connection,
    metrics: &ShardMetrics,
    answers: &mut Answers<'_>,
    buf: &mut BytesMut,
    batch: usize,
) {
    let before = buf.len();
    let pongs = proto.write_answers(buf);
    if pongs > 0 {
        metrics.pongs_out(u64::from(pongs), (buf.len() - before) as u64);
    }
    while buf.len() < batch
        && let Some(t) = proto.poll_transmit()
    {
        metrics.transmitted(&t, answers);
        t.write_to(buf);
    }
}

/// Move `proto`'s output into `buf` up to and with its UPGRADE fence (answers in place first:
/// they answer what came before). Returns whether the fence was taken.
pub(super) fn output_to_fence(
    proto: &mut Connection,
    metrics: &ShardMetrics,
    answers: &mut Answers<'_>,
    buf: &mut BytesMut,
) -> bool {
    let before = buf.len();
    let pongs = proto.write_answers(buf);
    if pongs > 0 {
        metrics.pongs_out(u64::from(pongs), (buf.len() - before) as u64);
    }
    while let Some(t) = proto.poll_transmit() {
        metrics.transmitted(&t, answers);
        t.write_to(buf);
        if valkyrie_protocol::is_upgrade_fence(&t) {
            return true;
        }
    }
    false
}
