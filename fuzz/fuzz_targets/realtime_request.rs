//! The head of a realtime request: path, query and Last-Event-ID.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    pollbridge_fuzz::check_realtime_request(data);
});
