//! `GET /api/v1/jobs/{id}/artifacts` (the list) and `GET /api/v1/jobs/{id}/artifacts/{name}`
//! (the file, as a chunked answer): the file is read on the store's thread a [`PIECE`] at a
//! time, and the next piece is read only once the client has taken the last one.

use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use serde_json::json;
use valkyrie_runtime::http::Response;
use valkyrie_runtime::{ConnRef, Ctx, HttpAnswer, RouteError};

use super::artifacts::paths;
use super::{Inbox, JobsService};
use crate::rest::error;
use crate::wire::valid_name;

/// Bytes read and sent at a time (the pieces a shared store keeps files in).
const PIECE: u64 = crate::store::FILE_PIECE;

/// Downloads one shard serves at once, at most.
const MAX_DOWNLOADS: usize = 1024;

/// A piece of a file read on the store's thread.
pub(crate) struct Piece {
    /// The job and the artifact's name.
    pub(crate) job_id: String,
    pub(crate) name: String,
    pub(crate) path: PathBuf,
    pub(crate) size: u64,
    pub(crate) offset: u64,
    pub(crate) data: Vec<u8>,
}

/// A download under way.
pub(crate) struct Download {
    job_id: String,
    name: String,
    path: PathBuf,
    size: u64,
    /// Bytes read so far.
    next: u64,
    pending: Option<Vec<u8>>,
}

/// Read `PIECE` bytes of artifact `name` of `job_id` from `offset`: from the store when it
/// keeps the file, else from `path`.
fn read_piece(
    s: &mut dyn crate::Store,
    job_id: String,
    name: String,
    path: PathBuf,
    size: u64,
    offset: u64,
) -> Result<Piece, Response> {
    let fail = |e: String| error(500, 500, &e);
    let data = match s
        .file_piece(&job_id, &name, offset)
        .map_err(|e| error(503, 504, &e.to_string()))?
    {
        Some(data) => data,
        None => {
            let f = std::fs::File::open(&path).map_err(|e| fail(e.to_string()))?;
            let mut data = vec![0u8; PIECE.min(size - offset) as usize];
            f.read_exact_at(&mut data, offset)
                .map_err(|e| fail(e.to_string()))?;
            data
        }
    };
    if data.len() as u64 != PIECE.min(size - offset) {
        return Err(fail(format!(
            "{name}: a piece of the wrong size at {offset}"
        )));
    }
    Ok(Piece {
        job_id,
        name,
        path,
        size,
        offset,
        data,
    })
}

impl JobsService {
    pub(crate) fn artifacts_get(
        &mut self,
        conn: ConnRef,
        id: &str,
        name: Option<&str>,
    ) -> HttpAnswer {
        let Some(dir) = self.hub.config.artifacts.clone() else {
            return HttpAnswer::Respond(error(404, 404, "this control plane keeps no artifacts"));
        };
        let hub = self.hub.clone();
        let id = id.to_owned();
        let queued = match name {
            None => self.hub.store.try_read(
                move |s| s.artifacts(&id),
                move |r| {
                    let resp = match r {
                        Ok(list) => Response::json(200, json!({ "artifacts": list }).to_string()),
                        Err(e) => error(503, 504, &e.to_string()),
                    };
                    hub.http(conn, resp);
                },
            ),
            Some(name) => {
                if !valid_name(name) || self.local.downloads.len() >= MAX_DOWNLOADS {
                    return HttpAnswer::Respond(error(404, 404, "no such artifact"));
                }
                let name = name.to_owned();
                self.hub.store.try_read(
                    move |s| {
                        let known = s
                            .artifacts(&id)
                            .map_err(|e| error(503, 504, &e.to_string()))?;
                        let a = known
                            .into_iter()
                            .find(|a| a.name == name)
                            .ok_or_else(|| error(404, 404, "no such artifact"))?;
                        let path = paths(&dir, &id, &name).0;
                        read_piece(s, id, name, path, a.size, 0)
                    },
                    move |piece| hub.post(conn.shard as usize, Inbox::Download { conn, piece }),
                )
            }
        };
        if queued {
            HttpAnswer::Later
        } else {
            HttpAnswer::Respond(error(503, 504, "the store is busy: try again"))
        }
    }

    /// A piece read: the head with the first, then chunks.
    pub(crate) fn download_piece(
        &mut self,
        ctx: &mut Ctx<'_>,
        conn: ConnRef,
        piece: Result<Piece, Response>,
    ) {
        let piece = match piece {
            Ok(p) => p,
            Err(resp) => {
                if self.local.downloads.remove(&conn).is_some() {
                    // Mid-file: the client sees the answer end short.
                    let _ = ctx.close(conn, 1000, "the artifact could not be read");
                } else {
                    let _ = ctx.http_respond(conn, resp);
                }
                return;
            }
        };
        if piece.offset == 0 {
            let head = Response::streamed(200, "application/octet-stream")
                .header("x-valkyrie-size", piece.size.to_string());
            if ctx.http_respond(conn, head).is_err() {
                return;
            }
            self.local.downloads.insert(
                conn,
                Download {
                    job_id: piece.job_id,
                    name: piece.name,
                    path: piece.path,
                    size: piece.size,
                    next: 0,
                    pending: None,
                },
            );
        }
        let Some(d) = self.local.downloads.get_mut(&conn) else {
            return;
        };
        d.next = piece.offset + piece.data.len() as u64;
        d.pending = Some(piece.data);
        self.download_writable(ctx, conn);
    }

    /// Write what waits for a downloading client; read the next piece, or finish.
    pub(crate) fn download_writable(&mut self, ctx: &mut Ctx<'_>, conn: ConnRef) {
        let Some(d) = self.local.downloads.get_mut(&conn) else {
            return;
        };
        if let Some(data) = d.pending.take() {
            match ctx.http_chunk(conn, &data) {
                Ok(()) => {}
                Err(RouteError::HttpBackpressure(_)) => {
                    d.pending = Some(data);
                    return;
                }
                Err(_) => {
                    self.local.downloads.remove(&conn);
                    return;
                }
            }
        }
        if d.next >= d.size {
            let _ = ctx.http_finish(conn);
            self.local.downloads.remove(&conn);
            return;
        }
        let (job_id, name, path) = (d.job_id.clone(), d.name.clone(), d.path.clone());
        let (size, offset) = (d.size, d.next);
        let hub = self.hub.clone();
        let queued = self.hub.store.try_read(
            move |s| read_piece(s, job_id, name, path, size, offset),
            move |piece| hub.post(conn.shard as usize, Inbox::Download { conn, piece }),
        );
        if !queued {
            let _ = ctx.close(conn, 1000, "the store is busy");
            self.local.downloads.remove(&conn);
        }
    }
}
