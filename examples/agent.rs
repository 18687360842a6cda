//! An agent: connects to a control plane, waits for a job, accepts it, streams a few log lines
//! and reports completion.
//!
//! `cargo run --release -p valkyrie-examples --example agent [URL]` (default
//! tcp://127.0.0.1:7420; try unix:///tmp/valkyrie-example.sock).

use std::time::{Duration, Instant};

use valkyrie_protocol::message::{JobAccept, JobComplete, JobRequest, LogEntry, Payload};
use valkyrie_protocol::{Event, MessageType, SendOptions};
use valkyrie_runtime::{Client, ClientConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "tcp://127.0.0.1:7420".into());
    let cfg = ClientConfig {
        protocol: valkyrie_protocol::Config::new("agent-example"),
        ..ClientConfig::default()
    };
    let mut client = Client::connect_with(&url, cfg)?;
    let rtt = client.ping(b"hello")?;
    println!(
        "connected to {} (rtt {rtt:?})",
        client.peer().map_or("?", |p| p.node_id.as_str())
    );
    let request = loop {
        match client.next_event(Duration::from_secs(30))? {
            Some(Event::Frame(f)) if f.msg_type() == MessageType::JobRequest => break f,
            Some(_) => continue,
            None => return Err("no job offered within 30 s".into()),
        }
    };
    let job = JobRequest::from_bytes(&request.payload)?;
    println!("got {} : {}", job.job_id, job.spec);
    let accept = JobAccept {
        epoch: 0,
        job_id: job.job_id.clone(),
        agent_id: "agent-example".into(),
    };
    let respond = SendOptions {
        flags: valkyrie_protocol::Flags::RESPONSE,
        correlation_id: request.header.correlation_id,
        ..SendOptions::default()
    };
    client.send(
        request.stream_id(),
        MessageType::JobAccept,
        accept.to_bytes(),
        respond,
    )?;
    let started = Instant::now();
    // Logs go on a log stream (10000+, odd: ours): best-effort, never blocks the job stream.
    for (i, line) in ["checkout", "build", "test", "deploy"].iter().enumerate() {
        let entry = LogEntry {
            timestamp_ms: 0,
            level: "info".into(),
            message: format!("step {i}: {line}"),
            job_id: Some(job.job_id.clone()),
            source: None,
            fields: Default::default(),
        };
        client.send(
            10_001,
            MessageType::LogEntry,
            entry.to_bytes(),
            SendOptions::default(),
        )?;
    }
    let done = JobComplete {
        epoch: 0,
        job_id: job.job_id,
        exit_code: 0,
        duration_ms: started.elapsed().as_millis() as u64,
        outputs: Default::default(),
    };
    client.send(
        request.stream_id(),
        MessageType::JobComplete,
        done.to_bytes(),
        SendOptions::default(),
    )?;
    println!("closed: {:?}", client.close()?);
    Ok(())
}
