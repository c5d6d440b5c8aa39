//! The lean HTTP/1.1 path: long-poll and SSE GETs on a cleartext public
//! connection answered without hyper's per-connection machinery, through
//! the same router (`server::public::route`), so every check stays one
//! piece of code. Everything else on the connection — WebSocket upgrades,
//! HEAD, POST, the proxy, bridges, any head the lean parser does not fully
//! understand — is handed to hyper with the bytes already read
//! (`MeteredStream::rewind`, so an upgraded WebSocket still finds its socket
//! by type for direct mode), and hyper serves the connection from then on (docs/http.md).

mod conn;
pub mod head;
mod response;

pub(super) use conn::serve;
