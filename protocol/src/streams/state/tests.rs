//! The stream tables: ids and their reuse, limits, credit, resets, reports.

use super::*;

#[test]
fn reports_tell_the_change_in_open_streams_and_the_windows_granted() {
    let mut c = Streams::new(Side::Client, 8, WindowStrategy::Fixed(1000));
    let mut delta = [0i64; 5];
    let mut windows = Vec::new();
    c.take_report(&mut delta, |cl, w| windows.push((cl, w)));
    assert_eq!(delta, [0; 5], "no tables, nothing to say");
    let job = c.open(StreamClass::Job).unwrap();
    c.open(StreamClass::Log).unwrap();
    c.open(StreamClass::Data).unwrap();
    c.take_report(&mut delta, |cl, w| windows.push((cl, w)));
    assert_eq!(delta, [0, 0, 1, 1, 1]);
    // Logs are not windowed: no sample for them.
    assert_eq!(
        windows,
        [(StreamClass::Job, 1000), (StreamClass::Data, 1000)]
    );
    // Nothing changed: the same totals.
    c.take_report(&mut delta, |_, _| panic!("no new window"));
    assert_eq!(delta, [0, 0, 1, 1, 1]);
    // A credit update is a sample.
    c.on_receive(job, 900).unwrap();
    assert!(
        c.release(job, 900, Instant::now(), Duration::from_millis(1))
            .is_some()
    );
    assert!(c.remove(job));
    windows.clear();
    c.take_report(&mut delta, |cl, w| windows.push((cl, w)));
    assert_eq!(delta, [0, 0, 0, 1, 1]);
    assert_eq!(windows, [(StreamClass::Job, 1000)]);
    // The connection goes: what was reported open is taken back.
    c.forget_reported(&mut delta);
    assert_eq!(delta, [0; 5]);
}

#[test]
fn ids_follow_parity_and_are_reused_after_close() {
    let mut c = Streams::new(Side::Client, 4, WindowStrategy::Fixed(1000));
    let a = c.open(StreamClass::Job).unwrap();
    let b = c.open(StreamClass::Job).unwrap();
    assert_eq!((a, b), (101, 103));
    let mut s = Streams::new(Side::Server, 4, WindowStrategy::Fixed(1000));
    assert_eq!(s.open(StreamClass::System).unwrap(), 2);
    assert_eq!(s.open(StreamClass::Log).unwrap(), 10_000);
    c.open(StreamClass::Data).unwrap();
    c.open(StreamClass::Data).unwrap();
    assert_eq!(c.open(StreamClass::Job), Err(StreamError::Limit(4)));
    assert!(c.remove(a));
    assert_eq!(c.open(StreamClass::Job).unwrap(), 105);
}

#[test]
fn ids_wrap_around_within_their_class() {
    let mut c = Streams::new(Side::Client, 1000, WindowStrategy::Fixed(1000));
    let mut last = 0;
    for _ in 0..50 {
        last = c.open(StreamClass::System).unwrap();
    }
    assert_eq!(last, 99);
    assert_eq!(c.open(StreamClass::System), Err(StreamError::Limit(1000)));
    c.remove(7);
    assert_eq!(c.open(StreamClass::System).unwrap(), 7);
}

#[test]
fn peer_streams_are_limited_and_flow_controlled() {
    let mut s = Streams::new(Side::Server, 1, WindowStrategy::Fixed(100));
    assert_eq!(s.accept(100, None), Err(StreamError::InvalidId(100)));
    assert_eq!(s.accept(101, None), Ok(true));
    assert_eq!(s.accept(103, None), Err(StreamError::Limit(1)));
    s.on_receive(101, 100).unwrap();
    assert_eq!(s.on_receive(101, 1), Err(ReceiveError::FlowControl));
    let now = Instant::now();
    assert_eq!(
        s.release(101, 100, now, Duration::from_millis(1)),
        Some(200)
    );
    s.on_receive(101, 100).unwrap();
    assert!(s.finish_remote(101));
    assert_eq!(s.on_receive(101, 1), Err(ReceiveError::Closed));
    s.on_send(101, 10, true).unwrap();
    assert!(s.is_empty(), "both halves closed: reaped");
}

#[test]
fn reset_ids_are_held_until_confirmed() {
    let mut c = Streams::new(Side::Client, 8, WindowStrategy::Fixed(100));
    let id = c.open(StreamClass::Job).unwrap();
    assert!(c.reset_local(id));
    assert!(c.is_reset_pending(id));
    assert_ne!(c.open(StreamClass::Job).unwrap(), id);
    assert_eq!(c.open_id(id), Err(StreamError::Closed(id)));
    c.confirm_reset(id);
    assert_eq!(c.open_id(id), Ok(()));
}

#[test]
fn send_credit_blocks() {
    let mut c = Streams::new(Side::Client, 8, WindowStrategy::Fixed(100));
    c.set_peer_limits(50, 8);
    let id = c.open(StreamClass::Data).unwrap();
    c.on_send(id, 50, false).unwrap();
    assert!(matches!(
        c.on_send(id, 1, false),
        Err(StreamError::Blocked { available: 0, .. })
    ));
    assert!(c.on_credit(id, 100));
    c.on_send(id, 50, true).unwrap();
    assert_eq!(c.on_send(id, 1, false), Err(StreamError::Closed(id)));
    // Log streams are not windowed.
    let log = c.open(StreamClass::Log).unwrap();
    c.on_send(log, 1 << 20, false).unwrap();
}
