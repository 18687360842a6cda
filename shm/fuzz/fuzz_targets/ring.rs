//! A hostile peer rewriting a ring's counters and record headers while this side produces
//! and consumes: no panic, no access outside the ring.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    valkyrie_shm::fuzzing::run(data);
});
