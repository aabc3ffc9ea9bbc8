//! A SAML provider's answer to the agents' assertion consumer service: the byte screen, the
//! strict parse, the shape check and xmlsec's signature check, with a certificate whose key
//! nobody has (src/fuzzing.rs, `saml_response`): nothing may ever be accepted.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    brandgate::fuzzing::saml_response(data);
});
