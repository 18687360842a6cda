//! The link's steps that belong to one transport: a shared-memory listener's offer of a
//! segment (`shm_link.rs` maps it), a QUIC handshake's end (`quic_link.rs` opens the stream).
//! `links.rs` keeps the link's state machine.

use super::Shard;
use super::links::LinkIo;
use crate::link::LinkState;

impl Shard {
    /// The offer of link `index`'s shared-memory listener is readable (or its poll ended).
    pub(super) fn on_link_shm_offer(&mut self, index: u32, generation: u32, res: i32) {
        let Some(e) = self.links.live(index, generation) else {
            return;
        };
        let stopped = matches!(e.link.state(), LinkState::Stopped { .. });
        let LinkIo::ShmOffer { fd } = std::mem::replace(&mut e.io, LinkIo::Idle) else {
            return;
        };
        if stopped {
            self.release_link(index);
            return;
        }
        let url = e.link.url().clone();
        if res < 0 {
            let err = if res == -libc::ECANCELED {
                "no segment offered in time".to_owned()
            } else {
                std::io::Error::from_raw_os_error(-res).to_string()
            };
            self.link_failed(index, format!("{url}: {err}"));
            return;
        }
        match self.shm_link_open(fd, (index, generation)) {
            Ok(slot) => {
                let conn_generation = self.conns.get(slot).map_or(0, |c| c.generation);
                if let Some(e) = self.links.live(index, generation) {
                    e.io = LinkIo::Conn {
                        slot,
                        generation: conn_generation,
                    };
                }
            }
            Err(err) => self.link_failed(index, format!("{url}: {err}")),
        }
    }

    /// The QUIC handshake of `link` ended: its Valkyrie connection begins.
    pub(super) fn on_quic_link_connected(&mut self, link: (u32, u32), li: u8, h: u32) {
        let Some(e) = self.links.live(link.0, link.1) else {
            self.quic_link_abandon(li, h);
            return;
        };
        if !matches!(e.io, LinkIo::Quic { listener, handle } if listener == li && handle == h) {
            self.quic_link_abandon(li, h);
            return;
        }
        let opts = e.link.opts.clone();
        e.io = LinkIo::Idle;
        match self.quic_link_open(li, h, link, &opts) {
            Some(slot) => {
                let generation = self.conns.get(slot).map_or(0, |c| c.generation);
                if let Some(e) = self.links.live(link.0, link.1) {
                    e.io = LinkIo::Conn { slot, generation };
                }
            }
            None => self.link_failed(link.0, "no QUIC stream could be opened".into()),
        }
    }

    /// The QUIC handshake of `link` failed.
    pub(super) fn on_quic_link_failed(&mut self, link: (u32, u32), error: String) {
        let Some(e) = self.links.live(link.0, link.1) else {
            return;
        };
        if !matches!(e.io, LinkIo::Quic { .. }) {
            return;
        }
        e.io = LinkIo::Idle;
        let url = e.link.url().clone();
        self.link_failed(link.0, format!("{url}: {error}"));
    }
}
