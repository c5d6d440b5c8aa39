//! Test upstreams, bound on 127.0.0.1:0 inside the test process.
//!
//! - [`echo_upstream`]: answers every request with JSON describing it
//!   (method, path, query, headers, body length and FNV-1a checksum), serves
//!   `GET /drip` as a slow streamed body and tunnels a WebSocket echo on
//!   `/echo`.
//! - [`hanging_upstream`]: accepts TCP connections and never answers.
//! - [`dead_addr`]: an address where nothing listens.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// A server task; aborted on drop.
pub struct Upstream {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Upstream {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// FNV-1a, 64 bits: cheap, order-sensitive, enough to catch a lost or
/// reordered chunk.
#[derive(Clone, Copy)]
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn update(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

type Body = UnsyncBoxBody<Bytes, Infallible>;

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

pub async fn echo_upstream() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(handle);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Upstream { addr, task }
}

async fn handle(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    if req.uri().path() == "/echo" {
        return Ok(websocket_echo(req));
    }
    if req.uri().path() == "/drip" {
        return Ok(drip());
    }
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let version = format!("{:?}", req.version());
    let mut headers = serde_json::Map::new();
    for (name, value) in req.headers() {
        let entry = headers
            .entry(name.as_str().to_string())
            .or_insert_with(|| serde_json::Value::Array(Vec::new()));
        entry
            .as_array_mut()
            .unwrap()
            .push(String::from_utf8_lossy(value.as_bytes()).into());
    }
    let mut body = req.into_body();
    let mut len: u64 = 0;
    let mut fnv = Fnv::default();
    let mut body_error = None;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    len += data.len() as u64;
                    fnv.update(data);
                }
            }
            Err(e) => {
                body_error = Some(e.to_string());
                break;
            }
        }
    }
    let answer = serde_json::json!({
        "method": method,
        "path": path,
        "query": query,
        "version": version,
        "headers": headers,
        "body_len": len,
        "body_fnv": fnv.hex(),
        "body_error": body_error,
    });
    Ok(Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .header("x-upstream", "echo")
        .body(full(answer.to_string()))
        .unwrap())
}

/// `first\n` at once, `second\n` 1.5 s later.
fn drip() -> Response<Body> {
    let stream = futures_util::stream::unfold(0u8, |step| async move {
        match step {
            0 => Some((Ok(Frame::data(Bytes::from_static(b"first\n"))), 1)),
            1 => {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                Some((Ok(Frame::data(Bytes::from_static(b"second\n"))), 2))
            }
            _ => None,
        }
    });
    Response::builder()
        .status(200)
        .header("content-type", "text/plain")
        .body(StreamBody::new(stream).boxed_unsync())
        .unwrap()
}

fn websocket_echo(mut req: Request<Incoming>) -> Response<Body> {
    let key = req
        .headers()
        .get("sec-websocket-key")
        .map(|k| k.as_bytes().to_vec());
    let is_upgrade = req
        .headers()
        .get("upgrade")
        .is_some_and(|u| u.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let (Some(key), true) = (key, is_upgrade) else {
        return Response::builder()
            .status(400)
            .body(full("upstream /echo wants a WebSocket upgrade"))
            .unwrap();
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
    tokio::spawn(async move {
        let Ok(upgraded) = hyper::upgrade::on(&mut req).await else {
            return;
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            let reply = match msg {
                Message::Text(t) => Message::Text(format!("echo:{t}")),
                Message::Binary(b) => Message::Binary(b),
                Message::Close(_) => break,
                _ => continue,
            };
            if ws.send(reply).await.is_err() {
                break;
            }
        }
    });
    Response::builder()
        .status(101)
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-accept", accept)
        .body(full(Bytes::new()))
        .unwrap()
}

/// Accepts connections, reads what comes, never answers.
pub async fn hanging_upstream() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(tokio::spawn(async move {
                let mut stream = stream;
                let mut buf = [0u8; 4096];
                loop {
                    use tokio::io::AsyncReadExt;
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
                // Keep the socket open until the task is aborted.
                std::future::pending::<()>().await;
                drop(stream);
            }));
        }
    });
    Upstream { addr, task }
}

/// An address where nothing listens (a port that was just free).
pub fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}
