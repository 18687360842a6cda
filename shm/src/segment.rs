//! Creating, sealing, mapping and handing over a segment.

use std::fs::File;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use memmap2::{MmapOptions, MmapRaw};
use rustix::fs::{MemfdFlags, SealFlags};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use crate::error::{Result, ShmError};
use crate::layout::{
    DATA_OFFSET, H_CAPACITY, H_MAGIC, H_MAX_FRAME, H_VERSION, MAGIC, STATE_OFFSET, VERSION,
    segment_size, valid_geometry,
};

/// The offer the listener sends with the memfd: magic, version, capacity, max frame.
const OFFER_LEN: usize = 20;

/// A mapped segment and its geometry.
#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) map: MmapRaw,
    pub(crate) capacity: usize,
    pub(crate) max_frame: usize,
}

impl Segment {
    pub(crate) fn base(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    pub(crate) fn u64_at(&self, off: usize) -> &AtomicU64 {
        // SAFETY: header offsets are 8-aligned and inside the mapping.
        unsafe { &*(self.base().add(off) as *const AtomicU64) }
    }

    pub(crate) fn u32_at(&self, off: usize) -> &AtomicU32 {
        // SAFETY: header offsets are 4-aligned and inside the mapping.
        unsafe { &*(self.base().add(off) as *const AtomicU32) }
    }

    /// The state word of `side` (0 listener, 1 connector).
    pub(crate) fn state(&self, side: usize) -> &AtomicU32 {
        self.u32_at(STATE_OFFSET[side])
    }

    /// Start of ring `i`'s data area.
    pub(crate) fn data(&self, i: usize) -> *mut u8 {
        // SAFETY: the mapping is segment_size(capacity) long.
        unsafe { self.base().add(DATA_OFFSET + i * self.capacity) }
    }
}

/// Listener side: a new sealed memfd with an initialised header, mapped, plus the fd to send.
pub(crate) fn create(capacity: usize, max_frame: usize) -> Result<(Segment, OwnedFd)> {
    if !valid_geometry(capacity, max_frame) {
        return Err(ShmError::Handshake("invalid ring capacity or max frame"));
    }
    let fd = rustix::fs::memfd_create(
        "valkyrie-shm",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )
    .map_err(std::io::Error::from)?;
    let size = segment_size(capacity);
    rustix::fs::ftruncate(&fd, size as u64).map_err(std::io::Error::from)?;
    // Neither side may shrink or grow it afterwards: a shrunk mapping would fault (SIGBUS).
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
        .map_err(std::io::Error::from)?;
    let file = File::from(fd.try_clone()?);
    let map = MmapOptions::new().len(size).populate().map_raw(&file)?;
    let seg = Segment {
        map,
        capacity,
        max_frame,
    };
    seg.u32_at(H_VERSION).store(VERSION, Ordering::Relaxed);
    seg.u32_at(H_CAPACITY)
        .store(capacity as u32, Ordering::Relaxed);
    seg.u32_at(H_MAX_FRAME)
        .store(max_frame as u32, Ordering::Relaxed);
    seg.u64_at(H_MAGIC).store(MAGIC, Ordering::Release);
    Ok((seg, fd))
}

/// Listener side: send the offer and the memfd over the accepted socket.
pub(crate) fn offer(sock: &UnixStream, seg: &Segment, fd: &OwnedFd) -> Result<()> {
    let mut msg = [0u8; OFFER_LEN];
    msg[0..8].copy_from_slice(&MAGIC.to_le_bytes());
    msg[8..12].copy_from_slice(&VERSION.to_le_bytes());
    msg[12..16].copy_from_slice(&(seg.capacity as u32).to_le_bytes());
    msg[16..20].copy_from_slice(&(seg.max_frame as u32).to_le_bytes());
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut cmsg = SendAncillaryBuffer::new(&mut space);
    let fds = [fd.as_fd()];
    cmsg.push(SendAncillaryMessage::ScmRights(&fds));
    let n = rustix::net::sendmsg(
        sock,
        &[IoSlice::new(&msg)],
        &mut cmsg,
        SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
    )
    .map_err(std::io::Error::from)?;
    if n != OFFER_LEN {
        return Err(ShmError::Handshake("short offer write"));
    }
    Ok(())
}

/// Connector side: receive the offer, check the memfd (sealed, right size, right header) and
/// map it.
pub(crate) fn accept_offer(sock: &UnixStream) -> Result<Segment> {
    let mut msg = [0u8; OFFER_LEN];
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut cmsg = RecvAncillaryBuffer::new(&mut space);
    let r = rustix::net::recvmsg(
        sock,
        &mut [IoSliceMut::new(&mut msg)],
        &mut cmsg,
        RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(std::io::Error::from)?;
    let mut fd: Option<OwnedFd> = None;
    for m in cmsg.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = m {
            for f in fds {
                // Keep the first; any extra descriptors are closed when dropped.
                if fd.is_none() {
                    fd = Some(f);
                }
            }
        }
    }
    if r.bytes == 0 {
        return Err(ShmError::PeerClosed);
    }
    if r.bytes != OFFER_LEN {
        return Err(ShmError::Handshake("offer of the wrong length"));
    }
    let word = |i: usize| u32::from_le_bytes([msg[i], msg[i + 1], msg[i + 2], msg[i + 3]]);
    if u64::from_le_bytes(msg[0..8].try_into().expect("8 bytes")) != MAGIC {
        return Err(ShmError::Handshake("not a valkyrie-shm listener"));
    }
    if word(8) != VERSION {
        return Err(ShmError::Handshake("unsupported segment version"));
    }
    let (capacity, max_frame) = (word(12) as usize, word(16) as usize);
    if !valid_geometry(capacity, max_frame) {
        return Err(ShmError::Handshake("offered ring geometry is invalid"));
    }
    let fd = fd.ok_or(ShmError::Handshake("offer carried no memfd"))?;
    let seals = rustix::fs::fcntl_get_seals(&fd).map_err(std::io::Error::from)?;
    if !seals.contains(SealFlags::SHRINK | SealFlags::GROW) {
        return Err(ShmError::Handshake(
            "segment is not sealed against resizing",
        ));
    }
    let size = segment_size(capacity);
    let st = rustix::fs::fstat(&fd).map_err(std::io::Error::from)?;
    if st.st_size != size as i64 {
        return Err(ShmError::Handshake("segment size does not match the offer"));
    }
    let file = File::from(fd);
    let map = MmapOptions::new().len(size).populate().map_raw(&file)?;
    let seg = Segment {
        map,
        capacity,
        max_frame,
    };
    if seg.u64_at(H_MAGIC).load(Ordering::Acquire) != MAGIC
        || seg.u32_at(H_CAPACITY).load(Ordering::Relaxed) as usize != capacity
        || seg.u32_at(H_MAX_FRAME).load(Ordering::Relaxed) as usize != max_frame
    {
        return Err(ShmError::Handshake(
            "segment header does not match the offer",
        ));
    }
    Ok(seg)
}
