//! HTTP for services: the routes a shard's service takes ([`Ctx::route`]), what it does with
//! a request ([`HttpAnswer`] from [`Service::on_http`](super::Service::on_http)), and how it
//! answers later or streams ([`Ctx::http_respond`], [`Ctx::http_chunk`],
//! [`Ctx::http_finish`]) with back-pressure like any connection.
//!
//! ```no_run
//! use valkyrie_runtime::http::{Method, Request, Response};
//! use valkyrie_runtime::{ConnRef, Ctx, HttpAnswer, Node, Service};
//! use valkyrie_protocol::Frame;
//!
//! struct Status;
//! impl Service for Status {
//!     fn on_start(&mut self, ctx: &mut Ctx<'_>) {
//!         ctx.route(Some(Method::Get), "/api/v1/hello").expect("a free route");
//!     }
//!     fn on_frame(&mut self, _: &mut Ctx<'_>, _: ConnRef, _: Frame) {}
//!     fn on_http(&mut self, _: &mut Ctx<'_>, _: ConnRef, req: &Request) -> HttpAnswer {
//!         let body = format!("{{\"hello\":\"{}\"}}", req.query().unwrap_or("world"));
//!         HttpAnswer::Respond(Response::json(200, body))
//!     }
//! }
//! let node = Node::builder().listen("tcp://127.0.0.1:7420")?.service(|_| Status).start()?;
//! // curl http://127.0.0.1:7420/api/v1/hello?you   -> {"hello":"you"}
//! // curl http://127.0.0.1:7420/healthz            -> {"healthy":true,...}
//! node.run_until_signal()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use valkyrie_bridge::http::{Method, Request, Response};
use valkyrie_protocol::Tick;

use super::{ConnRef, Ctx, RouteError};
use crate::conn::http::{Answering, OUT_HIGH};
use crate::metrics::ShardMetrics;

/// Most routes one shard's service may register.
pub const MAX_ROUTES: usize = 256;

/// A method and path prefix a service answers ([`Ctx::route`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The method (`None`: any).
    pub method: Option<Method>,
    /// The path prefix (`/api/v1/jobs` takes `/api/v1/jobs` and `/api/v1/jobs/...`).
    pub prefix: String,
}

impl Route {
    /// Whether `req` is on this route.
    pub fn matches(&self, req: &Request) -> bool {
        if self
            .method
            .as_ref()
            .is_some_and(|m| *m != req.method && !(*m == Method::Get && req.method == Method::Head))
        {
            return false;
        }
        let path = req.path();
        path == self.prefix
            || (path.starts_with(&self.prefix)
                && (self.prefix.ends_with('/') || path[self.prefix.len()..].starts_with('/')))
    }
}

/// What a service does with an HTTP request.
#[derive(Debug)]
#[non_exhaustive]
pub enum HttpAnswer {
    /// This answer, now.
    Respond(Response),
    /// The head of a chunked answer ([`Response::streamed`]) now; once this call has
    /// returned its chunks follow through [`Ctx::http_chunk`] and its end through
    /// [`Ctx::http_finish`]. (To write chunks inside `on_http`, send the head with
    /// [`Ctx::http_respond`] first and return [`HttpAnswer::Later`].)
    Stream(Response),
    /// The service answers later with [`Ctx::http_respond`] (or starts a stream with it).
    Later,
}

/// Status class index of `valkyrie_http_responses_total`.
pub(crate) fn count(metrics: &ShardMetrics, status: u16) {
    if let Some(c) = metrics.http_responses.get((status / 100) as usize) {
        ShardMetrics::add(c, 1);
    }
}

impl Ctx<'_> {
    /// Have [`Service::on_http`](super::Service::on_http) called for HTTP requests with
    /// `method` (`None`: any; `GET` takes `HEAD` too) on paths under `prefix`. Paths no route
    /// takes are answered 404; `/healthz`, `/readyz` and `/metrics` are the node's own.
    pub fn route(&mut self, method: Option<Method>, prefix: &str) -> Result<(), RouteError> {
        if self.routes.len() >= MAX_ROUTES {
            return Err(RouteError::TooManyRoutes(MAX_ROUTES));
        }
        self.routes.push(Route {
            method,
            prefix: prefix.to_owned(),
        });
        Ok(())
    }

    /// Answer the HTTP request `conn` waits on ([`HttpAnswer::Later`]): a whole answer, or
    /// the head of a streamed one ([`Response::streamed`]).
    pub fn http_respond(&mut self, conn: ConnRef, resp: Response) -> Result<(), RouteError> {
        let now = Tick::since(self.epoch, self.now);
        let c = self.local(conn)?;
        let h = c.http().ok_or(RouteError::NotAnswering)?;
        let Answering::Later { keep_alive, head } = h.answering else {
            return Err(RouteError::NotAnswering);
        };
        h.answer(&resp, keep_alive, head, now);
        count(self.metrics, resp.status);
        self.mark(conn.slot);
        Ok(())
    }

    /// One chunk of the streamed answer on `conn`. Past the connection's bound of waiting
    /// answer bytes this refuses with [`RouteError::HttpBackpressure`]; then
    /// [`Service::on_http_writable`](super::Service::on_http_writable) says when to go on.
    pub fn http_chunk(&mut self, conn: ConnRef, data: &[u8]) -> Result<(), RouteError> {
        let c = self.local(conn)?;
        let h = c.http().ok_or(RouteError::NotAnswering)?;
        if h.out.len() >= OUT_HIGH {
            h.stalled = true;
            return Err(RouteError::HttpBackpressure(h.out.len()));
        }
        if !h.chunk(data) {
            return Err(RouteError::NotAnswering);
        }
        self.mark(conn.slot);
        Ok(())
    }

    /// End the streamed answer on `conn`.
    pub fn http_finish(&mut self, conn: ConnRef) -> Result<(), RouteError> {
        let now = Tick::since(self.epoch, self.now);
        let c = self.local(conn)?;
        let h = c.http().ok_or(RouteError::NotAnswering)?;
        if !h.finish(now) {
            return Err(RouteError::NotAnswering);
        }
        self.mark(conn.slot);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, target: &str) -> Request {
        Request::new(method, target, &[], bytes::Bytes::new())
    }

    #[test]
    fn a_prefix_takes_its_path_and_what_is_under_it_only() {
        let r = Route {
            method: Some(Method::Get),
            prefix: "/api/v1/jobs".into(),
        };
        assert!(r.matches(&req(Method::Get, "/api/v1/jobs")));
        assert!(r.matches(&req(Method::Get, "/api/v1/jobs/42?x=1")));
        assert!(r.matches(&req(Method::Head, "/api/v1/jobs")));
        assert!(!r.matches(&req(Method::Get, "/api/v1/jobsx")));
        assert!(!r.matches(&req(Method::Post, "/api/v1/jobs")));
        let any = Route {
            method: None,
            prefix: "/".into(),
        };
        assert!(any.matches(&req(Method::Delete, "/anything")));
    }
}
