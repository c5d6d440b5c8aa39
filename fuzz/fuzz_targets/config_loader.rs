//! The TOML configuration loader and `Config::validate`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        pollbridge_fuzz::check_config(text);
    }
});
