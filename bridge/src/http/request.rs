//! A parsed request: method, target, version, header fields and the whole body.

use bytes::Bytes;

/// The request method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// GET.
    Get,
    /// HEAD (answered like GET, without the body).
    Head,
    /// POST.
    Post,
    /// PUT.
    Put,
    /// PATCH.
    Patch,
    /// DELETE.
    Delete,
    /// OPTIONS.
    Options,
    /// Any other token (CONNECT, TRACE, extensions).
    Other(String),
}

impl Method {
    pub(crate) fn parse(s: &str) -> Method {
        match s {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "PATCH" => Method::Patch,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            other => Method::Other(other.to_owned()),
        }
    }

    /// The method's token.
    pub fn as_str(&self) -> &str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
            Method::Other(s) => s,
        }
    }
}

/// One request, its body complete. The request line and header fields stay in the bytes
/// they arrived in (one shared buffer, no copy per field).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method.
    pub method: Method,
    /// The minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    /// The body (decoded from chunks when it came chunked).
    pub body: Bytes,
    /// Whether the connection stays open after the answer (HTTP/1.1 unless
    /// `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`).
    pub keep_alive: bool,
    /// The request line and header fields as received.
    head: Bytes,
    /// Where the target is in `head`.
    target: Span,
    /// Where each field's name and value are in `head`.
    fields: Vec<(Span, Span)>,
}

/// A range of a request's head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    pub(crate) start: u32,
    pub(crate) end: u32,
}

impl Span {
    /// Where `part` (a slice of `base`) lies in `base`.
    pub(crate) fn of(base: &[u8], part: &[u8]) -> Span {
        let start = (part.as_ptr() as usize).saturating_sub(base.as_ptr() as usize);
        Span {
            start: start as u32,
            end: (start + part.len()) as u32,
        }
    }

    fn get(self, head: &[u8]) -> &[u8] {
        head.get(self.start as usize..self.end as usize)
            .unwrap_or_default()
    }
}

impl Request {
    /// A request from its parts (for programs and tests that build one; the reader makes
    /// them from received bytes).
    pub fn new(method: Method, target: &str, headers: &[(&str, &str)], body: Bytes) -> Request {
        let mut head = Vec::with_capacity(target.len() + 64);
        head.extend_from_slice(target.as_bytes());
        let target_span = Span {
            start: 0,
            end: target.len() as u32,
        };
        let mut fields = Vec::with_capacity(headers.len());
        for (name, value) in headers {
            let n = head.len() as u32;
            head.extend_from_slice(name.as_bytes());
            let v = head.len() as u32;
            head.extend_from_slice(value.as_bytes());
            fields.push((
                Span { start: n, end: v },
                Span {
                    start: v,
                    end: head.len() as u32,
                },
            ));
        }
        let mut req = Request {
            method,
            version: 1,
            body,
            keep_alive: true,
            head: Bytes::from(head),
            target: target_span,
            fields,
        };
        req.keep_alive = req.wants_keep_alive();
        req
    }

    /// Built by the reader from the head's bytes; `None` when the target is not UTF-8.
    pub(crate) fn parsed(
        method: Method,
        version: u8,
        head: Bytes,
        target: Span,
        fields: Vec<(Span, Span)>,
    ) -> Option<Request> {
        std::str::from_utf8(target.get(&head)).ok()?;
        let mut req = Request {
            method,
            version,
            body: Bytes::new(),
            keep_alive: true,
            head,
            target,
            fields,
        };
        req.keep_alive = req.wants_keep_alive();
        Some(req)
    }

    /// The request target as sent (origin form: path and query).
    pub fn target(&self) -> &str {
        std::str::from_utf8(self.target.get(&self.head)).unwrap_or_default()
    }

    /// Header fields in order: names as sent, values as bytes.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.fields.iter().map(|(n, v)| {
            (
                std::str::from_utf8(n.get(&self.head)).unwrap_or_default(),
                v.get(&self.head),
            )
        })
    }

    /// The values of the fields named `name` (any case), as bytes: names are compared as
    /// bytes, so nothing but the value asked for is checked as text.
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.fields
            .iter()
            .filter(move |(n, _)| n.get(&self.head).eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v.get(&self.head))
    }

    /// The first value of header field `name` (any case), as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        let (_, v) = self
            .fields
            .iter()
            .find(|(n, _)| n.get(&self.head).eq_ignore_ascii_case(name.as_bytes()))?;
        std::str::from_utf8(v.get(&self.head)).ok()
    }

    /// Whether field `name` (any case) lists `token` (any case) among its comma-separated
    /// values, in any of its lines.
    pub fn lists(&self, name: &str, token: &str) -> bool {
        self.values(name)
            .filter_map(|v| std::str::from_utf8(v).ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// HTTP/1.1 keeps the connection unless `Connection: close`; HTTP/1.0 closes it unless
    /// `Connection: keep-alive`.
    fn wants_keep_alive(&self) -> bool {
        if self.version == 0 {
            self.lists("connection", "keep-alive")
        } else {
            !self.lists("connection", "close")
        }
    }

    /// The path part of the target (before any `?`).
    pub fn path(&self) -> &str {
        self.target().split('?').next().unwrap_or("")
    }

    /// The query part of the target (after the `?`), if any.
    pub fn query(&self) -> Option<&str> {
        self.target().split_once('?').map(|(_, q)| q)
    }

    /// Whether `Accept` names `media` (a plain substring match on the media types listed).
    pub fn accepts(&self, media: &str) -> bool {
        self.header("accept").is_some_and(|a| {
            a.split(',')
                .any(|m| m.trim().split(';').next() == Some(media))
        })
    }
}
