//! The lean HTTP/1.1 path (long-poll and SSE GETs answered without hyper)
//! answers every odd or hostile request head exactly as hyper did before
//! it: the same statuses, the same number of answers, the connection
//! closed or kept the same way. The expected table was recorded by running
//! this file against the hyper-only build (`LEAN_RECORD=1` prints it).
//!
//! Also: keep-alive reuse, pipelining, `Connection: close`, a client that
//! leaves while its poll is held (the poll is released), 431 for a huge
//! head, a slow head cut off after `limits.header_read_timeout`, and the
//! answer's head byte for byte.

mod common;

use std::time::{Duration, Instant};

use common::upstream::echo_upstream;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The three kinds of target: a long-poll, an SSE stream, a proxied path.
const TARGETS: [(&str, &str); 3] = [
    ("poll", "/rt/poll/x?timeout=0"),
    ("sse", "/rt/sse/x"),
    ("proxy", "/api/x"),
];

/// Request heads, `{P}` standing for the target. Smuggling variants,
/// framing hyper refuses, and odd but valid heads.
const CASES: &[(&str, &str)] = &[
    ("plain", "GET {P} HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("cl_zero", "GET {P} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"),
    (
        "cl_te",
        "GET {P} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "te_cl",
        "GET {P} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    ),
    (
        "dup_cl_differ",
        "GET {P} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 5\r\n\r\nhello",
    ),
    (
        "dup_cl_same",
        "GET {P} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
    ),
    ("cl_list", "GET {P} HTTP/1.1\r\nHost: x\r\nContent-Length: 0, 0\r\n\r\n"),
    ("signed_cl_plus", "GET {P} HTTP/1.1\r\nHost: x\r\nContent-Length: +0\r\n\r\n"),
    ("signed_cl_minus", "GET {P} HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"),
    ("cl_hex", "GET {P} HTTP/1.1\r\nHost: x\r\nContent-Length: 0x0\r\n\r\n"),
    (
        "te_bad_chunk_size",
        "GET {P} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    ),
    (
        "te_chunk_size_overflow",
        "GET {P} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff1\r\nx\r\n0\r\n\r\n",
    ),
    (
        "te_huge_chunk_ext",
        "GET {P} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1;{EXT}\r\nx\r\n0\r\n\r\n",
    ),
    ("te_not_chunked", "GET {P} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n"),
    ("te_space", "GET {P} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n"),
    ("obs_fold", "GET {P} HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n"),
    ("obs_fold_te", "GET {P} HTTP/1.1\r\nHost: x\r\nX-A: a\r\n Transfer-Encoding: chunked\r\n\r\n"),
    ("bare_cr", "GET {P} HTTP/1.1\r\nHost: x\rX-A: b\r\n\r\n"),
    ("bare_lf", "GET {P} HTTP/1.1\nHost: x\n\n"),
    ("bare_lf_mixed", "GET {P} HTTP/1.1\r\nHost: x\nX-A: b\r\n\r\n"),
    ("nul_in_value", "GET {P} HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n"),
    ("nul_in_path", "GET {P}\0 HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("space_in_name", "GET {P} HTTP/1.1\r\nHost: x\r\nX A: b\r\n\r\n"),
    ("http10", "GET {P} HTTP/1.0\r\nHost: x\r\n\r\n"),
    ("http10_keepalive", "GET {P} HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n"),
    ("http09", "GET {P}\r\n\r\n"),
    ("http2_version", "GET {P} HTTP/2.0\r\nHost: x\r\n\r\n"),
    ("absolute_form", "GET http://x{P} HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("absolute_form_other_host", "GET http://y{P} HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("no_host", "GET {P} HTTP/1.1\r\n\r\n"),
    ("two_hosts", "GET {P} HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n"),
    ("lowercase_method", "get {P} HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("head_method", "HEAD {P} HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("post_method", "POST {P} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"),
    ("expect", "GET {P} HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n"),
    ("upgrade_h2c", "GET {P} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"),
    ("te_trailers", "GET {P} HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n\r\n"),
    ("connection_close", "GET {P} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    ("connection_odd", "GET {P} HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, x-foo\r\n\r\n"),
    ("leading_crlf", "\r\nGET {P} HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("double_space", "GET  {P} HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("tab_in_line", "GET\t{P} HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("high_bytes_value", "GET {P} HTTP/1.1\r\nHost: x\r\nX-A: caf\u{e9}\r\n\r\n"),
    (
        "pipelined_two",
        "GET {P} HTTP/1.1\r\nHost: x\r\n\r\nGET {P} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ),
    (
        "pipelined_smuggled_cl",
        "GET {P} HTTP/1.1\r\nHost: x\r\nContent-Length: 44\r\n\r\nGET /rt/poll/y?timeout=0 HTTP/1.1\r\nHost: x\r\n\r\n",
    ),
    (
        "pipelined_then_te_cl",
        "GET {P} HTTP/1.1\r\nHost: x\r\n\r\nGET {P} HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "pipelined_then_garbage",
        "GET {P} HTTP/1.1\r\nHost: x\r\n\r\nGARBAGE\r\n\r\n",
    ),
];

/// What a connection got: the statuses of the answers, in order, and
/// whether the gateway closed it (`-` for no answer).
async fn outcome(gw: &Gateway, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(gw.public).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let closed = loop {
        // An open stream (SSE, keep-alive) counts as open after a quiet second.
        match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut chunk)).await {
            Err(_) => break false,
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
        }
    };
    let text = String::from_utf8_lossy(&got);
    let statuses: Vec<&str> = text
        .match_indices("HTTP/1.")
        .filter_map(|(i, _)| text.get(i + 9..i + 12))
        .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
        .collect();
    let statuses = if statuses.is_empty() {
        "-".to_string()
    } else {
        statuses.join(",")
    };
    format!("{statuses} {}", if closed { "closed" } else { "open" })
}

fn expand(template: &str, target: &str) -> Vec<u8> {
    template
        .replace("{P}", target)
        .replace("{EXT}", &"e".repeat(20_000))
        .into_bytes()
}

/// Recorded on the hyper-only build (before the lean path).
const EXPECTED: &str = include_str!("lean_http.expected");

#[tokio::test]
async fn hostile_and_odd_heads_get_what_hyper_answered() {
    let up = echo_upstream().await;
    let gw = Gateway::start(&["--upstream", &up.url()]).await;
    let mut runs = Vec::new();
    for (target_name, target) in TARGETS {
        for (case, template) in CASES {
            let bytes = expand(template, target);
            let gw = &gw;
            runs.push(async move {
                let got = outcome(gw, &bytes).await;
                format!("{target_name} {case}: {got}")
            });
        }
    }
    let got = futures_util::future::join_all(runs).await.join("\n") + "\n";
    if std::env::var_os("LEAN_RECORD").is_some() {
        println!("{got}");
        return;
    }
    let mut differences = Vec::new();
    for (want, have) in EXPECTED.lines().zip(got.lines()) {
        if want != have {
            differences.push(format!("want {want:?}\n     have {have:?}"));
        }
    }
    assert_eq!(EXPECTED.lines().count(), got.lines().count(), "{got}");
    assert!(differences.is_empty(), "\n{}", differences.join("\n"));
}

/// Reads one response with a Content-Length body from `stream`.
async fn read_answer(stream: &mut TcpStream, buf: &mut Vec<u8>) -> (String, Vec<u8>) {
    let (raw, head_len) = read_length_answer(stream, buf, Duration::from_secs(5)).await;
    let head = String::from_utf8_lossy(&raw[..head_len]).into_owned();
    (head, raw[head_len..].to_vec())
}

#[tokio::test]
async fn ten_polls_on_one_connection_then_two_in_one_write() {
    let gw = Gateway::start(&[]).await;
    let id = gw.publish_json("ka", &serde_json::json!({"n": 1})).await;
    let mut stream = TcpStream::connect(gw.public).await.unwrap();
    let mut buf = Vec::new();
    let request = format!(
        "GET /rt/poll/ka?since={}&timeout=0 HTTP/1.1\r\nHost: x\r\n\r\n",
        id - 1
    );
    for i in 0..10 {
        stream.write_all(request.as_bytes()).await.unwrap();
        let (head, body) = read_answer(&mut stream, &mut buf).await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "poll {i}: {head}");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["messages"][0]["id"], id, "poll {i}: {v}");
    }
    let two = format!("{request}{request}");
    stream.write_all(two.as_bytes()).await.unwrap();
    for i in 0..2 {
        let (head, body) = read_answer(&mut stream, &mut buf).await;
        assert!(
            head.starts_with("HTTP/1.1 200 OK\r\n"),
            "pipelined {i}: {head}"
        );
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["messages"][0]["id"], id, "pipelined {i}: {v}");
    }
    // The connection is still good for a held poll answered by a publish.
    let held = format!("GET /rt/poll/ka?since={id}&timeout=20 HTTP/1.1\r\nHost: x\r\n\r\n");
    stream.write_all(held.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let next = gw.publish_json("ka", &serde_json::json!({"n": 2})).await;
    let (_, body) = read_answer(&mut stream, &mut buf).await;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["messages"][0]["id"], next, "{v}");
}

/// The head of a poll answer, byte for byte as hyper wrote it.
#[tokio::test]
async fn a_poll_answer_head_is_byte_for_byte_hypers() {
    let gw = Gateway::start(&[]).await;
    let mut stream = TcpStream::connect(gw.public).await.unwrap();
    let mut buf = Vec::new();
    stream
        .write_all(b"GET /rt/poll/bytes?timeout=0 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = read_answer(&mut stream, &mut buf).await;
    let want = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nvary: Accept-Encoding\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    assert_eq!(head, want);
    stream
        .write_all(b"GET /rt/poll/bytes?timeout=0 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = read_answer(&mut stream, &mut buf).await;
    let want = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nvary: Accept-Encoding\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    assert_eq!(head, want);
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut rest))
        .await
        .expect("closed after Connection: close")
        .unwrap_or(0);
    assert_eq!(n, 0);
}

#[tokio::test]
async fn a_client_leaving_its_held_poll_releases_it() {
    let gw = Gateway::start(&[]).await;
    let held = || gw.metric("pollbridge_connections", &[("transport", "longpoll")]);
    assert_eq!(held().await.unwrap_or(0.0), 0.0);
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut s = TcpStream::connect(gw.public).await.unwrap();
        s.write_all(b"GET /rt/poll/leave?timeout=60 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        clients.push(s);
    }
    eventually(Duration::from_secs(5), "five polls held", || async {
        (held().await == Some(5.0)).then_some(())
    })
    .await;
    drop(clients);
    eventually(Duration::from_secs(5), "held polls released", || async {
        (held().await == Some(0.0)).then_some(())
    })
    .await;
    gw.assert_still_serving().await;
}

#[tokio::test]
async fn a_huge_head_gets_431_and_a_slow_one_is_cut_off() {
    let gw = Gateway::start(&["--header-read-timeout", "1s"]).await;
    let mut huge = b"GET /rt/poll/x?timeout=0 HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 40_000));
    huge.extend_from_slice(b"\r\n\r\n");
    let mut s = TcpStream::connect(gw.public).await.unwrap();
    let _ = s.write_all(&huge).await;
    let got = common::security::read_until_closed(&mut s, Duration::from_secs(5))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 431 "), "{text}");
    assert!(text.contains("head_too_large"), "{text}");

    // A head that never ends, and an idle keep-alive connection after an
    // answer: both closed after the header read timeout, without answer.
    let started = Instant::now();
    let mut slow = TcpStream::connect(gw.public).await.unwrap();
    slow.write_all(b"GET /rt/sse/x HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut idle = TcpStream::connect(gw.public).await.unwrap();
    idle.write_all(b"GET /rt/poll/x?timeout=0 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let got = common::security::read_until_closed(&mut slow, Duration::from_secs(5))
        .await
        .expect("a slow head is cut off");
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    let got = common::security::read_until_closed(&mut idle, Duration::from_secs(5))
        .await
        .expect("an idle keep-alive connection is closed");
    assert!(
        String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200 OK"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}
