//! `valkyrie agent`: a node with no listener that keeps a link to the control plane (its
//! URLs in order, reconnecting with backoff and a circuit breaker) and runs the jobs it is
//! given as child processes in process groups of their own, in `--work`.

use std::path::PathBuf;
use std::time::Duration;

use valkyrie_jobs::agent::{Agent, AgentConfig};
use valkyrie_runtime::Node;

/// The agent's flags.
#[derive(clap::Args)]
pub(crate) struct AgentArgs {
    /// The control plane's URLs, comma-separated, tried in order (tcp://host:port).
    #[arg(long, value_delimiter = ',', required = true)]
    connect: Vec<String>,
    /// This agent's id (unique among a control plane's agents).
    #[arg(long)]
    id: String,
    /// Its labels, comma-separated (a job runs only where every label it asks for is).
    #[arg(long, value_delimiter = ',')]
    labels: Vec<String>,
    /// Jobs it runs at once.
    #[arg(long, default_value_t = 1)]
    slots: u32,
    /// Where jobs run (created if missing).
    #[arg(long)]
    work: PathBuf,
    /// How often it announces itself to the control plane, in milliseconds (its lease is
    /// the control plane's `--lease-ms`).
    #[arg(long, default_value_t = 1000)]
    heartbeat_ms: u64,
    /// Between SIGTERM and SIGKILL when a job is cancelled or times out, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    grace_ms: u64,
    /// Do not put jobs in cgroups of their own (by default they are, where the host offers
    /// cgroups this process may write).
    #[arg(long)]
    no_cgroups: bool,
    /// Lines of one job's unacknowledged output held in memory; past them they spill to a
    /// file in the work directory.
    #[arg(long, default_value_t = 65_536)]
    log_memory_lines: usize,
    /// Bytes of one job's output spilled to disk at most (past them the job's writes wait).
    #[arg(long, default_value_t = 256 * 1024 * 1024)]
    spool_bytes: u64,
    #[command(flatten)]
    security: crate::SecurityArgs,
}

/// Run it until SIGINT or SIGTERM.
pub(crate) fn run(args: AgentArgs) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(&args.work)?;
    let mut cfg = AgentConfig::new(&args.id, args.connect, args.work);
    cfg.labels = args.labels.into_iter().filter(|l| !l.is_empty()).collect();
    cfg.slots = args.slots.max(1);
    cfg.heartbeat = Duration::from_millis(args.heartbeat_ms.max(10));
    cfg.grace = Duration::from_millis(args.grace_ms);
    cfg.cgroups = !args.no_cgroups;
    cfg.memory_lines = args.log_memory_lines.max(1);
    cfg.spool_bytes = args.spool_bytes;
    cfg.protocol = Some(
        args.security
            .apply(valkyrie_protocol::Config::new(args.id.clone()), false)?,
    );
    cfg.tls = args
        .security
        .tls_client()?
        .map(|t| (t, args.security.tls_server_name.clone()));
    let agent = Agent::new(cfg);
    let node = Node::builder()
        .without_listeners()
        .shards(1)
        .service(move |shard| agent.service(shard))
        .start()?;
    tracing::info!(id = %args.id, "agent started");
    node.run_until_signal()?;
    Ok(())
}
