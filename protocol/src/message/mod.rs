//! Typed payloads for every message type.
//!
//! Structured payloads are MessagePack maps with snake_case string keys, written with
//! `rmp-serde`. They stay inside JSON's data model (binary fields are base64 strings, map keys
//! are strings), so [`to_json`] and [`from_json`] convert a payload to JSON and back without
//! loss. Unknown keys are ignored on decode; optional keys are omitted when empty.
//!
//! Data-plane payloads are raw bytes: PING and PONG (0–1024 bytes, echoed), STREAM_DATA (the
//! stream's bytes) and FILE_TRANSFER_CHUNK (an 8-byte big-endian offset, then the chunk).

mod payloads;

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Serialize, de::DeserializeOwned};

pub use payloads::*;

use crate::frame::MessageType;

/// Largest PING payload a peer may send; PONG echoes it.
pub const MAX_PING_PAYLOAD: usize = 1024;

/// A payload that could not be decoded or encoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// The MessagePack did not match the type's schema (answered with 104).
    #[error("malformed {msg_type} payload: {detail}")]
    Malformed {
        /// The message type whose payload failed.
        msg_type: MessageType,
        /// What was wrong.
        detail: String,
    },
    /// The type has no payload schema in this version (answered with 103).
    #[error("unknown message type {0}")]
    UnknownType(MessageType),
    /// JSON did not match the type's schema.
    #[error("JSON does not fit {msg_type}: {detail}")]
    Json {
        /// The message type.
        msg_type: MessageType,
        /// What was wrong.
        detail: String,
    },
}

impl MessageError {
    /// The SPEC code that answers this error when it came from a peer.
    pub fn code(&self) -> crate::ErrorCode {
        match self {
            MessageError::UnknownType(_) => crate::ErrorCode::UNKNOWN_MESSAGE_TYPE,
            _ => crate::ErrorCode::MALFORMED_PAYLOAD,
        }
    }
}

/// A typed payload with its message type.
pub trait Payload: Serialize + DeserializeOwned {
    /// The message type this payload travels in.
    const TYPE: MessageType;

    /// Encode as a MessagePack map.
    fn to_bytes(&self) -> Bytes {
        let mut w = BytesMut::with_capacity(64).writer();
        rmp_serde::encode::write_named(&mut w, self).expect("payload types always serialise");
        w.into_inner().freeze()
    }

    /// Decode from a MessagePack map; unknown keys are ignored.
    fn from_bytes(bytes: &[u8]) -> Result<Self, MessageError> {
        rmp_serde::from_slice(bytes).map_err(|e| MessageError::Malformed {
            msg_type: Self::TYPE,
            detail: e.to_string(),
        })
    }
}

macro_rules! messages {
    ($( $variant:ident($ty:ty), )*) => {
        $( impl Payload for $ty { const TYPE: MessageType = MessageType::$variant; } )*

        /// Any message: typed payloads decoded, data-plane payloads as raw bytes.
        #[derive(Debug, Clone, PartialEq)]
        #[allow(missing_docs)]
        pub enum Message {
            $( $variant($ty), )*
            /// PING payload (0–1024 bytes).
            Ping(Bytes),
            /// PONG payload (the PING's, echoed).
            Pong(Bytes),
            /// Raw stream data.
            StreamData(Bytes),
            /// A file chunk.
            FileTransferChunk(FileChunk),
        }

        impl Message {
            /// The message type of this message.
            pub fn msg_type(&self) -> MessageType {
                match self {
                    $( Message::$variant(_) => MessageType::$variant, )*
                    Message::Ping(_) => MessageType::Ping,
                    Message::Pong(_) => MessageType::Pong,
                    Message::StreamData(_) => MessageType::StreamData,
                    Message::FileTransferChunk(_) => MessageType::FileTransferChunk,
                }
            }

            /// The payload bytes.
            pub fn to_payload(&self) -> Bytes {
                match self {
                    $( Message::$variant(p) => p.to_bytes(), )*
                    Message::Ping(b) | Message::Pong(b) | Message::StreamData(b) => b.clone(),
                    Message::FileTransferChunk(c) => c.to_bytes(),
                }
            }

            /// Decode `payload` as `msg_type`. Raw payloads are shared, not copied.
            pub fn decode(msg_type: MessageType, payload: &Bytes) -> Result<Message, MessageError> {
                Ok(match msg_type {
                    $( MessageType::$variant => Message::$variant(<$ty>::from_bytes(payload)?), )*
                    MessageType::Ping | MessageType::Pong => {
                        if payload.len() > MAX_PING_PAYLOAD {
                            return Err(MessageError::Malformed {
                                msg_type,
                                detail: format!("{} bytes, at most {MAX_PING_PAYLOAD}", payload.len()),
                            });
                        }
                        if msg_type == MessageType::Ping {
                            Message::Ping(payload.clone())
                        } else {
                            Message::Pong(payload.clone())
                        }
                    }
                    MessageType::StreamData => Message::StreamData(payload.clone()),
                    MessageType::FileTransferChunk => {
                        Message::FileTransferChunk(FileChunk::from_bytes(payload)?)
                    }
                    MessageType::Unknown(_) => return Err(MessageError::UnknownType(msg_type)),
                })
            }

            /// The message as JSON: typed payloads as objects, raw payloads as
            /// `{"data": base64}` (FILE_TRANSFER_CHUNK adds `"offset"`).
            pub fn to_json(&self) -> serde_json::Value {
                let v = match self {
                    $( Message::$variant(p) => serde_json::to_value(p), )*
                    Message::Ping(b) | Message::Pong(b) | Message::StreamData(b) => {
                        serde_json::to_value(RawData { data: b.to_vec() })
                    }
                    Message::FileTransferChunk(c) => serde_json::to_value(c),
                };
                v.expect("payload types always convert to JSON")
            }

            /// Write the message as JSON text into `out` ([`Message::to_json`] without the
            /// `serde_json::Value` in between).
            pub fn write_json(&self, out: &mut Vec<u8>) {
                let r = match self {
                    $( Message::$variant(p) => serde_json::to_writer(&mut *out, p), )*
                    Message::Ping(b) | Message::Pong(b) | Message::StreamData(b) => {
                        serde_json::to_writer(&mut *out, &RawData { data: b.to_vec() })
                    }
                    Message::FileTransferChunk(c) => serde_json::to_writer(&mut *out, c),
                };
                r.expect("payload types always convert to JSON")
            }

            /// Build a message of `msg_type` from JSON text ([`Message::from_json`] without
            /// the `serde_json::Value` in between). Text that is not JSON and JSON of the
            /// wrong shape are both [`MessageError::Json`].
            pub fn from_json_slice(msg_type: MessageType, json: &[u8]) -> Result<Message, MessageError> {
                let fail = |e: serde_json::Error| {
                    let detail = match e.classify() {
                        serde_json::error::Category::Data => e.to_string(),
                        _ => format!("not JSON: {e}"),
                    };
                    MessageError::Json { msg_type, detail }
                };
                let mut de = serde_json::Deserializer::from_slice(json);
                let m = Self::deserialize_as(msg_type, &mut de).map_err(fail)?;
                de.end().map_err(fail)?;
                m.ok_or(MessageError::UnknownType(msg_type))
            }

            /// Build a message of `msg_type` from JSON (the inverse of [`Message::to_json`]).
            pub fn from_json(msg_type: MessageType, json: serde_json::Value) -> Result<Message, MessageError> {
                Self::deserialize_as(msg_type, json)
                    .map_err(|e| MessageError::Json { msg_type, detail: e.to_string() })?
                    .ok_or(MessageError::UnknownType(msg_type))
            }

            /// The message of `msg_type` from any self-describing deserializer (`None` for
            /// a type without a payload schema).
            fn deserialize_as<'de, D: serde::Deserializer<'de>>(
                msg_type: MessageType,
                d: D,
            ) -> Result<Option<Message>, D::Error> {
                use serde::Deserialize;
                Ok(Some(match msg_type {
                    $( MessageType::$variant => Message::$variant(<$ty>::deserialize(d)?), )*
                    MessageType::Ping => Message::Ping(RawData::deserialize(d)?.data.into()),
                    MessageType::Pong => Message::Pong(RawData::deserialize(d)?.data.into()),
                    MessageType::StreamData => Message::StreamData(RawData::deserialize(d)?.data.into()),
                    MessageType::FileTransferChunk => Message::FileTransferChunk(FileChunk::deserialize(d)?),
                    MessageType::Unknown(_) => return Ok(None),
                }))
            }
        }
    };
}

messages! {
    Hello(Hello),
    HelloAck(HelloAck),
    Error(ErrorPayload),
    Close(Close),
    Upgrade(Upgrade),
    Negotiate(Negotiate),
    AuthChallenge(AuthChallenge),
    AuthResponse(AuthResponse),
    AuthSuccess(AuthSuccess),
    AuthFailure(AuthFailure),
    KeyExchange(KeyExchange),
    CertRequest(CertRequest),
    JobRequest(JobRequest),
    JobAccept(JobAccept),
    JobReject(JobReject),
    JobStart(JobStart),
    JobProgress(JobProgress),
    JobComplete(JobComplete),
    JobFailed(JobFailed),
    JobCancel(JobCancel),
    JobMigrate(JobMigrate),
    JobPause(JobPause),
    JobResume(JobResume),
    StreamOpen(StreamOpen),
    StreamClose(StreamClose),
    StreamAck(StreamAck),
    StreamReset(StreamReset),
    FileTransferStart(FileTransferStart),
    FileTransferComplete(FileTransferComplete),
    MetricsReport(MetricsReport),
    LogEntry(LogEntry),
    TraceSpan(TraceSpan),
    HealthCheck(HealthCheck),
    StatusUpdate(StatusUpdate),
    AlertNotification(AlertNotification),
}

/// Convert a payload of `msg_type` to JSON (for the HTTP bridge and for humans).
pub fn to_json(msg_type: MessageType, payload: &Bytes) -> Result<serde_json::Value, MessageError> {
    Ok(Message::decode(msg_type, payload)?.to_json())
}

/// Convert JSON to the wire payload of `msg_type`.
pub fn from_json(msg_type: MessageType, json: serde_json::Value) -> Result<Bytes, MessageError> {
    Ok(Message::from_json(msg_type, json)?.to_payload())
}

/// A FILE_TRANSFER_CHUNK payload: an 8-byte big-endian byte offset into the file, then data.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileChunk {
    /// Offset of `data` within the file.
    pub offset: u64,
    /// The chunk's bytes (base64 in JSON).
    #[serde(with = "b64")]
    pub data: Bytes,
}

impl FileChunk {
    /// The wire payload.
    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(8 + self.data.len());
        b.put_u64(self.offset);
        b.put_slice(&self.data);
        b.freeze()
    }

    /// Parse a wire payload; the data shares `payload`.
    pub fn from_bytes(payload: &Bytes) -> Result<FileChunk, MessageError> {
        if payload.len() < 8 {
            return Err(MessageError::Malformed {
                msg_type: MessageType::FileTransferChunk,
                detail: format!("{} bytes, need an 8-byte offset", payload.len()),
            });
        }
        let offset = u64::from_be_bytes(payload[..8].try_into().expect("8 bytes"));
        Ok(FileChunk {
            offset,
            data: payload.slice(8..),
        })
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct RawData {
    #[serde(with = "b64")]
    data: Vec<u8>,
}

/// Serde helper: binary fields as standard base64 strings (RFC 4648 §4, padded).
pub mod b64 {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serialise bytes as a base64 string.
    pub fn serialize<S: Serializer, T: AsRef<[u8]>>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v.as_ref()))
    }

    /// Deserialise a base64 string.
    pub fn deserialize<'de, D: Deserializer<'de>, T: From<Vec<u8>>>(d: D) -> Result<T, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        STANDARD
            .decode(s.as_bytes())
            .map(T::from)
            .map_err(serde::de::Error::custom)
    }

    /// The same for `Option` fields.
    pub mod option {
        use super::*;

        /// Serialise `Some(bytes)` as base64; `None` as nil (normally skipped).
        pub fn serialize<S: Serializer, T: AsRef<[u8]>>(
            v: &Option<T>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match v {
                Some(v) => s.serialize_str(&STANDARD.encode(v.as_ref())),
                None => s.serialize_none(),
            }
        }

        /// Deserialise an optional base64 string.
        pub fn deserialize<'de, D: Deserializer<'de>, T: From<Vec<u8>>>(
            d: D,
        ) -> Result<Option<T>, D::Error> {
            let s = <Option<std::borrow::Cow<'de, str>>>::deserialize(d)?;
            s.map(|s| {
                STANDARD
                    .decode(s.as_bytes())
                    .map(T::from)
                    .map_err(serde::de::Error::custom)
            })
            .transpose()
        }
    }
}
