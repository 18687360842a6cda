//! A throw-away PostgreSQL for tests and benchmarks: Debian's server binaries
//! (/usr/lib/postgresql/*/bin), a cluster made with `initdb` in a temporary directory (as the
//! `postgres` user when run as root: initdb refuses root), listening on a loopback port;
//! stopped and removed when dropped. `None` where the binaries are not installed.
//!
//! ```no_run
//! use valkyrie_jobs::pg_temp::Pg;
//!
//! if let Some(pg) = Pg::start() {
//!     let url = pg.database("jobs");
//!     let store = valkyrie_jobs::PgStore::connect(&url).unwrap();
//! }
//! ```

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running PostgreSQL.
#[derive(Debug)]
pub struct Pg {
    dir: PathBuf,
    server: Child,
    /// Its port.
    pub port: u16,
    /// The address it listens on.
    pub host: String,
    /// The network namespace it runs in (`ip netns`), when not this process's.
    netns: Option<String>,
    bin: PathBuf,
}

fn bin_dir() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists() && p.join("postgres").exists())
        .collect();
    dirs.sort();
    dirs.pop()
}

/// `cmd` as the `postgres` user when this process is root (initdb refuses root).
fn as_postgres(program: PathBuf) -> Command {
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

impl Pg {
    /// Start one on loopback (a few hundred milliseconds).
    pub fn start() -> Option<Pg> {
        Pg::start_in(None, "127.0.0.1")
    }

    /// Start one listening on `host`, inside network namespace `netns` when given (made by
    /// the caller with `ip netns`; `host` must be reachable from this process).
    pub fn start_in(netns: Option<&str>, host: &str) -> Option<Pg> {
        let bin = bin_dir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let dir = std::env::temp_dir().join(format!("valkyrie-pg-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).ok()?;
        let _ = Command::new("chown").arg("postgres").arg(&dir).status();
        let ok = as_postgres(bin.join("initdb"))
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-A", "trust", "-U", "valkyrie", "-E", "UTF8", "--no-sync"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .ok()?
            .success();
        if !ok {
            tracing::warn!(dir = %dir.display(), "initdb failed");
            let _ = std::fs::remove_dir_all(&dir);
            return None;
        }
        if host != "127.0.0.1" {
            // initdb trusts loopback only: let the hosts of the listening address's subnet in.
            use std::io::Write;
            let hba = dir.join("data").join("pg_hba.conf");
            let mut f = std::fs::OpenOptions::new().append(true).open(hba).ok()?;
            writeln!(f, "host all all samenet trust").ok()?;
        }
        let netns = netns.map(str::to_owned);
        let server = spawn_server(&bin, &dir, host, port, netns.as_deref())?;
        let pg = Pg {
            dir,
            server,
            port,
            host: host.to_owned(),
            netns,
            bin,
        };
        pg.answers().then_some(pg)
    }

    /// Whether it answers within 20 s.
    fn answers(&self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        while postgres::Client::connect(&self.url("postgres"), postgres::NoTls).is_err() {
            if Instant::now() >= deadline {
                tracing::warn!("PostgreSQL did not answer in 20 s");
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }

    /// Stop it (a fast shutdown: every connection is cut) and start it again on the same
    /// data and port; true once it answers.
    pub fn restart(&mut self) -> bool {
        self.stop();
        match spawn_server(
            &self.bin,
            &self.dir,
            &self.host,
            self.port,
            self.netns.as_deref(),
        ) {
            Some(server) => {
                self.server = server;
                self.answers()
            }
            None => false,
        }
    }

    /// A fast shutdown (SIGINT to the postmaster, whose pid its data directory names),
    /// waited for.
    fn stop(&mut self) {
        let pidfile = self.dir.join("data").join("postmaster.pid");
        let postmaster = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()));
        let signalled = postmaster.is_some_and(|pid| {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGINT,
            )
            .is_ok()
        });
        if signalled {
            let deadline = Instant::now() + Duration::from_secs(10);
            while pidfile.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        } else {
            let _ = self.server.kill();
        }
        let _ = self.server.wait();
    }

    /// The URL of database `db` on it.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://valkyrie@{}:{}/{db}", self.host, self.port)
    }

    /// A new, empty database; its URL.
    pub fn database(&self, name: &str) -> String {
        let mut c = postgres::Client::connect(&self.url("postgres"), postgres::NoTls)
            .expect("the server answers");
        c.batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("a new database");
        self.url(name)
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The server on `dir`'s cluster, listening on `host:port` (its socket in `dir`).
fn spawn_server(
    bin: &std::path::Path,
    dir: &std::path::Path,
    host: &str,
    port: u16,
    netns: Option<&str>,
) -> Option<Child> {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "runuser", "-u", "postgres", "--"])
                .arg(bin.join("postgres"));
            c
        }
        None => as_postgres(bin.join("postgres")),
    };
    cmd.arg("-D")
        .arg(dir.join("data"))
        .args(["-p", &port.to_string()])
        .arg("-c")
        .arg(format!("listen_addresses={host}"))
        .arg("-k")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()
}
