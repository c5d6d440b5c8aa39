//! Header rewriting for the reverse proxy (pure functions).
//!
//! They run on every proxied request (`remove_hop_by_hop` on the response
//! too), so they skip work that does not depend on the request: header
//! names are `static`s (built at compile time, not validated per call), the
//! common `Via` is a `static` value, the peer address is written once into
//! a stack buffer (digit by digit for IPv4) for both `X-Forwarded-For` and
//! `Forwarded`, `Forwarded` is built in one buffer, and a map with no
//! hop-by-hop header is left after one pass over its names (one string
//! match each) instead of nine hashed removals.

use std::io::Write as _;
use std::net::IpAddr;

use bytes::{BufMut, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Headers a client's `Connection` may not remove: the target (`Host`)
/// and what the gateway itself sets for the upstream. (`Connection:
/// Host` once stripped Host, so the upstream saw the gateway's own.)
static NEVER_NAMED_AWAY: [HeaderName; 6] = [
    header::HOST,
    header::FORWARDED,
    header::VIA,
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-host"),
];

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1).
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The header's place in [`HOP_BY_HOP`], by one string match (the
/// compiler switches on the length first) instead of nine `HeaderName`
/// comparisons; the unit tests keep the two in step.
fn hop_by_hop_index(name: &str) -> Option<usize> {
    Some(match name {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "proxy-authenticate" => 3,
        "proxy-authorization" => 4,
        "te" => 5,
        "trailer" => 6,
        "transfer-encoding" => 7,
        "upgrade" => 8,
        _ => return None,
    })
}

pub(super) fn is_hop_by_hop(name: &HeaderName) -> bool {
    hop_by_hop_index(name.as_str()).is_some()
}

/// The `Upgrade` value when the request asks to switch protocols.
pub fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if asks {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    }
}

/// Removes hop-by-hop headers, including every header `Connection` names
/// (except those in [`NEVER_NAMED_AWAY`]).
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names (no hashing) notes which hop-by-hop headers
    // are present; nearly every message has none, or only `Connection:
    // keep-alive` (nginx sends it on every answer), which then costs one
    // removal instead of a list of named headers and nine removals.
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name.as_str()) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    // Headers named by `Connection` besides the hop-by-hop ones (removed
    // below anyway): rare, so only then collected.
    let names_others = present & 1 != 0
        && headers.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str().map_or(true, |v| {
                v.split(',')
                    .any(|t| !t.trim().is_empty() && !is_hop_by_hop_token(t.trim()))
            })
        });
    if names_others {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .filter(|name| !NEVER_NAMED_AWAY.contains(name))
            .collect();
        for name in &named {
            headers.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// A `Connection` token naming a hop-by-hop header (any case).
fn is_hop_by_hop_token(token: &str) -> bool {
    token.len() <= 19 && {
        let mut lower = [0u8; 19];
        lower[..token.len()].copy_from_slice(token.as_bytes());
        lower[..token.len()].make_ascii_lowercase();
        std::str::from_utf8(&lower[..token.len()]).is_ok_and(|t| hop_by_hop_index(t).is_some())
    }
}

/// `prior, hop` as a header value.
fn joined(prior: &[u8], hop: &[u8]) -> Option<HeaderValue> {
    let mut value = BytesMut::with_capacity(prior.len() + 2 + hop.len());
    value.put_slice(prior);
    value.put_slice(b", ");
    value.put_slice(hop);
    HeaderValue::from_maybe_shared(value.freeze()).ok()
}

/// Writes `ip` as text into `buf` (what `Display` writes) and returns its
/// length, without allocating. IPv4, nearly every peer, is written digit
/// by digit: `Display` through the formatting machinery cost ~1,200
/// instructions per address (callgrind), this ~60.
fn write_ip(ip: IpAddr, buf: &mut [u8; 48]) -> usize {
    match ip {
        IpAddr::V4(v4) => {
            let mut len = 0;
            for (k, octet) in v4.octets().into_iter().enumerate() {
                if k > 0 {
                    buf[len] = b'.';
                    len += 1;
                }
                if octet >= 100 {
                    buf[len] = b'0' + octet / 100;
                    len += 1;
                }
                if octet >= 10 {
                    buf[len] = b'0' + octet / 10 % 10;
                    len += 1;
                }
                buf[len] = b'0' + octet % 10;
                len += 1;
            }
            len
        }
        IpAddr::V6(_) => {
            // At most 45 bytes ("ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255").
            let mut w = &mut buf[..];
            let room = w.len();
            let _ = write!(w, "{ip}");
            room - w.len()
        }
    }
}

/// Adds `X-Forwarded-For` (appending the peer), `X-Forwarded-Proto`,
/// `X-Forwarded-Host` (the Host the client asked for), `Forwarded`
/// (RFC 7239) and `Via`.
///
/// `Forwarded` follows `limits.trusted_proxies`: a trusted proxy's value is
/// kept and this hop appended; anyone else's is dropped (a public client
/// is no proxy, and a backend reading `for=` must not see a forged one).
/// `X-Forwarded-For` keeps its long-standing behaviour of appending (its
/// right-most entry is always this hop's peer).
///
/// Per request: the peer written once (for both headers), each value built
/// in one buffer, and a lookup plus an insert per header (`entry` where a
/// prior value counts).
pub fn add_forwarding(
    headers: &mut HeaderMap,
    peer: IpAddr,
    proto: &'static str,
    version: http::Version,
    from_trusted_proxy: bool,
) {
    let mut buf = [0u8; 48];
    let len = write_ip(peer, &mut buf);
    let ip = &buf[..len];
    let host = headers.get(header::HOST).cloned();
    add_forwarded(
        headers,
        peer.is_ipv6(),
        ip,
        proto,
        host.as_ref(),
        from_trusted_proxy,
    );
    match headers.entry(&X_FORWARDED_FOR) {
        header::Entry::Occupied(mut prior) => {
            let value = match prior.get().to_str() {
                Ok(p) if !p.trim().is_empty() => joined(p.as_bytes(), ip),
                _ => HeaderValue::from_bytes(ip).ok(),
            };
            match value {
                Some(v) => {
                    prior.insert(v);
                }
                None => {
                    prior.remove();
                }
            }
        }
        header::Entry::Vacant(slot) => {
            if let Ok(v) = HeaderValue::from_bytes(ip) {
                slot.insert(v);
            }
        }
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    if let Some(host) = host {
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
    let hop = match version {
        http::Version::HTTP_10 => "1.0 pollbridge",
        http::Version::HTTP_2 => "2 pollbridge",
        _ => "1.1 pollbridge",
    };
    match headers.entry(header::VIA) {
        header::Entry::Occupied(mut prior) => {
            // A prior value that is not visible ASCII is replaced.
            let value = match prior.get().to_str() {
                Ok(p) => joined(p.as_bytes(), hop.as_bytes()),
                Err(_) => Some(HeaderValue::from_static(hop)),
            };
            if let Some(v) = value {
                prior.insert(v);
            }
        }
        header::Entry::Vacant(slot) => {
            slot.insert(HeaderValue::from_static(hop));
        }
    }
}

/// `Forwarded: for=…;proto=…;host="…"` for this hop (RFC 7239 §4),
/// appended to a trusted proxy's value, replacing anyone else's. `ip` is
/// the peer as text.
fn add_forwarded(
    headers: &mut HeaderMap,
    v6: bool,
    ip: &[u8],
    proto: &'static str,
    host: Option<&HeaderValue>,
    trusted: bool,
) {
    let mut value = BytesMut::with_capacity(96);
    if trusted {
        for prior in headers
            .get_all(header::FORWARDED)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter(|v| !v.trim().is_empty())
        {
            value.put_slice(prior.as_bytes());
            value.put_slice(b", ");
        }
    }
    if v6 {
        // An IPv6 node is quoted and bracketed (§6).
        value.put_slice(b"for=\"[");
        value.put_slice(ip);
        value.put_slice(b"]\"");
    } else {
        value.put_slice(b"for=");
        value.put_slice(ip);
    }
    value.put_slice(b";proto=");
    value.put_slice(proto.as_bytes());
    if let Some(host) = host.and_then(|h| h.to_str().ok()) {
        // Checked to be host[:port] (no quote or backslash) before
        // proxying; quoted because `:` is not a token character.
        value.put_slice(b";host=\"");
        value.put_slice(host.as_bytes());
        value.put_slice(b"\"");
    }
    // `insert` replaces every prior value.
    match HeaderValue::from_maybe_shared(value.freeze()) {
        Ok(v) => {
            headers.insert(header::FORWARDED, v);
        }
        Err(_) => {
            headers.remove(header::FORWARDED);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keep_alive_connection_header_alone_is_removed() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Keep-Alive"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
        // `close` is no hop-by-hop header's name: a header of that name goes.
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        h.insert("close", HeaderValue::from_static("1"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn removes_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-kept", HeaderValue::from_static("yes"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn forwarding_headers_append() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("app.test"));
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        add_forwarding(
            &mut h,
            "127.0.0.1".parse().unwrap(),
            "http",
            http::Version::HTTP_11,
            false,
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "app.test");
        assert_eq!(h["via"], "1.1 pollbridge");
    }

    #[test]
    fn hop_by_hop_matcher_agrees_with_the_list() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name.as_str()), Some(i), "{name}");
            assert!(is_hop_by_hop_token(&name.as_str().to_ascii_uppercase()));
        }
        assert!(!is_hop_by_hop_token("close"));
        assert!(!is_hop_by_hop_token("x-proxy-authorization-long"));
        for name in [
            "host",
            "x-forwarded-for",
            "content-length",
            "tea",
            "upgrades",
            "via",
        ] {
            assert!(!is_hop_by_hop(&HeaderName::from_static(name)), "{name}");
        }
    }

    #[test]
    fn upgrade_needs_the_connection_token() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(upgrade_protocol(&h).is_none());
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        assert_eq!(upgrade_protocol(&h).unwrap(), "websocket");
    }

    #[test]
    fn peer_addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "10.0.100.255",
            "127.0.0.1",
            "255.255.255.255",
            "192.168.9.99",
            "::1",
            "::ffff:1.2.3.4",
            "2001:db8::8a2e:370:7334",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ]
        .into_iter()
        .map(String::from)
        // Every octet value, in the first two positions.
        .chain((0..=255u8).map(|o| format!("{o}.{}.{}.{}", 255 - o, o / 3, o % 10)))
        {
            let ip: IpAddr = ip.parse().unwrap();
            let mut buf = [0u8; 48];
            let n = write_ip(ip, &mut buf);
            assert_eq!(std::str::from_utf8(&buf[..n]).unwrap(), ip.to_string());
        }
    }

    #[test]
    fn forwarding_headers_without_priors() {
        let mut h = HeaderMap::new();
        add_forwarding(
            &mut h,
            "::1".parse().unwrap(),
            "https",
            http::Version::HTTP_2,
            false,
        );
        assert_eq!(h["x-forwarded-for"], "::1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert!(!h.contains_key("x-forwarded-host"));
        assert_eq!(h["via"], "2 pollbridge");
    }

    #[test]
    fn blank_or_opaque_priors() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("  "));
        h.insert(header::VIA, HeaderValue::from_static("1.0 edge"));
        add_forwarding(
            &mut h,
            "10.1.2.3".parse().unwrap(),
            "http",
            http::Version::HTTP_10,
            false,
        );
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        assert_eq!(h["via"], "1.0 edge, 1.0 pollbridge");
        // A prior value that is not visible ASCII is replaced, not appended to.
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        );
        add_forwarding(
            &mut h,
            "10.1.2.3".parse().unwrap(),
            "http",
            http::Version::HTTP_11,
            false,
        );
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
    }

    #[test]
    fn opaque_via_is_replaced_and_blank_forwarded_priors_are_skipped() {
        let mut h = HeaderMap::new();
        h.insert(
            header::VIA,
            HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        );
        h.append(header::FORWARDED, HeaderValue::from_static("for=1.1.1.1"));
        h.append(header::FORWARDED, HeaderValue::from_static("  "));
        h.append(header::FORWARDED, HeaderValue::from_static("for=2.2.2.2"));
        add_forwarding(
            &mut h,
            "10.0.0.9".parse().unwrap(),
            "http",
            http::Version::HTTP_11,
            true,
        );
        assert_eq!(h["via"], "1.1 pollbridge");
        assert_eq!(h.get_all(header::FORWARDED).iter().count(), 1);
        assert_eq!(
            h["forwarded"],
            "for=1.1.1.1, for=2.2.2.2, for=10.0.0.9;proto=http"
        );
    }

    #[test]
    fn maps_without_hop_by_hop_headers_are_untouched() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("app.test"));
        h.append("x-a", HeaderValue::from_static("1"));
        h.append("x-a", HeaderValue::from_static("2"));
        let before = h.clone();
        remove_hop_by_hop(&mut h);
        assert_eq!(h, before);
        // Each hop-by-hop header alone is found and removed.
        for name in HOP_BY_HOP.iter() {
            let mut h = before.clone();
            h.insert(name.clone(), HeaderValue::from_static("x"));
            remove_hop_by_hop(&mut h);
            assert_eq!(h, before, "{name}");
        }
    }

    #[test]
    fn connection_never_names_away_host_or_the_gateways_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("app.test"));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static(
                "Host, Via, Forwarded, X-Forwarded-For, x-forwarded-proto, X-Forwarded-Host, x-gone",
            ),
        );
        for name in [
            "via",
            "forwarded",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "x-gone",
        ] {
            h.insert(HeaderName::from_static(name), HeaderValue::from_static("v"));
        }
        remove_hop_by_hop(&mut h);
        assert_eq!(h["host"], "app.test");
        for kept in [
            "via",
            "forwarded",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
        ] {
            assert!(h.contains_key(kept), "{kept} was removed");
        }
        assert!(!h.contains_key("x-gone") && !h.contains_key("connection"));
    }

    #[test]
    fn forwarded_is_rebuilt_unless_a_trusted_proxy_sent_it() {
        let client = |trusted: bool, peer: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, HeaderValue::from_static("app.test:8080"));
            h.insert(header::FORWARDED, HeaderValue::from_static("for=6.6.6.6"));
            add_forwarding(
                &mut h,
                peer.parse().unwrap(),
                "https",
                http::Version::HTTP_11,
                trusted,
            );
            h
        };
        let h = client(false, "1.2.3.4");
        assert_eq!(h.get_all(header::FORWARDED).iter().count(), 1);
        assert_eq!(
            h["forwarded"],
            "for=1.2.3.4;proto=https;host=\"app.test:8080\""
        );
        let h = client(true, "10.0.0.2");
        assert_eq!(
            h["forwarded"],
            "for=6.6.6.6, for=10.0.0.2;proto=https;host=\"app.test:8080\""
        );
        let h = client(false, "::1");
        assert_eq!(
            h["forwarded"],
            "for=\"[::1]\";proto=https;host=\"app.test:8080\""
        );
    }
}
