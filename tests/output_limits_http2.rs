//! The write deadline of issue 16 (item 1) on HTTP/2: a client whose flow
//! control grants no window stalls its streams while the connection's
//! socket takes everything else, so no socket write ever blocks. Its
//! pending output is still held to `limits.write_timeout`: the client is
//! dropped with its connection, counted as `write_timeout`, and the output
//! budget it pinned is free again for everyone else's large answers.

mod common;

use common::h2::{frame, get_headers};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MIB: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_that_grants_no_window_is_dropped_at_the_write_deadline() {
    let gw = Gateway::builder()
        .config(&format!(
            "[http2]\ncleartext = true\n\
             [limits]\nwrite_timeout = \"2s\"\nmax_pending_output_bytes = {}\n\
             [longpoll]\nmax_answer_bytes = {MIB}\n",
            5 * MIB / 2
        ))
        .start()
        .await;
    let mut body = vec![b'x'; 60 * 1024];
    body[0] = b'"';
    *body.last_mut().unwrap() = b'"';
    for i in 0..40 {
        let (status, answer) = gw.publish("big", &body, "application/json").await;
        assert_eq!(status, 200, "publish {i}: {answer}");
    }
    let large = "/rt/poll/big?since=0&timeout=0";

    // Prior knowledge, SETTINGS_INITIAL_WINDOW_SIZE = 0, and two streams
    // asking for ~1 MiB answers each: together most of the budget.
    let mut h2 = TcpStream::connect(gw.public).await.unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    h2.write_all(&frame(0x4, 0, 0, &[0, 4, 0, 0, 0, 0]))
        .await
        .unwrap();
    for stream in [1u32, 3] {
        h2.write_all(&frame(0x1, 0x5, stream, &get_headers(large, &[])))
            .await
            .unwrap();
    }
    // Everything the gateway sends is read at once: no socket write of
    // its ever blocks.
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = h2.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    });
    eventually(T5, "both answers pending", || async {
        let pending = gw.metric("pollbridge_output_pending_bytes", &[]).await;
        pending.filter(|p| *p > 1.5 * MIB as f64).map(|_| ())
    })
    .await;
    // Meanwhile a large answer does not fit in what is left of the budget.
    assert_eq!(get(&gw.public_url(large)).await.status(), 503);

    // Past the write deadline the stalled client is dropped, with its
    // connection, and the budget is free again.
    gw.wait_metric(
        "pollbridge_slow_clients_closed_total",
        &[("transport", "longpoll"), ("reason", "write_timeout")],
        2.0,
    )
    .await;
    tokio::time::timeout(T10, reader)
        .await
        .expect("the gateway closed the stalled HTTP/2 connection")
        .unwrap();
    gw.wait_metric("pollbridge_output_pending_bytes", &[], 0.0)
        .await;
    let r = get(&gw.public_url(large)).await;
    assert_eq!(r.status(), 200, "{:.200}", r.text());
    gw.assert_still_serving().await;
}
