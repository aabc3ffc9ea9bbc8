//! One WebSocket text frame as a consumer or agent sends it to the relay: the envelope and
//! request parser, and the answer to a malformed one (src/fuzzing.rs, `relay_request`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // A WebSocket text frame is UTF-8 by the time the relay reads it.
    if let Ok(text) = std::str::from_utf8(data) {
        brandgate::fuzzing::relay_request(text);
    }
});
