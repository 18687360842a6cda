//! Links over shared memory (`Ctx::connect` to a `shm://` URL): the listener's rendezvous
//! socket is connected through the ring like a Unix one (`links.rs`), a poll waits for the
//! segment the listener offers on it at once, and then the segment is mapped and the
//! Valkyrie connection, client side, runs over its rings as an accepted one does
//! (`shm.rs`): futex waits, the hang-up of the rendezvous socket as the peer's end.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

use valkyrie_protocol::{Connection, Side};
use valkyrie_shm::ShmStream;

use super::Shard;
use super::accept::SHM;
use crate::conn::{Io, ShmIo};

impl Shard {
    /// Map the segment offered on the rendezvous socket `fd` (readable now) and start link
    /// `link`'s connection over it. Its slot, or why not.
    pub(super) fn shm_link_open(&mut self, fd: OwnedFd, link: (u32, u32)) -> Result<u32, String> {
        let sock = UnixStream::from(fd);
        // The offer is there (the poll said so): taking it does not wait.
        let stream = ShmStream::connect_over(sock, self.cfg.shm).map_err(|e| e.to_string())?;
        let opts = self.links.options(link).ok_or("the link ended meanwhile")?;
        let config = opts
            .protocol
            .clone()
            .unwrap_or_else(|| self.cfg.protocol.clone());
        let proto = Connection::new(Side::Client, config, self.now, self.unix_now());
        let io = Io::Shm(Box::new(ShmIo::new(stream)));
        let slot = self.insert_outbound_conn(SHM, proto, io, link);
        self.arm_shm_hup(slot);
        self.shm_recv(slot);
        self.mark(slot);
        Ok(slot)
    }
}
