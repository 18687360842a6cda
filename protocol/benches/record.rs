//! The record layer of the encrypting modes: seal and open of 64-byte and 16 KiB payloads on
//! one core (ChaCha20-Poly1305 via ring, header as associated data), and the same through two
//! connected `Connection`s in noise_xk (framing, scheduling and sealing together); and mtls's
//! TLS session (seal, seal + open of 16 KiB).
//!
//! `cargo bench -p valkyrie-protocol --bench record`.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use valkyrie_protocol::security::RecordProtector;
use valkyrie_protocol::security::noise_xk::{NoiseKeypair, NoiseXk};
use valkyrie_protocol::security::record::{ChaChaRecords, DEFAULT_REKEY_INTERVAL};
use valkyrie_protocol::{Config, Connection, Event, MessageType, SecurityMode, SendOptions, Side};

fn seal_open(c: &mut Criterion) {
    let header = [7u8; 24];
    let mut g = c.benchmark_group("record");
    for size in [64usize, 16 * 1024] {
        let payload = vec![0x5Au8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("seal_{size}"), |b| {
            let mut tx = ChaChaRecords::new([1; 32], [2; 32], DEFAULT_REKEY_INTERVAL);
            let mut out = BytesMut::with_capacity(size + 16);
            b.iter(|| {
                out.clear();
                tx.seal(&header, black_box(&payload), &mut out).unwrap();
                black_box(out.len())
            })
        });
        g.bench_function(format!("seal_open_{size}"), |b| {
            let mut tx = ChaChaRecords::new([1; 32], [2; 32], DEFAULT_REKEY_INTERVAL);
            let mut rx = ChaChaRecords::new([2; 32], [1; 32], DEFAULT_REKEY_INTERVAL);
            b.iter(|| {
                let mut out = BytesMut::with_capacity(size + 16);
                tx.seal(&header, &payload, &mut out).unwrap();
                black_box(rx.open(&header, out.freeze()).unwrap().len())
            })
        });
    }
    g.finish();
}

/// 16 KiB STREAM_DATA frames from a noise_xk client connection to a noise_xk server connection:
/// framing, flow control, sealing, decoding and opening, all on this core.
fn sealed_connection(c: &mut Criterion) {
    let (sk, ck) = (NoiseKeypair::generate(), NoiseKeypair::generate());
    let client_cfg = Arc::new(Config {
        security: vec![SecurityMode::NoiseXk],
        handshakes: vec![Arc::new(NoiseXk::client(ck, sk.public))],
        ..Config::new("c")
    });
    let server_cfg = Arc::new(Config {
        security: vec![SecurityMode::NoiseXk],
        handshakes: vec![Arc::new(NoiseXk::server(sk))],
        ..Config::new("s")
    });
    let now = Instant::now();
    let mut client = Connection::new(Side::Client, client_cfg, now, 1_750_000_000);
    let mut server = Connection::new(Side::Server, server_cfg, now, 1_750_000_000);
    let mut wire = BytesMut::new();
    for _ in 0..10 {
        wire.clear();
        client.write_transmits(&mut wire, usize::MAX);
        server.handle_input(&wire, now);
        while server.poll_event().is_some() {}
        wire.clear();
        server.write_transmits(&mut wire, usize::MAX);
        client.handle_input(&wire, now);
        while client.poll_event().is_some() {}
    }
    assert!(client.is_established() && server.is_established());
    let chunk = Bytes::from(vec![0xA5u8; 16 * 1024]);
    let mut g = c.benchmark_group("sealed_connection");
    g.throughput(Throughput::Bytes(chunk.len() as u64));
    g.bench_function("stream_data_16k", |b| {
        b.iter(|| {
            client
                .send(
                    1,
                    MessageType::StreamData,
                    chunk.clone(),
                    SendOptions::default(),
                )
                .unwrap();
            wire.clear();
            client.write_transmits(&mut wire, usize::MAX);
            server.handle_input(&wire, now);
            let mut got = 0;
            while let Some(e) = server.poll_event() {
                if let Event::Frame(f) = e {
                    got += f.payload.len();
                }
            }
            // Credit goes back to the client.
            wire.clear();
            server.write_transmits(&mut wire, usize::MAX);
            client.handle_input(&wire, now);
            while client.poll_event().is_some() {}
            black_box(got)
        })
    });
    g.finish();
}

/// A client and a server TLS session that have completed their handshake in memory.
fn tls_pair(
    pki: &valkyrie_protocol::security::mtls::DevPki,
) -> (
    valkyrie_protocol::security::mtls::TlsSession,
    valkyrie_protocol::security::mtls::TlsSession,
) {
    use valkyrie_protocol::security::mtls::TlsSession;
    let s = pki.server_config(0).unwrap();
    let c = pki.client_config(0).unwrap();
    let mut client = TlsSession::client(c, "node").unwrap();
    let mut server = TlsSession::server(s).unwrap();
    let (mut a, mut b, mut plain) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..10 {
        client.transmit(&mut a);
        server.receive(&std::mem::take(&mut a), &mut plain).unwrap();
        server.transmit(&mut b);
        client.receive(&std::mem::take(&mut b), &mut plain).unwrap();
    }
    assert!(!client.is_handshaking() && !server.is_handshaking());
    (client, server)
}

/// mtls: 16 KiB of frames through a client TLS session into a server TLS session
/// (AES-256-GCM via aws-lc-rs, the suite rustls picks first), both on this core.
fn tls_session(c: &mut Criterion) {
    let pki = valkyrie_protocol::security::mtls::DevPki::generate(&["node"], &["agent"]).unwrap();
    let chunk = vec![0xA5u8; 16 * 1024];
    let mut g = c.benchmark_group("tls");
    g.throughput(Throughput::Bytes(chunk.len() as u64));
    g.bench_function("seal_16k", |bch| {
        let (mut client, _) = tls_pair(&pki);
        let mut a = Vec::new();
        bch.iter(|| {
            a.clear();
            client.seal(black_box(&chunk), &mut a).unwrap();
            black_box(a.len())
        })
    });
    g.bench_function("seal_open_16k", |bch| {
        let (mut client, mut server) = tls_pair(&pki);
        let (mut a, mut plain) = (Vec::new(), Vec::new());
        bch.iter(|| {
            a.clear();
            plain.clear();
            client.seal(&chunk, &mut a).unwrap();
            server.receive(&a, &mut plain).unwrap();
            black_box(plain.len())
        })
    });
    // A 64-byte PING frame (88 bytes with its header) each way: what one sealed round trip
    // costs in TLS records.
    let ping = vec![0xA5u8; 88];
    g.throughput(Throughput::Bytes(ping.len() as u64));
    g.bench_function("seal_open_88", |bch| {
        let (mut client, mut server) = tls_pair(&pki);
        let (mut a, mut plain) = (Vec::new(), Vec::new());
        bch.iter(|| {
            a.clear();
            plain.clear();
            client.seal(&ping, &mut a).unwrap();
            server.receive(&a, &mut plain).unwrap();
            black_box(plain.len())
        })
    });
    g.finish();
}

criterion_group!(benches, seal_open, sealed_connection, tls_session);
criterion_main!(benches);
