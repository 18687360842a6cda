//! An in-process agent and control node speaking Valkyrie over an in-memory pipe: handshake,
//! PING/PONG round trips, a job dispatched and accepted, and a flow-controlled 64 MiB stream.
//! It measures the protocol layer alone (no sockets, no kernel): what the state machines cost
//! per message on this machine.
//!
//! `cargo run --release -p valkyrie-protocol --example loopback`

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use valkyrie_protocol::message::{JobAccept, JobRequest, Payload};
use valkyrie_protocol::streams::StreamClass;
use valkyrie_protocol::{Config, Connection, Event, MessageType, SendOptions, Side};

fn pump(from: &mut Connection, to: &mut Connection, buf: &mut BytesMut) -> usize {
    buf.clear();
    let n = from.write_transmits(buf, 256 * 1024);
    if n > 0 {
        to.handle_input(buf, Instant::now());
    }
    n
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn main() {
    let t0 = Instant::now();
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut agent = Connection::new(Side::Client, Config::new("agent-1").into(), t0, unix);
    let mut node = Connection::new(Side::Server, Config::new("control-1").into(), t0, unix);
    let mut buf = BytesMut::with_capacity(512 * 1024);

    // Handshake.
    let hs = Instant::now();
    while !(agent.is_established() && node.is_established()) {
        pump(&mut agent, &mut node, &mut buf);
        while node.poll_event().is_some() {}
        pump(&mut node, &mut agent, &mut buf);
        while agent.poll_event().is_some() {}
    }
    let hs = hs.elapsed();
    let peer = agent.peer().unwrap().clone();
    println!("valkyrie-protocol loopback (in-process, no sockets)");
    println!(
        "  handshake           {:>9.1} us   (peer {}, security {}, max_frame {}, heartbeat {:?})",
        hs.as_secs_f64() * 1e6,
        peer.node_id,
        peer.security,
        peer.max_frame,
        peer.heartbeat.unwrap_or_default()
    );

    // PING/PONG round trips, 64-byte payload.
    const PINGS: usize = 200_000;
    let payload = Bytes::from(vec![0xA5u8; 64]);
    let mut rtts = Vec::with_capacity(PINGS);
    for _ in 0..PINGS {
        let start = Instant::now();
        agent.ping(payload.clone()).unwrap();
        pump(&mut agent, &mut node, &mut buf);
        while node.poll_event().is_some() {}
        pump(&mut node, &mut agent, &mut buf);
        while let Some(e) = agent.poll_event() {
            assert!(matches!(e, Event::Pong { .. }));
        }
        rtts.push(start.elapsed().as_nanos() as u64);
    }
    rtts.sort_unstable();
    println!(
        "  ping/pong 64 B      p50 {:>6.2} us  p99 {:>6.2} us  p999 {:>6.2} us  ({PINGS} round trips)",
        percentile(&rtts, 0.5),
        percentile(&rtts, 0.99),
        percentile(&rtts, 0.999)
    );

    // Job dispatch: JOB_REQUEST with ACK, JOB_ACCEPT back.
    const JOBS: usize = 50_000;
    let start = Instant::now();
    for i in 0..JOBS {
        let job = JobRequest {
            attempt: 0,
            log_from: 0,
            epoch: 0,
            job_id: format!("job-{i}"),
            spec: serde_json::json!({"pipeline": "build", "step": i}),
            resources: Default::default(),
            priority: 128,
            timeout_ms: 60_000,
        };
        node.request(
            100,
            MessageType::JobRequest,
            job.to_bytes(),
            SendOptions::default(),
        )
        .unwrap();
        pump(&mut node, &mut agent, &mut buf);
        while let Some(e) = agent.poll_event() {
            if let Event::Frame(f) = e {
                let req = JobRequest::from_bytes(&f.payload).unwrap();
                let accept = JobAccept {
                    epoch: 0,
                    job_id: req.job_id,
                    agent_id: "agent-1".into(),
                };
                agent
                    .respond(
                        &f.header,
                        MessageType::JobAccept,
                        accept.to_bytes(),
                        SendOptions::default(),
                    )
                    .unwrap();
            }
        }
        pump(&mut agent, &mut node, &mut buf);
        while node.poll_event().is_some() {}
    }
    let el = start.elapsed();
    println!(
        "  job dispatch        {:>9.0} jobs/s  ({:.2} us per request/accept, MessagePack both ways)",
        JOBS as f64 / el.as_secs_f64(),
        el.as_secs_f64() * 1e6 / JOBS as f64
    );

    // A 64 MiB stream in 16 KiB frames under flow control.
    let total = 64usize << 20;
    let chunk = Bytes::from(vec![0x5Au8; 16 * 1024]);
    let id = agent.open_stream(StreamClass::Data, None).unwrap();
    let start = Instant::now();
    let (mut sent, mut received, mut blocked) = (0usize, 0usize, 0u64);
    while received < total {
        while sent < total {
            match agent.send(
                id,
                MessageType::StreamData,
                chunk.clone(),
                SendOptions::default(),
            ) {
                Ok(_) => sent += chunk.len(),
                Err(e) if e.is_backpressure() => {
                    blocked += 1;
                    break;
                }
                Err(e) => panic!("{e}"),
            }
        }
        pump(&mut agent, &mut node, &mut buf);
        while let Some(e) = node.poll_event() {
            if let Event::Frame(f) = e {
                received += f.payload.len();
            }
        }
        pump(&mut node, &mut agent, &mut buf);
        while agent.poll_event().is_some() {}
    }
    let el = start.elapsed();
    println!(
        "  stream 64 MiB       {:>9.2} GB/s  ({} frames of 16 KiB, sender paused {blocked} times for credit or queue room)",
        total as f64 / el.as_secs_f64() / 1e9,
        total / chunk.len()
    );

    // Graceful close.
    agent.close(0, "done");
    while !(agent.is_drained() && node.is_drained()) {
        pump(&mut agent, &mut node, &mut buf);
        while node.poll_event().is_some() {}
        pump(&mut node, &mut agent, &mut buf);
        while agent.poll_event().is_some() {}
    }
    let s = agent.stats();
    println!(
        "  closed cleanly      agent sent {} frames / {:.1} MiB, received {} frames; total {:.1} s",
        s.frames_tx,
        s.bytes_tx as f64 / (1 << 20) as f64,
        s.frames_rx,
        t0.elapsed().as_secs_f64()
    );
}
