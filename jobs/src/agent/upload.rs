//! An agent's artifact uploads: once a job's output is all acknowledged, each file its spec
//! lists goes up on a data stream of its own — FILE_TRANSFER_START (answered with the bytes
//! the control plane already holds), FILE_TRANSFER_CHUNKs from there ([`IN_FLIGHT`] at a
//! time, each answered with the bytes held), FILE_TRANSFER_COMPLETE with the file's BLAKE3
//! hash — and the stream is finished. A new connection starts the upload under way again
//! from START: it goes on from what the control plane holds. A hash the control plane does
//! not find starts the file over; a file it will not keep (too large) is named missing.

use std::os::unix::fs::FileExt;

use valkyrie_protocol::MessageType;
use valkyrie_protocol::message::{FileChunk, FileTransferComplete, FileTransferStart, Payload};
use valkyrie_runtime::{Ctx, Reply};

use super::exec::ArtifactFile;
use super::messages::is_stale;
use super::{AgentService, Pending};

/// The first data stream an upload takes (odd: the connecting side's).
pub(super) const FIRST_STREAM: u32 = 1001;
/// The last id of the data-transfer class.
const LAST_STREAM: u32 = 9999;

/// Bytes one chunk carries (three in flight stay inside the default 256 KiB stream window).
const CHUNK: u64 = 64 * 1024;

/// Chunks of one upload in flight at most.
const IN_FLIGHT: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Start,
    Chunks,
    Complete,
}

/// The upload under way of one job.
pub(crate) struct Active {
    file: ArtifactFile,
    stream: u32,
    phase: Phase,
    /// Bytes the control plane holds.
    acked: u64,
    /// Bytes sent.
    sent: u64,
    in_flight: usize,
}

impl Active {
    /// Begin again from START (a new connection).
    pub(crate) fn restart(&mut self) {
        self.phase = Phase::Start;
        self.in_flight = 0;
    }
}

impl AgentService {
    fn take_stream(&mut self) -> u32 {
        let s = self.next_stream;
        self.next_stream = if s + 2 > LAST_STREAM {
            FIRST_STREAM
        } else {
            s + 2
        };
        s
    }

    /// Send what the job's upload under way can send now (starting the next one).
    pub(super) fn upload_step(&mut self, ctx: &mut Ctx<'_>, id: &str) {
        if self.conn.is_none() {
            return;
        }
        let needs_stream = self
            .jobs
            .get(id)
            .is_some_and(|r| r.upload.is_none() && !r.uploads.is_empty());
        if needs_stream {
            let stream = self.take_stream();
            let Some(run) = self.jobs.get_mut(id) else {
                return;
            };
            let Some(file) = run.uploads.pop_front() else {
                return;
            };
            run.upload = Some(Active {
                file,
                stream,
                phase: Phase::Start,
                acked: 0,
                sent: 0,
                in_flight: 0,
            });
        }
        let Some(run) = self.jobs.get_mut(id) else {
            return;
        };
        let epoch = run.epoch;
        let Some(up) = &mut run.upload else {
            return;
        };
        let tid = crate::wire::transfer_id(id, epoch, &up.file.name);
        let stream = up.stream;
        match up.phase {
            Phase::Start if up.in_flight == 0 => {
                up.in_flight = 1;
                let start = FileTransferStart {
                    transfer_id: tid,
                    name: up.file.name.clone(),
                    size: up.file.size,
                    chunk_size: CHUNK as u32,
                    blake3: Some(up.file.blake3.clone()),
                };
                let p = Pending::UploadStart(id.to_owned());
                if !self.request_on(
                    ctx,
                    stream,
                    MessageType::FileTransferStart,
                    start.to_bytes(),
                    p,
                ) {
                    self.reset_in_flight(id);
                }
            }
            Phase::Chunks => {
                let mut chunks = Vec::new();
                while up.in_flight < IN_FLIGHT && up.sent < up.file.size {
                    let n = CHUNK.min(up.file.size - up.sent);
                    let mut data = vec![0u8; n as usize];
                    let read = std::fs::File::open(&up.file.path)
                        .and_then(|f| f.read_exact_at(&mut data, up.sent));
                    if let Err(e) = read {
                        tracing::warn!(job = %id, file = %up.file.path.display(), error = %e, "an artifact went away");
                        let name = up.file.name.clone();
                        run.missing.push(name);
                        run.upload = None;
                        self.flush_job_later(ctx);
                        return;
                    }
                    let c = FileChunk {
                        offset: up.sent,
                        data: data.into(),
                    };
                    up.sent += n;
                    up.in_flight += 1;
                    chunks.push((c.to_bytes(), up.sent));
                }
                for (payload, end) in chunks {
                    let p = Pending::UploadChunk(id.to_owned(), end);
                    if !self.request_on(ctx, stream, MessageType::FileTransferChunk, payload, p) {
                        self.reset_in_flight(id);
                        break;
                    }
                }
            }
            Phase::Complete if up.in_flight == 0 => {
                up.in_flight = 1;
                let done = FileTransferComplete {
                    transfer_id: tid,
                    size: up.file.size,
                    blake3: Some(up.file.blake3.clone()),
                };
                let p = Pending::UploadComplete(id.to_owned());
                if !self.request_on(
                    ctx,
                    stream,
                    MessageType::FileTransferComplete,
                    done.to_bytes(),
                    p,
                ) {
                    self.reset_in_flight(id);
                }
            }
            _ => {}
        }
    }

    /// A send failed (back-pressure, a connection ending): from what is acknowledged, later.
    fn reset_in_flight(&mut self, id: &str) {
        if let Some(up) = self.jobs.get_mut(id).and_then(|r| r.upload.as_mut()) {
            up.in_flight = 0;
            if up.phase == Phase::Chunks {
                up.sent = up.acked;
            }
        }
    }

    fn flush_job_later(&mut self, ctx: &mut Ctx<'_>) {
        self.retry_soon(ctx);
    }

    /// The bytes the control plane says it holds, from an answer.
    fn held(reply: &Reply) -> Option<u64> {
        match reply {
            Reply::Answer(f) => FileTransferComplete::from_bytes(&f.payload)
                .ok()
                .map(|c| c.size),
            _ => None,
        }
    }

    pub(super) fn upload_started(&mut self, ctx: &mut Ctx<'_>, id: &str, reply: Reply) {
        if is_stale(&reply) {
            self.let_go(ctx, id);
            return;
        }
        let held = Self::held(&reply);
        let Some(run) = self.jobs.get_mut(id) else {
            return;
        };
        let Some(up) = &mut run.upload else {
            return;
        };
        up.in_flight = 0;
        match (held, &reply) {
            (Some(n), _) => {
                up.acked = n.min(up.file.size);
                up.sent = up.acked;
                up.phase = if up.acked == up.file.size {
                    Phase::Complete
                } else {
                    Phase::Chunks
                };
            }
            (None, Reply::Error { code, message })
                if code.0 != 503 || message.contains("bytes") =>
            {
                // Refused for good (too large, a bad name): named missing, the next goes.
                tracing::warn!(job = %id, artifact = %up.file.name, %message, "artifact refused");
                let name = up.file.name.clone();
                run.missing.push(name);
                run.upload = None;
            }
            _ => {
                // Busy, timed out, lost: again shortly (a new connection restarts it anyway).
                self.retry_soon(ctx);
                return;
            }
        }
        self.flush_job(ctx, id);
    }

    pub(super) fn upload_chunk_answered(
        &mut self,
        ctx: &mut Ctx<'_>,
        id: &str,
        end: u64,
        reply: Reply,
    ) {
        if is_stale(&reply) {
            self.let_go(ctx, id);
            return;
        }
        let held = Self::held(&reply);
        let Some(up) = self.jobs.get_mut(id).and_then(|r| r.upload.as_mut()) else {
            return;
        };
        if up.phase != Phase::Chunks {
            return;
        }
        up.in_flight = up.in_flight.saturating_sub(1);
        if let Some(n) = held {
            up.acked = up.acked.max(n.min(up.file.size));
        }
        if held.is_none_or(|n| n < end) && up.in_flight == 0 {
            // A gap, a refusal, a timeout: from what is held.
            up.sent = up.acked;
        }
        if up.acked == up.file.size && up.in_flight == 0 {
            up.phase = Phase::Complete;
        }
        if held.is_none() {
            self.retry_soon(ctx);
            return;
        }
        self.upload_step(ctx, id);
    }

    pub(super) fn upload_completed(&mut self, ctx: &mut Ctx<'_>, id: &str, reply: Reply) {
        if is_stale(&reply) {
            self.let_go(ctx, id);
            return;
        }
        let conn = self.conn;
        let Some(run) = self.jobs.get_mut(id) else {
            return;
        };
        let Some(up) = &mut run.upload else {
            return;
        };
        up.in_flight = 0;
        match reply {
            Reply::Answer(_) => {
                if let Some(c) = conn {
                    let _ = ctx.finish_stream(c, up.stream);
                }
                let name = up.file.name.clone();
                run.uploaded.push(name);
                run.upload = None;
                self.flush_job(ctx, id);
            }
            Reply::Error { code, .. } if code.0 == 403 => {
                // Not what the control plane holds: the file again, from its start.
                up.phase = Phase::Start;
                self.upload_step(ctx, id);
            }
            _ => {
                up.phase = Phase::Start;
                self.retry_soon(ctx);
            }
        }
    }
}
