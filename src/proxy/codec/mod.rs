//! The proxy's own HTTP/1.1 client codec for the upstream side of plain
//! requests (everything but upgrades and `CONNECT`, which keep hyper's
//! client for its upgrade machinery: [`upgrade`](super::upgrade)).
//!
//! hyper's client connection, even driven by the request's own task, cost
//! ~16k instructions per proxied request (callgrind; BENCHMARKS.md "An
//! upstream codec of our own"): its dispatcher, the `SendRequest` channel
//! and the oneshot back, `Incoming`'s channel, its encoder and parser.
//! Here the request head is written from the already rewritten request
//! ([`request`]), the answer head parsed with `httparse` as hyper's client
//! parses it ([`answer`]), and the body relayed straight from the
//! connection's read buffer ([`relay`], [`chunked`]).
//!
//! The codec relays only what it fully understands; any other answer —
//! ambiguous framing, a malformed head, a `101` — gets the client a 502
//! and closes the upstream connection, so nothing is ever half-forwarded
//! (docs/http.md "The proxy's upstream codec").

mod answer;
mod chunked;
mod conn;
mod relay;
mod request;

pub use answer::AnswerHead;
pub use conn::{ExchangeError, Upstream, UpstreamRequest};
pub use relay::Relay;
