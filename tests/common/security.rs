//! Helpers for the security tests: subscriber tokens (JWT), a backend that
//! answers `auth_url` checks and counts them, and TLS clients (`wss://`,
//! `https://`) that trust a test certificate made with rcgen.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::http::{find, Head, Response};

/// The request headers of a WebSocket opening handshake.
pub const UPGRADE: [(&str, &str); 4] = [
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
];

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Asserts a gateway JSON error: this status, this `error` code, a message.
pub fn assert_error(r: &Response, status: u16, code: &str, what: &str) {
    assert_eq!(
        r.status(),
        status,
        "{what}: expected {status} {code}, got {} {}",
        r.status(),
        r.text()
    );
    let ct = r.header("content-type").unwrap_or_default();
    assert!(
        ct.starts_with("application/json"),
        "{what}: content-type {ct:?}"
    );
    let body = r.json();
    assert_eq!(body["error"], code, "{what}: {body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: error without a message: {body}"
    );
}

/// `{"exp":…,"channels":[…]}` signed HS256 with `secret`.
pub fn hs256_token(secret: &str, exp: u64, channels: &[&str]) -> String {
    let claims = serde_json::json!({"exp": exp, "channels": channels});
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign HS256")
}

/// Any claims signed ES256 with a PKCS#8 PEM private key.
pub fn es256_token_claims(private_pem: &str, claims: &Value) -> String {
    let key = EncodingKey::from_ec_pem(private_pem.as_bytes()).expect("EC private key");
    jsonwebtoken::encode(&Header::new(Algorithm::ES256), claims, &key).expect("sign ES256")
}

/// `{"exp":…,"channels":[…]}` signed ES256.
pub fn es256_token(private_pem: &str, exp: u64, channels: &[&str]) -> String {
    es256_token_claims(
        private_pem,
        &serde_json::json!({"exp": exp, "channels": channels}),
    )
}

/// A token with `{"alg":"none"}` and no signature.
pub fn unsigned_token(claims: &Value) -> String {
    use base64::Engine as _;
    let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims.to_string().as_bytes())
    )
}

/// One request the auth backend received.
#[derive(Debug, Clone)]
pub struct AuthRequest {
    /// Request target, e.g. `/check?channel=acct.1`.
    pub target: String,
    pub cookie: Option<String>,
    pub authorization: Option<String>,
}

/// A backend for `auth.auth_url`: allows (204) when the cookie holds
/// `session=good` or the request carries `Authorization: Bearer good`,
/// refuses (403) otherwise. Keeps every request; aborted on drop.
pub struct AuthBackend {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<AuthRequest>>>,
    task: JoinHandle<()>,
}

impl Drop for AuthBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl AuthBackend {
    pub async fn start() -> AuthBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = requests.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                conns.spawn(serve_auth_conn(stream, log.clone()));
            }
        });
        AuthBackend {
            addr,
            requests,
            task,
        }
    }

    /// `http://127.0.0.1:PORT/check`
    pub fn url(&self) -> String {
        format!("http://{}/check", self.addr)
    }

    pub fn requests(&self) -> Vec<AuthRequest> {
        self.requests.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

async fn serve_auth_conn(mut stream: TcpStream, log: Arc<Mutex<Vec<AuthRequest>>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let Some(end) = find(&buf, b"\r\n\r\n") else {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head: Vec<u8> = buf.drain(..end + 4).collect();
        let text = String::from_utf8_lossy(&head[..end]).into_owned();
        let mut lines = text.split("\r\n");
        let target = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .unwrap_or_default()
            .to_string();
        let mut cookie = None;
        let mut authorization = None;
        for line in lines {
            if let Some((name, value)) = line.split_once(':') {
                let value = value.trim().to_string();
                if name.eq_ignore_ascii_case("cookie") {
                    cookie = Some(value);
                } else if name.eq_ignore_ascii_case("authorization") {
                    authorization = Some(value);
                }
            }
        }
        let allow = cookie
            .as_deref()
            .is_some_and(|c| c.split(';').any(|p| p.trim() == "session=good"))
            || authorization.as_deref() == Some("Bearer good");
        log.lock().unwrap().push(AuthRequest {
            target,
            cookie,
            authorization,
        });
        let answer: &[u8] = if allow {
            b"HTTP/1.1 204 No Content\r\n\r\n"
        } else {
            b"HTTP/1.1 403 Forbidden\r\ncontent-length: 2\r\n\r\nno"
        };
        if stream.write_all(answer).await.is_err() {
            return;
        }
    }
}

/// A self-signed certificate for `localhost`, as PEM and DER.
pub struct TestCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl TestCert {
    pub fn generate() -> TestCert {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
            .expect("generate a certificate");
        TestCert {
            cert_pem: ck.cert.pem(),
            key_pem: ck.key_pair.serialize_pem(),
            der: ck.cert.der().clone(),
        }
    }
}

/// A TLS client that trusts exactly `roots` and offers `alpn`.
pub fn tls_connector(roots: &[&CertificateDer<'static>], alpn: &[&[u8]]) -> TlsConnector {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add((*root).clone()).expect("add a trust anchor");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(store)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

/// Connects TCP, then TLS with server name `localhost`, within 5 s.
pub async fn tls_connect(
    addr: SocketAddr,
    connector: &TlsConnector,
) -> io::Result<TlsStream<TcpStream>> {
    tokio::time::timeout(Duration::from_secs(5), async {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true).ok();
        let name = ServerName::try_from("localhost").unwrap().to_owned();
        connector.connect(name, tcp).await
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS connect timed out"))?
}

/// The certificate the server presented on this connection (leaf, DER).
pub fn peer_leaf(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    let (_, conn) = stream.get_ref();
    conn.peer_certificates()
        .and_then(|c| c.first())
        .expect("the server presented a certificate")
        .clone()
        .into_owned()
}

/// Parses `HTTP/1.1 …` head bytes (without the blank line).
pub fn parse_head(bytes: &[u8]) -> Head {
    let text = String::from_utf8_lossy(bytes);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    assert!(
        version.starts_with("HTTP/1."),
        "not an HTTP/1 status line: {status_line:?}"
    );
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let reason = parts.next().unwrap_or_default().to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Head {
        status,
        reason,
        headers,
    }
}

/// Splits a whole `Connection: close` exchange into a response (body by
/// `Content-Length`, else everything after the head).
pub fn parse_response(bytes: &[u8]) -> Response {
    let end = find(bytes, b"\r\n\r\n").unwrap_or_else(|| {
        panic!(
            "no complete response head in {:?}",
            String::from_utf8_lossy(bytes)
        )
    });
    let head = parse_head(&bytes[..end]);
    let rest = &bytes[end + 4..];
    let body = match head.content_length() {
        Some(len) => rest[..len.min(rest.len())].to_vec(),
        None => rest.to_vec(),
    };
    Response { head, body }
}

/// Reads until EOF (a missing TLS close_notify or a reset also ends it).
pub async fn read_until_closed<S: AsyncRead + Unpin>(
    stream: &mut S,
    t: Duration,
) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + t;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "connection still open after {t:?} (read {:?})",
                        String::from_utf8_lossy(&out)
                    ),
                ))
            }
            Ok(Ok(0)) => return Ok(out),
            Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
            Ok(Err(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::UnexpectedEof
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::BrokenPipe
                ) =>
            {
                return Ok(out)
            }
            Ok(Err(e)) => return Err(e),
        }
    }
}

/// One `Connection: close` request on any stream (e.g. TLS), read to EOF.
pub async fn request_on<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    t: Duration,
) -> io::Result<Response> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    tokio::time::timeout(t, stream.write_all(head.as_bytes()))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "write timed out"))??;
    let bytes = read_until_closed(stream, t).await?;
    Ok(parse_response(&bytes))
}

/// A WebSocket client over any stream (here: TLS).
pub struct StreamWs<S> {
    pub inner: WebSocketStream<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> StreamWs<S> {
    /// Does the opening handshake for `url` on `stream`.
    pub async fn handshake(url: &str, stream: S) -> Result<StreamWs<S>, String> {
        let (inner, _resp) = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_tungstenite::client_async(url, stream),
        )
        .await
        .map_err(|_| "WebSocket handshake timed out".to_string())?
        .map_err(|e| e.to_string())?;
        Ok(StreamWs { inner })
    }

    /// The next JSON text message (pings skipped); panics on anything else.
    pub async fn next_json(&mut self, t: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + t;
        loop {
            match tokio::time::timeout_at(deadline, self.inner.next()).await {
                Err(_) => panic!("WebSocket: no message within {t:?}"),
                Ok(None) => panic!("WebSocket: stream ended"),
                Ok(Some(Err(e))) => panic!("WebSocket: {e}"),
                Ok(Some(Ok(Message::Text(s)))) => {
                    return serde_json::from_str(&s)
                        .unwrap_or_else(|e| panic!("not JSON ({e}): {s:?}"))
                }
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
                Ok(Some(Ok(other))) => panic!("WebSocket: unexpected {other:?}"),
            }
        }
    }

    pub async fn send_json(&mut self, v: &Value) {
        tokio::time::timeout(
            Duration::from_secs(5),
            self.inner.send(Message::Text(v.to_string())),
        )
        .await
        .expect("WebSocket send timed out")
        .expect("WebSocket send failed");
    }
}
