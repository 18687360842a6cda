//! `valkyrie-bench`: measures Valkyrie beside the systems a user would pick instead, in one run.
//!
//! Rules (../shared/BENCH.md): same run, same machine, same payloads; systems alternate within
//! each round (A B C A B C ...); every figure is the median over rounds; every sample is recorded
//! in an hdrhistogram; pinning and modes are printed with the results.
#![allow(missing_docs, unreachable_pub)]

mod clients;
mod connections;
mod cpu;
mod handshake;
mod http;
mod idle_memory;
mod jobs;
mod jobs_plane;
mod jobs_postgres;
mod latency;
mod memory;
mod node_to_node;
mod peers;
mod pipeline;
mod plot;
mod quic;
mod quic_loss;
mod raw_client;
mod report;
mod server;
mod shm;
mod streams;
mod targets;
mod throughput;
mod transfer;
mod upgraded;
mod websocket;

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::{Value, json};
use valkyrie_runtime::{BusyPoll, RecvMode};

use report::{Report, host};

#[derive(Parser)]
#[command(name = "valkyrie-bench", about = "Valkyrie benchmark harness")]
struct Cli {
    /// Scenario to run (idle-memory, handshake, latency, throughput, pipeline, clients, http, ws, jobs,
    /// transfer, shm, connections);
    /// repeatable. Default: all but connections.
    #[arg(long = "scenario")]
    scenarios: Vec<String>,
    /// Rounds per scenario (at least 3).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Longer runs.
    #[arg(long)]
    full: bool,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<String>,
    /// Write an SVG plot of the latency distributions here.
    #[arg(long)]
    plot: Option<String>,
    /// Only these systems (valkyrie, valkyrie-poll, tokio, glommio, grpc, floor); repeatable.
    /// Default: all.
    #[arg(long = "system")]
    systems: Vec<String>,
    /// How a Valkyrie shard busy-polls in the latency scenario's busy-poll mode: always, or
    /// adaptive[:MICROS] (spin that long after the last completion, then sleep).
    #[arg(long, default_value = "always")]
    spin: BusyPoll,
    /// Heartbeat interval for the connections scenario, in milliseconds (each held connection
    /// PINGs once per interval; the node's own default interval is 5 s).
    #[arg(long, default_value_t = 60_000)]
    heartbeat_ms: u64,
    /// How the node's shards busy-poll in the connections scenario: off (default),
    /// adaptive[:MICROS] or always.
    #[arg(long, default_value = "off")]
    node_busy_poll: BusyPoll,
    /// The jobs scenario's store: sqlite (embedded, default) or postgres (control planes
    /// sharing one PostgreSQL database the bench starts, with one and with two nodes).
    #[arg(long, default_value = "sqlite")]
    store: String,
    /// Connections for the idle-memory and connections scenarios.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    #[command(subcommand)]
    internal: Option<Internal>,
}

#[derive(Subcommand)]
enum Internal {
    /// (internal) Hold N connections to URL open until stdin closes.
    Hold { addr: SocketAddr, n: usize },
    /// (internal) Measure idle memory for one receive mode in this fresh process.
    IdleMemory { recv: String, n: usize },
    /// (internal) Hold N heartbeating connections from source address SRC until stdin closes.
    HoldHeartbeating {
        addr: SocketAddr,
        n: usize,
        src: std::net::Ipv4Addr,
        heartbeat_ms: u64,
    },
    /// (internal) The child of the quic scenario's memory figure: hold N QUIC connections.
    HoldQuic {
        addr: SocketAddr,
        n: usize,
        ca: std::path::PathBuf,
        valkyrie: u8,
    },
    /// (internal) The quic scenario's loss child, run inside its network namespace.
    QuicLoss { streams: u8 },
    /// (internal) The peer process of the shm scenario.
    ShmPeer {
        system: String,
        name: String,
        role: String,
        mode: String,
        n: u64,
    },
}

fn main() {
    let cli = Cli::parse();
    match cli.internal {
        Some(Internal::Hold { addr, n }) => {
            idle_memory::hold(addr, n);
            return;
        }
        Some(Internal::HoldHeartbeating {
            addr,
            n,
            src,
            heartbeat_ms,
        }) => {
            connections::hold(addr, n, src, Duration::from_millis(heartbeat_ms));
            return;
        }
        Some(Internal::HoldQuic {
            addr,
            n,
            ca,
            valkyrie,
        }) => {
            quic::hold(addr, n, &ca, valkyrie == 1);
            return;
        }
        Some(Internal::QuicLoss { streams }) => {
            quic_loss::child(streams == 1);
            return;
        }
        Some(Internal::ShmPeer {
            system,
            name,
            role,
            mode,
            n,
        }) => {
            shm::peer(&system, &name, &role, &mode, n);
            return;
        }
        Some(Internal::IdleMemory { recv, n }) => {
            let mode = if recv == "poll" {
                RecvMode::PollThenRecv
            } else {
                RecvMode::Multishot
            };
            let mut report = Report {
                results: Vec::new(),
            };
            idle_memory::idle_memory_mode(&mut report, n, mode);
            println!("{}", Value::Array(report.results));
            return;
        }
        None => {}
    }
    let h = host();
    println!(
        "valkyrie-bench on {} cores ({}), kernel {}, {:.1} GiB, RLIMIT_NOFILE {}",
        h["cores"],
        h["cpu"].as_str().unwrap_or(""),
        h["kernel"].as_str().unwrap_or(""),
        h["memory_bytes"].as_f64().unwrap_or(0.0) / (1u64 << 30) as f64,
        h["nofile"]
    );
    println!("io_uring: {}", h["io_uring"]);
    let rounds = cli.rounds.max(3);
    let all = cli.scenarios.is_empty();
    let wants = |s: &str| all || cli.scenarios.iter().any(|x| x == s);
    let mut report = Report {
        results: Vec::new(),
    };
    // The full suite holds at least 100,000 connections; the quick one none (minutes, not
    // seconds); `--scenario connections` holds `--connections`.
    let held = if cli.scenarios.iter().any(|s| s == "connections") {
        Some(cli.connections)
    } else {
        (all && cli.full).then(|| cli.connections.max(100_000))
    };
    if let Some(n) = held {
        connections::scenario(
            &mut report,
            n,
            Duration::from_millis(cli.heartbeat_ms),
            cli.node_busy_poll,
        );
    }
    if wants("idle-memory") {
        idle_memory::idle_memory(&mut report, cli.connections);
    }
    // A scenario may leave the main thread pinned (one-shard servers pin their starter):
    // each starts from a clean mask, so that threads it spawns are not stacked on one core.
    peers::unpin();
    if wants("handshake") {
        handshake::handshake(&mut report, rounds, if cli.full { 10_000 } else { 2_000 });
    }
    peers::unpin();
    if wants("latency") {
        let dists = latency::latency(
            &mut report,
            rounds,
            if cli.full { 100_000 } else { 20_000 },
            &cli.systems,
            cli.spin,
        );
        if cli.systems.is_empty() || cli.systems.iter().any(|s| s == "valkyrie") {
            streams::stream_round_trips(
                &mut report,
                rounds,
                if cli.full { 50_000 } else { 10_000 },
                cli.spin,
            );
            peers::unpin();
            upgraded::scenario(
                &mut report,
                rounds,
                if cli.full { 50_000 } else { 10_000 },
                cli.spin,
            );
        }
        if let Some(path) = &cli.plot {
            match plot::latency_svg(path, &dists) {
                Ok(()) => println!("\nlatency plot written to {path}"),
                Err(e) => eprintln!("could not write the plot: {e}"),
            }
        }
    }
    peers::unpin();
    if wants("throughput") {
        throughput::throughput(
            &mut report,
            rounds,
            if cli.full { 5.0 } else { 1.5 },
            &cli.systems,
        );
    }
    peers::unpin();
    if wants("pipeline") {
        pipeline::pipeline(
            &mut report,
            rounds,
            if cli.full { 5.0 } else { 1.5 },
            &cli.systems,
        );
    }
    peers::unpin();
    if wants("clients") {
        clients::scenario(&mut report, rounds, if cli.full { 3.0 } else { 1.0 });
    }
    peers::unpin();
    if wants("http") {
        http::scenario(&mut report, rounds, if cli.full { 5.0 } else { 1.5 });
    }
    peers::unpin();
    if wants("ws") {
        websocket::scenario(&mut report, rounds, if cli.full { 100_000 } else { 20_000 });
    }
    peers::unpin();
    if wants("transfer") {
        transfer::scenario(&mut report, rounds, if cli.full { 100 } else { 20 });
    }
    peers::unpin();
    if wants("jobs") {
        let scale = if cli.full { 5.0 } else { 1.0 };
        match cli.store.as_str() {
            "postgres" => jobs_postgres::scenario(&mut report, rounds, scale),
            _ => jobs::scenario(&mut report, rounds, scale),
        }
    }
    peers::unpin();
    if wants("quic") {
        quic::scenario(
            &mut report,
            rounds,
            if cli.full { 100_000 } else { 20_000 },
            if cli.full { 5.0 } else { 1.5 },
        );
        peers::unpin();
        quic_loss::scenario(&mut report, rounds);
    }
    peers::unpin();
    if wants("shm") {
        shm::scenario(
            &mut report,
            rounds,
            if cli.full { 200_000 } else { 50_000 },
            if cli.full { 20_000_000 } else { 5_000_000 },
        );
    }
    targets::print(&report.results);
    if let Some(path) = cli.json {
        let doc = json!({"version": 1, "host": h, "results": report.results});
        std::fs::write(&path, serde_json::to_string_pretty(&doc).expect("json"))
            .expect("write report");
        println!("\nreport written to {path}");
    }
}
