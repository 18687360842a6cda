//! The audit log: one JSON object per line for every handshake result, authentication
//! failure, refusal and ban. Shards hand records to a writer thread through a bounded queue
//! (they never block on the file); a full queue drops the record and counts it.

use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde_json::Value;

/// Records waiting for the writer at most.
pub const AUDIT_QUEUE: usize = 16_384;

/// A JSON-lines audit sink shared by the shards of a node.
#[derive(Debug)]
pub struct AuditLog {
    tx: Mutex<Option<SyncSender<String>>>,
    dropped: AtomicU64,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl AuditLog {
    /// Append to the file at `path` (created if missing).
    pub fn to_file(path: &Path) -> io::Result<Arc<AuditLog>> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(AuditLog::to_writer(Box::new(f)))
    }

    /// Write to any sink (a file, stderr, a pipe).
    pub fn to_writer(w: Box<dyn Write + Send>) -> Arc<AuditLog> {
        let (tx, rx) = sync_channel(AUDIT_QUEUE);
        let writer = std::thread::Builder::new()
            .name("valkyrie-audit".into())
            .spawn(move || write_loop(rx, w))
            .expect("spawn the audit writer");
        Arc::new(AuditLog {
            tx: Mutex::new(Some(tx)),
            dropped: AtomicU64::new(0),
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Queue one record (a JSON object; `ts` in Unix milliseconds is added).
    pub fn record(&self, mut v: Value) {
        if let Value::Object(m) = &mut v {
            let ts = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            m.insert("ts".into(), Value::from(ts));
        }
        let line = v.to_string();
        let guard = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        match guard.as_ref().map(|tx| tx.try_send(line)) {
            Some(Ok(())) => {}
            Some(Err(TrySendError::Full(_) | TrySendError::Disconnected(_))) | None => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Records dropped because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Write everything queued and stop the writer.
    pub fn close(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = h.join();
        }
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.close();
    }
}

fn write_loop(rx: Receiver<String>, mut w: Box<dyn Write + Send>) {
    while let Ok(line) = rx.recv() {
        let _ = writeln!(w, "{line}");
        // Flush once the queue is empty: batches under load, prompt when quiet.
        while let Ok(line) = rx.try_recv() {
            let _ = writeln!(w, "{line}");
        }
        let _ = w.flush();
    }
    let _ = w.flush();
}
