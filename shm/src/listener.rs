//! The listener: a name in the abstract Unix-socket namespace that hands each connecting
//! process a segment of its own.

use std::os::unix::net::UnixListener;

use crate::config::ShmConfig;
use crate::error::{Result, ShmError};
use crate::stream::{ShmStream, abstract_addr};

/// Accepts shared-memory connections under a name.
///
/// The name lives in Linux's abstract Unix-socket namespace, so nothing is created on the file
/// system and nothing is left behind when the process dies, however it dies.
#[derive(Debug)]
pub struct ShmListener {
    sock: UnixListener,
    name: String,
    config: ShmConfig,
}

impl ShmListener {
    /// Listen under `name` with the default configuration.
    pub fn bind(name: &str) -> Result<ShmListener> {
        ShmListener::bind_with(name, ShmConfig::default())
    }

    /// Listen under `name`; every accepted stream gets rings of `config`'s geometry.
    pub fn bind_with(name: &str, config: ShmConfig) -> Result<ShmListener> {
        if !crate::layout::valid_geometry(config.ring_capacity, config.max_frame()) {
            return Err(ShmError::Handshake("invalid ring capacity or max frame"));
        }
        let sock = UnixListener::bind_addr(&abstract_addr(name)?)?;
        Ok(ShmListener {
            sock,
            name: name.to_owned(),
            config,
        })
    }

    /// The name this listener was bound with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Wait for a connector, then create its segment and hand it over.
    pub fn accept(&self) -> Result<ShmStream> {
        let (sock, _) = self.sock.accept()?;
        ShmStream::serve(sock, &self.config)
    }

    /// Non-blocking accept: `WouldBlock` when nobody is waiting.
    pub fn set_nonblocking(&self, on: bool) -> Result<()> {
        Ok(self.sock.set_nonblocking(on)?)
    }

    /// The listening socket, for an event loop that accepts itself and finishes each
    /// connection with [`ShmStream::serve`]. Nothing is left behind when it is dropped.
    pub fn into_listener(self) -> UnixListener {
        self.sock
    }

    /// The listening socket (for readiness polling, or to accept in an event loop and finish
    /// with [`ShmStream::serve`]).
    pub fn as_listener(&self) -> &UnixListener {
        &self.sock
    }
}
