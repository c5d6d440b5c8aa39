//! Connection-level plumbing below the transports: byte-exact socket
//! metering and write deadlines, token buckets, per-address limits and
//! admission, Host checks, TLS, and hyper's malformed-request answers.

pub mod auto_errors;
pub mod bucket;
pub mod deadlines;
pub mod host;
pub mod limits;
pub mod meter;
pub mod output;
pub mod socket;
pub mod tls;
