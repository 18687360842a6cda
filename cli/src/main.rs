//! `valkyrie`: run a node, ping one, make keys and certificates, check what a host can hold.

mod agent;
mod control_plane;
mod job_cmd;
mod otlp;
mod security_args;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use security_args::{SecurityArgs, parse_trusted};
use valkyrie_runtime::{BusyPoll, Client, ClientConfig, Node};

#[derive(Parser)]
#[command(
    name = "valkyrie",
    version,
    about = "Valkyrie Protocol v2 node and tools"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a node until SIGINT or SIGTERM.
    Node {
        /// Listen URL (tcp://host:port, quic://host:port with --tls-cert/--tls-key, unix:///path
        /// or shm://name); repeatable.
        #[arg(long = "listen", default_value = "tcp://127.0.0.1:7420")]
        listen: Vec<String>,
        /// Shards (default: one per core).
        #[arg(long)]
        shards: Option<usize>,
        /// Busy-poll: off, adaptive[:MICROS] or always.
        #[arg(long, default_value = "off")]
        busy_poll: BusyPoll,
        /// Connections per shard before new ones are refused with ERROR 501.
        #[arg(long)]
        max_connections: Option<usize>,
        /// Heartbeat interval proposed to clients, in milliseconds.
        #[arg(long, default_value_t = 5000)]
        heartbeat_ms: u64,
        /// Node id announced in HELLO_ACK.
        #[arg(long, default_value = "valkyrie-node")]
        node_id: String,
        #[command(flatten)]
        security: SecurityArgs,
        /// Append a JSON line for every handshake result, authentication failure, refusal and
        /// ban to this file.
        #[arg(long)]
        audit: Option<std::path::PathBuf>,
        /// Intrusion detection: ban an address after this many failures within a minute
        /// (authentication failures, malformed frames, handshake timeouts). 0 turns it off.
        #[arg(long, default_value_t = 10)]
        ban_after: u32,
        /// How long a ban lasts, in seconds.
        #[arg(long, default_value_t = 300)]
        ban_secs: u64,
        /// A network intrusion detection never throttles or bans (CIDR, repeatable). Default:
        /// loopback (127.0.0.0/8 and ::1); giving any replaces it, and `none` empties it.
        #[arg(long = "trusted", value_name = "CIDR")]
        trusted: Vec<String>,
        /// Answer every request with its own type and payload, RESPONSE set (smoke tests,
        /// examples, benchmarks). Without it requests get ERROR 504 (no service).
        #[arg(long)]
        echo: bool,
        /// Serve only Valkyrie frames on the listeners (no HTTP: no /healthz, /readyz,
        /// /metrics).
        #[arg(long)]
        no_http: bool,
        /// On a node whose security modes all authenticate, answer /healthz, /readyz and
        /// /metrics without credentials (for probes and scrapers).
        #[arg(long)]
        open_probes: bool,
        /// A browser origin allowed to open a WebSocket at /ws (repeatable; default: any
        /// origin; clients that send no Origin are not asked).
        #[arg(long = "allow-origin", value_name = "ORIGIN")]
        allow_origin: Vec<String>,
        /// Export a span for each request that carries a trace context (TRACE flag, or an
        /// HTTP traceparent) to this OTLP/HTTP collector (JSON to URL/v1/traces).
        #[arg(long, value_name = "URL")]
        otlp: Option<String>,
    },
    /// Run a control plane: agents' job streams and the jobs API (/api/v1/jobs,
    /// /api/v1/agents) on the durable store in `--data`, beside the node's own endpoints.
    ControlPlane(control_plane::ControlPlaneArgs),
    /// Run an agent: `--connect URL[,URL...] --id NAME --labels a,b --slots N --work DIR`.
    Agent(agent::AgentArgs),
    /// The jobs API of a control plane: `submit URL -- CMD ARGS...`, `status URL ID`,
    /// `list URL [--state S]`, `cancel|pause|resume|migrate URL ID`, `logs URL ID [--follow]`,
    /// `agents URL`.
    Job {
        #[command(subcommand)]
        cmd: job_cmd::JobCmd,
    },
    /// Create key material: `noise NAME`, `pq NAME`, `token FILE --key-id ID`, `ca NAME`,
    /// `cert NAME --ca CA --name DNS --role server|client`.
    Keygen {
        #[command(subcommand)]
        what: KeygenCmd,
    },
    /// Host tuning: `valkyrie tune check` reads this host's limits and says how many connections
    /// it can hold and which limit binds first.
    Tune {
        #[command(subcommand)]
        cmd: TuneCmd,
    },
    /// Bearer tokens for HTTP clients of a `token` node: `valkyrie token mint --token-file F`.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// Ping a node and print the round-trip distribution.
    Ping {
        /// The node's URL.
        url: String,
        /// Round trips.
        #[arg(long, default_value_t = 1000)]
        count: u64,
        /// Payload bytes (0-1024).
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Spin on the socket instead of sleeping (lowest latency).
        #[arg(long)]
        busy_poll: bool,
        #[command(flatten)]
        security: SecurityArgs,
    },
}

#[derive(Subcommand)]
enum KeygenCmd {
    /// A key for jobs' secrets (`control-plane --secrets-key FILE`): 32 random bytes as hex
    /// in FILE (0600; not overwritten).
    Secrets {
        /// The file.
        file: std::path::PathBuf,
    },
    /// A Noise (Curve25519) static key pair: NAME.key (private, 0600) and NAME.pub.
    Noise {
        /// Path without extension.
        name: std::path::PathBuf,
    },
    /// A post-quantum (ML-DSA-65) identity: NAME.pqkey (private, 0600) and NAME.pqpub.
    Pq {
        /// Path without extension.
        name: std::path::PathBuf,
    },
    /// A development certificate authority for mtls: NAME.crt and NAME.key (0600).
    Ca {
        /// Path without extension.
        name: std::path::PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "valkyrie-dev-ca")]
        cn: String,
        /// Days of validity.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// A certificate issued by a CA made with `keygen ca`: NAME.crt (leaf then CA) and
    /// NAME.key (0600).
    Cert {
        /// Path without extension.
        name: std::path::PathBuf,
        /// The CA's path without extension (CA.crt, CA.key).
        #[arg(long)]
        ca: std::path::PathBuf,
        /// The DNS name or IP address the certificate names (the peer identity is
        /// `x509:<this>`).
        #[arg(long)]
        subject: String,
        /// server (serverAuth) or client (clientAuth).
        #[arg(long, default_value = "client")]
        role: String,
        /// Days of validity.
        #[arg(long, default_value_t = 90)]
        days: u32,
    },
    /// A token secret file with one `KEY_ID HEX_SECRET` line.
    Token {
        /// The file to create.
        file: std::path::PathBuf,
        /// The key id the secret is known by.
        #[arg(long)]
        key_id: String,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Print `KEY_ID.EXPIRES.MAC` for `Authorization: Bearer` (docs/SECURITY.md).
    Mint {
        /// The secrets file (`KEY_ID HEX_SECRET` lines, from `valkyrie keygen token`).
        #[arg(long)]
        token_file: std::path::PathBuf,
        /// The key to sign with (default: the file's first).
        #[arg(long)]
        key_id: Option<String>,
        /// Seconds from now until the token expires.
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
    },
}

#[derive(Subcommand)]
enum TuneCmd {
    /// Read the limits and estimate capacity, for one process and for a spread-out layout.
    Check {
        /// Connections to plan the spread-out layout for.
        #[arg(long, default_value_t = 1_000_000)]
        target: u64,
        /// Measured bytes per connection, both loopback ends (user + kernel).
        #[arg(long, default_value_t = 9_200)]
        bytes_per_connection: u64,
    },
}

/// The log lines on stderr, filtered by `RUST_LOG` (default `info`).
fn log_layer<S>() -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use tracing_subscriber::Layer;
    tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A node exporting spans installs its own subscriber (the log lines and the exporter).
    if !matches!(&cli.cmd, Cmd::Node { otlp: Some(_), .. }) {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        tracing_subscriber::registry().with(log_layer()).init();
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("valkyrie: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    match cli.cmd {
        Cmd::Node {
            listen,
            shards,
            busy_poll,
            max_connections,
            heartbeat_ms,
            node_id,
            security,
            audit,
            ban_after,
            ban_secs,
            trusted,
            echo,
            no_http,
            open_probes,
            allow_origin,
            otlp,
        } => {
            let exporter = match &otlp {
                Some(url) => Some(otlp::install(url, &node_id)?),
                None => None,
            };
            let hook = exporter.as_ref().map(|(_, hook)| hook.clone());
            // A token node checks HTTP clients' bearer tokens with its own secrets.
            let bearer = match &security.token_file {
                Some(f) => valkyrie_runtime::keys::read_tokens(f)?,
                None => Vec::new(),
            };
            let mut b = Node::builder().configure(|c| {
                c.http.enabled = !no_http;
                c.http.open_probes = open_probes;
                c.http.allow_origins = allow_origin;
                c.trace_hook = valkyrie_runtime::TraceHookSlot(hook);
                c.http.bearer_keys = valkyrie_runtime::BearerKeys(std::sync::Arc::new(bearer));
            });
            if echo {
                b = b.service(|_| valkyrie_runtime::Echo);
            }
            if let Some(path) = &audit {
                b = b.audit(valkyrie_runtime::audit::AuditLog::to_file(path)?);
            }
            if ban_after > 0 {
                b = b.guard(valkyrie_runtime::guard::GuardConfig {
                    ban_after,
                    throttle_after: (ban_after / 2).max(1),
                    ban_for: Duration::from_secs(ban_secs),
                    trusted: parse_trusted(&trusted)?,
                    ..Default::default()
                });
            }
            let tls = security.tls_server()?;
            let has_tls = tls.is_some();
            if let Some(tls) = tls {
                b = b.tls(tls);
            }
            // SIGHUP reads the same files again: keys, certificates, token secrets, policy.
            let (again, id) = (security.clone(), node_id.clone());
            let has_quic = listen.iter().any(|u| u.starts_with("quic://"));
            let mut b = b
                .busy_poll(busy_poll)
                .protocol(security.apply(valkyrie_protocol::Config::new(node_id), true)?)
                .heartbeat(Duration::from_millis(heartbeat_ms))
                .reload_with(move || {
                    let fail = |e: Box<dyn std::error::Error>| e.to_string();
                    let mut r = valkyrie_runtime::Reload::new()
                        .protocol(
                            again
                                .apply(valkyrie_protocol::Config::new(id.clone()), true)
                                .map_err(fail)?,
                        )
                        .trusted(parse_trusted(&trusted).map_err(fail)?);
                    if has_tls && let Some(tls) = again.tls_server().map_err(fail)? {
                        r = r.tls(tls);
                    }
                    if has_quic {
                        let (tls, client_auth) = again.quic_server().map_err(fail)?;
                        r = r.quic_tls(tls, client_auth);
                    }
                    if let Some(f) = &again.token_file {
                        let keys = valkyrie_runtime::keys::read_tokens(f)
                            .map_err(|e| format!("{}: {e}", f.display()))?;
                        r = r.bearer_keys(valkyrie_runtime::BearerKeys(std::sync::Arc::new(keys)));
                    }
                    Ok(r)
                });
            for url in &listen {
                b = b.listen(url)?;
            }
            if has_quic {
                let (tls, client_auth) = security.quic_server()?;
                b = b.quic_tls(tls, client_auth);
            }
            if let Some(n) = shards {
                b = b.shards(n);
            }
            if let Some(n) = max_connections {
                b = b.max_connections_per_shard(n);
            }
            let node = b.start()?;
            for ep in node.endpoints() {
                tracing::info!(%ep, "listening");
            }
            node.run_until_signal()?;
            Ok(())
        }
        Cmd::Token {
            cmd:
                TokenCmd::Mint {
                    token_file,
                    key_id,
                    ttl_secs,
                },
        } => {
            let keys = valkyrie_runtime::keys::read_tokens(&token_file)?;
            let (id, secret) = match &key_id {
                Some(want) => keys
                    .iter()
                    .find(|(id, _)| id == want)
                    .ok_or_else(|| format!("no key {want} in {}", token_file.display()))?,
                None => keys.first().ok_or("the token file has no key")?,
            };
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs();
            println!(
                "{}",
                valkyrie_runtime::bearer::mint(id, secret, now.saturating_add(ttl_secs))
            );
            Ok(())
        }
        Cmd::ControlPlane(args) => control_plane::run(args),
        Cmd::Agent(args) => agent::run(args),
        Cmd::Job { cmd } => job_cmd::run(cmd),
        Cmd::Keygen { what } => {
            match what {
                KeygenCmd::Secrets { file } => {
                    valkyrie_jobs::SecretsKey::generate(&file)?;
                    println!("wrote {}", file.display());
                }
                KeygenCmd::Noise { name } => {
                    let kp = valkyrie_runtime::keys::write_noise_keypair(&name)?;
                    println!(
                        "wrote {} and {} (public key {})",
                        name.with_extension("key").display(),
                        name.with_extension("pub").display(),
                        valkyrie_protocol::security::noise_xk::hex(&kp.public)
                    );
                }
                KeygenCmd::Pq { name } => {
                    let fp = valkyrie_runtime::keys::write_pq_identity(&name)?;
                    println!(
                        "wrote {} and {} (fingerprint {})",
                        name.with_extension("pqkey").display(),
                        name.with_extension("pqpub").display(),
                        valkyrie_protocol::security::noise_xk::hex(&fp)
                    );
                }
                KeygenCmd::Ca { name, cn, days } => {
                    valkyrie_runtime::keys::write_ca(&name, &cn, days)?;
                    println!(
                        "wrote {} and {} (CA {cn:?}, {days} days)",
                        name.with_extension("crt").display(),
                        name.with_extension("key").display()
                    );
                }
                KeygenCmd::Cert {
                    name,
                    ca,
                    subject,
                    role,
                    days,
                } => {
                    use valkyrie_protocol::security::mtls::CertRole;
                    let role = match role.as_str() {
                        "server" => CertRole::Server,
                        "client" => CertRole::Client,
                        other => return Err(format!("--role {other}: server or client").into()),
                    };
                    valkyrie_runtime::keys::write_cert(&name, &ca, &subject, role, days)?;
                    println!(
                        "wrote {} and {} (identity x509:{subject}, {days} days)",
                        name.with_extension("crt").display(),
                        name.with_extension("key").display()
                    );
                }
                KeygenCmd::Token { file, key_id } => {
                    valkyrie_runtime::keys::write_token(&file, &key_id)?;
                    println!("wrote {} (key id {key_id})", file.display());
                }
            }
            Ok(())
        }
        Cmd::Tune {
            cmd:
                TuneCmd::Check {
                    target,
                    bytes_per_connection,
                },
        } => {
            use valkyrie_tuning::{Deployment, HostLimits};
            let host = HostLimits::read();
            println!(
                "host: {} cpus, somaxconn {:?}, tcp_max_syn_backlog {:?}, tcp_mem {:?} pages\n",
                host.cpus, host.somaxconn, host.syn_backlog, host.tcp_mem
            );
            let mut one = Deployment::single_process();
            one.bytes_per_connection = bytes_per_connection;
            println!("one node process with one ring, clients in one process on this host:");
            println!("{}\n", host.capacity(&one));
            let mut spread = Deployment::spread(target);
            spread.bytes_per_connection = bytes_per_connection;
            println!(
                "spread for {target}: {} rings, {} client processes, {} source addresses:",
                spread.server_rings, spread.client_processes, spread.source_addresses
            );
            println!("{}", host.capacity(&spread));
            Ok(())
        }
        Cmd::Ping {
            url,
            count,
            size,
            busy_poll,
            security,
        } => {
            if size > 1024 {
                return Err("--size is at most 1024 bytes (the PING payload limit)".into());
            }
            let base = ClientConfig::default();
            let cfg = ClientConfig {
                busy_poll,
                protocol: security.apply(base.protocol.clone(), false)?,
                tls: security.tls_client()?,
                tls_server_name: security.tls_server_name.clone(),
                ..base
            };
            let mut client = Client::connect_with(&url, cfg)?;
            let payload = vec![0xA5u8; size];
            let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let start = Instant::now();
            for _ in 0..count {
                let rtt = client.ping(&payload)?;
                hist.saturating_record(rtt.as_nanos() as u64);
            }
            let el = start.elapsed();
            let us = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
            println!(
                "{count} pings of {size} B to {url}: p50 {:.1} us  p99 {:.1} us  p999 {:.1} us  max {:.1} us  ({:.0} round trips/s)",
                us(0.5),
                us(0.99),
                us(0.999),
                hist.max() as f64 / 1000.0,
                count as f64 / el.as_secs_f64()
            );
            let _ = client.close();
            Ok(())
        }
    }
}
