//! tonic gRPC: a unary `valkyrie.bench.Echo/Ping(PingMsg) -> PingMsg` over HTTP/2 on loopback,
//! the call a gRPC control plane would make for a health probe. The message is a hand-written
//! prost struct and the service is wired by hand the way tonic's code generator would, so no
//! `protoc` is needed. The server runs a current-thread tokio runtime pinned to one core (or a
//! multi-thread one); the client makes one call at a time from a current-thread runtime.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tonic::codegen::http::uri::PathAndQuery;
use tonic::codegen::{BoxFuture, Context, Poll, Service, http};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic_prost::ProstCodec;

/// The one message: an opaque payload (protobuf field 1, `bytes`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PingMsg {
    /// Echoed back unchanged.
    #[prost(bytes = "vec", tag = "1")]
    pub payload: Vec<u8>,
}

const SERVICE: &str = "valkyrie.bench.Echo";
const PING_PATH: &str = "/valkyrie.bench.Echo/Ping";

/// The service: answers Ping with the same payload.
#[derive(Clone, Copy, Debug, Default)]
struct Echo;

impl NamedService for Echo {
    const NAME: &'static str = SERVICE;
}

struct PingCall;

impl UnaryService<PingMsg> for PingCall {
    type Response = PingMsg;
    type Future = BoxFuture<tonic::Response<PingMsg>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<PingMsg>) -> Self::Future {
        Box::pin(async move { Ok(tonic::Response::new(request.into_inner())) })
    }
}

impl Service<http::Request<tonic::body::Body>> for Echo {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(async move {
            if req.uri().path() == PING_PATH {
                let mut grpc = Grpc::new(ProstCodec::<PingMsg, PingMsg>::default());
                return Ok(grpc.unary(PingCall, req).await);
            }
            Ok(tonic::Status::unimplemented(req.uri().path().to_owned()).into_http())
        })
    }
}

/// The gRPC echo server.
pub struct GrpcEcho;

impl GrpcEcho {
    /// Start on an ephemeral loopback port: `workers == 1` is a current-thread runtime pinned
    /// to `core`; more is a multi-thread runtime with that many workers.
    pub fn start(core: usize, workers: usize) -> std::io::Result<super::TokioServer> {
        super::TokioServer::start(core, workers, |l, stop| async move {
            let incoming = tonic::transport::server::TcpIncoming::from(l).with_nodelay(Some(true));
            let _ = tonic::transport::Server::builder()
                .add_service(Echo)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stop.await;
                })
                .await;
        })
    }
}

/// A gRPC client making one unary call at a time on one HTTP/2 connection.
pub struct GrpcClient {
    rt: tokio::runtime::Runtime,
    grpc: tonic::client::Grpc<tonic::transport::Channel>,
}

impl GrpcClient {
    /// Connect to `addr` (plaintext HTTP/2, TCP_NODELAY).
    pub fn connect(addr: SocketAddr) -> Result<GrpcClient, Box<dyn std::error::Error>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let channel = rt.block_on(
            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
                .tcp_nodelay(true)
                .connect(),
        )?;
        Ok(GrpcClient {
            rt,
            grpc: tonic::client::Grpc::new(channel),
        })
    }

    /// One Ping call with `payload`; the round-trip time.
    pub fn round_trip(&mut self, payload: &[u8]) -> Result<Duration, tonic::Status> {
        let grpc = &mut self.grpc;
        let msg = PingMsg {
            payload: payload.to_vec(),
        };
        self.rt.block_on(async move {
            let t = Instant::now();
            grpc.ready()
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            let r: tonic::Response<PingMsg> = grpc
                .unary(
                    tonic::Request::new(msg),
                    PathAndQuery::from_static(PING_PATH),
                    ProstCodec::<PingMsg, PingMsg>::default(),
                )
                .await?;
            let d = t.elapsed();
            if r.get_ref().payload.len() != payload.len() {
                return Err(tonic::Status::data_loss("echo length differs"));
            }
            Ok(d)
        })
    }
}
