//! systemd `Type=notify` (deploy/systemd/pollbridge.service): the real
//! binary, started with `NOTIFY_SOCKET` pointing at a Unix datagram socket
//! this test made, says `READY=1` only once both listeners accept
//! connections, and `STOPPING=1` on SIGTERM, then exits 0.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Kills the gateway if the test fails half-way, and removes the socket.
struct Guard {
    child: Child,
    dir: PathBuf,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The next notification, as its `KEY=VALUE` lines.
fn next_notification(socket: &UnixDatagram) -> Vec<String> {
    let mut buf = [0u8; 4096];
    let n = socket
        .recv(&mut buf)
        .expect("a notification on NOTIFY_SOCKET within the timeout");
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .map(str::to_string)
        .collect()
}

fn addr_after(line: &str, key: &str) -> SocketAddr {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
        .parse()
        .unwrap_or_else(|e| panic!("bad address after {key} in {line:?}: {e}"))
}

#[test]
fn ready_only_when_both_listeners_accept_then_stopping_and_exit_0_on_sigterm() {
    let dir = std::env::temp_dir().join(format!("pollbridge-sd-notify-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket_path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();

    let child = Command::new(env!("CARGO_BIN_EXE_pollbridge"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        // Nothing from the test runner's environment (POLLBRIDGE_*) applies.
        .env_clear()
        .env("NOTIFY_SOCKET", &socket_path)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start pollbridge");
    let mut guard = Guard { child, dir };

    // The ready line on stdout names the bound ports. It is printed before
    // READY=1 is sent, so it is there by the time READY arrives; read it on
    // a thread so that a missing line fails the test instead of hanging it.
    let stdout = guard.child.stdout.take().unwrap();
    let (line_tx, line_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = line_tx.send(line);
        // Keep draining so the gateway never blocks on a full pipe.
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
    });

    let started = Instant::now();
    let first = next_notification(&socket);
    assert!(
        first.iter().any(|l| l == "READY=1"),
        "the first notification must be READY=1, got {first:?}"
    );

    // Right now, as READY arrives: both listeners must accept.
    let line = line_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the ready line on stdout");
    assert!(line.starts_with("pollbridge ready "), "{line:?}");
    let public = addr_after(&line, "public=");
    let admin = addr_after(&line, "admin=");
    for (name, addr) in [("public", public), ("admin", admin)] {
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).unwrap_or_else(|e| {
            panic!("READY=1 was sent but the {name} listener {addr} refuses connections: {e}")
        });
    }
    // And the admin listener answers: /healthz is 200.
    let mut conn = TcpStream::connect_timeout(&admin, Duration::from_secs(1)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "/healthz answered {answer:?}"
    );
    eprintln!("READY=1 after {:?}", started.elapsed());

    // SIGTERM: STOPPING=1, then a clean exit.
    let pid = guard.child.id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -TERM {pid} failed");
    let next = next_notification(&socket);
    assert!(
        next.iter().any(|l| l == "STOPPING=1"),
        "after SIGTERM the next notification must be STOPPING=1, got {next:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = guard.child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "pollbridge still running 20 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(exit.code(), Some(0), "exit after SIGTERM: {exit:?}");
}

/// Starts the gateway, waits for READY=1 and sends `signal` at once.
/// Returns how the process ended, or `None` if it was still running 20 s
/// later (it is killed then).
fn signal_right_after_ready(signal: &str, settle: Duration) -> Option<std::process::ExitStatus> {
    let dir = std::env::temp_dir().join(format!(
        "pollbridge-sd-early-{}-{signal}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket_path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_pollbridge"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .env_clear()
        .env("NOTIFY_SOCKET", &socket_path)
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut guard = Guard { child, dir };
    assert!(next_notification(&socket).iter().any(|l| l == "READY=1"));
    let pid = guard.child.id().to_string();
    Command::new("kill")
        .args([&format!("-{signal}"), &pid])
        .status()
        .unwrap();
    let deadline = Instant::now() + settle;
    while Instant::now() < deadline {
        if let Some(exit) = guard.child.try_wait().unwrap() {
            return Some(exit);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

/// A supervisor may signal the moment it hears READY=1 (`systemctl stop` or
/// `reload` right after start, a pod deleted while starting). The SIGTERM
/// and SIGHUP handlers must already be installed then: when they were set
/// up after READY=1, such a signal hit the default action and the process
/// died by it (no drain, no exit 0) in about a third (SIGTERM) to three
/// quarters (SIGHUP) of starts. Ten starts make a regression show.
#[test]
fn signals_sent_right_after_ready_are_handled() {
    for _ in 0..10 {
        let exit = signal_right_after_ready("TERM", Duration::from_secs(20));
        let exit = exit.expect("still running 20 s after SIGTERM");
        assert_eq!(
            exit.code(),
            Some(0),
            "SIGTERM right after READY=1: {exit:?}"
        );
        let exit = signal_right_after_ready("HUP", Duration::from_millis(200));
        assert!(
            exit.is_none(),
            "SIGHUP right after READY=1 ended the gateway: {exit:?}"
        );
    }
}
