//! Raw HTTP/2 frames for tests that must send what no client library
//! would (stalled windows, floods, oversized header blocks).

/// One HTTP/2 frame.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A GET's header block (HPACK: static `:method GET`, `:scheme http`,
/// literal `:path` and `:authority`, plus `extra` literal headers).
pub fn get_headers(path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    fn literal(out: &mut Vec<u8>, s: &[u8]) {
        assert!(s.len() < 127);
        out.push(s.len() as u8);
        out.extend_from_slice(s);
    }
    let mut block = vec![0x82, 0x86];
    block.push(0x04);
    literal(&mut block, path.as_bytes());
    block.push(0x01);
    literal(&mut block, b"localhost");
    for (name, value) in extra {
        block.push(0x00);
        literal(&mut block, name.as_bytes());
        // Long values: a multi-byte length (HPACK integer, 7-bit prefix).
        let v = value.as_bytes();
        if v.len() < 127 {
            literal(&mut block, v);
        } else {
            block.push(0x7f);
            let mut rest = v.len() - 127;
            while rest >= 128 {
                block.push((rest % 128) as u8 | 0x80);
                rest /= 128;
            }
            block.push(rest as u8);
            block.extend_from_slice(v);
        }
    }
    block
}
