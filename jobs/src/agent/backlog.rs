//! A job's output on the agent until the control plane acknowledges it: the first lines in
//! memory (what batches are sent from), the rest spilled to a file in the agent's work
//! directory when memory holds its bound — so that a control plane away for a while costs
//! disk, not memory, and the job goes on. Both are bounded: past the file's bound the agent
//! stops taking the job's lines, its pipe fills, and the job's own writes wait. Lines leave
//! in order: the memory is refilled from the file as acknowledgements free it. The file goes
//! with the backlog.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::PathBuf;

use crate::store::LogLine;

/// The spill file.
struct Spool {
    path: PathBuf,
    writer: BufWriter<File>,
    reader: BufReader<File>,
    /// Lines in it not yet read back.
    lines: u64,
    /// Bytes written to it.
    bytes: u64,
}

/// A job's unacknowledged output.
pub(crate) struct Backlog {
    mem: VecDeque<LogLine>,
    mem_cap: usize,
    spool: Option<Spool>,
    spool_cap: u64,
    path: PathBuf,
}

impl Backlog {
    /// At most `mem_cap` lines in memory, then up to `spool_cap` bytes in the file `path`.
    pub(crate) fn new(path: PathBuf, mem_cap: usize, spool_cap: u64) -> Backlog {
        Backlog {
            mem: VecDeque::new(),
            mem_cap: mem_cap.max(1),
            spool: None,
            spool_cap,
            path,
        }
    }

    /// Lines waiting in all.
    pub(crate) fn len(&self) -> u64 {
        self.mem.len() as u64 + self.spool.as_ref().map_or(0, |s| s.lines)
    }

    /// Nothing waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Lines in memory (those a batch can be sent from), first first.
    pub(crate) fn in_memory(&self) -> &VecDeque<LogLine> {
        &self.mem
    }

    /// Whether another line may be taken.
    pub(crate) fn has_room(&self) -> bool {
        match &self.spool {
            None => self.mem.len() < self.mem_cap || self.spool_cap > 0,
            Some(s) => s.bytes < self.spool_cap,
        }
    }

    /// Take a line: into memory while it has room and nothing is spilled, else to the file.
    pub(crate) fn push(&mut self, l: LogLine) {
        if self.spool.is_none() && self.mem.len() < self.mem_cap {
            self.mem.push_back(l);
            return;
        }
        if self.spool.is_none() {
            match self.open_spool() {
                Ok(s) => self.spool = Some(s),
                Err(e) => {
                    // No disk to spill to: memory holds it, past its bound.
                    tracing::warn!(path = %self.path.display(), error = %e, "no spill file");
                    self.mem.push_back(l);
                    return;
                }
            }
        }
        if let Some(s) = &mut self.spool {
            let text = serde_json::to_string(&l).expect("a line converts");
            if writeln!(s.writer, "{text}").is_ok() {
                s.lines += 1;
                s.bytes += text.len() as u64 + 1;
            }
        }
    }

    fn open_spool(&self) -> std::io::Result<Spool> {
        if let Some(d) = self.path.parent() {
            std::fs::create_dir_all(d)?;
        }
        let w = File::create(&self.path)?;
        let r = File::open(&self.path)?;
        Ok(Spool {
            path: self.path.clone(),
            writer: BufWriter::new(w),
            reader: BufReader::new(r),
            lines: 0,
            bytes: 0,
        })
    }

    /// Let go of the first `n` lines (acknowledged), and refill memory from the file.
    pub(crate) fn acknowledge(&mut self, n: usize) {
        let n = n.min(self.mem.len());
        self.mem.drain(..n);
        let Some(s) = &mut self.spool else {
            return;
        };
        if s.writer.flush().is_err() {
            return;
        }
        let mut buf = String::new();
        while self.mem.len() < self.mem_cap && s.lines > 0 {
            buf.clear();
            match s.reader.read_line(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            s.lines -= 1;
            match serde_json::from_str::<LogLine>(buf.trim_end_matches('\n')) {
                Ok(l) => self.mem.push_back(l),
                Err(e) => tracing::warn!(error = %e, "a spilled line did not read back"),
            }
        }
        if s.lines == 0 {
            // Drained: the next spill starts a new file.
            let _ = std::fs::remove_file(&s.path);
            self.spool = None;
        }
    }
}

impl Drop for Backlog {
    fn drop(&mut self) {
        if let Some(s) = self.spool.take() {
            let _ = std::fs::remove_file(&s.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(i: u32) -> LogLine {
        LogLine {
            stream: "stdout".into(),
            line: format!("line {i}"),
        }
    }

    #[test]
    fn lines_spill_to_disk_and_come_back_in_order() {
        let path = std::env::temp_dir().join(format!("valkyrie-backlog-{}", std::process::id()));
        let mut b = Backlog::new(path.clone(), 3, 1 << 20);
        for i in 1..=10 {
            assert!(b.has_room());
            b.push(line(i));
        }
        assert_eq!((b.len(), b.in_memory().len()), (10, 3));
        assert!(path.exists(), "spilled");
        let mut seen = Vec::new();
        while !b.is_empty() {
            let n = b.in_memory().len();
            seen.extend(b.in_memory().iter().map(|l| l.line.clone()));
            b.acknowledge(n);
        }
        let want: Vec<String> = (1..=10).map(|i| format!("line {i}")).collect();
        assert_eq!(seen, want);
        assert!(!path.exists(), "the file goes once drained");
        // A bound on the file too.
        let mut small = Backlog::new(path.clone(), 1, 20);
        small.push(line(1));
        small.push(line(2));
        assert!(!small.has_room(), "past the file's bound");
        drop(small);
        assert!(!path.exists());
    }
}
