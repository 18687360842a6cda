//! `valkyrie_message_latency_seconds{type}`: the time from a request's arrival at its shard
//! to its answer leaving through the same connection's send path. Arrivals are noted in a
//! fixed table owned by the shard (no allocation, no lock: 4,096 entries, 80 KB); an answer
//! (a frame with RESPONSE set, or an ERROR, with the request's correlation id) finds its
//! arrival there and is observed. Two requests in flight that hash to one entry lose the
//! older one's sample, and a request never answered is overwritten in time: the histogram is
//! a sample of the answers, exact for each one it holds.

/// Entries in the table (a power of two).
const ENTRIES: usize = 4096;

#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    slot: u32,
    generation: u32,
    correlation_id: u32,
    /// Microseconds from the shard's start (wrapping), when the request arrived.
    at_us: u32,
    msg_type: u8,
    used: bool,
}

/// Requests awaiting their answers on one shard.
pub(crate) struct LatencyTable {
    entries: Box<[Entry; ENTRIES]>,
}

impl LatencyTable {
    pub(crate) fn new() -> LatencyTable {
        LatencyTable {
            entries: Box::new([Entry::default(); ENTRIES]),
        }
    }

    fn index(slot: u32, correlation_id: u32) -> usize {
        let h = slot.wrapping_mul(0x9E37_79B1) ^ correlation_id.wrapping_mul(0x85EB_CA77);
        (h.rotate_left(13) as usize) & (ENTRIES - 1)
    }

    /// A request of `msg_type` with `correlation_id` arrived on the connection at `slot` of
    /// `generation` at `at_us`.
    #[inline]
    pub(crate) fn request_in(
        &mut self,
        slot: u32,
        generation: u32,
        correlation_id: u32,
        msg_type: u8,
        at_us: u32,
    ) {
        self.entries[Self::index(slot, correlation_id)] = Entry {
            slot,
            generation,
            correlation_id,
            at_us,
            msg_type,
            used: true,
        };
    }

    /// An answer with `correlation_id` leaves the connection at `slot` of `generation`: the
    /// request's type and arrival, when it was noted.
    #[inline]
    pub(crate) fn answer_out(
        &mut self,
        slot: u32,
        generation: u32,
        correlation_id: u32,
    ) -> Option<(u8, u32)> {
        let e = &mut self.entries[Self::index(slot, correlation_id)];
        if !e.used
            || e.slot != slot
            || e.generation != generation
            || e.correlation_id != correlation_id
        {
            return None;
        }
        e.used = false;
        Some((e.msg_type, e.at_us))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_finds_its_request_once_and_only_on_its_connection() {
        let mut t = LatencyTable::new();
        t.request_in(3, 1, 77, 0x20, 1000);
        assert_eq!(
            t.answer_out(3, 2, 77),
            None,
            "another generation of the slot"
        );
        assert_eq!(t.answer_out(4, 1, 77), None, "another connection");
        assert_eq!(t.answer_out(3, 1, 77), Some((0x20, 1000)));
        assert_eq!(t.answer_out(3, 1, 77), None, "observed once");
    }
}
