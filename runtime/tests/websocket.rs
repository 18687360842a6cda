//! Valkyrie over WebSocket at `/ws` on the node's own port: an independent WebSocket client
//! (tungstenite) carries a client `Connection`'s bytes — whole frames, parts of frames, many
//! frames per message — beside binary and HTTP clients on the same port at the same time;
//! a byte-stream security mode (Noise XK) over it; bad frames closed with their codes and
//! nothing else disturbed; the handshake's refusals; closes both ways; the `ws` transport in
//! the metrics.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use tungstenite::{Message, WebSocket};
use valkyrie_bridge::ws::{Decoder, Opcode, Progress, client_request, close, write_frame};
use valkyrie_protocol::security::noise_xk::{NoiseKeypair, NoiseXk};
use valkyrie_protocol::{Config, Connection, Event, MessageType, SecurityMode, SendOptions, Side};
use valkyrie_runtime::{Client, Node};

const WAIT: Duration = Duration::from_secs(10);

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A Valkyrie client connection carried by a tungstenite WebSocket (over TCP, or TLS).
struct WsPeer<S: Read + Write = TcpStream> {
    ws: WebSocket<S>,
    conn: Connection,
    /// Send each flush as two messages cut inside a frame (else one message).
    split: bool,
}

impl WsPeer {
    fn connect(addr: &str, config: Config) -> WsPeer {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.set_nodelay(true).unwrap();
        let (ws, resp) = tungstenite::client(format!("ws://{addr}/ws"), stream).unwrap();
        assert_eq!(resp.status(), 101);
        let conn = Connection::new(Side::Client, Arc::new(config), Instant::now(), unix_now());
        WsPeer::over(ws, conn)
    }
}

impl<S: Read + Write> WsPeer<S> {
    /// `conn` carried by `ws`, once its handshake is done.
    fn over(ws: WebSocket<S>, conn: Connection) -> WsPeer<S> {
        let mut p = WsPeer {
            ws,
            conn,
            split: false,
        };
        p.until(|e| matches!(e, Event::Connected(_)));
        p
    }

    fn flush(&mut self) {
        let mut buf = BytesMut::new();
        self.conn.write_transmits(&mut buf, usize::MAX);
        if buf.is_empty() {
            return;
        }
        if self.split && buf.len() > 1 {
            let tail = buf.split_off(buf.len() / 2);
            self.ws.send(Message::Binary(buf.freeze())).unwrap();
            self.ws.send(Message::Binary(tail.freeze())).unwrap();
        } else {
            self.ws.send(Message::Binary(buf.freeze())).unwrap();
        }
    }

    /// Flush, then read until an event `want` picks (others are dropped).
    fn until(&mut self, want: impl Fn(&Event) -> bool) -> Event {
        let deadline = Instant::now() + WAIT;
        loop {
            while let Some(ev) = self.conn.poll_event() {
                if let Event::Closed(reason) = &ev {
                    panic!("the connection closed: {reason:?}");
                }
                if want(&ev) {
                    self.flush();
                    return ev;
                }
            }
            // What decoding queued (handshake answers) goes before the next read.
            self.flush();
            assert!(Instant::now() < deadline, "nothing wanted arrived");
            match self.ws.read().unwrap() {
                Message::Binary(b) => self.conn.handle_input(&b, Instant::now()),
                Message::Close(c) => panic!("websocket closed: {c:?}"),
                _ => {}
            }
        }
    }

    fn ping(&mut self, payload: &'static [u8]) {
        let id = self.conn.ping(Bytes::from_static(payload)).unwrap();
        let ev = self
            .until(|e| matches!(e, Event::Pong { correlation_id, .. } if *correlation_id == id));
        let Event::Pong {
            payload: echoed, ..
        } = ev
        else {
            unreachable!()
        };
        assert_eq!(&echoed[..], payload);
    }

    fn request(&mut self, body: &'static [u8]) -> Bytes {
        let id = self
            .conn
            .request(
                1,
                MessageType::JobRequest,
                Bytes::from_static(body),
                SendOptions::default(),
            )
            .unwrap();
        let ev = self.until(|e| matches!(e, Event::Frame(f) if f.header.correlation_id == id));
        let Event::Frame(f) = ev else { unreachable!() };
        assert_eq!(f.msg_type(), MessageType::JobAccept);
        f.payload
    }
}

/// One HTTP request on a kept-alive raw connection: the status and the body.
fn http_get(s: &mut TcpStream, path: &str) -> (u16, String) {
    write!(s, "GET {path} HTTP/1.1\r\nHost: node\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let mut byte = [0u8; 4096];
    loop {
        let n = s.read(&mut byte).unwrap();
        assert!(n > 0, "closed");
        buf.extend_from_slice(&byte[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= end + 4 + len {
                let status = text[9..12].parse().unwrap();
                return (status, text[end + 4..end + 4 + len].to_owned());
            }
        }
    }
}

fn node() -> Node {
    Node::builder()
        .listen("tcp://127.0.0.1:0")
        .unwrap()
        .shards(2)
        .service(|_| common::Accept)
        .start()
        .unwrap()
}

fn addr(node: &Node) -> String {
    node.url().trim_start_matches("tcp://").to_owned()
}

fn ws_gauge(node: &Node) -> i64 {
    node.metrics_text()
        .lines()
        .find(|l| l.starts_with("valkyrie_connections_active{") && l.contains("transport=\"ws\""))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0, |v| v.parse().unwrap())
}

fn wait_for(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn binary_http_and_websocket_clients_on_one_port_at_once() {
    let node = node();
    let a = addr(&node);
    let rounds = 200;
    std::thread::scope(|s| {
        let url = node.url();
        s.spawn(move || {
            let mut c = Client::connect(&url).unwrap();
            for _ in 0..rounds {
                c.ping(b"binary").unwrap();
                let r = c
                    .request(1, MessageType::JobRequest, Bytes::from_static(b"b"), WAIT)
                    .unwrap();
                assert_eq!(&r.payload[..], b"b");
            }
        });
        let a2 = a.clone();
        s.spawn(move || {
            let mut h = TcpStream::connect(&a2).unwrap();
            h.set_read_timeout(Some(WAIT)).unwrap();
            for _ in 0..rounds {
                let (status, body) = http_get(&mut h, "/healthz");
                assert_eq!(status, 200, "{body}");
            }
        });
        let a3 = a.clone();
        let node = &node;
        s.spawn(move || {
            let mut p = WsPeer::connect(&a3, Config::new("ws-client"));
            assert_eq!(ws_gauge(node), 1, "one WebSocket connection open");
            for i in 0..rounds {
                // Alternate one message per flush and flushes cut inside a frame.
                p.split = i % 2 == 1;
                p.ping(b"over websocket");
                assert_eq!(&p.request(b"job over ws")[..], b"job over ws");
            }
            // Many frames in one message: a burst of pings flushed together.
            p.split = false;
            let ids: Vec<u32> = (0..50)
                .map(|_| p.conn.ping(Bytes::from_static(b"burst")).unwrap())
                .collect();
            let last = *ids.last().unwrap();
            p.until(|e| matches!(e, Event::Pong { correlation_id, .. } if *correlation_id == last));
            p.ws.close(None).unwrap();
            // The node echoes the close and ends the TCP connection.
            loop {
                match p.ws.read() {
                    Ok(Message::Close(Some(frame))) => assert_eq!(u16::from(frame.code), 1000),
                    Ok(_) => {}
                    Err(tungstenite::Error::ConnectionClosed) => break,
                    Err(e) => panic!("{e}"),
                }
            }
        });
    });
    wait_for("the ws gauge back to 0", || ws_gauge(&node) == 0);
    let text = node.metrics_text();
    assert!(
        text.contains("valkyrie_http_responses_total{class=\"1xx\"} 1"),
        "the 101 counted"
    );
    node.shutdown();
    node.join();
}

#[test]
fn noise_xk_runs_over_websocket_like_over_tcp() {
    let (sk, ck) = (NoiseKeypair::generate(), NoiseKeypair::generate());
    let node = Node::builder()
        .listen("tcp://127.0.0.1:0")
        .unwrap()
        .protocol(Config {
            security: vec![SecurityMode::NoiseXk],
            handshakes: vec![Arc::new(
                NoiseXk::server(sk.clone()).allow_clients([ck.public]),
            )],
            ..Config::new("control")
        })
        .shards(1)
        .service(|_| common::Accept)
        .start()
        .unwrap();
    let client = Config {
        security: vec![SecurityMode::NoiseXk],
        handshakes: vec![Arc::new(NoiseXk::client(ck, sk.public))],
        ..Config::new("ws-noise")
    };
    let mut p = WsPeer::connect(&addr(&node), client);
    assert_eq!(p.conn.peer().unwrap().security, SecurityMode::NoiseXk);
    p.split = true;
    for _ in 0..20 {
        p.ping(b"sealed");
        assert_eq!(&p.request(b"sealed job")[..], b"sealed job");
    }
    node.shutdown();
    node.join();
}

/// Send `frames` after an opening handshake on a raw socket; return the close code the node
/// answers with (and check it then ends the connection).
fn close_code_for(a: &str, frames: &[u8]) -> u16 {
    let mut s = TcpStream::connect(a).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let (req, _) = client_request("node", "/ws", [3; 16]);
    s.write_all(req.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).unwrap(), 1);
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101 "));
    s.write_all(frames).unwrap();
    let mut d = Decoder::client(1 << 20, 1);
    let (mut payload, mut reply) = (Vec::new(), BytesMut::new());
    let mut buf = [0u8; 4096];
    let mut code = None;
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            return code.expect("a close frame before the end");
        }
        if let Ok(Progress::Closed(c)) = d.feed(&buf[..n], &mut payload, &mut reply) {
            code = c;
        }
    }
}

#[test]
fn bad_frames_are_closed_with_their_codes_and_others_go_on() {
    let node = node();
    let a = addr(&node);
    let mask = Some([9, 8, 7, 6]);
    let frame = |op, fin, payload: &[u8], mask| {
        let mut w = BytesMut::new();
        write_frame(op, fin, payload, mask, &mut w);
        w.to_vec()
    };
    let mut peer = WsPeer::connect(&a, Config::new("bystander"));
    // Unmasked client frames: 1002.
    assert_eq!(
        close_code_for(&a, &frame(Opcode::Binary, true, b"RC", None)),
        close::PROTOCOL
    );
    // Fragmented control frames: 1002.
    assert_eq!(
        close_code_for(&a, &frame(Opcode::Ping, false, b"x", mask)),
        close::PROTOCOL
    );
    // Text: 1003.
    assert_eq!(
        close_code_for(&a, &frame(Opcode::Text, true, b"hi", mask)),
        close::UNSUPPORTED
    );
    // A message past max_frame (1 MiB + the frame header), by its header alone: 1009.
    let mut big = vec![0x82, 0xFF];
    big.extend_from_slice(&(10u64 << 30).to_be_bytes());
    big.extend_from_slice(&[1, 2, 3, 4]);
    assert_eq!(close_code_for(&a, &big), close::TOO_BIG);
    // Fragments that add up past it: a first one carrying a good HELLO, a second whose header
    // claims the rest of the limit and more: 1009 on that header; the node lingers, so the
    // client reads the close though the payload it still sends is never read.
    let mut hello = BytesMut::new();
    Connection::new(
        Side::Client,
        Arc::new(Config::new("frag")),
        Instant::now(),
        unix_now(),
    )
    .write_transmits(&mut hello, usize::MAX);
    let mut parts = frame(Opcode::Binary, false, &hello, mask);
    let rest = (1 << 20) + 24 - hello.len() + 1;
    parts.extend(frame(Opcode::Continuation, true, &vec![0; rest], mask));
    assert_eq!(close_code_for(&a, &parts), close::TOO_BIG);
    // Bytes that are not Valkyrie frames inside good WebSocket framing: the protocol's
    // own refusal (ERROR, then CLOSE), then a normal close.
    assert_eq!(
        close_code_for(
            &a,
            &frame(Opcode::Binary, true, b"GARBAGE-NOT-A-FRAME-AT-ALL", mask)
        ),
        close::NORMAL
    );
    // The bystander saw nothing of it.
    peer.ping(b"still here");
    assert_eq!(&peer.request(b"still served")[..], b"still served");
    node.shutdown();
    node.join();
}

#[test]
fn handshakes_are_refused_with_their_status_and_origins_are_checked() {
    let node = Node::builder()
        .listen("tcp://127.0.0.1:0")
        .unwrap()
        .shards(1)
        .configure(|c| c.http.allow_origins = vec!["https://ci.example".to_owned()])
        .service(|_| common::Accept)
        .start()
        .unwrap();
    let a = addr(&node);
    let status = |extra: &str| {
        let mut s = TcpStream::connect(&a).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        write!(
            s,
            "GET /ws HTTP/1.1\r\nHost: n\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
        )
        .unwrap();
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[9..12]).parse::<u16>().unwrap()
    };
    assert_eq!(status("Sec-WebSocket-Version: 13\r\n"), 101);
    assert_eq!(status("Sec-WebSocket-Version: 8\r\n"), 426);
    assert_eq!(
        status("Sec-WebSocket-Version: 13\r\nOrigin: https://ci.example\r\n"),
        101
    );
    assert_eq!(
        status("Sec-WebSocket-Version: 13\r\nOrigin: https://evil.example\r\n"),
        403
    );
    // A browser-like client with an allowed origin gets a Valkyrie connection.
    let stream = TcpStream::connect(&a).unwrap();
    let req = tungstenite::http::Request::builder()
        .uri(format!("ws://{a}/ws"))
        .header("Host", &a)
        .header("Origin", "https://ci.example")
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header(
            "Sec-WebSocket-Key",
            tungstenite::handshake::client::generate_key(),
        )
        .header("Sec-WebSocket-Protocol", "valkyrie.v2")
        .body(())
        .unwrap();
    let (_ws, resp) = tungstenite::client(req, stream).unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "valkyrie.v2");
    node.shutdown();
    node.join();
}

#[test]
fn a_draining_node_closes_its_websockets_with_close_then_going_away() {
    let node = node();
    let mut p = WsPeer::connect(&addr(&node), Config::new("leaving"));
    p.ping(b"before");
    node.drain();
    let mut saw_close_frame = false;
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline);
        match p.ws.read() {
            Ok(Message::Binary(b)) => {
                p.conn.handle_input(&b, Instant::now());
                while let Some(ev) = p.conn.poll_event() {
                    if matches!(ev, Event::CloseRequested { .. } | Event::Closed(_)) {
                        saw_close_frame = true;
                    }
                }
                p.flush();
            }
            Ok(Message::Close(Some(frame))) => {
                assert_eq!(u16::from(frame.code), 1001, "going away");
                break;
            }
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert!(
        saw_close_frame,
        "the Valkyrie CLOSE came before the WebSocket's close"
    );
    node.shutdown();
    node.join();
}

#[test]
fn wss_inside_the_nodes_tls_carries_an_mtls_connection_with_the_certificates_identity() {
    use valkyrie_protocol::security::mtls::{self, DevPki, Mtls, rustls};
    let pki = DevPki::generate(&["127.0.0.1"], &["agent-7"]).unwrap();
    let mtls_config = |name: &str| Config {
        security: vec![SecurityMode::Mtls],
        handshakes: vec![Arc::new(Mtls)],
        ..Config::new(name)
    };
    let node = Node::builder()
        .listen("tcp://127.0.0.1:0")
        .unwrap()
        .protocol(mtls_config("control"))
        .tls(pki.server_config(0).unwrap())
        .shards(1)
        .service(|_| common::Identify)
        .start()
        .unwrap();
    let a = addr(&node);
    // TLS with the client's certificate, ALPN http/1.1: the tunnel carries the node's HTTP side.
    let base = mtls::client_config(
        &pki.client_chain_pem(0),
        &pki.client_key_pem(0),
        &pki.ca_pem,
    )
    .unwrap();
    let mut tls_config = (*base).clone();
    tls_config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(&a).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    let session = rustls::ClientConnection::new(
        Arc::new(tls_config),
        rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap(),
    )
    .unwrap();
    let mut tls = rustls::StreamOwned::new(session, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).unwrap();
    }
    let server = mtls::certificate_identity(tls.conn.peer_certificates().unwrap()[0].as_ref())
        .expect("the node's certificate names it");
    let (ws, resp) = tungstenite::client(format!("ws://{a}/ws"), tls).unwrap();
    assert_eq!(resp.status(), 101);
    let mut conn = Connection::new(
        Side::Client,
        Arc::new(mtls_config("wss-agent")),
        Instant::now(),
        unix_now(),
    );
    conn.set_transport_identity(server);
    let mut p = WsPeer::over(ws, conn);
    assert_eq!(p.conn.peer().unwrap().security, SecurityMode::Mtls);
    p.ping(b"inside tls");
    let answer = p.request(b"signed job");
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.starts_with("signed job from ") && text.contains("agent-7"),
        "{text}"
    );
    node.shutdown();
    node.join();
}
