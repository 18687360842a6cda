//! Embed a Valkyrie node: a control plane that accepts agents, dispatches a job to each one
//! that connects, and prints what comes back.
//!
//! Run `cargo run --release -p valkyrie-examples --example embed_node`, then in another
//! terminal `cargo run --release -p valkyrie-examples --example agent`.

use std::time::Duration;

use valkyrie_protocol::message::{JobComplete, JobRequest, LogEntry, Payload};
use valkyrie_protocol::{CloseReason, Frame, MessageType, PeerInfo, SendOptions};
use valkyrie_runtime::{ConnRef, Ctx, Node, Service};

/// One instance per shard; it only touches its own shard's connections.
struct Dispatcher {
    next_job: u64,
}

impl Service for Dispatcher {
    fn on_connect(&mut self, ctx: &mut Ctx<'_>, conn: ConnRef, peer: &PeerInfo) {
        println!("[shard {}] agent {} connected", ctx.shard(), peer.node_id);
        self.next_job += 1;
        let job = JobRequest {
            attempt: 0,
            log_from: 0,
            epoch: 0,
            job_id: format!("job-{}-{}", ctx.shard(), self.next_job),
            spec: serde_json::json!({"pipeline": "build-test-deploy", "branch": "main"}),
            resources: Default::default(),
            priority: 200,
            timeout_ms: 60_000,
        };
        // Job stream 100 (even ids are the accepting side's).
        let opts = SendOptions {
            correlation_id: self.next_job as u32,
            ..SendOptions::default()
        };
        if let Err(e) = ctx.send(conn, 100, MessageType::JobRequest, job.to_bytes(), opts) {
            eprintln!("could not dispatch: {e}");
        }
    }

    fn on_frame(&mut self, ctx: &mut Ctx<'_>, _conn: ConnRef, frame: Frame) {
        match frame.msg_type() {
            MessageType::JobAccept => println!("[shard {}] job accepted", ctx.shard()),
            MessageType::LogEntry => match LogEntry::from_bytes(&frame.payload) {
                Ok(line) => println!(
                    "[shard {}] log {}: {}",
                    ctx.shard(),
                    line.level,
                    line.message
                ),
                Err(e) => eprintln!("bad LOG_ENTRY: {e}"),
            },
            MessageType::JobComplete => match JobComplete::from_bytes(&frame.payload) {
                Ok(done) => println!(
                    "[shard {}] {} finished with exit code {} in {} ms",
                    ctx.shard(),
                    done.job_id,
                    done.exit_code,
                    done.duration_ms
                ),
                Err(e) => eprintln!("bad JOB_COMPLETE: {e}"),
            },
            other => println!("[shard {}] {other}", ctx.shard()),
        }
    }

    fn on_close(&mut self, ctx: &mut Ctx<'_>, _conn: ConnRef, reason: &CloseReason) {
        println!("[shard {}] agent gone: {reason:?}", ctx.shard());
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let node = Node::builder()
        .listen("tcp://127.0.0.1:7420")?
        .listen("unix:///tmp/valkyrie-example.sock")?
        .heartbeat(Duration::from_secs(5))
        .service(|_shard| Dispatcher { next_job: 0 })
        .start()?;
    for ep in node.endpoints() {
        println!("control plane listening on {ep}");
    }
    println!("Ctrl-C to stop (connections get CLOSE and drain)");
    node.run_until_signal()?;
    Ok(())
}
