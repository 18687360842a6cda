//! `valkyrie job submit|status|list URL ...`: the jobs REST API of a control plane from the
//! shell (plain HTTP/1.1 over a TCP connection, the answer read with httparse), printing the
//! answer's JSON.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// What to ask the control plane.
#[derive(clap::Subcommand)]
pub(crate) enum JobCmd {
    /// Submit a job: `valkyrie job submit URL [--label L] [--priority N] [--key K] -- CMD ARGS...`.
    Submit {
        /// The control plane (`http://host:port` or `host:port`).
        url: String,
        /// A label the agent must have (repeatable).
        #[arg(long = "label")]
        labels: Vec<String>,
        /// 0–255, higher first.
        #[arg(long, default_value_t = 128)]
        priority: u8,
        /// An idempotency key: submitting twice with it gives the first job back.
        #[arg(long)]
        key: Option<String>,
        /// Time limit in milliseconds (0: none).
        #[arg(long, default_value_t = 0)]
        timeout_ms: u64,
        /// Attempts in all.
        #[arg(long, default_value_t = 1)]
        max_attempts: u32,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// A job's state and attempts.
    Status {
        /// The control plane.
        url: String,
        /// The job's id.
        job_id: String,
    },
    /// Jobs, a page at a time.
    List {
        /// The control plane.
        url: String,
        /// Only jobs in this state (queued, running, succeeded, ...).
        #[arg(long)]
        state: Option<String>,
        /// Jobs per page.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// The page after this job id (the previous answer's `next`).
        #[arg(long)]
        after: Option<String>,
    },
}

/// `host:port` of a URL given as `http://host:port[/...]` or `host:port`.
fn authority(url: &str) -> &str {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    rest.split('/').next().unwrap_or(rest)
}

/// One request; the status and the body.
fn exchange(
    url: &str,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String), Box<dyn std::error::Error>> {
    let host = authority(url);
    let mut s = TcpStream::connect(host)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head = match resp.parse(&raw)? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Err("the answer ended early".into()),
    };
    let status = resp.code.unwrap_or(0);
    Ok((status, String::from_utf8_lossy(&raw[head..]).into_owned()))
}

/// Run it: the answer's JSON on stdout; an error status is an error.
pub(crate) fn run(cmd: JobCmd) -> Result<(), Box<dyn std::error::Error>> {
    let (status, body) = match cmd {
        JobCmd::Submit {
            url,
            labels,
            priority,
            key,
            timeout_ms,
            max_attempts,
            command,
        } => {
            let mut spec = serde_json::json!({
                "command": command,
                "labels": labels,
                "priority": priority,
                "timeout_ms": timeout_ms,
                "max_attempts": max_attempts,
            });
            if let Some(k) = key {
                spec["idempotency_key"] = k.into();
            }
            exchange(&url, "POST", "/api/v1/jobs", &spec.to_string())?
        }
        JobCmd::Status { url, job_id } => {
            exchange(&url, "GET", &format!("/api/v1/jobs/{job_id}"), "")?
        }
        JobCmd::List {
            url,
            state,
            limit,
            after,
        } => {
            let mut q = format!("limit={limit}");
            if let Some(s) = state {
                q.push_str(&format!("&state={s}"));
            }
            if let Some(a) = after {
                q.push_str(&format!("&after={a}"));
            }
            exchange(&url, "GET", &format!("/api/v1/jobs?{q}"), "")?
        }
    };
    println!("{body}");
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(format!("the control plane answered {status}").into())
    }
}
