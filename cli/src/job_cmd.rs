//! `valkyrie job submit|status|list|cancel|pause|resume|logs|agents URL ...`: the jobs REST
//! API of a control plane from the shell (plain HTTP/1.1 over a TCP connection, the answer
//! read with httparse), printing the answer's JSON — or a job's output, line by line as it
//! comes with `logs --follow`.

use std::io::{BufRead, BufReader, Read, Write};
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
        /// The wait before the first retry, in milliseconds (doubling after).
        #[arg(long, default_value_t = 1000)]
        backoff_ms: u64,
        /// A concurrency group: its jobs run one at a time.
        #[arg(long)]
        group: Option<String>,
        /// An environment variable for the job, `NAME=VALUE` (repeatable).
        #[arg(long = "env", value_name = "NAME=VALUE")]
        env: Vec<String>,
        /// Its working directory, relative to the agent's work directory.
        #[arg(long)]
        cwd: Option<String>,
        /// A secret for the job's environment, `NAME=VALUE` (repeatable): sealed when
        /// stored, masked in its output.
        #[arg(long = "secret", value_name = "NAME=VALUE")]
        secrets: Vec<String>,
        /// A file the agent uploads when the job ends (repeatable).
        #[arg(long = "artifact", value_name = "PATH")]
        artifacts: Vec<String>,
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
    /// Cancel a job (a running one through its agent: SIGTERM, then SIGKILL).
    Cancel {
        /// The control plane.
        url: String,
        /// The job's id.
        job_id: String,
    },
    /// Pause a job (a running one is stopped with SIGSTOP).
    Pause {
        /// The control plane.
        url: String,
        /// The job's id.
        job_id: String,
    },
    /// Resume a paused job.
    Resume {
        /// The control plane.
        url: String,
        /// The job's id.
        job_id: String,
    },
    /// Move a job to another agent (a running one is stopped and runs again there).
    Migrate {
        /// The control plane.
        url: String,
        /// The job's id.
        job_id: String,
        /// The agent to move it to (default: the scheduler's choice, elsewhere).
        #[arg(long)]
        agent: Option<String>,
    },
    /// A job's output as NDJSON (`{"seq", "stream", "line"}` a line).
    Logs {
        /// The control plane.
        url: String,
        /// The job's id.
        job_id: String,
        /// From this line on.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Keep printing as the job writes, until it ends.
        #[arg(long)]
        follow: bool,
    },
    /// The agents the control plane knows.
    Agents {
        /// The control plane.
        url: String,
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

/// A GET whose answer is copied to stdout as it comes (chunked or not).
fn stream(url: &str, path: &str) -> Result<(), Box<dyn std::error::Error>> {
    let host = authority(url);
    let s = TcpStream::connect(host)?;
    let mut w = &s;
    write!(
        w,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut r = BufReader::new(&s);
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let n = r.read_until(b'\n', &mut head)?;
        if n == 0 {
            return Err("the answer ended early".into());
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    resp.parse(&head)?;
    let status = resp.code.unwrap_or(0);
    let chunked = resp.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("transfer-encoding")
            && String::from_utf8_lossy(h.value).contains("chunked")
    });
    let mut out = std::io::stdout().lock();
    if chunked {
        loop {
            let mut size = String::new();
            r.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| format!("not a chunk size: {size:?}"))?;
            if n == 0 {
                break;
            }
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk)?;
            out.write_all(&chunk[..n])?;
            out.flush()?;
        }
    } else {
        std::io::copy(&mut r, &mut out)?;
    }
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(format!("the control plane answered {status}").into())
    }
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
            backoff_ms,
            group,
            env,
            cwd,
            secrets,
            artifacts,
            command,
        } => {
            let pairs = |flag: &str, list: Vec<String>| {
                let mut m = serde_json::Map::new();
                for kv in list {
                    let (k, v) = kv
                        .split_once('=')
                        .ok_or_else(|| format!("--{flag} {kv}: NAME=VALUE"))?;
                    m.insert(k.to_owned(), v.into());
                }
                Ok::<_, String>(m)
            };
            let vars = pairs("env", env)?;
            let secrets = pairs("secret", secrets)?;
            let mut spec = serde_json::json!({
                "command": command,
                "labels": labels,
                "priority": priority,
                "timeout_ms": timeout_ms,
                "max_attempts": max_attempts,
                "backoff_ms": backoff_ms,
                "env": vars,
                "secrets": secrets,
                "artifacts": artifacts,
            });
            if let Some(k) = key {
                spec["idempotency_key"] = k.into();
            }
            if let Some(g) = group {
                spec["concurrency_group"] = g.into();
            }
            if let Some(c) = cwd {
                spec["cwd"] = c.into();
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
        JobCmd::Cancel { url, job_id } => {
            exchange(&url, "POST", &format!("/api/v1/jobs/{job_id}/cancel"), "")?
        }
        JobCmd::Pause { url, job_id } => {
            exchange(&url, "POST", &format!("/api/v1/jobs/{job_id}/pause"), "")?
        }
        JobCmd::Resume { url, job_id } => {
            exchange(&url, "POST", &format!("/api/v1/jobs/{job_id}/resume"), "")?
        }
        JobCmd::Migrate { url, job_id, agent } => {
            let body = agent.map_or(String::new(), |a| {
                serde_json::json!({ "agent": a }).to_string()
            });
            exchange(
                &url,
                "POST",
                &format!("/api/v1/jobs/{job_id}/migrate"),
                &body,
            )?
        }
        JobCmd::Agents { url } => exchange(&url, "GET", "/api/v1/agents", "")?,
        JobCmd::Logs {
            url,
            job_id,
            from,
            follow,
        } => {
            let path = format!(
                "/api/v1/jobs/{job_id}/logs?from={from}{}",
                if follow { "&follow=1" } else { "" }
            );
            return stream(&url, &path);
        }
    };
    println!("{body}");
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(format!("the control plane answered {status}").into())
    }
}
