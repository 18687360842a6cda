//! Frames in place: space claimed in the send ring ([`Claim`]) and a received frame read
//! where it lies ([`Received`]).

use crate::ring::{Consumer, Found, Producer};

/// Space reserved in the send ring; write the frame into it, then commit. Dropping it without
/// committing abandons the frame.
#[derive(Debug)]
pub struct Claim<'a> {
    pub(crate) tx: &'a mut Producer,
    pub(crate) off: usize,
    pub(crate) len: usize,
}

impl Claim<'_> {
    /// Publish the frame (and any deferred before it) and wake the receiver if it sleeps.
    pub fn commit(self) {
        self.tx.commit(self.len);
        self.tx.flush();
    }

    /// Publish only the first `len` bytes written (`len` ≤ the claimed length).
    pub fn commit_len(mut self, len: usize) {
        self.len = self.len.min(len);
        self.commit();
    }

    /// Complete the frame as part of a batch: the receiver sees the batch at the next
    /// [`ShmStream::flush`](crate::ShmStream::flush) or [`Claim::commit`] (one store and one wake-up check for all of
    /// it), or when the ring fills up.
    pub fn commit_deferred(self) {
        self.tx.commit(self.len);
    }
}

impl std::ops::Deref for Claim<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.tx.claimed_ref(self.off, self.len)
    }
}

impl std::ops::DerefMut for Claim<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.tx.claimed(self.off, self.len)
    }
}

/// A received frame, read in place from the ring. Its space is released when it is dropped.
#[derive(Debug)]
pub struct Received<'a> {
    pub(crate) rx: &'a mut Consumer,
    pub(crate) found: Found,
}

impl std::ops::Deref for Received<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.rx.payload(self.found)
    }
}

impl Drop for Received<'_> {
    fn drop(&mut self) {
        self.rx.release(self.found);
        self.rx.flush();
    }
}
