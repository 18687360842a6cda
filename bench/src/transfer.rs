//! The `transfer` scenario: a 1 MB file end to end, verified with BLAKE3 on arrival.
//!
//! Valkyrie: FILE_TRANSFER_START, 64 KiB FILE_TRANSFER_CHUNKs (8-byte offset + bytes) on one
//! stream under flow control, FILE_TRANSFER_COMPLETE as a request; the node's service places
//! each chunk at its offset, hashes the whole file and answers COMPLETE with the hash it found.
//! The floor: the same bytes over a blocking TCP socket, read into a buffer, hashed, one byte
//! back. Each transfer is timed from the first byte sent to the verified answer. The same
//! Valkyrie transfer also runs over QUIC (`params.transport: "quic"`).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use serde_json::json;
use valkyrie_protocol::message::{FileTransferComplete, FileTransferStart, Payload};
use valkyrie_protocol::{Flags, Frame, MessageType, SendError, SendOptions};
use valkyrie_runtime::{Client, ClientError, ConnRef, Ctx, Node, Service};

use crate::report::{Report, median, progress};

const SIZE: usize = 1 << 20;
const CHUNK: usize = 64 * 1024;
/// Largest file the sink accepts (its buffer is bounded by this, not by what a peer claims).
const MAX_FILE: u64 = 64 << 20;

/// Reassembles files per (connection, stream) and verifies them.
#[derive(Default)]
struct FileSink {
    files: HashMap<(ConnRef, u32), (Vec<u8>, String)>,
}

impl Service for FileSink {
    fn on_frame(&mut self, ctx: &mut Ctx<'_>, conn: ConnRef, frame: Frame) {
        let key = (conn, frame.stream_id());
        match frame.msg_type() {
            MessageType::FileTransferStart => {
                if let Ok(s) = FileTransferStart::from_bytes(&frame.payload)
                    && s.size <= MAX_FILE
                {
                    self.files
                        .insert(key, (Vec::with_capacity(s.size as usize), s.transfer_id));
                }
            }
            MessageType::FileTransferChunk => {
                if let Some((buf, _)) = self.files.get_mut(&key)
                    && frame.payload.len() >= 8
                {
                    let off =
                        u64::from_be_bytes(frame.payload[..8].try_into().expect("8")) as usize;
                    let data = &frame.payload[8..];
                    let end = off.saturating_add(data.len());
                    if end as u64 <= MAX_FILE && off == buf.len() {
                        buf.extend_from_slice(data);
                    }
                }
            }
            MessageType::FileTransferComplete => {
                if let Some((buf, id)) = self.files.remove(&key) {
                    let answer = FileTransferComplete {
                        transfer_id: id,
                        size: buf.len() as u64,
                        blake3: Some(blake3::hash(&buf).to_hex().to_string()),
                    };
                    let _ = ctx.respond(
                        conn,
                        &frame.header,
                        MessageType::FileTransferComplete,
                        answer.to_bytes(),
                    );
                }
            }
            _ => {}
        }
    }
}

/// Send one file over `c` on a new stream; returns when the node's hash matched.
fn send_file(c: &mut Client, stream: u32, file: &Bytes, hash: &str) -> Result<(), ClientError> {
    let start = FileTransferStart {
        transfer_id: format!("t{stream}"),
        name: "bench.bin".into(),
        size: file.len() as u64,
        chunk_size: CHUNK as u32,
        blake3: Some(hash.to_owned()),
    };
    c.send(
        stream,
        MessageType::FileTransferStart,
        start.to_bytes(),
        SendOptions::default(),
    )?;
    let mut off = 0;
    while off < file.len() {
        let end = (off + CHUNK).min(file.len());
        let mut chunk = Vec::with_capacity(8 + end - off);
        chunk.extend_from_slice(&(off as u64).to_be_bytes());
        chunk.extend_from_slice(&file[off..end]);
        match c.send(
            stream,
            MessageType::FileTransferChunk,
            Bytes::from(chunk),
            SendOptions::default(),
        ) {
            Ok(()) => off = end,
            Err(ClientError::Send(SendError::Stream(_))) => {
                // Out of credit: wait for the node to grant more.
                c.next_event(Duration::from_millis(50))?;
            }
            Err(e) => return Err(e),
        }
    }
    let done = FileTransferComplete {
        transfer_id: format!("t{stream}"),
        size: file.len() as u64,
        blake3: Some(hash.to_owned()),
    };
    let r = c.request(
        stream,
        MessageType::FileTransferComplete,
        done.to_bytes(),
        Duration::from_secs(10),
    )?;
    let got = FileTransferComplete::from_bytes(&r.payload).map_err(|_| ClientError::Timeout)?;
    assert!(r.header.flags.contains(Flags::RESPONSE));
    assert_eq!(
        got.blake3.as_deref(),
        Some(hash),
        "the node's BLAKE3 differs"
    );
    Ok(())
}

/// `n` transfers (after one to warm up) to a one-shard node over QUIC (TLS 1.3 with a
/// throw-away certificate), each timed from the first byte to the verified answer.
fn quic_transfers(n: usize, file: &Bytes, hash: &str) -> Histogram<u64> {
    let pki = crate::quic::pki();
    let node = Node::builder()
        .listen("quic://127.0.0.1:0")
        .expect("endpoint")
        .quic_tls(crate::quic::server_tls(&pki), false)
        .shards(1)
        .service(|_| FileSink::default())
        .start()
        .expect("node");
    let cfg = valkyrie_runtime::ClientConfig {
        tls: Some(crate::quic::client_tls(&pki)),
        tls_server_name: Some(crate::quic::SERVER_NAME.into()),
        ..Default::default()
    };
    let mut c = Client::connect_with(&node.endpoints()[0].to_string(), cfg).expect("connect");
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram");
    for i in 0..n + 1 {
        let t = Instant::now();
        send_file(&mut c, 1 + 2 * i as u32, file, hash).expect("transfer over quic");
        if i > 0 {
            h.saturating_record(t.elapsed().as_nanos() as u64);
        }
    }
    let _ = c.close();
    h
}

fn floor_server() -> (std::net::SocketAddr, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let h = std::thread::spawn(move || {
        if let Ok((mut s, _)) = l.accept() {
            let mut buf = vec![0u8; SIZE];
            let mut want = [0u8; 32];
            loop {
                if s.read_exact(&mut buf).is_err() || s.read_exact(&mut want).is_err() {
                    return;
                }
                let ok = blake3::hash(&buf).as_bytes() == &want;
                if s.write_all(&[u8::from(ok)]).is_err() {
                    return;
                }
            }
        }
    });
    (addr, h)
}

/// Run the scenario: `n` transfers per system per round.
pub(crate) fn scenario(report: &mut Report, rounds: usize, n: usize) {
    println!(
        "\ntransfer: 1 MB file end to end over TCP loopback, BLAKE3-verified by the receiver, {n} transfers x {rounds} rounds, medians"
    );
    let file: Bytes = (0..SIZE).map(|i| (i * 31 % 251) as u8).collect();
    let hash = blake3::hash(&file).to_hex().to_string();
    let bar = progress((rounds * 3) as u64, "transfer");
    let mut per: HashMap<&str, [Vec<f64>; 2]> = HashMap::new();
    for _ in 0..rounds {
        // valkyrie
        let node = Node::builder()
            .listen("tcp://127.0.0.1:0")
            .expect("endpoint")
            .shards(1)
            .service(|_| FileSink::default())
            .start()
            .expect("node");
        let mut c = Client::connect(&node.url()).expect("connect");
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram");
        for i in 0..n + 1 {
            let t = Instant::now();
            send_file(&mut c, 1 + 2 * i as u32, &file, &hash).expect("transfer");
            if i > 0 {
                h.saturating_record(t.elapsed().as_nanos() as u64);
            }
        }
        let _ = c.close();
        drop(node);
        let e = per.entry("valkyrie").or_default();
        e[0].push(h.value_at_quantile(0.5) as f64 / 1e6);
        e[1].push(h.value_at_quantile(0.99) as f64 / 1e6);
        bar.inc(1);
        // valkyrie over QUIC: the same frames on the QUIC connection's first stream.
        let h = quic_transfers(n, &file, &hash);
        let e = per.entry("valkyrie-quic").or_default();
        e[0].push(h.value_at_quantile(0.5) as f64 / 1e6);
        e[1].push(h.value_at_quantile(0.99) as f64 / 1e6);
        bar.inc(1);
        // floor
        let (addr, server) = floor_server();
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_nodelay(true).expect("nodelay");
        let want = blake3::hash(&file);
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram");
        for i in 0..n + 1 {
            let t = Instant::now();
            s.write_all(&file).expect("write");
            s.write_all(want.as_bytes()).expect("write");
            let mut ok = [0u8];
            s.read_exact(&mut ok).expect("read");
            assert_eq!(ok[0], 1, "floor hash mismatch");
            if i > 0 {
                h.saturating_record(t.elapsed().as_nanos() as u64);
            }
        }
        drop(s);
        let _ = server.join();
        let e = per.entry("floor").or_default();
        e[0].push(h.value_at_quantile(0.5) as f64 / 1e6);
        e[1].push(h.value_at_quantile(0.99) as f64 / 1e6);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let floor_p50 = median(per["floor"][0].clone());
    for row in ["valkyrie", "valkyrie-quic", "floor"] {
        let (p50, p99) = (median(per[row][0].clone()), median(per[row][1].clone()));
        println!(
            "  {row:<13} p50 {p50:>7.2} ms  p99 {p99:>7.2} ms  ({:.0} MB/s at p50)   p50 {:.2}x floor   (seed target: 1 MB < 100 ms)",
            1.0 / (p50 / 1000.0),
            p50 / floor_p50
        );
        let (system, transport) = match row {
            "valkyrie-quic" => ("valkyrie", "quic"),
            other => (other, "tcp"),
        };
        let params =
            json!({"transport": transport, "size": SIZE, "chunk": CHUNK, "verified": "blake3"});
        report.add("transfer", system, "transfer_ms", "ms", p50, params.clone());
        let mut p = params;
        p["quantile"] = json!(0.99);
        report.add("transfer", system, "transfer_ms_p99", "ms", p99, p);
    }
}
