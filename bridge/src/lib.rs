//! Valkyrie's bridge to the web, sans-IO like the protocol crate: bytes in, requests out,
//! answers written into buffers the caller sends. The runtime's shards drive it on their
//! own io_uring loops (no other runtime, no threads here).
//!
//! - [`sniff`]: which protocol a connection speaks, from its first byte, so that one port
//!   serves Valkyrie frames, HTTP/1.1 and TLS.
//! - [`http`]: HTTP/1.1 requests read within [`http::Limits`] (keep-alive, pipelining,
//!   `Content-Length` and chunked bodies; 400, 408, 413, 431, 501 and 505 for what is
//!   refused), and answers written whole or as chunked streams.
//! - [`rest`]: the REST gateway's mapping between JSON over HTTP and message frames.
//! - [`openapi`]: the OpenAPI 3.1 document of all of it (`GET /openapi.json`).
//! - [`ws`]: WebSocket (RFC 6455): the opening handshake and a streaming frame codec.
//! - [`bearer`]: `Authorization: Bearer` credentials for a node in `token` mode.
//!
//! ```
//! use bytes::BytesMut;
//! use valkyrie_bridge::http::{Limits, RequestReader, Response};
//! use valkyrie_bridge::{sniff, Sniffed};
//!
//! let received = b"GET /healthz HTTP/1.1\r\nHost: node\r\n\r\n";
//! assert_eq!(sniff(received[0]), Sniffed::Http);
//! let mut reader = RequestReader::new(Limits::default());
//! reader.push(received);
//! let req = reader.poll()?.expect("a whole request");
//! assert_eq!(req.path(), "/healthz");
//! let mut out = BytesMut::new();
//! Response::json(200, r#"{"healthy":true}"#).write(req.keep_alive, false, &mut out);
//! assert!(out.starts_with(b"HTTP/1.1 200 OK\r\n"));
//! # Ok::<(), valkyrie_bridge::http::HttpError>(())
//! ```

pub mod bearer;
pub mod http;
pub mod openapi;
pub mod rest;
mod sniff;
pub mod ws;

pub use sniff::{ALPN_HTTP1, ALPN_VALKYRIE, Sniffed, sniff};
