//! Listen and connect addresses: `tcp://host:port`, `quic://host:port`, `unix:///path` and
//! `shm://name`.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::str::FromStr;

/// Where a node listens or a client connects.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix stream socket path.
    Unix(PathBuf),
    /// A shared-memory rendezvous name (see `valkyrie-shm`): the two processes meet through an
    /// abstract Unix socket of that name and then talk through shared rings.
    Shm(String),
    /// A QUIC address (UDP): ALPN `valkyrie/2`, the frames on the first bidirectional stream.
    Quic(SocketAddr),
}

/// A URL that is not `tcp://host:port`, `quic://host:port`, `unix:///path` or `shm://name`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "bad endpoint {url:?}: {reason} (expected tcp://host:port, quic://host:port, unix:///path or shm://name)"
)]
pub struct EndpointError {
    /// The URL given.
    pub url: String,
    /// What is wrong with it.
    pub reason: String,
}

impl FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| EndpointError {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let resolve = |rest: &str| {
            rest.to_socket_addrs()
                .map_err(|e| err(&e.to_string()))?
                .next()
                .ok_or_else(|| err("host resolves to no address"))
        };
        if let Some(rest) = url.strip_prefix("tcp://") {
            Ok(Endpoint::Tcp(resolve(rest)?))
        } else if let Some(rest) = url.strip_prefix("quic://") {
            Ok(Endpoint::Quic(resolve(rest)?))
        } else if let Some(path) = url.strip_prefix("unix://") {
            if path.is_empty() {
                return Err(err("empty path"));
            }
            Ok(Endpoint::Unix(PathBuf::from(path)))
        } else if let Some(name) = url.strip_prefix("shm://") {
            if name.is_empty() || name.len() > 90 || name.contains('\0') {
                return Err(err("shm name must be 1 to 90 bytes without NUL"));
            }
            Ok(Endpoint::Shm(name.to_owned()))
        } else {
            Err(err("unknown scheme"))
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp(a) => write!(f, "tcp://{a}"),
            Endpoint::Unix(p) => write!(f, "unix://{}", p.display()),
            Endpoint::Shm(n) => write!(f, "shm://{n}"),
            Endpoint::Quic(a) => write!(f, "quic://{a}"),
        }
    }
}

impl Endpoint {
    /// The transport label used in metrics (`"tcp"`, `"unix"`, `"shm"`, `"quic"`).
    pub fn transport(&self) -> &'static str {
        match self {
            Endpoint::Tcp(_) => "tcp",
            Endpoint::Unix(_) => "unix",
            Endpoint::Shm(_) => "shm",
            Endpoint::Quic(_) => "quic",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_scheme() {
        assert_eq!(
            "tcp://127.0.0.1:7420".parse::<Endpoint>().unwrap(),
            Endpoint::Tcp("127.0.0.1:7420".parse().unwrap())
        );
        assert_eq!(
            "unix:///tmp/v.sock".parse::<Endpoint>().unwrap(),
            Endpoint::Unix("/tmp/v.sock".into())
        );
        assert_eq!(
            "shm://jobs".parse::<Endpoint>().unwrap(),
            Endpoint::Shm("jobs".into())
        );
        assert_eq!(
            "shm://jobs".parse::<Endpoint>().unwrap().to_string(),
            "shm://jobs"
        );
        assert!("shm://".parse::<Endpoint>().is_err());
        assert!("http://x".parse::<Endpoint>().is_err());
        assert!("tcp://nohost".parse::<Endpoint>().is_err());
        assert_eq!(
            "tcp://[::1]:9".parse::<Endpoint>().unwrap().to_string(),
            "tcp://[::1]:9"
        );
    }
}
