//! Publish bodies: `Payload` → `to_json_bytes` → `Message` → envelope, SSE
//! event and WebSocket frame.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    pollbridge_fuzz::check_publish_body(data);
});
