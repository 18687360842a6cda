//! The connection state machine, both sides, fed arbitrary peer bytes interleaved with time
//! passing and application calls. Checks that nothing panics, that every byte the connection
//! emits is well-formed, and that buffers stay bounded. Output is taken frame by frame, or
//! (as the runtime does) the PONGs answered in place in one piece first.
#![no_main]

use std::sync::Arc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use valkyrie_protocol::codec::Decoder;
use valkyrie_protocol::message::{Hello, HelloAck, Payload};
use valkyrie_protocol::streams::{SchedulerLimits, StreamClass, WindowStrategy};
use valkyrie_protocol::{Config, Connection, Frame, MessageType, SecurityMode, SendOptions, Side};

fn config(name: &str) -> Arc<Config> {
    Arc::new(Config {
        max_frame: 4096,
        heartbeat: Duration::from_millis(100),
        max_streams: 8,
        window: WindowStrategy::Adaptive { initial: 2048, min: 1024, max: 8192 },
        scheduler: SchedulerLimits { max_critical_frames: 64, max_critical_bytes: 16 * 1024, max_frames: 64, max_bytes: 32 * 1024, max_low_frames: 16 },
        ..Config::new(name)
    })
}

fn prologue(side: Side) -> Vec<u8> {
    let payload = match side {
        // We fuzz a server: give it a valid HELLO first so the fuzzer reaches established states.
        Side::Server => Hello {
            versions: vec![2],
            node_id: "fuzz".into(),
            security: vec![SecurityMode::Plaintext],
            max_frame: 4096,
            heartbeat_ms: 100,
            stream_window: Some(2048),
            max_streams: Some(8),
            compression: vec![],
            host: None,
            quic_streams: false,
        }
        .to_bytes(),
        Side::Client => HelloAck {
            version: 2,
            node_id: "fuzz".into(),
            security: SecurityMode::Plaintext,
            max_frame: 4096,
            heartbeat_ms: 100,
            stream_window: Some(2048),
            max_streams: Some(8),
            compression: None,
            host: None,
            quic_streams: false,
        }
        .to_bytes(),
    };
    let t = if side == Side::Server { MessageType::Hello } else { MessageType::HelloAck };
    let mut v = Vec::new();
    Frame::new(t, 0, payload).encode(&mut v);
    v
}

/// Poll events, then write what the connection has to send: the PONGs answered in place in
/// one piece first when `gathered` (as the runtime does), else every frame one at a time.
fn drain(conn: &mut Connection, check: &mut Decoder, gathered: bool) {
    while conn.poll_event().is_some() {}
    if gathered {
        let mut answers = bytes::BytesMut::new();
        conn.write_answers(&mut answers);
        check.feed(&answers);
        while let Some(f) = check.decode().expect("the connection emits well-formed PONGs") {
            assert_eq!(f.msg_type(), MessageType::Pong);
        }
    }
    while let Some(t) = conn.poll_transmit() {
        let mut w = Vec::new();
        t.write_to(&mut w);
        check.feed(&w);
        while let Some(f) = check.decode().expect("the connection emits well-formed frames") {
            assert!(f.msg_type().is_known());
        }
    }
    // Events produced while transmitting (Closed after the final frame).
    while conn.poll_event().is_some() {}
}

fuzz_target!(|data: &[u8]| {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    let Some((&ctl, rest)) = data.split_first() else { return };
    let side = if ctl & 1 == 0 { Side::Server } else { Side::Client };
    let gathered = ctl & 4 != 0;
    let mut now = base;
    let mut conn = Connection::new(side, config("node"), now, 1_750_000_000);
    let mut check = Decoder::new(valkyrie_protocol::MAX_FRAME_LIMIT);
    drain(&mut conn, &mut check, gathered);
    if ctl & 2 == 0 {
        conn.handle_input(&prologue(side), now);
        drain(&mut conn, &mut check, gathered);
    }
    // The rest is a sequence of operations: [op, len, bytes...].
    let mut i = 0;
    while i < rest.len() {
        let op = rest[i];
        let n = rest.get(i + 1).copied().unwrap_or(0);
        let len = usize::from(n);
        let end = (i + 2 + len).min(rest.len());
        let arg = rest.get(i + 2..end).unwrap_or(&[]);
        i = end.max(i + 2);
        match op % 8 {
            0..=3 => conn.handle_input(arg, now),
            4 => {
                now += Duration::from_millis(u64::from(n) * 4);
                conn.handle_timeout(now);
            }
            5 => {
                let stream = u32::from(n) * 7;
                let t = MessageType::from_u8(arg.first().copied().unwrap_or(0x31));
                let _ = conn.send(stream, t, Bytes::copy_from_slice(arg), SendOptions::default());
            }
            6 => match len % 5 {
                0 => drop(conn.ping(Bytes::copy_from_slice(arg))),
                1 => drop(conn.open_stream(StreamClass::Job, None)),
                2 => drop(conn.reset_stream(u32::from(n), 306, "fuzz")),
                3 => conn.release(u32::from(n) * 2 + 1, arg.len() as u64),
                _ => drop(conn.finish_stream(u32::from(n))),
            },
            _ => {
                if len == 255 {
                    conn.close(0, "fuzz");
                } else if len == 254 {
                    conn.handle_eof(now);
                }
            }
        }
        drain(&mut conn, &mut check, gathered);
        assert!(conn.buffered_input() <= 24 + 4096 + 255);
        if let Some(t) = conn.poll_timeout() {
            assert!(t >= base);
        }
    }
});
