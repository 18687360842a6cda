//! The request reader: bytes in (as they arrive, split anywhere), whole requests out, in
//! order. Nothing is allocated by a length the client claims: a body is taken from the bytes
//! received once they are all there (`Content-Length`), or decoded as its chunks arrive,
//! and both are refused at once when the claim or the sum passes [`Limits::max_body`].

use bytes::{Buf, BytesMut};

use super::error::HttpError;
use super::request::{Method, Request, Span};
use super::{Limits, MAX_HEADERS};

/// A chunk-size line (with its extensions) longer than this is refused.
const MAX_CHUNK_LINE: usize = 1024;

/// Where the reader is in the current request.
#[derive(Debug)]
enum State {
    /// Waiting for a request line and header fields.
    Head,
    /// A `Content-Length` body of this many bytes, taken whole once received.
    Body { req: Request, len: usize },
    /// A chunked body, decoded as it comes.
    Chunked {
        req: Request,
        body: BytesMut,
        phase: Chunk,
    },
    /// A request was refused: nothing more is read.
    Failed,
}

/// Where a chunked body is.
#[derive(Debug, Clone, Copy)]
enum Chunk {
    /// Before a chunk-size line.
    Size,
    /// Inside a chunk, this many bytes left.
    Data(usize),
    /// After a chunk's data: its CRLF.
    DataEnd,
    /// After the last chunk: trailer fields until an empty line, this many bytes so far.
    Trailers(usize),
}

/// Turns the bytes of one connection into requests.
///
/// ```
/// use valkyrie_bridge::http::{Limits, Method, RequestReader};
/// let mut r = RequestReader::new(Limits::default());
/// r.push(b"POST /api HTTP/1.1\r\nHost: x\r\nContent-Le");
/// assert_eq!(r.poll().unwrap(), None);
/// r.push(b"ngth: 2\r\n\r\nhiGET / HTTP/1.1\r\n\r\n");
/// let first = r.poll().unwrap().unwrap();
/// assert_eq!((first.method, &first.body[..]), (Method::Post, &b"hi"[..]));
/// assert_eq!(r.poll().unwrap().unwrap().target(), "/");
/// ```
#[derive(Debug)]
pub struct RequestReader {
    limits: Limits,
    buf: BytesMut,
    state: State,
    /// The current request asked for `100 Continue` and has not been told yet.
    continue_due: bool,
}

impl RequestReader {
    /// A reader bounded by `limits`.
    pub fn new(limits: Limits) -> RequestReader {
        RequestReader {
            limits,
            buf: BytesMut::new(),
            state: State::Head,
            continue_due: false,
        }
    }

    /// Bytes received from the connection.
    pub fn push(&mut self, data: &[u8]) {
        if !matches!(self.state, State::Failed) {
            self.buf.extend_from_slice(data);
        }
    }

    /// Whether the reader takes more bytes now: false once it holds as many as one whole
    /// request may have (the caller stops reading until requests are taken: back-pressure).
    pub fn wants_input(&self) -> bool {
        !matches!(self.state, State::Failed)
            && self.buf.len() < self.limits.max_head_bytes + self.limits.max_body + 2
    }

    /// Bytes received and not yet part of a request handed out.
    pub fn buffered(&self) -> usize {
        self.buf.len()
            + match &self.state {
                State::Chunked { body, .. } => body.len(),
                _ => 0,
            }
    }

    /// Take the bytes received after the last request handed out (a connection that leaves
    /// HTTP — a WebSocket upgrade — hands them to what it speaks next). The reader is left
    /// empty, waiting for a request line.
    pub fn take_buffered(&mut self) -> BytesMut {
        self.state = State::Head;
        self.continue_due = false;
        std::mem::take(&mut self.buf)
    }

    /// Whether a request has begun and not ended (its time is running).
    pub fn in_request(&self) -> bool {
        match self.state {
            State::Head => !self.buf.is_empty(),
            State::Body { .. } | State::Chunked { .. } => true,
            State::Failed => false,
        }
    }

    /// Whether the current request asked for `100 Continue` (once: the caller sends the
    /// interim answer, and the client its body).
    pub fn take_continue(&mut self) -> bool {
        std::mem::take(&mut self.continue_due)
    }

    /// The next whole request, `Ok(None)` until one has arrived. After an error the reader
    /// reads nothing more: answer the error's status and close.
    pub fn poll(&mut self) -> Result<Option<Request>, HttpError> {
        // At most two turns: a head, then its body (or the wait for it).
        loop {
            match std::mem::replace(&mut self.state, State::Failed) {
                State::Failed => return Ok(None),
                State::Head => match self.head() {
                    Ok(Some(s)) => self.state = s,
                    Ok(None) => {
                        self.state = State::Head;
                        return Ok(None);
                    }
                    Err(e) => return self.fail(e),
                },
                State::Body { mut req, len } => {
                    if self.buf.len() < len {
                        self.state = State::Body { req, len };
                        return Ok(None);
                    }
                    req.body = self.buf.split_to(len).freeze();
                    self.state = State::Head;
                    return Ok(Some(req));
                }
                State::Chunked {
                    mut req,
                    mut body,
                    phase,
                } => {
                    // `chunk` takes all it can: a phase back means it waits for bytes.
                    return match self.chunk(&mut body, phase) {
                        Ok(Some(phase)) => {
                            self.state = State::Chunked { req, body, phase };
                            Ok(None)
                        }
                        Ok(None) => {
                            req.body = body.freeze();
                            self.state = State::Head;
                            Ok(Some(req))
                        }
                        Err(e) => self.fail(e),
                    };
                }
            }
        }
    }

    fn fail(&mut self, e: HttpError) -> Result<Option<Request>, HttpError> {
        self.state = State::Failed;
        self.buf = BytesMut::new();
        Err(e)
    }

    /// Parse a request head from the buffer: the state its body puts the reader in, or
    /// `None` until the head is complete.
    fn head(&mut self) -> Result<Option<State>, HttpError> {
        // Empty lines before a request line are ignored (RFC 9112 section 2.2).
        while self.buf.first().is_some_and(|&b| b == b'\r' || b == b'\n') {
            self.buf.advance(1);
        }
        if self.buf.is_empty() {
            return Ok(None);
        }
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let allowed = self.limits.max_headers.clamp(1, MAX_HEADERS);
        let mut parsed = httparse::Request::new(&mut fields[..allowed]);
        // Only the first `max_head_bytes` are looked at: what is refused, and why, does not
        // depend on how the bytes were split.
        let window = &self.buf[..self.buf.len().min(self.limits.max_head_bytes)];
        let n = match parsed.parse(window) {
            Ok(httparse::Status::Partial) => {
                if self.buf.len() >= self.limits.max_head_bytes {
                    return Err(HttpError::HeadersTooLarge);
                }
                return Ok(None);
            }
            Ok(httparse::Status::Complete(n)) => n,
            Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeadersTooLarge),
            Err(httparse::Error::Version) => return Err(HttpError::Version),
            Err(_) => return Err(HttpError::BadRequest("malformed request line or header")),
        };
        let version = parsed.version.unwrap_or(1);
        let method = Method::parse(parsed.method.unwrap_or(""));
        let path = parsed.path.unwrap_or("");
        if !path.starts_with('/') && path != "*" && method != Method::Options {
            return Err(HttpError::BadRequest("the target is not a path"));
        }
        let target = Span::of(window, path.as_bytes());
        let fields: Vec<(Span, Span)> = parsed
            .headers
            .iter()
            .map(|h| {
                (
                    Span::of(window, h.name.as_bytes()),
                    Span::of(window, h.value),
                )
            })
            .collect();
        let head = self.buf.split_to(n).freeze();
        let req = Request::parsed(method, version, head, target, fields)
            .ok_or(HttpError::BadRequest("the target is not UTF-8"))?;
        let chunked = match req.header("transfer-encoding") {
            None => false,
            Some(_) if req.version == 0 => {
                return Err(HttpError::BadRequest("transfer-encoding in HTTP/1.0"));
            }
            Some(te) => {
                let last = te.rsplit(',').next().unwrap_or("").trim();
                if !last.eq_ignore_ascii_case("chunked") || te.contains(',') {
                    return Err(HttpError::NotImplemented(
                        "transfer codings other than chunked",
                    ));
                }
                true
            }
        };
        let length = content_length(&req)?;
        if chunked && length.is_some() {
            return Err(HttpError::BadRequest(
                "both content-length and transfer-encoding",
            ));
        }
        let expects_body = chunked || length.is_some_and(|l| l > 0);
        if let Some(l) = length
            && l > self.limits.max_body as u64
        {
            return Err(HttpError::BodyTooLarge {
                limit: self.limits.max_body,
            });
        }
        self.continue_due = expects_body
            && req.version == 1
            && req
                .header("expect")
                .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"));
        Ok(Some(if chunked {
            State::Chunked {
                req,
                body: BytesMut::new(),
                phase: Chunk::Size,
            }
        } else {
            State::Body {
                req,
                len: length.unwrap_or(0) as usize,
            }
        }))
    }

    /// Decode what the buffer holds of a chunked body from `phase`: the phase to go on from,
    /// or `None` once the body and its trailers are complete.
    fn chunk(&mut self, body: &mut BytesMut, mut phase: Chunk) -> Result<Option<Chunk>, HttpError> {
        // Each turn consumes bytes or returns.
        loop {
            match phase {
                Chunk::Size => {
                    // The size line is parsed once it is whole, and alone: what is refused,
                    // and why, does not depend on how the bytes were split.
                    let Some(eol) = self
                        .buf
                        .iter()
                        .take(MAX_CHUNK_LINE + 1)
                        .position(|&b| b == b'\n')
                    else {
                        if self.buf.len() > MAX_CHUNK_LINE {
                            return Err(HttpError::BadRequest("chunk size line too long"));
                        }
                        return Ok(Some(phase));
                    };
                    let Ok(httparse::Status::Complete((n, size))) =
                        httparse::parse_chunk_size(&self.buf[..=eol])
                    else {
                        return Err(HttpError::BadRequest("malformed chunk size"));
                    };
                    self.buf.advance(n);
                    if size == 0 {
                        phase = Chunk::Trailers(0);
                        continue;
                    }
                    if body.len() as u64 + size > self.limits.max_body as u64 {
                        return Err(HttpError::BodyTooLarge {
                            limit: self.limits.max_body,
                        });
                    }
                    phase = Chunk::Data(size as usize);
                }
                Chunk::Data(left) => {
                    if self.buf.is_empty() {
                        return Ok(Some(phase));
                    }
                    let take = left.min(self.buf.len());
                    body.extend_from_slice(&self.buf[..take]);
                    self.buf.advance(take);
                    phase = if take == left {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left - take)
                    };
                }
                Chunk::DataEnd => {
                    if self.buf.len() < 2 {
                        if self.buf.first().is_some_and(|&b| b != b'\r') {
                            return Err(HttpError::BadRequest("chunk data not followed by CRLF"));
                        }
                        return Ok(Some(phase));
                    }
                    if &self.buf[..2] != b"\r\n" {
                        return Err(HttpError::BadRequest("chunk data not followed by CRLF"));
                    }
                    self.buf.advance(2);
                    phase = Chunk::Size;
                }
                Chunk::Trailers(seen) => {
                    let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") else {
                        // Refused early only when the line, however it ends, passes the
                        // limit as a whole line would: nothing yet, or a lone CR, may begin
                        // the empty line that ends the trailers (it counts nothing); a
                        // trailing CR may begin this line's CRLF.
                        let least = match &self.buf[..] {
                            b"" | b"\r" => 0,
                            [.., b'\r'] => self.buf.len() + 1,
                            _ => self.buf.len() + 2,
                        };
                        if seen + least > self.limits.max_head_bytes {
                            return Err(HttpError::HeadersTooLarge);
                        }
                        return Ok(Some(phase));
                    };
                    self.buf.advance(end + 2);
                    if end == 0 {
                        return Ok(None);
                    }
                    let seen = seen + end + 2;
                    if seen > self.limits.max_head_bytes {
                        return Err(HttpError::HeadersTooLarge);
                    }
                    phase = Chunk::Trailers(seen);
                }
            }
        }
    }
}

/// The body length a request declares: every `Content-Length` must be the same digits.
fn content_length(req: &Request) -> Result<Option<u64>, HttpError> {
    let mut found: Option<u64> = None;
    for (_, v) in req
        .headers()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
    {
        for part in v.split(|&b| b == b',') {
            let digits = part.trim_ascii();
            if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
                return Err(HttpError::BadRequest("malformed content-length"));
            }
            let n = digits
                .iter()
                .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
            if found.is_some_and(|f| f != n) {
                return Err(HttpError::BadRequest("conflicting content-length values"));
            }
            found = Some(n);
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests;
