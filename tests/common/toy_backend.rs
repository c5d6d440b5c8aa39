//! The README's toy backend (`examples/toy-backend/backend.py`) as a real
//! backend process for the bridge tests: started on a free port, killed
//! when dropped. Its `/stats` tells how many requests each polling URL has
//! served and, for `/api/messages`, which targets were asked and whether
//! the gateway's own poller (`User-Agent: pollbridge-bridge/…`) asked them.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use super::http::{get, http};

/// The `User-Agent` of [`ToyBackend::direct`].
const TEST_AGENT: &str = "toy-backend-test";

/// The script, from the crate root.
const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/toy-backend/backend.py"
);

/// One request of `/api/messages` as the backend recorded it.
#[derive(Debug, Clone)]
pub struct Asked {
    /// Path and query as sent.
    pub target: String,
    /// Its `User-Agent`.
    pub agent: String,
}

impl Asked {
    /// Sent by the gateway's own poller (not a client passed through).
    pub fn by_bridge(&self) -> bool {
        self.agent.starts_with("pollbridge-bridge/")
    }

    /// Sent by the test itself, to learn the backend's own answer.
    pub fn by_test(&self) -> bool {
        self.agent == TEST_AGENT
    }
}

pub struct ToyBackend {
    pub addr: SocketAddr,
    child: Child,
}

impl Drop for ToyBackend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ToyBackend {
    /// Starts the backend on 127.0.0.1 with a free port (it prints it).
    pub fn start() -> ToyBackend {
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        let mut child = Command::new(&python)
            .arg(SCRIPT)
            .arg("0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            // Its tracebacks for connections the gateway's pool closes are noise.
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {python} {SCRIPT}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the toy backend prints its address within 10 s");
        let addr = line
            .trim()
            .strip_prefix("toy backend on http://")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("toy backend's first line: {line:?}"));
        ToyBackend { addr, child }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Adds a message to `room`; returns the backend's item (with its id).
    pub async fn post_message(&self, room: &str, text: &str) -> Value {
        let body = json!({ "text": text }).to_string();
        let r = http(
            "POST",
            &format!("{}/api/messages?room={room}", self.url()),
            &[("Content-Type", "application/json")],
            Some(body.as_bytes()),
        )
        .await;
        assert_eq!(r.status(), 201, "post a message: {}", r.text());
        r.json()
    }

    /// The backend's own answer to `GET target` (straight, not through the gateway).
    pub async fn direct(&self, target: &str) -> Value {
        let url = format!("{}{target}", self.url());
        let r = http("GET", &url, &[("User-Agent", TEST_AGENT)], None).await;
        assert_eq!(r.status(), 200, "GET {target}: {}", r.text());
        r.json()
    }

    /// The backend's `/stats`: requests served per polling URL.
    pub async fn stats(&self) -> Value {
        get(&format!("{}/stats", self.url())).await.json()
    }

    /// Logs `user` in; returns its `session=…` cookie.
    pub async fn log_in(&self, user: &str) -> String {
        let r = get(&format!("{}/login?user={user}", self.url())).await;
        assert_eq!(r.status(), 200, "log {user} in: {}", r.text());
        let set_cookie = r.header("set-cookie").expect("Set-Cookie");
        set_cookie.split(';').next().unwrap().to_string()
    }

    /// Requests `/api/scores` has served.
    pub async fn scores_requests(&self) -> u64 {
        self.stats().await["api_scores_requests"]
            .as_u64()
            .expect("a count")
    }

    /// Requests `/api/messages` has served.
    pub async fn messages_requests(&self) -> u64 {
        self.stats().await["api_messages_requests"]
            .as_u64()
            .expect("a count")
    }

    /// The last 1000 requests of `/api/messages`, oldest first.
    pub async fn messages_asked(&self) -> Vec<Asked> {
        self.stats().await["api_messages_recent"]
            .as_array()
            .expect("a list")
            .iter()
            .map(|a| Asked {
                target: a["target"].as_str().unwrap_or_default().to_string(),
                agent: a["agent"].as_str().unwrap_or_default().to_string(),
            })
            .collect()
    }
}

/// The channel of a bridge route's feed for a query, as docs/bridge.md
/// says: the route's channel, a dot, the first 32 hex digits of
/// SHA-1(`?{canonical query}` NUL).
pub fn feed_channel(base: &str, canonical_query: &str) -> String {
    use sha1::{Digest, Sha1};
    let digest = Sha1::digest(format!("?{canonical_query}\0").as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("{base}.{hex}")
}
