//! The system calls the runtime makes outside io_uring, each wrapped once in a safe function:
//! sockets for listeners, socket addresses (encoded and decoded in one place), the eventfd a
//! shard is woken through, the open-file limit, and the non-blocking accept of the
//! shared-memory rendezvous socket. With `uring/`, this is where the runtime's `unsafe`
//! lives.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

pub(crate) fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A zeroed socket address buffer (for the kernel to write an accepted peer's address).
pub(crate) fn sockaddr_storage() -> libc::sockaddr_storage {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

/// The address in a sockaddr the kernel wrote (accept, getsockname); `None` for a family
/// other than IPv4 and IPv6.
pub(crate) fn decode_sockaddr(sa: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match sa.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in for AF_INET; it fits in the storage.
            let a: libc::sockaddr_in =
                unsafe { std::ptr::read((sa as *const libc::sockaddr_storage).cast()) };
            Some(SocketAddr::from((
                a.sin_addr.s_addr.to_ne_bytes(),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel wrote a sockaddr_in6 for AF_INET6; it fits in the storage.
            let a: libc::sockaddr_in6 =
                unsafe { std::ptr::read((sa as *const libc::sockaddr_storage).cast()) };
            Some(SocketAddr::from((
                a.sin6_addr.s6_addr,
                u16::from_be(a.sin6_port),
            )))
        }
        _ => None,
    }
}

/// The IP address in a sockaddr the kernel wrote.
pub(crate) fn peer_ip(sa: &libc::sockaddr_storage) -> Option<IpAddr> {
    decode_sockaddr(sa).map(|a| a.ip())
}

/// `addr` as a C sockaddr and its length.
pub(crate) fn encode_sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    let mut storage = sockaddr_storage();
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// A non-blocking, close-on-exec stream socket of `domain`.
fn stream_socket(domain: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the returned descriptor is owned by the OwnedFd.
    let fd = cvt(unsafe {
        libc::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    })?;
    // SAFETY: fd was just returned by socket(2) and is not owned elsewhere.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(crate) fn setsockopt_int(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: passes a pointer to a live c_int and its size.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

fn bind_listen(
    fd: &OwnedFd,
    addr: *const libc::sockaddr,
    len: libc::socklen_t,
    backlog: i32,
) -> io::Result<()> {
    // SAFETY: addr points to a sockaddr of `len` bytes owned by the caller.
    cvt(unsafe { libc::bind(fd.as_raw_fd(), addr, len) })?;
    // SAFETY: plain syscall on an owned descriptor.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), backlog) }).map(drop)
}

/// A listening TCP socket on `addr` with `SO_REUSEADDR`, `TCP_NODELAY` (inherited by the
/// accepted sockets) and, with `reuse_port`, `SO_REUSEPORT`.
pub(crate) fn tcp_listener(
    addr: &SocketAddr,
    reuse_port: bool,
    backlog: i32,
) -> io::Result<OwnedFd> {
    let fd = stream_socket(if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    })?;
    setsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    if reuse_port {
        setsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    }
    setsockopt_int(&fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
    let (sa, len) = encode_sockaddr(addr);
    bind_listen(
        &fd,
        (&sa as *const libc::sockaddr_storage).cast(),
        len,
        backlog,
    )?;
    Ok(fd)
}

/// The address of a Unix stream socket at `path`, and its length.
/// A Unix socket address in the abstract namespace (a leading NUL, then `name`, no
/// terminator).
fn encode_abstract(name: &str) -> io::Result<(libc::sockaddr_storage, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain old data; all-zero is valid.
    let mut sa: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    sa.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = name.as_bytes();
    if bytes.len() + 1 > sa.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "shared-memory name too long",
        ));
    }
    for (d, s) in sa.sun_path[1..].iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let len = (std::mem::size_of::<libc::sa_family_t>() + 1 + bytes.len()) as libc::socklen_t;
    let mut storage = sockaddr_storage();
    // SAFETY: sockaddr_un (110 bytes) fits in sockaddr_storage (128).
    unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sa) };
    Ok((storage, len))
}

fn encode_unix(path: &Path) -> io::Result<(libc::sockaddr_storage, libc::socklen_t)> {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: sockaddr_un is plain old data; all-zero is valid.
    let mut sa: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    sa.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= sa.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "unix socket path too long",
        ));
    }
    for (d, s) in sa.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let len = (std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t;
    let mut storage = sockaddr_storage();
    // SAFETY: sockaddr_un (110 bytes) fits in sockaddr_storage (128).
    unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sa) };
    Ok((storage, len))
}

/// A listening Unix stream socket at `path`.
pub(crate) fn unix_listener(path: &Path, backlog: i32) -> io::Result<OwnedFd> {
    let fd = stream_socket(libc::AF_UNIX)?;
    let (sa, len) = encode_unix(path)?;
    bind_listen(
        &fd,
        (&sa as *const libc::sockaddr_storage).cast(),
        len,
        backlog,
    )?;
    Ok(fd)
}

/// Where an outbound socket connects to: the kernel reads it while the connect is in flight,
/// so it lives in a box that stays put until the connect's completion.
pub(crate) struct ConnectAddr {
    pub(crate) storage: libc::sockaddr_storage,
    pub(crate) len: libc::socklen_t,
}

impl ConnectAddr {
    /// The io_uring `CONNECT` of `fd` to this address (which must stay put until its
    /// completion).
    pub(crate) fn connect_entry(&self, fd: &OwnedFd, user_data: u64) -> io_uring::squeue::Entry {
        io_uring::opcode::Connect::new(
            io_uring::types::Fd(fd.as_raw_fd()),
            (&self.storage as *const libc::sockaddr_storage).cast(),
            self.len,
        )
        .build()
        .user_data(user_data)
    }
}

/// A non-blocking socket for a connection to `endpoint` (TCP with `TCP_NODELAY`, or Unix),
/// not yet connected, and the address to connect it to.
pub(crate) fn outbound_socket(
    endpoint: &crate::url::Endpoint,
) -> io::Result<(OwnedFd, Box<ConnectAddr>)> {
    use crate::url::Endpoint;
    match endpoint {
        Endpoint::Tcp(addr) => {
            let fd = stream_socket(if addr.is_ipv4() {
                libc::AF_INET
            } else {
                libc::AF_INET6
            })?;
            setsockopt_int(&fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
            let (storage, len) = encode_sockaddr(addr);
            Ok((fd, Box::new(ConnectAddr { storage, len })))
        }
        Endpoint::Unix(path) => {
            let (storage, len) = encode_unix(path)?;
            Ok((
                stream_socket(libc::AF_UNIX)?,
                Box::new(ConnectAddr { storage, len }),
            ))
        }
        Endpoint::Shm(name) => {
            let (storage, len) = encode_abstract(&valkyrie_shm::abstract_name(name))?;
            Ok((
                stream_socket(libc::AF_UNIX)?,
                Box::new(ConnectAddr { storage, len }),
            ))
        }
        Endpoint::Quic(_) => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "a QUIC link has no stream socket (the shard's QUIC endpoint dials it)",
        )),
    }
}

/// Whether the kernel moves the connections queued on a closing listener to the other
/// listeners of its `SO_REUSEPORT` group (`net.ipv4.tcp_migrate_req`).
pub(crate) fn tcp_migrate_req() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req").is_ok_and(|v| v.trim() == "1")
}

/// The bound address of a listening socket (to learn the port after binding port 0).
pub(crate) fn local_addr(fd: &OwnedFd) -> io::Result<SocketAddr> {
    let mut storage = sockaddr_storage();
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: storage and len are live and sized as the call requires.
    cvt(unsafe {
        libc::getsockname(
            fd.as_raw_fd(),
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    })?;
    decode_sockaddr(&storage)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an inet socket"))
}

/// A close-on-exec copy of `fd`.
pub(crate) fn dup(fd: &OwnedFd) -> io::Result<OwnedFd> {
    // SAFETY: dup of a descriptor we own; the copy is owned by the new OwnedFd.
    let d = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) })?;
    // SAFETY: d is a fresh descriptor from fcntl.
    Ok(unsafe { OwnedFd::from_raw_fd(d) })
}

/// Accept one connection waiting on the non-blocking Unix listener `fd`, if any.
pub(crate) fn accept_unix(fd: &OwnedFd) -> Option<UnixStream> {
    // SAFETY: accept4 on a listening socket we own, without an address buffer.
    let s = unsafe {
        libc::accept4(
            fd.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    // SAFETY: s is a fresh descriptor returned by accept4, owned by nobody else.
    (s >= 0).then(|| unsafe { UnixStream::from_raw_fd(s) })
}

fn cvt_len(r: isize) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// Send what fits in the socket buffer now, without blocking whatever the socket's mode
/// (`MSG_DONTWAIT`; `MSG_NOSIGNAL`: a closed peer is `EPIPE`, not a signal).
pub(crate) fn send_nonblocking(fd: &impl AsRawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: send from a live slice of `buf.len()` bytes on a descriptor the caller holds.
    cvt_len(unsafe {
        libc::send(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    })
}

/// Receive what is there now, without blocking whatever the socket's mode.
pub(crate) fn recv_nonblocking(fd: &impl AsRawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: recv into a live, writable slice of `buf.len()` bytes on a descriptor the
    // caller holds.
    cvt_len(unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    })
}

/// Wait up to `timeout` until `fd` is readable or writable (or hung up).
pub(crate) fn wait_readable_or_writable(
    fd: &impl AsRawFd,
    timeout: std::time::Duration,
) -> io::Result<()> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN | libc::POLLOUT,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: poll on one live pollfd.
    match cvt(unsafe { libc::poll(&mut p, 1, ms) }) {
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
        r => r.map(|_| ()),
    }
}

/// Wait until `fd` may be read, at most `timeout` (to the microsecond).
pub(crate) fn wait_readable(fd: &impl AsRawFd, timeout: std::time::Duration) -> io::Result<()> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: ppoll on one live pollfd with a live timespec and no signal mask.
    match cvt(unsafe { libc::ppoll(&mut p, 1, &ts, std::ptr::null()) }) {
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
        r => r.map(|_| ()),
    }
}

/// The process and user at the other end of a Unix socket (`SO_PEERCRED`).
pub(crate) fn peer_cred(fd: &impl AsRawFd) -> io::Result<(i32, u32)> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into the live `cred`.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    })?;
    Ok((cred.pid, cred.uid))
}

/// This process's effective user.
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

/// Where this process runs: the boot id and the network namespace's inode (what HELLO's
/// `host` says). `None` where /proc does not tell.
pub(crate) fn host_id() -> Option<valkyrie_protocol::message::HostId> {
    use std::os::unix::fs::MetadataExt;
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let netns = std::fs::metadata("/proc/self/ns/net").ok()?.ino();
    Some(valkyrie_protocol::message::HostId {
        boot: boot.trim().to_owned(),
        netns,
    })
}

/// A non-blocking, close-on-exec eventfd.
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the descriptor is owned by the OwnedFd below.
    let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
    // SAFETY: fd was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Add one to an eventfd (a full counter, EAGAIN, already wakes its reader: ignored).
pub(crate) fn eventfd_signal(fd: &OwnedFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64 to an eventfd we own.
    unsafe {
        libc::write(
            fd.as_raw_fd(),
            (&one as *const u64).cast(),
            std::mem::size_of::<u64>(),
        )
    };
}

/// The machine's online cores, whatever the calling thread's own affinity (a node started
/// from a thread pinned to one core still spreads its shards over all of them).
pub(crate) fn online_cores() -> Vec<core_affinity::CoreId> {
    // SAFETY: sysconf reads a system value; no memory is passed.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    (0..n.max(1) as usize)
        .map(|id| core_affinity::CoreId { id })
        .collect()
}

/// Raise the soft RLIMIT_NOFILE to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    // SAFETY: getrlimit/setrlimit with a live rlimit struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 1024;
        }
        if r.rlim_cur < r.rlim_max {
            let want = libc::rlimit {
                rlim_cur: r.rlim_max,
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                return want.rlim_cur;
            }
        }
        r.rlim_cur
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_reports_the_port_it_bound_in_either_family() {
        for addr in ["127.0.0.1:0", "[::1]:0"] {
            let fd = tcp_listener(&addr.parse().unwrap(), true, 16).unwrap();
            let bound = local_addr(&fd).unwrap();
            assert_ne!(bound.port(), 0);
            assert_eq!(bound.ip(), addr.parse::<SocketAddr>().unwrap().ip());
            let (sa, _) = encode_sockaddr(&bound);
            assert_eq!(
                decode_sockaddr(&sa),
                Some(bound),
                "one encoding, one decoding"
            );
        }
        assert_eq!(
            peer_ip(&sockaddr_storage()),
            None,
            "AF_UNSPEC has no address"
        );
    }
}
