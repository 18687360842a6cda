//! Two real processes over shared memory: a million checksummed frames, crashes of either side,
//! clean-up, and a hostile peer writing corrupt indices.
//!
//! Child processes are this test binary re-run with `--exact child --ignored` and a role in the
//! environment.

use std::io::{BufRead, BufReader, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use valkyrie_shm::{ShmConfig, ShmError, ShmListener, ShmStream};

const FRAMES: u64 = 1_000_000;

/// The tests look at this process's mappings and /dev/shm: run them one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn unique(tag: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "test-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn spawn(role: &str, name: &str) -> Child {
    Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SHM_ROLE", role)
        .env("SHM_NAME", name)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child")
}

/// Wait for the child to print `line` on stdout.
fn wait_line(child: &mut Child, line: &str) {
    let out = child.stdout.as_mut().expect("piped");
    let mut r = BufReader::new(out);
    let mut s = String::new();
    loop {
        s.clear();
        assert!(r.read_line(&mut s).expect("read child") > 0, "child exited");
        // The harness prints "test child ... " before the child's own output.
        if s.trim_end().ends_with(line) {
            return;
        }
    }
}

/// A frame: sequence number, BLAKE3 of the rest (first 8 bytes), random bytes.
fn fill_frame(buf: &mut [u8], seq: u64, rng: &mut SmallRng) {
    buf[..8].copy_from_slice(&seq.to_le_bytes());
    rng.fill_bytes(&mut buf[16..]);
    let h = blake3::hash(&buf[16..]);
    buf[8..16].copy_from_slice(&h.as_bytes()[..8]);
}

fn check_frame(buf: &[u8], seq: u64) {
    assert!(buf.len() >= 16, "frame {seq} too short");
    let got = u64::from_le_bytes(buf[..8].try_into().unwrap());
    assert_eq!(got, seq, "frame lost or reordered");
    let h = blake3::hash(&buf[16..]);
    assert_eq!(&buf[8..16], &h.as_bytes()[..8], "frame {seq} corrupted");
}

/// Entry point of the child processes.
#[test]
#[ignore = "run by the other tests as a child process"]
fn child() {
    let role = std::env::var("SHM_ROLE").expect("SHM_ROLE");
    let name = std::env::var("SHM_NAME").expect("SHM_NAME");
    match role.as_str() {
        "sender" => {
            let mut s = ShmStream::connect(&name).expect("connect");
            let mut rng = SmallRng::seed_from_u64(42);
            for seq in 0..FRAMES {
                let len = rng.random_range(16..=1024);
                let mut c = s.claim(len).expect("claim");
                fill_frame(&mut c, seq, &mut rng);
                // Batch the wake-up checks: flush every 64 frames.
                if seq % 64 == 63 {
                    c.commit();
                } else {
                    c.commit_deferred();
                }
            }
            s.flush();
            // Wait for the receiver's verdict before exiting.
            let verdict = s.recv().expect("verdict").to_vec();
            assert_eq!(verdict, FRAMES.to_le_bytes());
        }
        "idle" => {
            let _s = ShmStream::connect(&name).expect("connect");
            println!("ready");
            std::thread::sleep(Duration::from_secs(30));
        }
        "listener" => {
            let l = ShmListener::bind(&name).expect("bind");
            println!("bound");
            let _s = l.accept().expect("accept");
            std::thread::sleep(Duration::from_secs(30));
        }
        other => panic!("unknown role {other}"),
    }
}

#[test]
fn a_million_frames_of_random_sizes_between_two_processes() {
    let _serial = serial();
    let name = unique("million");
    let l = ShmListener::bind(&name).unwrap();
    let mut child = spawn("sender", &name);
    let mut s = l.accept().unwrap();
    let mut seq = 0u64;
    let mut bytes = 0u64;
    while seq < FRAMES {
        let n = s
            .recv_batch(256, |f| {
                check_frame(f, seq);
                bytes += f.len() as u64;
                seq += 1;
            })
            .unwrap();
        if n == 0 {
            let f = s.recv().unwrap();
            check_frame(&f, seq);
            bytes += f.len() as u64;
            seq += 1;
        }
    }
    s.send(&seq.to_le_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "sender failed");
    // The ring (1 MiB) wrapped hundreds of times.
    assert!(bytes > 400 * s.ring_capacity() as u64);
}

fn dev_shm() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn our_segments() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.contains("memfd:valkyrie-shm"))
        .count()
}

#[test]
fn kill_9_of_the_connector_is_seen_within_a_second_and_leaves_nothing() {
    let _serial = serial();
    let before = dev_shm();
    let name = unique("kill-connector");
    let l = ShmListener::bind(&name).unwrap();
    let mut child = spawn("idle", &name);
    let mut s = l.accept().unwrap();
    wait_line(&mut child, "ready");
    assert!(s.try_recv().unwrap().is_none());
    let killed = Instant::now();
    child.kill().unwrap(); // SIGKILL
    let e = s.recv().unwrap_err();
    let took = killed.elapsed();
    assert!(matches!(e, ShmError::PeerDied), "{e:?}");
    assert!(took < Duration::from_secs(1), "detected after {took:?}");
    child.wait().unwrap();
    assert!(matches!(s.send(b"x"), Err(ShmError::PeerDied)));
    drop(s);
    assert_eq!(our_segments(), 0, "segment still mapped");
    assert_eq!(dev_shm(), before, "/dev/shm changed");
}

#[test]
fn kill_9_of_the_listener_is_seen_within_a_second_and_frees_the_name() {
    let _serial = serial();
    let before = dev_shm();
    let name = unique("kill-listener");
    let mut child = spawn("listener", &name);
    wait_line(&mut child, "bound");
    let mut s = ShmStream::connect(&name).unwrap();
    s.send(b"still there?").unwrap();
    let killed = Instant::now();
    child.kill().unwrap();
    let e = s.recv().unwrap_err();
    let took = killed.elapsed();
    assert!(matches!(e, ShmError::PeerDied), "{e:?}");
    assert!(took < Duration::from_secs(1), "detected after {took:?}");
    child.wait().unwrap();
    drop(s);
    assert_eq!(our_segments(), 0);
    assert_eq!(dev_shm(), before);
    // The name is free again: nothing of the dead listener is left.
    let l = ShmListener::bind(&name).expect("name released");
    drop(l);
}

#[test]
fn a_slow_reader_pushes_back_and_nothing_is_dropped() {
    let _serial = serial();
    let name = unique("slow");
    let cfg = ShmConfig {
        ring_capacity: 4096,
        ..ShmConfig::default()
    };
    let l = ShmListener::bind_with(&name, cfg).unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = l.accept().unwrap();
        let mut buf = Vec::new();
        for i in 0u32..5_000 {
            if i % 500 == 0 {
                std::thread::sleep(Duration::from_millis(20));
            }
            s.recv_into(&mut buf).unwrap();
            assert_eq!(buf.len(), 100 + (i as usize % 400));
            assert_eq!(buf[..4], i.to_le_bytes());
        }
    });
    let mut s = ShmStream::connect(&name).unwrap();
    let mut would_block = 0;
    let mut frame = vec![0u8; 500];
    for i in 0u32..5_000 {
        let f = &mut frame[..100 + (i as usize % 400)];
        f[..4].copy_from_slice(&i.to_le_bytes());
        match s.try_send(f) {
            Ok(()) => {}
            Err(ShmError::WouldBlock) => {
                would_block += 1;
                s.send(f).unwrap(); // blocks until the reader makes room
            }
            Err(e) => panic!("{e}"),
        }
    }
    reader.join().unwrap();
    assert!(would_block > 0, "the 4 KiB ring never filled");
}

#[test]
fn a_closed_peer_delivers_everything_then_reports_closed() {
    let _serial = serial();
    let name = unique("close");
    let l = ShmListener::bind(&name).unwrap();
    let accepted = std::thread::spawn(move || l.accept().unwrap());
    let mut c = ShmStream::connect(&name).unwrap();
    let mut s = accepted.join().unwrap();
    for i in 0u8..10 {
        c.send(&[i; 33]).unwrap();
    }
    drop(c);
    for i in 0u8..10 {
        assert_eq!(&*s.recv().unwrap(), &[i; 33]);
    }
    assert!(matches!(s.recv(), Err(ShmError::PeerClosed)));
    assert!(matches!(s.try_recv(), Err(ShmError::PeerClosed)));
    assert!(matches!(
        s.recv_timeout(Duration::from_millis(10)),
        Err(ShmError::PeerClosed)
    ));
}

#[test]
fn an_idle_waiter_sleeps() {
    let _serial = serial();
    let name = unique("idle");
    let l = ShmListener::bind(&name).unwrap();
    let accepted = std::thread::spawn(move || l.accept().unwrap());
    let _c = ShmStream::connect(&name).unwrap();
    let mut s = accepted.join().unwrap();
    let cpu = || rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    let t0 = cpu();
    let wall = Instant::now();
    assert!(matches!(
        s.recv_timeout(Duration::from_millis(500)),
        Err(ShmError::WouldBlock)
    ));
    let t1 = cpu();
    assert!(wall.elapsed() >= Duration::from_millis(500));
    let used = (t1.tv_sec - t0.tv_sec) as f64 + (t1.tv_nsec - t0.tv_nsec) as f64 / 1e9;
    // 50 µs of spinning and a handful of wake-ups for liveness checks.
    assert!(used < 0.05, "waiting 500 ms used {used} s of CPU");
}

/// A way to damage a mapped segment.
type Corruption = Box<dyn Fn(&mut [u8])>;

/// Connect by hand and take the memfd, as a hostile peer would.
fn hostile_connect(name: &str) -> (UnixStream, memmap2::MmapMut) {
    let addr = SocketAddr::from_abstract_name(format!("valkyrie-shm/{name}").as_bytes()).unwrap();
    let sock = UnixStream::connect_addr(&addr).unwrap();
    let mut msg = [0u8; 20];
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut cmsg = rustix::net::RecvAncillaryBuffer::new(&mut space);
    rustix::net::recvmsg(
        &sock,
        &mut [IoSliceMut::new(&mut msg)],
        &mut cmsg,
        rustix::net::RecvFlags::empty(),
    )
    .unwrap();
    let mut fd: Option<OwnedFd> = None;
    for m in cmsg.drain() {
        if let rustix::net::RecvAncillaryMessage::ScmRights(mut fds) = m {
            fd = fds.next();
        }
    }
    let file = std::fs::File::from(fd.expect("memfd"));
    // SAFETY: test code mapping the segment on purpose.
    #[allow(unsafe_code)]
    let map = unsafe { memmap2::MmapMut::map_mut(&file).unwrap() };
    (sock, map)
}

#[test]
fn corrupt_indices_from_a_hostile_peer_are_an_error_not_a_crash() {
    let _serial = serial();
    let name = unique("hostile");
    let cfg = ShmConfig {
        ring_capacity: 4096,
        ..ShmConfig::default()
    };
    let l = ShmListener::bind_with(&name, cfg).unwrap();
    // The connector -> listener ring is ring 1: control block at 1024, data at 4096 + 4096.
    let (tail, data) = (1024usize, 4096 + 4096);
    let cases: Vec<(&str, Corruption)> = vec![
        (
            "tail far beyond the ring",
            Box::new(move |m: &mut [u8]| {
                m[tail..tail + 8].copy_from_slice(&(1u64 << 50).to_le_bytes())
            }),
        ),
        (
            "record longer than the ring",
            Box::new(move |m: &mut [u8]| {
                m[data..data + 4].copy_from_slice(&u32::MAX.to_le_bytes());
                m[data + 4..data + 8].copy_from_slice(&0x4441_5441u32.to_le_bytes());
                m[tail..tail + 8].copy_from_slice(&64u64.to_le_bytes());
            }),
        ),
        (
            "unknown record kind",
            Box::new(move |m: &mut [u8]| {
                m[data..data + 4].copy_from_slice(&8u32.to_le_bytes());
                m[data + 4..data + 8].copy_from_slice(&7u32.to_le_bytes());
                m[tail..tail + 8].copy_from_slice(&16u64.to_le_bytes());
            }),
        ),
    ];
    for (what, corrupt) in cases {
        let (mut s, (_sock, mut map)) = std::thread::scope(|t| {
            let a = t.spawn(|| l.accept().unwrap());
            let h = hostile_connect(&name);
            (a.join().unwrap(), h)
        });
        corrupt(&mut map);
        let e = s.recv_timeout(Duration::from_secs(1)).unwrap_err();
        assert!(matches!(e, ShmError::Corrupt(_)), "{what}: {e:?}");
        // The connection is closed; the listener goes on serving others.
        assert!(matches!(s.try_recv(), Err(ShmError::Closed)));
        let (mut g, mut good) = std::thread::scope(|t| {
            let a = t.spawn(|| l.accept().unwrap());
            let c = ShmStream::connect(&name).unwrap();
            (a.join().unwrap(), c)
        });
        good.send(b"fine").unwrap();
        assert_eq!(&*g.recv().unwrap(), b"fine", "{what}");
    }
    // A head moved beyond what was sent breaks the sender's side the same way.
    let (mut s, (_sock, mut map)) = std::thread::scope(|t| {
        let a = t.spawn(|| l.accept().unwrap());
        let h = hostile_connect(&name);
        (a.join().unwrap(), h)
    });
    let head0 = 512 + 128; // ring 0's head, written by the connector
    map[head0..head0 + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let big = vec![0u8; 2000];
    let e = (0..3).find_map(|_| s.send(&big).err()).expect("an error");
    assert!(matches!(e, ShmError::Corrupt(_)), "{e:?}");
}

#[test]
fn a_listener_that_offers_an_unsealed_segment_is_refused() {
    let _serial = serial();
    let name = unique("unsealed");
    let addr = SocketAddr::from_abstract_name(format!("valkyrie-shm/{name}").as_bytes()).unwrap();
    let l = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
    let server = std::thread::spawn(move || {
        let (sock, _) = l.accept().unwrap();
        let fd = rustix::fs::memfd_create("fake", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, 4096 + 2 * 4096).unwrap();
        let mut msg = [0u8; 20];
        msg[..8].copy_from_slice(b"VLKSHM01");
        msg[8..12].copy_from_slice(&1u32.to_le_bytes());
        msg[12..16].copy_from_slice(&4096u32.to_le_bytes());
        msg[16..20].copy_from_slice(&2040u32.to_le_bytes());
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut cmsg = rustix::net::SendAncillaryBuffer::new(&mut space);
        let fds = [std::os::fd::AsFd::as_fd(&fd)];
        cmsg.push(rustix::net::SendAncillaryMessage::ScmRights(&fds));
        rustix::net::sendmsg(
            &sock,
            &[std::io::IoSlice::new(&msg)],
            &mut cmsg,
            rustix::net::SendFlags::empty(),
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(200));
    });
    let e = ShmStream::connect(&name).unwrap_err();
    assert!(matches!(e, ShmError::Handshake(_)), "{e:?}");
    server.join().unwrap();
}
