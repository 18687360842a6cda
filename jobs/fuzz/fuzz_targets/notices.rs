//! What arrives on the `valkyrie_jobs` channel is read by `Notice::parse`: any program with a
//! connection to the database may NOTIFY there. Arbitrary payloads never panic; what parses
//! is written back to the same payload's meaning.
#![no_main]

use libfuzzer_sys::fuzz_target;
use valkyrie_jobs::notice::Notice;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(n) = Notice::parse(text) {
        assert_eq!(Notice::parse(&n.payload()), Some(n));
    }
});
