//! Process-shared futex wait and wake on a word of the segment.

use std::sync::atomic::AtomicU32;
use std::time::Duration;

use rustix::thread::futex;

/// Sleep while `word` holds `expected`, at most `timeout`. Spurious returns are fine: callers
/// re-check their condition.
pub(crate) fn wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = rustix::time::Timespec {
        tv_sec: timeout.as_secs() as i64,
        tv_nsec: i64::from(timeout.subsec_nanos()),
    };
    // Not PRIVATE: the word lives in a mapping shared with another process.
    let _ = futex::wait(word, futex::Flags::empty(), expected, Some(&ts));
}

/// Wake one sleeper on `word`.
pub(crate) fn wake(word: &AtomicU32) {
    let _ = futex::wake(word, futex::Flags::empty(), 1);
}
