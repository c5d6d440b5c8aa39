//! permessage-deflate negotiation (RFC 7692 §5, §7.1): the client's
//! `Sec-WebSocket-Extensions` offers in, the accepted parameters and the
//! answer header out; and the state a connection keeps when it uses
//! context takeover.
//!
//! By default the gateway compresses each message once and shares the
//! frame, so it answers `server_no_context_takeover` (a server may add it
//! on its own, §7.1.1.1). It also answers `client_no_context_takeover`
//! (§7.1.1.2 lets a server add it too): the client then resets its
//! compressor after every message, so the gateway inflates each message on
//! its own and keeps no inflater (~40 KiB) per connection between
//! messages, a memory no limit would otherwise bound.
//!
//! With `websocket.deflate_context_takeover` a client that does not ask
//! for either parameter keeps context takeover, within
//! `websocket.max_deflate_contexts` such connections gateway-wide (a
//! [`ContextSlot`] each, counted in
//! `pollbridge_ws_deflate_contexts_connections`); past the cap a
//! connection is negotiated as by default, never refused. Such a
//! connection has its own compressor ([`DeflateContext`]) and inflater.
//!
//! An offer it can't honour (unknown or repeated parameter, bad value) is
//! declined and the next one tried; a header that doesn't parse at all
//! just means no compression: the upgrade never fails over an extension.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use prometheus::IntGauge;

use crate::gateway::Gateway;
use crate::protocol::deflate::{ContextDeflater, MIN_WINDOW_BITS, RSV1};
use crate::protocol::{Message, Transport};

use crate::protocol::deflate::{InflateError, Inflater, MAX_WINDOW_BITS};

/// What a connection agreed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deflate {
    /// The window the gateway's frames may use (`server_max_window_bits`).
    pub server_window_bits: u8,
    /// The client resets its compressor after every message, so no
    /// inflater needs to be kept between messages.
    pub client_no_context_takeover: bool,
    /// The gateway keeps its compressor's context between messages: the
    /// connection's own compressor, no shared frames.
    pub server_context_takeover: bool,
}

impl Deflate {
    /// True when the connection keeps compression state between messages
    /// (and so needs a [`ContextSlot`]).
    pub fn keeps_state(&self) -> bool {
        self.server_context_takeover || !self.client_no_context_takeover
    }
}

const NAME: &str = "permessage-deflate";

/// How a connection inflates its client's compressed messages. The
/// inflater (~40 KiB: a 32 KiB window and zlib's state) is made on the
/// first compressed message; it is kept between messages only for a
/// client that uses context takeover (allowed only with
/// `websocket.deflate_context_takeover`), else dropped after each message,
/// so a connection that is idle (or sends nothing compressed) holds none.
pub struct ClientInflate {
    keep_context: bool,
    inflater: Option<Box<Inflater>>,
}

impl ClientInflate {
    pub fn new(deflate: Deflate) -> ClientInflate {
        ClientInflate {
            keep_context: !deflate.client_no_context_takeover,
            inflater: None,
        }
    }

    /// One whole compressed message, inflated to at most `max` bytes.
    pub fn inflate(&mut self, compressed: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
        let inflater = self
            .inflater
            .get_or_insert_with(|| Box::new(Inflater::new(self.keep_context)));
        let result = inflater.inflate(compressed, max);
        if !self.keep_context {
            self.inflater = None;
        }
        result
    }

    /// True while an inflater is kept (between messages: only for a
    /// client that uses context takeover).
    #[cfg(test)]
    pub fn holds_inflater(&self) -> bool {
        self.inflater.is_some()
    }
}

/// One of the `websocket.max_deflate_contexts` places for connections
/// with their own compression state, held for the connection's life.
pub struct ContextSlot(IntGauge);

impl ContextSlot {
    /// A free place, if any. The gauge is the count: a taker that finds
    /// it past the cap after its own increment gives it back, so the
    /// holders never exceed the cap (racing takers may both give up).
    fn take(gw: &Gateway) -> Option<ContextSlot> {
        let gauge = &gw.metrics.compression.ws_contexts;
        gauge.inc();
        if gauge.get() > gw.config.websocket.max_deflate_contexts as i64 {
            gauge.dec();
            return None;
        }
        Some(ContextSlot(gauge.clone()))
    }
}

impl Drop for ContextSlot {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The per-connection state of a connection that uses context takeover
/// (boxed in the session, None for every other connection).
pub struct DeflateContext {
    /// The window of the connection's own compressor, when the gateway
    /// keeps its context (None: only the client keeps its own).
    window_bits: Option<u8>,
    /// That compressor, made on the first message it compresses: before
    /// that it would hold nothing a fresh one doesn't, so an idle
    /// connection holds none.
    deflater: Option<ContextDeflater>,
    _slot: ContextSlot,
}

impl DeflateContext {
    pub fn new(deflate: Deflate, slot: ContextSlot) -> DeflateContext {
        DeflateContext {
            window_bits: deflate
                .server_context_takeover
                .then_some(deflate.server_window_bits),
            deflater: None,
            _slot: slot,
        }
    }

    /// True when messages go through this connection's own compressor:
    /// it can't share frames, so it is written by its own task.
    pub fn compresses(&self) -> bool {
        self.window_bits.is_some()
    }

    /// `msg`'s frame through the connection's own compressor (None: it
    /// has none, or the message goes out plain: short, or its channel's
    /// rule). Counted as compressed.
    pub fn frame(&mut self, gw: &Gateway, msg: &Message) -> Option<Bytes> {
        if !self.compresses() || !worth_compressing(gw, msg) {
            return None;
        }
        // Sent whatever its size: the client's inflater follows the
        // compressor's history, so what went in must go out.
        let frame = self.echo_frame(crate::protocol::ws_frame::OP_TEXT, &msg.envelope)?;
        gw.metrics
            .compression
            .record(Transport::WebSocket, msg.ws_frame().len(), frame.len());
        Some(frame)
    }

    /// `data` (an echoed message) through the connection's own compressor.
    pub fn echo_frame(&mut self, opcode: u8, data: &[u8]) -> Option<Bytes> {
        let bits = self.window_bits?;
        let deflater = self
            .deflater
            .get_or_insert_with(|| ContextDeflater::new(bits));
        Some(deflater.frame(opcode, data))
    }
}

/// What a connection's handshake agreed to: the parameters, the answer
/// header, and the slot of a connection that keeps compression state.
pub fn negotiate_for(
    gw: &Gateway,
    headers: &HeaderMap,
) -> Option<(Deflate, HeaderValue, Option<ContextSlot>)> {
    if gw.config.websocket.deflate_context_takeover {
        let (deflate, answer) = negotiate(headers, true)?;
        if !deflate.keeps_state() {
            return Some((deflate, answer, None));
        }
        if let Some(slot) = ContextSlot::take(gw) {
            return Some((deflate, answer, Some(slot)));
        }
        // Past the cap: as by default, never refused.
    }
    negotiate(headers, false).map(|(d, a)| (d, a, None))
}

/// The first acceptable permessage-deflate offer among the request's
/// extension headers, and the `Sec-WebSocket-Extensions` answer for it.
/// `takeover`: context takeover is allowed where the offer doesn't rule it
/// out (else never, either way).
fn negotiate(headers: &HeaderMap, takeover: bool) -> Option<(Deflate, HeaderValue)> {
    let mut all = String::new();
    for value in headers.get_all(header::SEC_WEBSOCKET_EXTENSIONS) {
        let text = value.to_str().ok()?;
        if !all.is_empty() {
            all.push(',');
        }
        all.push_str(text);
    }
    let offers = split_quoted(&all, ',')?;
    offers
        .into_iter()
        .find_map(|offer| accept(&offer, takeover))
}

/// One offer, accepted or declined (None).
fn accept(offer: &str, takeover: bool) -> Option<(Deflate, HeaderValue)> {
    let mut parts = split_quoted(offer, ';')?.into_iter();
    if !parts.next()?.trim().eq_ignore_ascii_case(NAME) {
        return None;
    }
    let mut deflate = Deflate {
        server_window_bits: MAX_WINDOW_BITS,
        client_no_context_takeover: false,
        server_context_takeover: false,
    };
    let mut server_no_context_takeover = false;
    let mut seen: Vec<String> = Vec::new();
    let mut server_bits_offered = false;
    for param in parts {
        let (name, value) = parse_param(&param)?;
        if seen.contains(&name) {
            return None; // §7.1: a parameter may appear once
        }
        match (name.as_str(), value) {
            ("server_no_context_takeover", None) => server_no_context_takeover = true,
            ("client_no_context_takeover", None) => deflate.client_no_context_takeover = true,
            ("server_max_window_bits", Some(v)) => {
                deflate.server_window_bits = window_bits(&v)?;
                server_bits_offered = true;
            }
            // The client may use a smaller window than ours; we inflate
            // with a full one either way, so nothing to answer.
            ("client_max_window_bits", None) => {}
            ("client_max_window_bits", Some(v)) => {
                window_bits(&v)?;
            }
            _ => return None,
        }
        seen.push(name);
    }
    if takeover {
        // zlib can't deflate with an 8-bit window: shared frames then.
        deflate.server_context_takeover =
            !server_no_context_takeover && deflate.server_window_bits >= MIN_WINDOW_BITS;
    } else {
        // Asked for or not: no inflater has to outlive a message.
        deflate.client_no_context_takeover = true;
    }
    let mut answer = NAME.to_string();
    if !deflate.server_context_takeover {
        answer.push_str("; server_no_context_takeover");
    }
    if deflate.client_no_context_takeover {
        answer.push_str("; client_no_context_takeover");
    }
    if server_bits_offered {
        answer.push_str(&format!(
            "; server_max_window_bits={}",
            deflate.server_window_bits
        ));
    }
    Some((deflate, HeaderValue::from_str(&answer).ok()?))
}

/// The frame `msg` goes out as on a connection that negotiated `deflate`
/// (None: plain): the shared compressed frame, unless the message is
/// shorter than `websocket.compression_min_bytes` or its channel's rule
/// says `compress = false`. Decided once per message, by the first
/// connection that asks.
pub fn frame_for<'m>(gw: &Gateway, deflate: Option<Deflate>, msg: &'m Message) -> &'m Bytes {
    match deflate {
        None => msg.ws_frame(),
        Some(d) => msg.ws_frame_deflated(d.server_window_bits, |m| worth_compressing(gw, m)),
    }
}

/// `msg` is long enough to compress (`websocket.compression_min_bytes`)
/// and its channel's rule allows it.
fn worth_compressing(gw: &Gateway, msg: &Message) -> bool {
    msg.envelope.len() >= gw.config.websocket.compression_min_bytes
        && !gw.rules.resolve(msg.channel.as_str()).uncompressed
}

/// Counts the deliveries among `msgs` that went out compressed: the plain
/// frame's bytes before, the compressed frame's after (per delivery, as
/// sent).
pub fn record_compressed(gw: &Gateway, deflate: Option<Deflate>, msgs: &[Arc<Message>]) {
    if deflate.is_none() {
        return;
    }
    for msg in msgs {
        let frame = frame_for(gw, deflate, msg);
        if frame[0] & RSV1 != 0 {
            gw.metrics
                .compression
                .record(Transport::WebSocket, msg.ws_frame().len(), frame.len());
        }
    }
}

/// A window size value: 8 … 15, written as `1*DIGIT` with no leading zero
/// (§7.1.2.1), possibly quoted.
fn window_bits(value: &str) -> Option<u8> {
    let ok = !value.is_empty()
        && value.len() <= 2
        && value.bytes().all(|b| b.is_ascii_digit())
        && !value.starts_with('0');
    let bits: u8 = value.parse().ok().filter(|_| ok)?;
    (8..=MAX_WINDOW_BITS).contains(&bits).then_some(bits)
}

/// `name` or `name=value` (token or quoted-string), name lowercased.
fn parse_param(param: &str) -> Option<(String, Option<String>)> {
    let (name, value) = match param.split_once('=') {
        Some((n, v)) => (n.trim(), Some(v.trim())),
        None => (param.trim(), None),
    };
    if !is_token(name) {
        return None;
    }
    let value = match value {
        None => None,
        Some(v) if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') => {
            let inner = unescape(&v[1..v.len() - 1])?;
            is_token(&inner).then_some(inner)?.into()
        }
        Some(v) if is_token(v) => Some(v.to_string()),
        Some(_) => return None,
    };
    Some((name.to_ascii_lowercase(), value))
}

fn unescape(quoted: &str) -> Option<String> {
    let mut out = String::with_capacity(quoted.len());
    let mut chars = quoted.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            '"' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

/// RFC 7230 token characters.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Splits on `sep` outside quoted strings; None for an unterminated quote.
fn split_quoted(text: &str, sep: char) -> Option<Vec<String>> {
    let mut parts = vec![String::new()];
    let (mut quoted, mut escaped) = (false, false);
    for c in text.chars() {
        if quoted {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                quoted = false;
            }
        } else if c == '"' {
            quoted = true;
        } else if c == sep {
            parts.push(String::new());
            continue;
        }
        parts.last_mut().expect("never empty").push(c);
    }
    if quoted {
        return None;
    }
    // Empty list elements (`a, , b`) are allowed and skipped (RFC 7230 §7).
    Some(parts.into_iter().filter(|p| !p.trim().is_empty()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(values: &[&str]) -> Option<(Deflate, String)> {
        offer_with(values, false)
    }

    fn offer_with(values: &[&str], takeover: bool) -> Option<(Deflate, String)> {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(
                header::SEC_WEBSOCKET_EXTENSIONS,
                HeaderValue::from_str(v).unwrap(),
            );
        }
        negotiate(&h, takeover).map(|(d, v)| (d, v.to_str().unwrap().to_string()))
    }

    fn answer(values: &[&str]) -> Option<String> {
        offer(values).map(|(_, a)| a)
    }

    const NO_TAKEOVER: &str =
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

    #[test]
    fn plain_offers_get_no_context_takeover_both_ways() {
        assert_eq!(answer(&["permessage-deflate"]).unwrap(), NO_TAKEOVER);
        // Chromium's and Firefox's offer: no client_no_context_takeover
        // offered, answered all the same (RFC 7692 §7.1.1.2).
        let (d, a) = offer(&["permessage-deflate; client_max_window_bits"]).unwrap();
        assert_eq!(a, NO_TAKEOVER);
        assert_eq!(d.server_window_bits, 15);
        assert!(d.client_no_context_takeover);
        assert!(answer(&[]).is_none());
        assert!(answer(&["x-webkit-deflate-frame"]).is_none());
    }

    #[test]
    fn parameters_are_answered() {
        // Python websockets' default offer.
        let (d, a) =
            offer(&["permessage-deflate; server_max_window_bits=12; client_max_window_bits=12"])
                .unwrap();
        assert_eq!(a, format!("{NO_TAKEOVER}; server_max_window_bits=12"));
        assert_eq!(d.server_window_bits, 12);
        let (d, a) = offer(&[
            "Permessage-Deflate; client_no_context_takeover; server_no_context_takeover; server_max_window_bits=\"10\"",
        ])
        .unwrap();
        assert!(d.client_no_context_takeover);
        assert_eq!(d.server_window_bits, 10);
        assert_eq!(a, "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10");
    }

    #[test]
    fn bad_offers_are_declined_and_the_next_one_tried() {
        for bad in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; unknown_param",
            "permessage-deflate; server_max_window_bits=\"1 2\"",
            "permessage-deflate; =x",
        ] {
            assert!(answer(&[bad]).is_none(), "{bad}");
            let (d, _) = offer(&[bad, "permessage-deflate; client_no_context_takeover"])
                .unwrap_or_else(|| panic!("fallback after {bad}"));
            assert!(d.client_no_context_takeover);
        }
        // Several offers in one header, first acceptable wins.
        let (d, _) = offer(&[
            "permessage-deflate; server_max_window_bits=x, permessage-deflate; server_max_window_bits=9, permessage-deflate",
        ])
        .unwrap();
        assert_eq!(d.server_window_bits, 9);
        // Garbage never fails, it just means no compression.
        assert!(answer(&["permessage-deflate; x=\"unterminated"]).is_none());
        assert!(answer(&[";;;,,,"]).is_none());
        assert!(answer(&[" , permessage-deflate"]).is_some());
    }

    #[test]
    fn context_takeover_is_allowed_only_where_configured_and_not_ruled_out() {
        // Chromium's offer, takeover allowed: nothing ruled out.
        let (d, a) = offer_with(&["permessage-deflate; client_max_window_bits"], true).unwrap();
        assert_eq!(a, "permessage-deflate");
        assert!(d.server_context_takeover && !d.client_no_context_takeover);
        assert!(d.keeps_state());
        assert!(ClientInflate::new(d).keep_context);
        // The client rules out one side: the other may keep its context.
        let (d, a) = offer_with(&["permessage-deflate; server_no_context_takeover"], true).unwrap();
        assert_eq!(a, "permessage-deflate; server_no_context_takeover");
        assert!(!d.server_context_takeover && d.keeps_state());
        let (d, a) = offer_with(
            &["permessage-deflate; client_no_context_takeover; server_max_window_bits=10"],
            true,
        )
        .unwrap();
        assert_eq!(
            a,
            "permessage-deflate; client_no_context_takeover; server_max_window_bits=10"
        );
        assert!(d.server_context_takeover && d.keeps_state());
        // Both ruled out: no state, as by default.
        let (d, _) = offer_with(&[NO_TAKEOVER], true).unwrap();
        assert!(!d.keeps_state());
        // An 8-bit window zlib can't deflate with: shared frames.
        let (d, a) = offer_with(&["permessage-deflate; server_max_window_bits=8"], true).unwrap();
        assert!(!d.server_context_takeover);
        assert_eq!(
            a,
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=8"
        );
        // Not allowed: never, whatever the offer.
        let (d, _) = offer_with(&["permessage-deflate"], false).unwrap();
        assert!(!d.keeps_state());
    }

    /// A compressor that keeps its context between messages, as a client
    /// that ignores `client_no_context_takeover` would.
    fn takeover_client_messages(n: usize) -> Vec<Vec<u8>> {
        use flate2::{Compress, Compression, FlushCompress};
        let mut client = Compress::new(Compression::new(6), false);
        let text = br#"{"type":"subscribe","channel":"scores.premier-league"}"#;
        (0..n)
            .map(|_| {
                let mut out = Vec::with_capacity(256);
                client
                    .compress_vec(text, &mut out, FlushCompress::Sync)
                    .unwrap();
                out.truncate(out.len() - 4);
                out
            })
            .collect()
    }

    #[test]
    fn no_inflater_outlives_a_message() {
        // The browsers' offer, which leaves the client free to keep its
        // context: the answer takes that freedom away, so nothing is kept.
        let (d, _) = offer(&["permessage-deflate; client_max_window_bits"]).unwrap();
        let mut inflate = ClientInflate::new(d);
        let messages = takeover_client_messages(2);
        let first = inflate.inflate(&messages[0], 1024).unwrap();
        assert!(first.starts_with(b"{\"type\""));
        assert!(!inflate.holds_inflater(), "kept after a message");
        // A client that keeps its context anyway (RFC 7692 says it must
        // not) refers back to a window the gateway no longer has: its
        // message is refused (1007), and still nothing is kept.
        assert!(inflate.inflate(&messages[1], 1024).is_err());
        assert!(!inflate.holds_inflater());
    }
}
