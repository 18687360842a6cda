//! Header encode/decode and streaming decode of 64-byte frames.
//!
//! `cargo bench -p valkyrie-protocol --bench frame`. The bar: at least 20 million
//! 64-byte frames/s decoded on one core (≤ 50 ns a frame).
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Instant;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use valkyrie_protocol::codec::Decoder;
use valkyrie_protocol::{
    Config, Connection, Flags, Frame, Header, MAX_FRAME_LIMIT, MessageType, Side,
};

fn header(c: &mut Criterion) {
    let h = Header {
        msg_type: MessageType::StreamData,
        flags: Flags::ACK,
        priority: 128,
        trace_flags: 1,
        stream_id: 1001,
        length: 64,
        correlation_id: 42,
        timestamp: 1_750_000_000,
    };
    let bytes = h.to_bytes();
    let mut g = c.benchmark_group("header");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode", |b| b.iter(|| black_box(black_box(&h).to_bytes())));
    g.bench_function("decode", |b| {
        b.iter(|| Header::decode(black_box(&bytes), MAX_FRAME_LIMIT).unwrap())
    });
    g.finish();
}

fn streaming(c: &mut Criterion) {
    // 64 KiB reads, each holding as many 64-byte frames as fit, as a socket would hand them over.
    const FRAMES: usize = 65_536 / 88;
    let mut wire = Vec::with_capacity(FRAMES * 88);
    for i in 0..FRAMES {
        Frame::new(MessageType::StreamData, 1001, vec![i as u8; 64]).encode(&mut wire);
    }
    let mut g = c.benchmark_group("stream_decode_64B");
    g.throughput(Throughput::Elements(FRAMES as u64));
    g.bench_function("64KiB_reads", |b| {
        let mut dec = Decoder::new(1 << 20);
        b.iter(|| {
            dec.feed(black_box(&wire));
            let mut n = 0;
            while let Some(f) = dec.decode().unwrap() {
                black_box(&f);
                n += 1;
            }
            assert_eq!(n, FRAMES);
        })
    });
    // The same frames arriving in 1500-byte pieces (one Ethernet MTU each).
    g.bench_function("1500B_reads", |b| {
        let mut dec = Decoder::new(1 << 20);
        b.iter(|| {
            let mut n = 0;
            for chunk in wire.chunks(1500) {
                dec.feed(black_box(chunk));
                while let Some(f) = dec.decode().unwrap() {
                    black_box(&f);
                    n += 1;
                }
            }
            assert_eq!(n, FRAMES);
        })
    });
    g.finish();

    let mut g = c.benchmark_group("frame_encode_64B");
    g.throughput(Throughput::Elements(FRAMES as u64));
    let payload = Bytes::from(vec![7u8; 64]);
    g.bench_function("encode", |b| {
        let mut out = Vec::with_capacity(FRAMES * 88);
        b.iter(|| {
            out.clear();
            for _ in 0..FRAMES {
                Frame::new(MessageType::StreamData, 1001, payload.clone()).encode(&mut out);
            }
            black_box(&out);
        })
    });
    g.finish();
}

fn connection(c: &mut Criterion) {
    // Full connection path: a server answering 64-byte PINGs (decode, state machine, PONG
    // queued and encoded), fed in batches of 64.
    const BATCH: usize = 64;
    let now = Instant::now();
    let mut client = Connection::new(Side::Client, Config::new("c").into(), now, 0);
    let mut server = Connection::new(Side::Server, Config::new("s").into(), now, 0);
    for _ in 0..3 {
        let mut w = bytes::BytesMut::new();
        client.write_transmits(&mut w, usize::MAX);
        server.handle_input(&w, now);
        while server.poll_event().is_some() {}
        let mut w = bytes::BytesMut::new();
        server.write_transmits(&mut w, usize::MAX);
        client.handle_input(&w, now);
        while client.poll_event().is_some() {}
    }
    assert!(server.is_established());
    let mut pings = Vec::new();
    for i in 0..BATCH {
        Frame::new(MessageType::Ping, 0, vec![1u8; 64])
            .with_correlation(i as u32 + 1)
            .encode(&mut pings);
    }
    let mut out = bytes::BytesMut::with_capacity(BATCH * 100);
    let mut g = c.benchmark_group("connection");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("ping_to_pong_64B", |b| {
        b.iter(|| {
            server.handle_input(black_box(&pings), now);
            while server.poll_event().is_some() {}
            out.clear();
            server.write_transmits(&mut out, usize::MAX);
            assert_eq!(out.len(), BATCH * 88);
        })
    });
    g.finish();
}

criterion_group!(benches, header, streaming, connection);
criterion_main!(benches);
