//! The streamed status feed (`GET /api/v1/status?follow=1`): a chunked answer of one JSON
//! line a second (the same document as `/api/v1/status`) for as long as the client reads.
//! At most [`MAX_FOLLOWERS`] a shard; a follower whose unsent answer bytes reached their
//! bound skips lines until it reads (back-pressure: it is slowed, never closed for it).

use std::time::{Duration, Instant};

use valkyrie_bridge::http::Response;

use super::Shard;
use crate::ConnRef;
use crate::conn::http::{Answering, OUT_HIGH};

/// Followers one shard serves at once (past it: 503).
pub(super) const MAX_FOLLOWERS: usize = 64;

/// How often a follower gets a line.
const EVERY: Duration = Duration::from_secs(1);

/// The shard's followers and when they next get a line.
#[derive(Debug, Default)]
pub(super) struct Followers {
    conns: Vec<ConnRef>,
    next: Option<Instant>,
}

impl Followers {
    /// When the next lines are due (`None` without followers).
    pub(super) fn next(&self) -> Option<Instant> {
        self.next
    }
}

impl Shard {
    /// Start following on `slot`: the streamed answer's head, then a first line at once.
    /// `None` when the shard has its most followers (the caller answers 503).
    pub(super) fn follow_status(&mut self, slot: u32) -> Option<Response> {
        if self.followers.conns.len() >= MAX_FOLLOWERS {
            return None;
        }
        let generation = self.conns.get(slot)?.generation;
        self.followers.conns.push(ConnRef {
            shard: self.id as u16,
            slot,
            generation,
        });
        // The first line goes right after the head (written by the caller): due now.
        self.followers.next = Some(self.now);
        Some(Response::streamed(200, "application/x-ndjson").header("cache-control", "no-store"))
    }

    /// Write a line to every follower when one is due. Returns whether any was.
    pub(super) fn feed_followers(&mut self) -> bool {
        match self.followers.next {
            Some(t) if t <= self.now => {}
            _ => return false,
        }
        let mut line = self.node.status(self.now);
        line.push('\n');
        let mut kept = Vec::with_capacity(self.followers.conns.len());
        for f in std::mem::take(&mut self.followers.conns) {
            let Some(h) = self
                .conns
                .live(f.slot, f.generation)
                .filter(|c| c.is_open())
                .and_then(|c| c.http())
            else {
                continue;
            };
            if !matches!(h.answering, Answering::Streaming { .. }) {
                continue;
            }
            // A reader that is behind misses lines rather than queueing them.
            if h.out.len() < OUT_HIGH {
                h.chunk(line.as_bytes());
                self.conns.mark(f.slot);
            }
            kept.push(f);
        }
        self.followers.next = (!kept.is_empty()).then(|| self.now + EVERY);
        self.followers.conns = kept;
        true
    }
}
