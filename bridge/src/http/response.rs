//! Writing answers: a whole [`Response`], or a head followed by chunks for a body that is
//! produced as it goes (long polls, NDJSON follows, downloads).

use std::fmt::Write as _;

use bytes::{BufMut, Bytes, BytesMut};

/// An answer with a whole body (or, with [`Response::streamed`], the head of a chunked one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header fields besides `Content-Length`, `Transfer-Encoding` and `Connection`, which
    /// the writer sets.
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: Bytes,
    /// The body follows as chunks ([`write_chunk`], then [`write_last_chunk`]).
    pub chunked: bool,
}

impl Response {
    /// A response with `status` and no body.
    pub fn new(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
            chunked: false,
        }
    }

    /// A response whose body is `body` of media type `content_type`.
    pub fn with_body(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response {
        Response::new(status)
            .header("content-type", content_type)
            .body(body)
    }

    /// A JSON body (`application/json`), its text already encoded.
    pub fn json(status: u16, text: impl Into<Bytes>) -> Response {
        Response::with_body(status, "application/json", text)
    }

    /// The head of a chunked body of media type `content_type`; write its chunks after it.
    pub fn streamed(status: u16, content_type: &str) -> Response {
        Response {
            chunked: true,
            ..Response::new(status).header("content-type", content_type)
        }
    }

    /// The answer to a refused request: `status` with a short JSON body, and the connection
    /// closes after it.
    pub fn error(status: u16, message: &str) -> Response {
        let mut text = String::with_capacity(message.len() + 32);
        text.push_str("{\"status\":");
        text.push_str(&status.to_string());
        text.push_str(",\"message\":\"");
        for c in message.chars() {
            match c {
                '"' => text.push_str("\\\""),
                '\\' => text.push_str("\\\\"),
                c if (c as u32) < 0x20 => text.push(' '),
                c => text.push(c),
            }
        }
        text.push_str("\"}");
        Response::json(status, text)
    }

    /// Builder-style: add a header field.
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    /// Builder-style: the body.
    pub fn body(mut self, body: impl Into<Bytes>) -> Response {
        self.body = body.into();
        self
    }

    /// Write the status line, the header fields and (unless `head_only`: an answer to HEAD)
    /// the body into `out`. `keep_alive` false adds `Connection: close`.
    pub fn write(&self, keep_alive: bool, head_only: bool, out: &mut BytesMut) {
        out.reserve(128 + self.body.len());
        out.put_slice(b"HTTP/1.1 ");
        let _ = write!(out, "{} ", self.status);
        out.put_slice(reason(self.status).as_bytes());
        out.put_slice(b"\r\n");
        for (name, value) in &self.headers {
            out.put_slice(name.as_bytes());
            out.put_slice(b": ");
            // A value never ends the field: line breaks in it are dropped.
            for &b in value.as_bytes() {
                if b != b'\r' && b != b'\n' {
                    out.put_u8(b);
                }
            }
            out.put_slice(b"\r\n");
        }
        if self.chunked {
            out.put_slice(b"transfer-encoding: chunked\r\n");
        } else if self.status >= 200 && self.status != 204 && self.status != 304 {
            let _ = write!(out, "content-length: {}\r\n", self.body.len());
        }
        if !keep_alive {
            out.put_slice(b"connection: close\r\n");
        }
        out.put_slice(b"\r\n");
        if !head_only && !self.chunked {
            out.put_slice(&self.body);
        }
    }
}

/// Write one chunk of a chunked body (nothing for empty `data`: an empty chunk would end it).
pub fn write_chunk(data: &[u8], out: &mut BytesMut) {
    if data.is_empty() {
        return;
    }
    out.reserve(data.len() + 12);
    out.put_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.put_slice(data);
    out.put_slice(b"\r\n");
}

/// End a chunked body.
pub fn write_last_chunk(out: &mut BytesMut) {
    out.put_slice(b"0\r\n\r\n");
}

/// The reason phrase of a status code.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_response_and_a_chunked_one() {
        let mut out = BytesMut::new();
        Response::json(200, "{}").write(true, false, &mut out);
        assert_eq!(
            &out[..],
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
        );
        out.clear();
        Response::streamed(200, "application/x-ndjson").write(false, false, &mut out);
        write_chunk(b"{\"a\":1}\n", &mut out);
        write_chunk(b"", &mut out);
        write_last_chunk(&mut out);
        assert_eq!(
            &out[..],
            &b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n8\r\n{\"a\":1}\n\r\n0\r\n\r\n"[..]
        );
    }

    #[test]
    fn head_answers_carry_the_length_without_the_body_and_values_cannot_split_fields() {
        let mut out = BytesMut::new();
        Response::with_body(200, "text/plain", "hello")
            .header("x-evil", "a\r\nset-cookie: b")
            .write(true, true, &mut out);
        let text = std::str::from_utf8(&out).unwrap();
        assert!(text.contains("content-length: 5\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
        assert!(text.contains("x-evil: aset-cookie: b\r\n"));
    }

    #[test]
    fn error_bodies_are_json() {
        let mut out = BytesMut::new();
        Response::error(400, "bad \"thing\"\n").write(false, false, &mut out);
        let text = std::str::from_utf8(&out).unwrap();
        assert!(text.ends_with("{\"status\":400,\"message\":\"bad \\\"thing\\\" \"}"));
    }
}
