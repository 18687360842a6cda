//! `valkyrie control-plane`: a node running the jobs service on its port — the REST jobs API
//! beside the node's own endpoints — on the durable store in its data directory. (Agents and
//! dispatch come with the rest of issue 18.)

use std::path::PathBuf;
use std::sync::Arc;

use valkyrie_jobs::{Committer, JobsService, SqliteStore};
use valkyrie_runtime::Node;

/// The control plane's flags.
#[derive(clap::Args)]
pub(crate) struct ControlPlaneArgs {
    /// Listen URL (tcp://host:port or unix:///path); repeatable.
    #[arg(long = "listen", default_value = "tcp://127.0.0.1:7420")]
    listen: Vec<String>,
    /// Where the store lives (created if missing): `DIR/jobs.db`, SQLite in WAL mode.
    #[arg(long)]
    data: PathBuf,
    /// Shards (default: one per core).
    #[arg(long)]
    shards: Option<usize>,
    /// Changes and reads waiting for the store's thread, at most.
    #[arg(long, default_value_t = 65_536)]
    store_queue: usize,
}

/// Run it until SIGINT or SIGTERM (the store's last commits are flushed on the way out).
pub(crate) fn run(args: ControlPlaneArgs) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(&args.data)?;
    let path = args.data.join("jobs.db");
    let store = SqliteStore::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let committer = Arc::new(Committer::spawn(store, args.store_queue));
    let c = committer.clone();
    let mut b = Node::builder().service(move |shard| JobsService::new(c.clone(), shard));
    for url in &args.listen {
        b = b.listen(url)?;
    }
    if let Some(n) = args.shards {
        b = b.shards(n);
    }
    let node = b.start()?;
    for ep in node.endpoints() {
        tracing::info!(%ep, store = %path.display(), "control plane listening");
    }
    node.run_until_signal()?;
    Ok(())
}
