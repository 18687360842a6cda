//! Opening a connection: HELLO / HELLO_ACK negotiation, then the security handshake of the
//! agreed mode, until the connection is established.

use std::time::Duration;

use super::{Connection, MIN_MAX_FRAME, Phase, duration_ms};
use crate::Tick;
use crate::error::ErrorCode;
use crate::frame::{Flags, Frame, MAX_FRAME_LIMIT, MessageType, VERSION};
use crate::message::{Hello, HelloAck, Payload, SecurityMode};
use crate::security::{
    HandshakeContext, HandshakeMessage, HandshakeStatus, RecordProtector, SecurityError,
    SecurityHandshake,
};
use crate::{CloseReason, Event, PeerInfo};

/// Where an opening connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Server: waiting for HELLO.
    AwaitingHello,
    /// Client: HELLO sent, waiting for HELLO_ACK.
    AwaitingHelloAck,
    /// The security handshake is running.
    Handshaking,
}

/// What a connection keeps only until it is established.
pub(super) struct Opening {
    pub(super) step: Step,
    /// HELLO and the handshake must be done by then.
    pub(super) deadline: Tick,
    /// Our HELLO as sent (client side), the start of the hello transcript.
    pub(super) hello_transcript: Option<Vec<u8>>,
    /// The identity a secure transport (TLS) verified, handed to the handshake.
    transport_identity: Option<String>,
    /// The security handshake in progress.
    handshake: Option<Box<dyn SecurityHandshake>>,
}

impl Opening {
    pub(super) fn new(step: Step, deadline: Tick) -> Opening {
        Opening {
            step,
            deadline,
            hello_transcript: None,
            transport_identity: None,
            handshake: None,
        }
    }
}

impl Connection {
    pub(super) fn opening_mut(&mut self) -> Option<&mut Opening> {
        match &mut self.phase {
            Phase::Opening(o) => Some(o),
            _ => None,
        }
    }

    /// Record the peer identity a secure transport under this connection verified (the
    /// certificate subject TLS checked, for `mtls`). Call it before feeding the first bytes
    /// decrypted by that transport; the `mtls` handshake completes with this identity.
    pub fn set_transport_identity(&mut self, identity: impl Into<String>) {
        // Once the connection is established (or closing) it is too late to matter.
        if let Some(o) = self.opening_mut() {
            o.transport_identity = Some(identity.into());
        }
    }

    /// A frame while opening, by step.
    pub(super) fn on_opening_frame(&mut self, step: Step, frame: Frame) {
        match step {
            Step::AwaitingHello => self.on_hello(frame),
            Step::AwaitingHelloAck => self.on_hello_ack(frame),
            Step::Handshaking => self.on_handshake_frame(frame),
        }
    }

    fn on_hello(&mut self, frame: Frame) {
        let h = frame.header;
        if h.msg_type != MessageType::Hello || h.stream_id != 0 {
            self.fatal(
                ErrorCode::UNEXPECTED_MESSAGE,
                format!("expected HELLO, got {}", h.msg_type),
                None,
            );
            return;
        }
        let hello = match Hello::from_bytes(&frame.payload) {
            Ok(hello) => hello,
            Err(e) => {
                self.fatal(ErrorCode::MALFORMED_PAYLOAD, e.to_string(), None);
                return;
            }
        };
        if !hello.versions.contains(&VERSION) {
            self.fatal(
                ErrorCode::UNSUPPORTED_VERSION,
                format!(
                    "versions {:?} offered, this node speaks {VERSION}",
                    hello.versions
                ),
                None,
            );
            return;
        }
        let Some(mode) = hello
            .security
            .iter()
            .find(|m| self.config.supports(m))
            .cloned()
        else {
            let offered: Vec<&str> = hello.security.iter().map(SecurityMode::as_str).collect();
            self.fatal(
                ErrorCode::UNSUPPORTED_SECURITY_MODE,
                format!("none of the offered security modes {offered:?} is accepted"),
                None,
            );
            return;
        };
        if hello.max_frame < MIN_MAX_FRAME {
            self.fatal(
                ErrorCode::NEGOTIATION_FAILED,
                format!(
                    "max_frame {} below the minimum {MIN_MAX_FRAME}",
                    hello.max_frame
                ),
                None,
            );
            return;
        }
        let heartbeat_ms = hello.heartbeat_ms.max(duration_ms(self.config.heartbeat));
        let ack = HelloAck {
            version: VERSION,
            node_id: self.config.node_id.clone(),
            security: mode.clone(),
            max_frame: self.config.max_frame.min(MAX_FRAME_LIMIT),
            heartbeat_ms,
            stream_window: Some(self.config.window.initial()),
            max_streams: Some(self.config.max_streams),
            compression: None,
            host: self.config.host.clone(),
            quic_streams: self.config.quic_streams && hello.quic_streams,
        }
        .to_bytes();
        let mut transcript = frame.payload.to_vec();
        transcript.extend_from_slice(&ack);
        self.queue_control(
            MessageType::HelloAck,
            0,
            ack,
            Flags::RESPONSE,
            h.correlation_id,
        );
        self.apply_peer_params(
            hello.node_id,
            mode,
            hello.max_frame,
            heartbeat_ms,
            hello.stream_window,
            hello.max_streams,
        );
        let same = matches!((&hello.host, &self.config.host), (Some(a), Some(b)) if a == b);
        let streams = self.config.quic_streams && hello.quic_streams;
        if let Some(p) = self.peer.as_mut() {
            p.same_host = same;
            p.quic_streams = streams;
        }
        self.start_security(transcript);
    }

    fn on_hello_ack(&mut self, frame: Frame) {
        let h = frame.header;
        match h.msg_type {
            MessageType::HelloAck if h.stream_id == 0 => {}
            MessageType::Close => {
                // The server closed before answering (a node that drains says "going away",
                // 502): the attempt ends with the server's code and reason.
                self.on_peer_close(&frame);
                return;
            }
            MessageType::Error => {
                self.on_peer_error(&frame);
                if !self.is_closed() {
                    // Anything the server says before HELLO_ACK ends the attempt.
                    self.enter_closed(CloseReason::PeerError {
                        code: ErrorCode::NEGOTIATION_FAILED,
                        message: "peer answered HELLO with ERROR".into(),
                    });
                }
                return;
            }
            other => {
                self.fatal(
                    ErrorCode::UNEXPECTED_MESSAGE,
                    format!("expected HELLO_ACK, got {other}"),
                    None,
                );
                return;
            }
        }
        let ack = match HelloAck::from_bytes(&frame.payload) {
            Ok(ack) => ack,
            Err(e) => {
                self.fatal(ErrorCode::MALFORMED_PAYLOAD, e.to_string(), None);
                return;
            }
        };
        if ack.version != VERSION {
            self.fatal(
                ErrorCode::UNSUPPORTED_VERSION,
                format!("peer chose version {}", ack.version),
                None,
            );
            return;
        }
        // A mode we offered but cannot run (no provider: a configuration `Config::validate`
        // refuses) is our fault, found in `start_security`; only a mode never offered is a
        // downgrade.
        if !self.config.security.contains(&ack.security) {
            self.fatal(
                ErrorCode::DOWNGRADE,
                format!(
                    "peer chose security mode {}, which was not offered",
                    ack.security
                ),
                None,
            );
            return;
        }
        if ack.max_frame < MIN_MAX_FRAME {
            self.fatal(
                ErrorCode::NEGOTIATION_FAILED,
                format!(
                    "max_frame {} below the minimum {MIN_MAX_FRAME}",
                    ack.max_frame
                ),
                None,
            );
            return;
        }
        let mut transcript = self
            .opening_mut()
            .and_then(|o| o.hello_transcript.take())
            .unwrap_or_default();
        transcript.extend_from_slice(&frame.payload);
        self.apply_peer_params(
            ack.node_id,
            ack.security,
            ack.max_frame,
            ack.heartbeat_ms,
            ack.stream_window,
            ack.max_streams,
        );
        let same = matches!((&ack.host, &self.config.host), (Some(a), Some(b)) if a == b);
        let streams = self.config.quic_streams && ack.quic_streams;
        if let Some(p) = self.peer.as_mut() {
            p.same_host = same;
            p.quic_streams = streams;
        }
        self.start_security(transcript);
    }

    fn apply_peer_params(
        &mut self,
        node_id: String,
        security: SecurityMode,
        max_frame: u32,
        heartbeat_ms: u32,
        stream_window: Option<u32>,
        max_streams: Option<u32>,
    ) {
        self.streams.set_peer_limits(
            stream_window.unwrap_or(self.config.window.initial()),
            max_streams.unwrap_or(self.config.max_streams),
        );
        self.peer = Some(PeerInfo {
            node_id,
            version: VERSION,
            security,
            identity: None,
            max_frame: max_frame.min(MAX_FRAME_LIMIT),
            heartbeat: (heartbeat_ms > 0).then(|| Duration::from_millis(u64::from(heartbeat_ms))),
            same_host: false,
            quic_streams: false,
        });
    }

    fn start_security(&mut self, hello_transcript: Vec<u8>) {
        if !matches!(self.phase, Phase::Opening(_)) {
            // Queuing the answer already ended the connection.
            return;
        }
        let Some(peer) = self.peer.as_ref() else {
            debug_assert!(false, "peer params are applied before security");
            return;
        };
        let mode = peer.security.clone();
        if mode == SecurityMode::Plaintext {
            self.establish(None, None);
            return;
        }
        let Some(provider) = self.config.provider(&mode).cloned() else {
            self.fatal(
                ErrorCode::UNSUPPORTED_SECURITY_MODE,
                format!("no handshake configured for {mode}"),
                None,
            );
            return;
        };
        let ctx = HandshakeContext {
            side: self.side,
            mode,
            local_node_id: self.config.node_id.clone(),
            peer_node_id: peer.node_id.clone(),
            hello_transcript,
            now: self.now(),
            unix_secs: u64::from(self.unix_time()),
            transport_identity: match &self.phase {
                Phase::Opening(o) => o.transport_identity.clone(),
                _ => None,
            },
        };
        let mut hs = provider.new_handshake(self.side);
        let mut out = Vec::new();
        let status = hs.start(&ctx, &mut out);
        if let Some(o) = self.opening_mut() {
            o.step = Step::Handshaking;
            o.handshake = Some(hs);
        }
        self.after_handshake_step(status, out);
    }

    fn on_handshake_frame(&mut self, frame: Frame) {
        let h = frame.header;
        match h.msg_type {
            MessageType::Error => self.on_peer_error(&frame),
            MessageType::Close => self.on_peer_close(&frame),
            t if t.is_handshake() && h.stream_id == 0 => {
                let now = self.now();
                let Some(hs) = self.opening_mut().and_then(|o| o.handshake.as_mut()) else {
                    return;
                };
                let mut out = Vec::new();
                let status = hs.handle(t, &frame.payload, now, &mut out);
                self.after_handshake_step(status, out);
            }
            other => self.fatal(
                ErrorCode::AUTH_REQUIRED,
                format!("{other} before the security handshake finished"),
                None,
            ),
        }
    }

    fn after_handshake_step(
        &mut self,
        status: Result<HandshakeStatus, SecurityError>,
        out: Vec<HandshakeMessage>,
    ) {
        for m in out {
            if !m.msg_type.is_handshake() {
                self.fatal(
                    ErrorCode::INTERNAL,
                    format!("handshake produced a {} frame", m.msg_type),
                    None,
                );
                return;
            }
            self.queue_control(m.msg_type, 0, m.payload, Flags::empty(), 0);
        }
        match status {
            Ok(HandshakeStatus::InProgress) => {}
            Ok(HandshakeStatus::Complete {
                peer_identity,
                protector,
            }) => {
                self.establish(peer_identity, protector);
            }
            Err(e) => {
                if let Some(o) = self.opening_mut() {
                    o.handshake = None;
                }
                self.fatal(e.code(), e.message, None);
            }
        }
    }

    fn establish(&mut self, identity: Option<String>, protector: Option<Box<dyn RecordProtector>>) {
        if !matches!(self.phase, Phase::Opening(_)) {
            return;
        }
        let Some(peer) = self.peer.as_mut() else {
            debug_assert!(
                false,
                "peer params are applied before the connection is established"
            );
            return;
        };
        peer.identity = identity;
        let connected = Event::Connected(peer.clone());
        self.protector = protector;
        self.phase = Phase::Established;
        self.last_rx = self.now;
        self.last_ping = self.now;
        self.missed = 0;
        self.push_event(connected);
        self.start_negotiation();
    }
}
