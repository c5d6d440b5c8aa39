//! Raw request bytes on a cleartext public connection: the lean path's
//! head parser, the Host check, then the realtime route's query parsing.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    pollbridge_fuzz::check_request_head(data);
});
