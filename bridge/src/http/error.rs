//! What is wrong with a request, and the status that answers it.

/// A request the server will not serve; the connection answers [`status`](Self::status)
/// and closes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The request line or a header field does not parse, or the framing of its body is
    /// ambiguous (400).
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// More header fields or header bytes than the limits allow (431).
    #[error("request header fields too large")]
    HeadersTooLarge,
    /// A body longer than the limit, declared or sent (413).
    #[error("request body larger than {limit} bytes")]
    BodyTooLarge {
        /// The limit.
        limit: usize,
    },
    /// The request did not arrive whole in time (408; the server's clock decides).
    #[error("request timeout")]
    Timeout,
    /// An HTTP version other than 1.0 and 1.1 (505).
    #[error("HTTP version not supported")]
    Version,
    /// A transfer coding other than chunked (501).
    #[error("not implemented: {0}")]
    NotImplemented(&'static str),
}

impl HttpError {
    /// The status code that answers this error.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::BadRequest(_) => 400,
            HttpError::HeadersTooLarge => 431,
            HttpError::BodyTooLarge { .. } => 413,
            HttpError::Timeout => 408,
            HttpError::Version => 505,
            HttpError::NotImplemented(_) => 501,
        }
    }
}
