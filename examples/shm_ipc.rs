//! Two processes talking through shared memory with `valkyrie-shm`.
//!
//! ```text
//! cargo run --release -p valkyrie-examples --example shm_ipc
//! ```
//!
//! The parent listens under a name and starts a copy of itself as the child. The child
//! connects, sends 100,000 frames written in place (claim, fill, commit) and waits for each
//! echo; the parent echoes them. Then the child streams a million frames one way in batches.
//! Both print what they saw. Nothing is left in /dev/shm or on the file system afterwards.

use std::time::{Duration, Instant};

use valkyrie_shm::{ShmError, ShmListener, ShmStream, WaitMode};

fn main() -> Result<(), ShmError> {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("child") => child(&args.next().expect("name")),
        _ => parent(),
    }
}

fn parent() -> Result<(), ShmError> {
    let name = format!("shm-ipc-example-{}", std::process::id());
    let listener = ShmListener::bind(&name)?;
    let exe = std::env::current_exe()?;
    let mut child = std::process::Command::new(exe)
        .args(["child", &name])
        .spawn()?;
    let mut conn = listener.accept()?;
    // Echo until the child says "stream", then count the one-way frames.
    let mut buf = Vec::with_capacity(conn.max_frame());
    loop {
        conn.recv_into(&mut buf)?;
        if buf == b"stream" {
            break;
        }
        conn.send(&buf)?;
    }
    let start = Instant::now();
    let mut frames = 0u64;
    loop {
        match conn.recv_batch(1024, |_| frames += 1) {
            Ok(0) => match conn.recv() {
                Ok(_) => frames += 1,
                Err(ShmError::PeerClosed) => break,
                Err(e) => return Err(e),
            },
            Ok(_) => {}
            Err(ShmError::PeerClosed) => break,
            Err(e) => return Err(e),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "parent: received {frames} streamed frames, {:.1} M frames/s",
        frames as f64 / secs / 1e6
    );
    child.wait()?;
    Ok(())
}

fn child(name: &str) -> Result<(), ShmError> {
    let mut conn = ShmStream::connect(name)?;
    conn.set_wait_mode(WaitMode::Adaptive {
        spin: Duration::from_micros(100),
    });
    let mut rtts = Vec::with_capacity(100_000);
    let payload = [0x5Au8; 64];
    for _ in 0..100_000 {
        let t = Instant::now();
        let mut c = conn.claim(payload.len())?;
        c.copy_from_slice(&payload);
        c.commit();
        let echo = conn.recv()?;
        assert_eq!(&*echo, &payload);
        rtts.push(t.elapsed());
    }
    rtts.sort();
    let pct = |p: f64| rtts[((rtts.len() - 1) as f64 * p) as usize];
    println!(
        "child: 100000 ping-pongs of 64 B: p50 {:?}, p99 {:?}, max {:?}",
        pct(0.5),
        pct(0.99),
        rtts[rtts.len() - 1]
    );
    conn.send(b"stream")?;
    let start = Instant::now();
    for i in 0..1_000_000u64 {
        let mut c = conn.claim(64)?;
        c[..8].copy_from_slice(&i.to_le_bytes());
        if i % 256 == 255 {
            c.commit();
        } else {
            c.commit_deferred();
        }
    }
    conn.flush();
    println!(
        "child: streamed 1,000,000 frames of 64 B in {:?}",
        start.elapsed()
    );
    // Dropping the stream closes it: the parent reads everything, then sees PeerClosed.
    Ok(())
}
