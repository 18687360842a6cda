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
    /// Its loopback port.
    pub port: u16,
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
    /// Start one (a few hundred milliseconds).
    pub fn start() -> Option<Pg> {
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
        let data = dir.join("data");
        let ok = as_postgres(bin.join("initdb"))
            .arg("-D")
            .arg(&data)
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
        let server = as_postgres(bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            .arg("-k")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let pg = Pg { dir, server, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while postgres::Client::connect(&pg.url("postgres"), postgres::NoTls).is_err() {
            if Instant::now() >= deadline {
                tracing::warn!("PostgreSQL did not start in 20 s");
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(pg)
    }

    /// The URL of database `db` on it.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://valkyrie@127.0.0.1:{}/{db}", self.port)
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
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
