//! In-memory harness: two connections joined by a lossless pipe, with a controllable clock.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use valkyrie_protocol::codec::Decoder;
use valkyrie_protocol::message::{ErrorPayload, Payload};
use valkyrie_protocol::{Config, Connection, Event, Frame, MessageType, Side};

pub const UNIX: u64 = 1_750_000_000;

pub struct Pair {
    pub client: Connection,
    pub server: Connection,
    pub now: Instant,
    pub client_events: Vec<Event>,
    pub server_events: Vec<Event>,
}

impl Pair {
    pub fn new(client: Config, server: Config) -> Pair {
        let now = Instant::now();
        Pair {
            client: Connection::new(Side::Client, Arc::new(client), now, UNIX),
            server: Connection::new(Side::Server, Arc::new(server), now, UNIX),
            now,
            client_events: Vec::new(),
            server_events: Vec::new(),
        }
    }

    /// A connected plaintext pair with default configs.
    pub fn connected() -> Pair {
        Self::connected_with(Config::new("client"), Config::new("server"))
    }

    pub fn connected_with(client: Config, server: Config) -> Pair {
        let mut p = Pair::new(client, server);
        p.run();
        assert!(p.client.is_established(), "client: {:?}", p.client_events);
        assert!(p.server.is_established(), "server: {:?}", p.server_events);
        p.client_events.clear();
        p.server_events.clear();
        p
    }

    pub fn advance(&mut self, d: Duration) {
        self.now += d;
    }

    /// Shuttle frames both ways until neither side has anything to send.
    pub fn run(&mut self) {
        for _ in 0..1000 {
            let a = drain(&mut self.client);
            if !a.is_empty() {
                self.server.handle_input(&a, self.now);
            }
            self.server_events
                .extend(std::iter::from_fn(|| self.server.poll_event()));
            let b = drain(&mut self.server);
            if !b.is_empty() {
                self.client.handle_input(&b, self.now);
            }
            self.client_events
                .extend(std::iter::from_fn(|| self.client.poll_event()));
            if a.is_empty()
                && b.is_empty()
                && self.client.queued_frames() == 0
                && self.server.queued_frames() == 0
            {
                return;
            }
        }
        panic!("pair did not settle");
    }

    /// Fire both sides' timers due now.
    pub fn timers(&mut self) {
        if self.client.poll_timeout().is_some_and(|t| t <= self.now) {
            self.client.handle_timeout(self.now);
        }
        if self.server.poll_timeout().is_some_and(|t| t <= self.now) {
            self.server.handle_timeout(self.now);
        }
        self.client_events
            .extend(std::iter::from_fn(|| self.client.poll_event()));
        self.server_events
            .extend(std::iter::from_fn(|| self.server.poll_event()));
    }

    pub fn take_server_frames(&mut self) -> Vec<Frame> {
        take_frames(&mut self.server_events)
    }

    pub fn take_client_frames(&mut self) -> Vec<Frame> {
        take_frames(&mut self.client_events)
    }
}

pub fn take_frames(events: &mut Vec<Event>) -> Vec<Frame> {
    let mut frames = Vec::new();
    events.retain(|e| match e {
        Event::Frame(f) => {
            frames.push(f.clone());
            false
        }
        _ => true,
    });
    frames
}

/// Everything `conn` wants to transmit, as wire bytes.
pub fn drain(conn: &mut Connection) -> Vec<u8> {
    let mut buf = BytesMut::new();
    conn.write_transmits(&mut buf, usize::MAX);
    buf.to_vec()
}

/// Decode wire bytes into frames (test side, permissive limit).
pub fn frames_of(wire: &[u8]) -> Vec<Frame> {
    let mut d = Decoder::new(valkyrie_protocol::MAX_FRAME_LIMIT);
    d.feed(wire);
    std::iter::from_fn(|| d.decode().expect("our own output decodes")).collect()
}

/// The codes of the ERROR frames in `wire`.
pub fn error_codes(wire: &[u8]) -> Vec<u16> {
    frames_of(wire)
        .into_iter()
        .filter(|f| f.msg_type() == MessageType::Error)
        .map(|f| ErrorPayload::from_bytes(&f.payload).unwrap().code)
        .collect()
}

pub fn raw(msg_type: MessageType, stream: u32, payload: impl Into<Bytes>) -> Vec<u8> {
    let mut v = Vec::new();
    Frame::new(msg_type, stream, payload).encode(&mut v);
    v
}

/// Feed raw bytes to `conn`, drain its events, and return (events, transmitted wire bytes).
pub fn inject(conn: &mut Connection, bytes: &[u8], now: Instant) -> (Vec<Event>, Vec<u8>) {
    conn.handle_input(bytes, now);
    let events: Vec<Event> = std::iter::from_fn(|| conn.poll_event()).collect();
    let wire = drain(conn);
    (events, wire)
}
