//! Differential fuzz of the lean HTTP/1.1 path's head parser against
//! hyper: request heads generated from a grammar (methods, targets,
//! versions, line ends, headers that matter for framing), then mutated
//! byte by byte. Whenever the lean parser says `Lean`, the same bytes go
//! to a real hyper HTTP/1.1 server (over an in-memory pipe), which must
//! accept the request and see the same method, URI and header list.
//! (`HandOver` needs no check: hyper then parses the bytes itself.)
//!
//! 4,000 cases by default (a few seconds, about one in nine lean); `PROPTEST_CASES=200000 cargo
//! test --release --test lean_fuzz` for a longer run (docs/security.md).

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use pollbridge::server::lean::head::{decide, Decision};
use proptest::prelude::*;
use tokio::io::AsyncWriteExt;

const MAX_HEAD: usize = 16 * 1024;

/// What a request looked like to its parser.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    method: String,
    version: http::Version,
    uri: String,
    headers: Vec<(String, Vec<u8>)>,
}

/// What hyper's HTTP/1.1 server makes of `bytes`: the first request, if
/// it accepts one.
fn hyper_sees(rt: &tokio::runtime::Runtime, bytes: &[u8]) -> Option<Seen> {
    rt.block_on(async {
        let (near, mut far) = tokio::io::duplex(64 * 1024);
        let seen = Arc::new(Mutex::new(None));
        let record = seen.clone();
        let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let mut slot = record.lock().unwrap();
            if slot.is_none() {
                *slot = Some(Seen {
                    method: req.method().to_string(),
                    version: req.version(),
                    uri: req.uri().to_string(),
                    headers: req
                        .headers()
                        .iter()
                        .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                        .collect(),
                });
            }
            async { Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::new()))) }
        });
        let mut builder = http1::Builder::new();
        builder.max_buf_size(MAX_HEAD).auto_date_header(false);
        let conn = builder.serve_connection(TokioIo::new(near), service);
        let server = tokio::spawn(conn);
        far.write_all(bytes).await.unwrap();
        far.shutdown().await.unwrap();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), server).await;
        let out = seen.lock().unwrap().take();
        out
    })
}

fn lean_sees(bytes: &[u8]) -> Option<Seen> {
    match decide(bytes, "/rt", MAX_HEAD) {
        Decision::Lean(head) => Some(Seen {
            method: "GET".into(),
            version: http::Version::HTTP_11,
            uri: head.uri.to_string(),
            headers: head
                .headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect(),
        }),
        _ => None,
    }
}

// ---------------------------------------------------------------- grammar

fn pick(options: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop::sample::select(options).prop_map(str::to_string)
}

/// Bytes that are interesting in a head.
fn odd_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        prop::sample::select(
            &[0u8, b'\r', b'\n', b' ', b'\t', b':', b',', 0x7f, 0x80, 0xff, b'"'][..]
        ),
        any::<u8>(),
    ]
}

fn target() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => pick(&["/rt/poll/x", "/rt/sse/x", "/rt/poll/a%20b?since=1&timeout=5", "/rt/sse/a/b?x=1#f"]),
        1 => pick(&["/rt/ws", "/api/x", "*", "http://h/rt/poll/x", "//rt/poll/x", "/rt/poll/", "rt/poll/x"]),
        2 => "/rt/(poll|sse)/[ -~]{0,12}".prop_map(|s| s),
    ]
}

fn header() -> impl Strategy<Value = String> {
    let name = prop_oneof![
        4 => pick(&["Accept", "Cookie", "User-Agent", "Origin", "Last-Event-ID", "x-a", "Accept-Encoding"]),
        3 => pick(&["Host", "Content-Length", "Transfer-Encoding", "Connection", "Upgrade", "Expect", "TE", "content-length", "HOST", "connection"]),
        1 => "[!-~]{1,8}".prop_map(|s| s),
    ];
    let value = prop_oneof![
        3 => pick(&["x", "0", "00", "+0", "0, 0", "chunked", "close", "keep-alive", "Keep-Alive, close", "upgrade", "100-continue", "trailers", " x ", ""]),
        1 => "[ -~\t]{0,12}".prop_map(|s| s),
    ];
    let sep = pick(&[": ", ":", " : ", ":\t", ":  "]);
    (name, sep, value).prop_map(|(n, s, v)| format!("{n}{s}{v}"))
}

fn head() -> impl Strategy<Value = Vec<u8>> {
    let method = prop_oneof![6 => Just("GET".to_string()), 1 => pick(&["get", "HEAD", "POST", "GET ", "G\0T"])];
    let version = prop_oneof![6 => Just("HTTP/1.1".to_string()), 1 => pick(&["HTTP/1.0", "HTTP/1.2", "HTTP/2.0", "http/1.1"])];
    let eol = prop_oneof![8 => Just("\r\n".to_string()), 1 => pick(&["\n", "\r", "\r\r\n"])];
    let with_host = prop::bool::weighted(0.9);
    (
        method,
        target(),
        version,
        prop::collection::vec((header(), eol.clone()), 0..6),
        with_host,
        eol,
    )
        .prop_map(|(m, t, v, headers, with_host, end)| {
            let mut s = format!("{m} {t} {v}\r\n");
            if with_host {
                s.push_str("Host: x\r\n");
            }
            for (h, e) in headers {
                s.push_str(&h);
                s.push_str(&e);
            }
            s.push_str(&end);
            s.into_bytes()
        })
}

/// A mutation: insert, replace or delete a byte at a position (taken
/// modulo the length).
#[derive(Debug, Clone)]
enum Mutation {
    Insert(usize, u8),
    Replace(usize, u8),
    Delete(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), odd_byte()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<usize>(), odd_byte()).prop_map(|(i, b)| Mutation::Replace(i, b)),
        any::<usize>().prop_map(Mutation::Delete),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        if bytes.is_empty() {
            break;
        }
        match *m {
            Mutation::Insert(i, b) => bytes.insert(i % (bytes.len() + 1), b),
            Mutation::Replace(i, b) => {
                let i = i % bytes.len();
                bytes[i] = b;
            }
            Mutation::Delete(i) => {
                bytes.remove(i % bytes.len());
            }
        }
    }
    bytes
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4000)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn what_the_lean_parser_takes_hyper_takes_the_same(
        head in head(),
        mutations in prop::collection::vec(mutation(), 0..3),
    ) {
        thread_local! {
            static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
        }
        let bytes = mutate(head, &mutations);
        if let Some(lean) = lean_sees(&bytes) {
            let hyper = RT.with(|rt| hyper_sees(rt, &bytes));
            prop_assert_eq!(
                Some(&lean),
                hyper.as_ref(),
                "bytes: {:?}",
                String::from_utf8_lossy(&bytes)
            );
        }
    }
}

/// The grammar reaches the lean path often enough to mean something.
#[test]
fn the_grammar_produces_lean_heads() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = head();
    let lean = (0..1000)
        .filter(|_| lean_sees(&strategy.new_tree(&mut runner).unwrap().current()).is_some())
        .count();
    assert!(lean > 100, "only {lean} of 1000 generated heads were lean");
}
