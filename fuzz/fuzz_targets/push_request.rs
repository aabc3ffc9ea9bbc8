//! A push request body as the platform POSTs it to `/push/{app}`: parsed, then built into the
//! APNs and FCM bodies (src/fuzzing.rs, `push_request`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    brandgate::fuzzing::push_request(body);
});
