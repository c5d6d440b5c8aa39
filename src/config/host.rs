//! `Host` value syntax (RFC 3986 §3.2.2 `uri-host [ ":" port ]`), for
//! `admin.allowed_hosts` and for the listeners' `Host` header check.

/// `uri-host [ ":" port ]` (RFC 3986 §3.2.2): a bracketed IPv6 address, or
/// a registered name / IPv4 address of unreserved, percent-encoded and
/// sub-delimiter characters; then an optional decimal port up to 65535. No
/// user info, path, query, spaces or control characters. An empty host is
/// grammatical but names nothing the gateway serves, so it is refused too.
pub fn is_valid_host(host: &[u8]) -> bool {
    let (name, port) = split_port(host);
    let name_ok = match name {
        [b'[', inner @ .., b']'] => std::str::from_utf8(inner)
            .ok()
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok()),
        [] => false,
        _ => is_reg_name(name),
    };
    let port_ok = match port {
        None => true,
        Some(digits) => {
            (1..=5).contains(&digits.len())
                && digits.iter().all(u8::is_ascii_digit)
                && std::str::from_utf8(digits)
                    .ok()
                    .and_then(|d| d.parse::<u16>().ok())
                    .is_some()
        }
    };
    name_ok && port_ok
}

/// Splits `name:port` (the port after the last colon outside brackets).
pub fn split_port(host: &[u8]) -> (&[u8], Option<&[u8]>) {
    let after_brackets = match host.iter().rposition(|&b| b == b']') {
        Some(end) => end + 1,
        None => 0,
    };
    match host[after_brackets..].iter().position(|&b| b == b':') {
        Some(colon) => {
            let at = after_brackets + colon;
            (&host[..at], Some(&host[at + 1..]))
        }
        None => (host, None),
    }
}

fn is_reg_name(name: &[u8]) -> bool {
    let mut i = 0;
    while i < name.len() {
        match name[i] {
            b'%' => {
                let hex = name.get(i + 1..i + 3);
                if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                    return false;
                }
                i += 3;
                continue;
            }
            b if b.is_ascii_alphanumeric() => {}
            b'-' | b'.' | b'_' | b'~' => {}
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' => {}
            _ => return false,
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_hosts() {
        for ok in [
            "app.test",
            "app.test:8080",
            "127.0.0.1",
            "127.0.0.1:9090",
            "[::1]",
            "[::1]:80",
            "[2001:db8::1]:65535",
            "xn--caf-dma.test",
            "a%2Db",
            "localhost",
        ] {
            assert!(is_valid_host(ok.as_bytes()), "{ok}");
        }
    }

    #[test]
    fn invalid_hosts() {
        for bad in [
            "",
            "a b",
            "evil/path?x",
            "user@h",
            "h:",
            "h:65536",
            "h:80:80",
            "h:8a",
            "[::1",
            "[nope]",
            "::1",
            "h#frag",
            "a%2",
            "a%zz",
            "h\\x",
        ] {
            assert!(!is_valid_host(bad.as_bytes()), "{bad:?}");
        }
    }

    #[test]
    fn ports_split_outside_brackets() {
        assert_eq!(split_port(b"[::1]:80"), (&b"[::1]"[..], Some(&b"80"[..])));
        assert_eq!(split_port(b"[::1]"), (&b"[::1]"[..], None));
        assert_eq!(split_port(b"a:1"), (&b"a"[..], Some(&b"1"[..])));
    }
}
