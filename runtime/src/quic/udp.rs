//! UDP for QUIC: the sockets (`SO_REUSEPORT`, GRO, ECN reports, no fragmentation), and the
//! message headers of io_uring's `recvmsg` (multishot, into provided buffers) and `sendmsg`
//! (a batch of equal datagrams as one GSO send, `UDP_SEGMENT`) with their control messages.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use io_uring::{opcode, squeue, types};
use quinn_proto::EcnCodepoint;

use crate::sys::{cvt, decode_sockaddr, encode_sockaddr, setsockopt_int, sockaddr_storage};

/// Room for the control messages a receive reports (GRO segment size, TOS/traffic class,
/// destination address) or a send carries (segment size, TOS).
const CONTROL_LEN: usize = 128;
/// Most datagrams one GSO send carries (the kernel's limit is 64).
pub(crate) const MAX_GSO_SEGMENTS: usize = 16;

/// `UDP_GRO` and `UDP_SEGMENT` from `linux/udp.h` (libc has `UDP_GRO`; both named here).
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;

/// A non-blocking UDP socket bound to `addr` for QUIC: `SO_REUSEPORT` when several shards
/// share the address, receive reports of the packets' ECN bits and of GRO's segment size,
/// large buffers, and the "don't fragment" bit (QUIC finds the path's MTU itself).
pub(crate) fn bind(addr: &SocketAddr, reuse_port: bool) -> io::Result<OwnedFd> {
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain syscall; the returned descriptor is owned by the OwnedFd.
    let fd = cvt(unsafe {
        libc::socket(
            domain,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    })?;
    // SAFETY: fd was just returned by socket(2) and is not owned elsewhere.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if reuse_port {
        setsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    }
    configure(&fd, addr.is_ipv4(), true);
    let (storage, len) = encode_sockaddr(addr);
    // SAFETY: storage holds a sockaddr of `len` bytes.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&storage as *const libc::sockaddr_storage).cast(),
            len,
        )
    })?;
    Ok(fd)
}

/// The options every QUIC socket gets (best effort: a kernel without one still works, with
/// less offload or no ECN). `gro`: coalesce received bursts (only for a reader of the
/// segment size's control message: a plain `recv_from` would take a burst for one datagram).
pub(crate) fn configure(fd: &impl AsRawFd, v4: bool, gro: bool) {
    let fd = fd.as_raw_fd();
    // SAFETY: the descriptor stays open for this call; OwnedFd is not dropped here.
    let borrowed = std::mem::ManuallyDrop::new(unsafe { OwnedFd::from_raw_fd(fd) });
    let set = |level, name, v| setsockopt_int(&borrowed, level, name, v);
    if gro {
        let _ = set(libc::SOL_UDP, UDP_GRO, 1);
    }
    if v4 {
        let _ = set(libc::IPPROTO_IP, libc::IP_RECVTOS, 1);
        let _ = set(
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_PROBE,
        );
    } else {
        let _ = set(libc::IPPROTO_IPV6, libc::IPV6_RECVTCLASS, 1);
        let _ = set(
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IP_PMTUDISC_PROBE,
        );
        let _ = set(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 0);
    }
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        if set(libc::SOL_SOCKET, force, 4 << 20).is_err() {
            let _ = set(libc::SOL_SOCKET, plain, 4 << 20);
        }
    }
}

/// The header a multishot `recvmsg` is armed with: it tells the kernel how much room each
/// provided buffer leaves for the source address and the control messages. Boxed: the kernel
/// reads it for as long as the receive is armed.
pub(crate) struct RecvHeader(Box<libc::msghdr>);

impl RecvHeader {
    pub(crate) fn new() -> RecvHeader {
        // SAFETY: msghdr is plain data; all-zero is a valid (empty) header.
        let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
        h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        h.msg_controllen = CONTROL_LEN;
        RecvHeader(Box::new(h))
    }

    /// A multishot `recvmsg` on `fd` into buffers of group `bgid`.
    pub(crate) fn entry(&self, fd: &impl AsRawFd, bgid: u16, user_data: u64) -> squeue::Entry {
        opcode::RecvMsgMulti::new(types::Fd(fd.as_raw_fd()), &*self.0, bgid)
            .build()
            .user_data(user_data)
    }

    /// What one completion's buffer holds (`buf`: exactly the bytes the completion reports): the sender, the datagrams (one, or several of
    /// `segment` bytes each after GRO, the last maybe shorter) and their ECN bits. `None`
    /// for a buffer that does not parse or a truncated datagram.
    pub(crate) fn parse<'a>(&self, buf: &'a [u8]) -> Option<Received<'a>> {
        let out = types::RecvMsgOut::parse(buf, &self.0).ok()?;
        if out.is_payload_truncated() || out.is_name_data_truncated() {
            return None;
        }
        let name = out.name_data();
        let mut storage = sockaddr_storage();
        let n = name
            .len()
            .min(std::mem::size_of::<libc::sockaddr_storage>());
        // SAFETY: copies at most the storage's size of bytes into it.
        unsafe {
            std::ptr::copy_nonoverlapping(
                name.as_ptr(),
                (&mut storage as *mut libc::sockaddr_storage).cast::<u8>(),
                n,
            )
        };
        let from = decode_sockaddr(&storage)?;
        // The payload is the tail of the completion's bytes.
        let payload = &buf[buf.len() - out.payload_data().len()..];
        let mut got = Received {
            from,
            ecn: None,
            segment: None,
            payload,
        };
        read_control(out.control_data(), &mut got);
        Some(got)
    }
}

/// One receive: its sender, bytes, ECN bits and GRO segment size.
pub(crate) struct Received<'a> {
    pub(crate) from: SocketAddr,
    pub(crate) ecn: Option<EcnCodepoint>,
    /// The size of each coalesced datagram (GRO), when there were several.
    pub(crate) segment: Option<usize>,
    pub(crate) payload: &'a [u8],
}

fn read_control(control: &[u8], got: &mut Received<'_>) {
    // A header for the control messages alone, to walk them with the libc macros.
    // SAFETY: msghdr is plain data.
    let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
    h.msg_control = control.as_ptr() as *mut libc::c_void;
    h.msg_controllen = control.len();
    // SAFETY: h describes `control`, which outlives the walk; CMSG_NXTHDR stays within it.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&h);
        while !c.is_null() {
            let data = libc::CMSG_DATA(c);
            match ((*c).cmsg_level, (*c).cmsg_type) {
                (libc::IPPROTO_IP, libc::IP_TOS) => {
                    got.ecn = EcnCodepoint::from_bits(*data);
                }
                (libc::IPPROTO_IPV6, libc::IPV6_TCLASS) => {
                    let v = std::ptr::read_unaligned(data.cast::<libc::c_int>());
                    got.ecn = EcnCodepoint::from_bits(v as u8);
                }
                (libc::SOL_UDP, UDP_GRO) => {
                    let v = std::ptr::read_unaligned(data.cast::<libc::c_int>());
                    got.segment = (v > 0).then_some(v as usize);
                }
                _ => {}
            }
            c = libc::CMSG_NXTHDR(&h, c);
        }
    }
}

/// One `sendmsg` in flight: its header, address, control messages and bytes, in place (boxed)
/// until its completion is reaped.
pub(crate) struct UdpSend {
    hdr: libc::msghdr,
    iov: libc::iovec,
    addr: libc::sockaddr_storage,
    control: [u64; CONTROL_LEN / 8],
    /// The datagrams (several of `segment` bytes for GSO).
    pub(crate) buf: Vec<u8>,
}

impl UdpSend {
    pub(crate) fn new() -> Box<UdpSend> {
        Box::new(UdpSend {
            // SAFETY: msghdr and iovec are plain data; zero is valid.
            hdr: unsafe { std::mem::zeroed() },
            iov: unsafe { std::mem::zeroed() },
            addr: sockaddr_storage(),
            control: [0; CONTROL_LEN / 8],
            buf: Vec::with_capacity(MAX_GSO_SEGMENTS * 1500),
        })
    }

    /// The `sendmsg` of `buf` to `to` from `fd`: with `segment`, the kernel cuts it into
    /// datagrams of that size (GSO); `ecn` marks them.
    pub(crate) fn entry(
        &mut self,
        fd: &impl AsRawFd,
        to: SocketAddr,
        ecn: Option<EcnCodepoint>,
        segment: Option<usize>,
        user_data: u64,
    ) -> squeue::Entry {
        let (addr, len) = encode_sockaddr(&to);
        self.addr = addr;
        self.iov = libc::iovec {
            iov_base: self.buf.as_mut_ptr().cast(),
            iov_len: self.buf.len(),
        };
        self.control = [0; CONTROL_LEN / 8];
        // SAFETY: msghdr is plain data.
        let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
        h.msg_name = (&mut self.addr as *mut libc::sockaddr_storage).cast();
        h.msg_namelen = len;
        h.msg_iov = &mut self.iov;
        h.msg_iovlen = 1;
        h.msg_control = self.control.as_mut_ptr().cast();
        h.msg_controllen = CONTROL_LEN;
        let mut used = 0usize;
        // SAFETY: the control buffer is CONTROL_LEN bytes, aligned for cmsghdr (u64), and
        // holds the two messages written here (each CMSG_SPACE(4) = 24 bytes).
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&h);
            if let Some(ecn) = ecn {
                let (level, name) = if to.is_ipv4() {
                    (libc::IPPROTO_IP, libc::IP_TOS)
                } else {
                    (libc::IPPROTO_IPV6, libc::IPV6_TCLASS)
                };
                (*c).cmsg_level = level;
                (*c).cmsg_type = name;
                (*c).cmsg_len = libc::CMSG_LEN(4) as _;
                std::ptr::write_unaligned(
                    libc::CMSG_DATA(c).cast::<libc::c_int>(),
                    ecn as u8 as libc::c_int,
                );
                used += libc::CMSG_SPACE(4) as usize;
                c = libc::CMSG_NXTHDR(&h, c);
            }
            if let Some(seg) = segment
                && !c.is_null()
            {
                (*c).cmsg_level = libc::SOL_UDP;
                (*c).cmsg_type = UDP_SEGMENT;
                (*c).cmsg_len = libc::CMSG_LEN(2) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), seg as u16);
                used += libc::CMSG_SPACE(2) as usize;
            }
        }
        if used == 0 {
            h.msg_control = std::ptr::null_mut();
        }
        h.msg_controllen = used;
        self.hdr = h;
        opcode::SendMsg::new(types::Fd(fd.as_raw_fd()), &self.hdr)
            .build()
            .user_data(user_data)
    }
}
