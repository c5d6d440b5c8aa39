//! Channel names, cursors and channel globs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    pollbridge_fuzz::check_channel_cursor(data);
});
