//! A shard's connection table: a slab of [`Conn`]s, a generation per slot so that a stale
//! reference (the connection closed, the slot was reused) is told apart, and the dirty list
//! of connections to process at the end of a loop turn.

use slab::Slab;

use super::Conn;

/// Generations fit the 24 bits `user_data` keeps for them (see `uring::ud`).
pub(crate) const GENERATION_MASK: u32 = 0xFF_FFFF;

/// The connections of one shard.
pub(crate) struct ConnTable {
    slab: Slab<Conn>,
    next_generation: u32,
    /// Slots marked dirty this turn, each once.
    dirty: Vec<u32>,
}

impl ConnTable {
    /// A table for up to `capacity` connections, reserved at once: its pages become resident
    /// only as slots are used, and it never grows by copying every connection on the shard's
    /// thread while it accepts.
    pub(crate) fn with_capacity(capacity: usize) -> ConnTable {
        ConnTable {
            slab: Slab::with_capacity(capacity),
            next_generation: 1,
            dirty: Vec::new(),
        }
    }

    /// Add a connection built for its generation; returns its slot.
    pub(crate) fn insert(&mut self, build: impl FnOnce(u32) -> Conn) -> u32 {
        let generation = self.next_generation;
        self.next_generation = (self.next_generation + 1) & GENERATION_MASK;
        let conn = build(generation);
        debug_assert_eq!(conn.generation, generation, "built for another generation");
        debug_assert!(
            !conn.dirty && conn.timer.is_none(),
            "a new connection is clean"
        );
        let slot = self.slab.insert(conn);
        debug_assert!(slot <= u32::MAX as usize, "slots fit user_data's 32 bits");
        slot as u32
    }

    /// The connection in `slot`, whatever its generation.
    pub(crate) fn get(&self, slot: u32) -> Option<&Conn> {
        self.slab.get(slot as usize)
    }

    /// The connection in `slot`, whatever its generation.
    pub(crate) fn get_mut(&mut self, slot: u32) -> Option<&mut Conn> {
        self.slab.get_mut(slot as usize)
    }

    /// The connection in `slot` if it is still the one of `generation`.
    pub(crate) fn live(&mut self, slot: u32, generation: u32) -> Option<&mut Conn> {
        self.slab
            .get_mut(slot as usize)
            .filter(|c| c.generation == generation)
    }

    /// Queue `slot` for processing once at the end of this turn (its events, sends and
    /// timer).
    pub(crate) fn mark(&mut self, slot: u32) {
        if let Some(c) = self.slab.get_mut(slot as usize)
            && !c.dirty
        {
            c.dirty = true;
            self.dirty.push(slot);
        }
    }

    /// The next dirty slot still in the table, its mark cleared.
    pub(crate) fn pop_dirty(&mut self) -> Option<u32> {
        // Each slot is in the list at most once, so this ends within its length.
        while let Some(slot) = self.dirty.pop() {
            if let Some(c) = self.slab.get_mut(slot as usize) {
                c.dirty = false;
                return Some(slot);
            }
        }
        None
    }

    /// Take `slot` out of the table.
    pub(crate) fn remove(&mut self, slot: u32) -> Conn {
        let c = self.slab.remove(slot as usize);
        debug_assert!(c.is_released(), "removed while the kernel still holds it");
        c
    }

    /// Connections in the table (open, refused or closing).
    pub(crate) fn len(&self) -> usize {
        self.slab.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    /// Every slot and its connection.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, &Conn)> {
        self.slab.iter().map(|(s, c)| (s as u32, c))
    }

    /// Every occupied slot (a copy, for loops that change the table).
    pub(crate) fn slots(&self) -> Vec<u32> {
        self.slab.iter().map(|(s, _)| s as u32).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use valkyrie_protocol::{Config, Connection, Side};

    use super::super::send::SendState;
    use super::super::{Io, Life, Socket};
    use super::*;

    fn conn(generation: u32) -> Conn {
        Conn {
            generation,
            origin: 0,
            life: Life::Open,
            proto: Connection::new(Side::Server, Arc::new(Config::default()), Instant::now(), 0),
            io: Io::Socket(Socket {
                fixed: 0,
                recv: super::super::recv::Recv::Armed,
                send: SendState::Idle,
                tls: None,
            }),
            connected: false,
            fresh: false,
            sniffing: false,
            opened_us: 0,
            dirty: false,
            held: false,
            timer: None,
            extra: None,
        }
    }

    #[test]
    fn generations_tell_a_reused_slot_from_its_predecessor() {
        let mut t = ConnTable::with_capacity(4);
        let a = t.insert(conn);
        let ga = t.get(a).unwrap().generation;
        t.get_mut(a).unwrap().life = Life::Closing {
            fd_closed: true,
            refused: false,
        };
        t.remove(a);
        let b = t.insert(conn);
        assert_eq!(a, b, "the slot is reused");
        assert!(t.live(a, ga).is_none(), "the old reference is stale");
        let gb = t.get(b).unwrap().generation;
        assert!(t.live(b, gb).is_some());
        assert_ne!(ga, gb);
    }

    #[test]
    fn generations_wrap_within_24_bits() {
        let mut t = ConnTable::with_capacity(1);
        t.next_generation = GENERATION_MASK;
        let s = t.insert(conn);
        assert_eq!(t.get(s).unwrap().generation, GENERATION_MASK);
        t.get_mut(s).unwrap().life = Life::Closing {
            fd_closed: true,
            refused: false,
        };
        t.remove(s);
        let s = t.insert(conn);
        assert_eq!(t.get(s).unwrap().generation, 0);
    }

    #[test]
    fn a_slot_is_processed_once_per_turn_and_removed_slots_are_skipped() {
        let mut t = ConnTable::with_capacity(4);
        let a = t.insert(conn);
        let b = t.insert(conn);
        t.mark(a);
        t.mark(b);
        t.mark(a);
        t.get_mut(b).unwrap().life = Life::Closing {
            fd_closed: true,
            refused: false,
        };
        t.remove(b);
        assert_eq!(t.pop_dirty(), Some(a));
        assert_eq!(t.pop_dirty(), None, "a once, b gone");
        t.mark(a);
        assert_eq!(t.pop_dirty(), Some(a), "marked again after processing");
    }

    #[test]
    fn a_socket_is_released_only_once_closed_and_its_send_returned() {
        let mut c = conn(1);
        assert!(!c.is_released(), "open");
        c.life = Life::Closing {
            fd_closed: false,
            refused: false,
        };
        assert!(!c.is_released(), "descriptor not closed yet");
        let mut pool = super::super::send::SendPool::default();
        let mut out = pool.take();
        out.buf.extend_from_slice(b"x");
        if let Io::Socket(s) = &mut c.io {
            s.send.submit(out, valkyrie_protocol::Tick::ZERO);
            s.send.orphan();
        }
        c.life = Life::Closing {
            fd_closed: true,
            refused: false,
        };
        assert!(!c.is_released(), "an orphaned send still reads its buffer");
        if let Io::Socket(s) = &mut c.io {
            s.send
                .complete(-libc::ECANCELED, valkyrie_protocol::Tick::ZERO);
        }
        assert!(c.is_released());
    }
}
