//! Artifacts on the control plane: agents upload a job's files, each on a data stream of its
//! own, and `GET /api/v1/jobs/{id}/artifacts[/{name}]` lists and serves them.
//!
//! An upload: FILE_TRANSFER_START (a request; `transfer_id` is `JOB:EPOCH:NAME`) is answered
//! with FILE_TRANSFER_COMPLETE whose `size` is the bytes already held — where the agent goes
//! on from after a reconnect; each FILE_TRANSFER_CHUNK (a request) is written at its offset
//! when that is where the file ends, and answered the same way; FILE_TRANSFER_COMPLETE (a
//! request) has the file synced, hashed with BLAKE3, compared with the agent's hash, renamed
//! into place and recorded in the store, then echoed — or refused with ERROR 403 (the hash
//! differs: the agent starts over) or 400 (the attempt is not the job's). Both sides then
//! finish the stream. Uploads are received in the artifacts directory, `JOB/NAME.part`; a
//! whole file stays there as `JOB/NAME`, or, on a store shared by several control planes, goes
//! into the store ([`crate::Store::put_file`]) so that any of them serves it. Every file
//! operation runs on the store's thread, never on a shard.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use valkyrie_protocol::message::{FileChunk, FileTransferComplete, FileTransferStart, Payload};
use valkyrie_protocol::{ErrorCode, Frame, MessageType};
use valkyrie_runtime::{ConnRef, Ctx};

use super::{JobsService, Reply, now_ms};
use crate::store::{Applied, Change};
use crate::wire::{parse_transfer, transfer_id, valid_name};

/// An upload under way on one stream of one connection.
pub(crate) struct Upload {
    job_id: String,
    epoch: u64,
    name: String,
    size: u64,
    blake3: Option<String>,
}

/// Where a job's artifact `name` lives (and its partial upload).
pub(crate) fn paths(dir: &Path, job_id: &str, name: &str) -> (PathBuf, PathBuf) {
    let d = dir.join(job_id);
    (d.join(name), d.join(format!("{name}.part")))
}

fn held(part: &Path) -> u64 {
    std::fs::metadata(part).map_or(0, |m| m.len())
}

fn complete(id: &str, size: u64, blake3: Option<String>) -> Bytes {
    FileTransferComplete {
        transfer_id: id.to_owned(),
        size,
        blake3,
    }
    .to_bytes()
}

/// The BLAKE3 hash of a file, hex.
fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(h.finalize().to_hex().to_string());
        }
        h.update(&buf[..n]);
    }
}

impl JobsService {
    /// An upload's frame (FILE_TRANSFER_*): whether it was one.
    pub(crate) fn upload_frame(&mut self, ctx: &mut Ctx<'_>, conn: ConnRef, frame: &Frame) -> bool {
        let h = frame.header;
        let to = Reply {
            conn,
            stream: h.stream_id,
            corr: h.correlation_id,
        };
        let refuse = |ctx: &mut Ctx<'_>, code: ErrorCode, m: &str| {
            let _ = ctx.send_error(conn, code, m, h.stream_id, h.correlation_id);
        };
        let queued = match frame.msg_type() {
            MessageType::FileTransferStart => {
                let start = match FileTransferStart::from_bytes(&frame.payload) {
                    Ok(s) => s,
                    Err(e) => {
                        refuse(ctx, ErrorCode::MALFORMED_PAYLOAD, &e.to_string());
                        return true;
                    }
                };
                let Some((job_id, epoch, name)) = parse_transfer(&start.transfer_id) else {
                    refuse(
                        ctx,
                        ErrorCode::MALFORMED_PAYLOAD,
                        "transfer_id is JOB:EPOCH:NAME",
                    );
                    return true;
                };
                let Some(dir) = self.hub.config.artifacts.clone() else {
                    refuse(
                        ctx,
                        ErrorCode::SERVICE_UNAVAILABLE,
                        "this control plane keeps no artifacts",
                    );
                    return true;
                };
                if !valid_name(&name) {
                    refuse(ctx, ErrorCode(405), "an artifact's name is a file name");
                    return true;
                }
                if start.size > self.hub.config.artifact_cap {
                    let m = format!(
                        "{} bytes: artifacts are kept up to {} bytes",
                        start.size, self.hub.config.artifact_cap
                    );
                    refuse(ctx, ErrorCode(503), &m);
                    return true;
                }
                self.local.uploads.insert(
                    (conn, h.stream_id),
                    Upload {
                        job_id: job_id.clone(),
                        epoch,
                        name: name.clone(),
                        size: start.size,
                        blake3: start.blake3,
                    },
                );
                let hub = self.hub.clone();
                let id = start.transfer_id;
                let size = start.size;
                self.hub.store.try_read(
                    move |s| {
                        let current = s.job(&job_id).ok().flatten().map(|j| j.epoch);
                        if current != Some(epoch) {
                            return Err((ErrorCode::JOB_NOT_FOUND, "stale attempt".to_owned()));
                        }
                        let (_, part) = paths(&dir, &job_id, &name);
                        let io = |e: std::io::Error| (ErrorCode(500), e.to_string());
                        std::fs::create_dir_all(part.parent().expect("a job's directory"))
                            .map_err(io)?;
                        let f = OpenOptions::new()
                            .create(true)
                            .truncate(false)
                            .write(true)
                            .open(&part)
                            .map_err(io)?;
                        let mut n = f.metadata().map_err(io)?.len();
                        if n > size {
                            f.set_len(0).map_err(io)?;
                            n = 0;
                        }
                        Ok(n)
                    },
                    move |r| match r {
                        Ok(n) => hub.answer(
                            to,
                            MessageType::FileTransferComplete,
                            complete(&id, n, None),
                        ),
                        Err((code, m)) => hub.refuse(to, code, m),
                    },
                )
            }
            MessageType::FileTransferChunk => {
                let Some(up) = self.local.uploads.get(&(conn, h.stream_id)) else {
                    refuse(
                        ctx,
                        ErrorCode::UNEXPECTED_MESSAGE,
                        "no upload on this stream",
                    );
                    return true;
                };
                let chunk = match FileChunk::from_bytes(&frame.payload) {
                    Ok(c) => c,
                    Err(e) => {
                        refuse(ctx, ErrorCode::MALFORMED_PAYLOAD, &e.to_string());
                        return true;
                    }
                };
                if chunk.offset.saturating_add(chunk.data.len() as u64) > up.size {
                    refuse(
                        ctx,
                        ErrorCode::MALFORMED_PAYLOAD,
                        "a chunk past the file's size",
                    );
                    return true;
                }
                let Some(dir) = self.hub.config.artifacts.clone() else {
                    return true;
                };
                let (_, part) = paths(&dir, &up.job_id, &up.name);
                let id = transfer_id(&up.job_id, up.epoch, &up.name);
                let hub = self.hub.clone();
                self.hub.store.try_read(
                    move |_| {
                        let n = held(&part);
                        // Only where the file ends: a chunk sent again, or ahead of a gap,
                        // is answered with where to go on from.
                        if chunk.offset != n {
                            return Ok(n);
                        }
                        let f = OpenOptions::new().write(true).open(&part)?;
                        f.write_all_at(&chunk.data, n)?;
                        Ok::<_, std::io::Error>(n + chunk.data.len() as u64)
                    },
                    move |r| match r {
                        Ok(n) => hub.answer(
                            to,
                            MessageType::FileTransferComplete,
                            complete(&id, n, None),
                        ),
                        Err(e) => hub.refuse(to, ErrorCode(500), e.to_string()),
                    },
                )
            }
            MessageType::FileTransferComplete => {
                let Some(up) = self.local.uploads.get(&(conn, h.stream_id)) else {
                    refuse(
                        ctx,
                        ErrorCode::UNEXPECTED_MESSAGE,
                        "no upload on this stream",
                    );
                    return true;
                };
                let claimed = match FileTransferComplete::from_bytes(&frame.payload) {
                    Ok(c) => c.blake3.or_else(|| up.blake3.clone()),
                    Err(e) => {
                        refuse(ctx, ErrorCode::MALFORMED_PAYLOAD, &e.to_string());
                        return true;
                    }
                };
                let Some(dir) = self.hub.config.artifacts.clone() else {
                    return true;
                };
                let (job_id, epoch, name, size) =
                    (up.job_id.clone(), up.epoch, up.name.clone(), up.size);
                let hub = self.hub.clone();
                let payload = frame.payload.clone();
                self.hub.store.try_read(
                    move |s| finish(s, &dir, job_id, epoch, name, size, claimed),
                    move |r| match r {
                        Ok(()) => hub.answer(to, MessageType::FileTransferComplete, payload),
                        Err((code, m)) => hub.refuse(to, code, m),
                    },
                )
            }
            _ => return false,
        };
        // Each step's file work waits for the store's thread; a full queue is said so.
        if !queued {
            refuse(ctx, ErrorCode(503), "the store is busy: send it again");
        }
        true
    }

    /// The agent finished an upload's stream: finish ours, forget the upload.
    pub(crate) fn upload_finished(&mut self, ctx: &mut Ctx<'_>, conn: ConnRef, stream: u32) {
        if self.local.uploads.remove(&(conn, stream)).is_some() {
            let _ = ctx.finish_stream(conn, stream);
        }
    }
}

/// On the store's thread: the whole file synced, hashed and compared, moved into place and
/// recorded.
fn finish(
    s: &mut dyn crate::Store,
    dir: &Path,
    job_id: String,
    epoch: u64,
    name: String,
    size: u64,
    claimed: Option<String>,
) -> Result<(), (ErrorCode, String)> {
    let (path, part) = paths(dir, &job_id, &name);
    let io = |e: std::io::Error| (ErrorCode(500), e.to_string());
    let n = held(&part);
    if n != size {
        return Err((
            ErrorCode(403),
            format!("{n} of {size} bytes arrived: send the rest"),
        ));
    }
    File::open(&part).and_then(|f| f.sync_all()).map_err(io)?;
    let found = hash_file(&part).map_err(io)?;
    if claimed.as_deref().is_some_and(|c| c != found) {
        // Start over: what is held is not what the agent has.
        let _ = std::fs::remove_file(&part);
        return Err((
            ErrorCode(403),
            format!("BLAKE3 {found} is not the agent's: send it again"),
        ));
    }
    // A shared store keeps the bytes itself (any control plane serves them); else the file
    // stays here, beside the store.
    if s.put_file(&job_id, &name, &part)
        .map_err(|e| (ErrorCode(503), e.to_string()))?
    {
        let _ = std::fs::remove_file(&part);
        let _ = std::fs::remove_file(&path);
    } else {
        std::fs::rename(&part, &path).map_err(io)?;
        if let Some(d) = path.parent() {
            File::open(d).and_then(|f| f.sync_all()).map_err(io)?;
        }
    }
    let change = Change::Artifact {
        job_id,
        epoch,
        name,
        size,
        blake3: found,
        at: now_ms(),
    };
    match s.commit(&[change]) {
        Ok(r) if r.first() == Some(&Applied::Done) => Ok(()),
        Ok(r) => Err((ErrorCode::JOB_NOT_FOUND, format!("not recorded: {r:?}"))),
        Err(e) => Err((ErrorCode(503), e.to_string())),
    }
}
