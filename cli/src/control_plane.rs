//! `valkyrie control-plane`: a node running the control plane on its port — agents' job
//! streams, the REST jobs API beside the node's own endpoints — on the durable store in its
//! data directory.

use std::path::PathBuf;
use std::sync::Arc;

use std::time::Duration;

use valkyrie_jobs::{Committer, ControlConfig, ControlPlane, PgStore, Policy, SqliteStore};
use valkyrie_runtime::Node;

/// The control plane's flags.
#[derive(clap::Args)]
pub(crate) struct ControlPlaneArgs {
    /// Listen URL (tcp://host:port, unix:///path, shm://name for agents on this host, or
    /// quic://host:port with --tls-cert and --tls-key); repeatable.
    #[arg(long = "listen", default_value = "tcp://127.0.0.1:7420")]
    listen: Vec<String>,
    /// Where the store lives (created if missing): `DIR/jobs.db`, SQLite in WAL mode; and
    /// the artifacts, `DIR/artifacts`.
    #[arg(long)]
    data: PathBuf,
    /// Keep jobs in this PostgreSQL database instead (`postgres://USER@HOST:PORT/DB`; its
    /// schema is made or migrated at start). Several control planes may share it, each with
    /// its own --node-id: they claim jobs, hold them under leases (--lease-ms) and take over
    /// each other's when one goes quiet.
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// Shards (default: one per core).
    #[arg(long)]
    shards: Option<usize>,
    /// Connections to a PostgreSQL store, each with a thread committing its own batches (a
    /// job's changes always on the same one).
    #[arg(long, default_value_t = 2)]
    store_connections: usize,
    /// Changes and reads waiting for the store's thread, at most.
    #[arg(long, default_value_t = 65_536)]
    store_queue: usize,
    /// How long an agent may go unheard before its jobs go to others, in milliseconds
    /// (agents announce themselves every second by default).
    #[arg(long, default_value_t = 3000)]
    lease_ms: u64,
    /// How an agent is chosen among those that fit: least-loaded or round-robin.
    #[arg(long, default_value = "least-loaded")]
    placement: String,
    /// The key that seals jobs' secrets (`valkyrie keygen secrets FILE`); without it a job
    /// with secrets is refused.
    #[arg(long, value_name = "FILE")]
    secrets_key: Option<PathBuf>,
    /// Days the output of a job that ended is kept (0: for ever).
    #[arg(long, default_value_t = 30)]
    log_retention_days: u64,
    /// The largest artifact kept, in bytes.
    #[arg(long, default_value_t = 256 * 1024 * 1024)]
    artifact_cap: u64,
    /// Bytes of each job's output kept at most.
    #[arg(long, default_value_t = valkyrie_jobs::sqlite::DEFAULT_LOG_CAP)]
    log_cap: u64,
    /// Serve /healthz, /readyz and /metrics without a bearer token on a secured node (for
    /// probes and scrapers on the pod network).
    #[arg(long)]
    open_probes: bool,
    /// Its node id (in HELLO, in its answers to agents, and as the holder of its jobs in a
    /// shared store: unique among the control planes on one database).
    #[arg(long, default_value = "control-plane")]
    node_id: String,
    #[command(flatten)]
    security: crate::SecurityArgs,
}

/// Run it until SIGINT or SIGTERM (the store's last commits are flushed on the way out).
pub(crate) fn run(args: ControlPlaneArgs) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(&args.data)?;
    let path = args.data.join("jobs.db");
    let committer = Arc::new(match &args.store {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            let mut stores = Vec::new();
            for i in 0..args.store_connections.max(1) {
                let store = PgStore::connect(url)
                    .map_err(|e| format!("{url}: {e}"))?
                    .with_log_cap(args.log_cap)
                    .with_holder(&args.node_id, Duration::from_millis(args.lease_ms));
                // The node id is locked once, by the first connection's session.
                stores.push(if i == 0 {
                    store.lock_node().map_err(|e| format!("{url}: {e}"))?
                } else {
                    store
                });
            }
            Committer::spawn_pool(stores, args.store_queue)
        }
        Some(other) => return Err(format!("--store {other}: a postgres:// URL").into()),
        None => {
            let store = SqliteStore::open(&path)
                .map_err(|e| format!("{}: {e}", path.display()))?
                .with_log_cap(args.log_cap)
                .with_holder(&args.node_id, Duration::from_millis(args.lease_ms));
            Committer::spawn(store, args.store_queue)
        }
    });
    let policy = match args.placement.as_str() {
        "least-loaded" => Policy::LeastLoaded,
        "round-robin" => Policy::RoundRobin,
        other => {
            return Err(format!("unknown placement {other:?}: least-loaded or round-robin").into());
        }
    };
    let secrets = match &args.secrets_key {
        Some(p) => Some(valkyrie_jobs::SecretsKey::load(p)?),
        None => None,
    };
    let protocol = args
        .security
        .apply(valkyrie_protocol::Config::new(args.node_id.clone()), true)?;
    let cp = ControlPlane::new(
        committer,
        ControlConfig {
            lease: Duration::from_millis(args.lease_ms),
            policy,
            artifacts: Some(args.data.join("artifacts")),
            artifact_cap: args.artifact_cap,
            secrets,
            log_retention: (args.log_retention_days > 0)
                .then(|| Duration::from_secs(args.log_retention_days * 86_400)),
            node_id: args.node_id.clone(),
            grants: protocol.policy.clone(),
            ..ControlConfig::default()
        },
    );
    // A secured control plane checks HTTP clients' bearer tokens with its --token-file.
    let bearer = match &args.security.token_file {
        Some(f) => valkyrie_runtime::keys::read_tokens(f)?,
        None => Vec::new(),
    };
    let open_probes = args.open_probes;
    // Other control planes on the same database say what they queued or signalled.
    let _listener = match &args.store {
        Some(url) => {
            let to = cp.clone();
            Some(valkyrie_jobs::notice::listen(url, move |n| to.notice(n))?)
        }
        None => None,
    };
    let serving = cp.clone();
    let mut b = Node::builder()
        .configure(|c| {
            c.http.open_probes = open_probes;
            c.http.bearer_keys = valkyrie_runtime::BearerKeys(Arc::new(bearer));
        })
        .protocol(protocol)
        .collector(cp.collector())
        .ready_when(move || serving.serving())
        .service(move |shard| cp.service(shard));
    if let Some(tls) = args.security.tls_server()? {
        b = b.tls(tls);
    }
    for url in &args.listen {
        b = b.listen(url)?;
    }
    if args.listen.iter().any(|u| u.starts_with("quic://")) {
        // Agents over QUIC: --tls-cert/--tls-key (and --tls-ca to require their certificates).
        let (tls, client_auth) = args.security.quic_server()?;
        b = b.quic_tls(tls, client_auth);
    }
    if let Some(n) = args.shards {
        b = b.shards(n);
    }
    let node = b.start()?;
    for ep in node.endpoints() {
        let store = match &args.store {
            Some(_) => "postgres".to_owned(),
            None => path.display().to_string(),
        };
        tracing::info!(%ep, %store, node = %args.node_id, "control plane listening");
    }
    node.run_until_signal()?;
    Ok(())
}
