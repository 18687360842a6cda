//! CPU time, to tell what a server spent per message from what its clients spent: the
//! process's user + system time (getrusage) less the client threads' own (each reads its
//! thread clock), with the servers running in this process.

use std::time::Duration;

fn timeval(t: libc::timeval) -> Duration {
    Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000)
}

/// User + system CPU time of this whole process so far.
pub(crate) fn process() -> Duration {
    // SAFETY: getrusage fills the zeroed struct it is given.
    #[allow(unsafe_code)]
    let u = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    timeval(u.ru_utime) + timeval(u.ru_stime)
}

/// CPU time of the calling thread so far.
pub(crate) fn thread() -> Duration {
    // SAFETY: clock_gettime fills the zeroed timespec it is given.
    #[allow(unsafe_code)]
    let t = unsafe {
        let mut t: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t);
        t
    };
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}
