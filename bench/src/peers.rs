//! Peers measured beside the gateway, in the same runs and on the same
//! core (`--pin`): nginx as a reverse proxy (the `proxy` scenario's
//! `nginx` phase: `proxy_pass` with upstream `keepalive`, to the same
//! upstream) and nginx with the Nchan module as a long-poll server
//! (`lp-fanout` and `held-polls`: the `nchan` phase).
//!
//! Each is an nginx the bench starts itself: a generated config in a temp
//! directory (`$TMPDIR/pollbridge-bench-PID-nginx-…`, pid, logs and temp
//! paths inside it), `-p DIR -c DIR/nginx.conf`, `daemon off` and
//! `master_process off` (one process doing everything, so its CPU is that
//! of one worker), a free loopback port; killed and its directory removed
//! when the phase ends (and with the bench, by `PR_SET_PDEATHSIG`). A
//! missing nginx or module skips the phase, saying why
//! (`scripts/peers.sh` installs both).

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::proc::Child;
use crate::target::{Result, Target, SERVER_CORE};
use crate::Opts;

/// What the nginx is for.
pub enum Peer {
    /// `proxy_pass` to `upstream` over kept-alive connections.
    Proxy { upstream: SocketAddr },
    /// Nchan: long-poll subscribers at `/sub/{channel}`, the publisher at
    /// `/pub/{channel}`, `nchan_stub_status` at [`NCHAN_STATUS`].
    Nchan,
}

/// Where Debian's `libnginx-mod-nchan` puts the module.
const NCHAN_MODULE: &str = "/usr/lib/nginx/modules/ngx_nchan_module.so";
/// The Nchan peer's status page (`subscribers: N`, …).
pub const NCHAN_STATUS: &str = "/nchan_status";
const START: Duration = Duration::from_secs(10);

/// The nginx binary, or why there is none.
fn nginx_bin() -> std::result::Result<PathBuf, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|dir| dir.join("nginx"))
        .find(|p| p.is_file())
        .ok_or_else(|| "nginx is not installed (scripts/peers.sh installs it)".to_string())
}

/// The phase's label.
pub fn label(peer: &Peer) -> &'static str {
    match peer {
        Peer::Proxy { .. } => "nginx",
        Peer::Nchan => "nchan",
    }
}

/// Why the peer cannot run here, if it cannot.
pub fn unavailable(peer: &Peer) -> Option<String> {
    if let Err(why) = nginx_bin() {
        return Some(why);
    }
    match peer {
        Peer::Nchan if !Path::new(NCHAN_MODULE).is_file() => Some(format!(
            "the Nchan module is not installed ({NCHAN_MODULE}: libnginx-mod-nchan; scripts/peers.sh installs it)"
        )),
        _ => None,
    }
}

/// The generated `nginx.conf`.
fn config(opts: &Opts, peer: &Peer, dir: &Path, port: u16) -> String {
    let d = dir.display();
    let conns = (opts.subscribers + opts.proxy_conns) * 2 + 1024;
    let (module, body) = match peer {
        Peer::Proxy { upstream } => (
            String::new(),
            format!(
                "    upstream bench_upstream {{\n\
                 \x20       server {upstream};\n\
                 \x20       keepalive {keep};\n\
                 \x20       keepalive_requests 1000000;\n\
                 \x20   }}\n\
                 \x20   server {{\n\
                 \x20       listen 127.0.0.1:{port};\n\
                 \x20       location / {{\n\
                 \x20           proxy_pass http://bench_upstream;\n\
                 \x20           proxy_http_version 1.1;\n\
                 \x20           proxy_set_header Connection \"\";\n\
                 \x20           proxy_set_header Host $http_host;\n\
                 \x20           proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
                 \x20           proxy_set_header X-Forwarded-Proto $scheme;\n\
                 \x20           proxy_set_header X-Forwarded-Host $http_host;\n\
                 \x20           proxy_set_header Forwarded \"for=$remote_addr;proto=$scheme;host=\\\"$http_host\\\"\";\n\
                 \x20           proxy_set_header Via \"1.1 nginx\";\n\
                 \x20           proxy_buffering on;\n\
                 \x20       }}\n\
                 \x20   }}\n",
                keep = opts.proxy_conns.max(1),
            ),
        ),
        Peer::Nchan => (
            format!("load_module {NCHAN_MODULE};\n"),
            format!(
                "    nchan_message_buffer_length {buffer};\n\
                 \x20   nchan_message_timeout 1h;\n\
                 \x20   server {{\n\
                 \x20       listen 127.0.0.1:{port};\n\
                 \x20       location ~ ^/sub/(.+)$ {{\n\
                 \x20           nchan_subscriber longpoll;\n\
                 \x20           nchan_channel_id $1;\n\
                 \x20       }}\n\
                 \x20       location ~ ^/pub/(.+)$ {{\n\
                 \x20           nchan_publisher;\n\
                 \x20           nchan_channel_id $1;\n\
                 \x20       }}\n\
                 \x20       location = {NCHAN_STATUS} {{\n\
                 \x20           nchan_stub_status;\n\
                 \x20       }}\n\
                 \x20   }}\n",
                buffer = opts.messages + 100,
            ),
        ),
    };
    format!(
        "{module}daemon off;\n\
         master_process off;\n\
         worker_processes 1;\n\
         worker_rlimit_nofile {conns};\n\
         pid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\n\
         events {{\n\
         \x20   worker_connections {conns};\n\
         }}\n\
         http {{\n\
         \x20   access_log off;\n\
         \x20   keepalive_requests 1000000;\n\
         \x20   keepalive_timeout 300s;\n\
         \x20   client_body_temp_path {d}/client_body;\n\
         \x20   proxy_temp_path {d}/proxy;\n\
         \x20   fastcgi_temp_path {d}/fastcgi;\n\
         \x20   uwsgi_temp_path {d}/uwsgi;\n\
         \x20   scgi_temp_path {d}/scgi;\n\
         {body}\
         }}\n"
    )
}

/// Starts the peer on a free loopback port (up to 5 attempts, should the
/// port be taken meanwhile), waiting (≤ 10 s) until it accepts.
pub fn start(opts: &Opts, peer: &Peer, tag: &str) -> Result<Target> {
    crate::target::remove_stale_dirs();
    let bin = nginx_bin()?;
    let mut last = String::new();
    for attempt in 0..5 {
        let (port, dir) = crate::target::fresh_port_and_dir("nginx", tag, attempt)?;
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, config(opts, peer, &dir, port))?;
        let log = dir.join("error.log");
        let args: Vec<String> = vec![
            "-p".into(),
            dir.display().to_string(),
            "-c".into(),
            conf.display().to_string(),
            "-e".into(),
            log.display().to_string(),
        ];
        let stderr = std::fs::File::create(dir.join("stderr.log"))?;
        let mut child = Child::spawn(
            label(peer),
            &bin.to_string_lossy(),
            &args,
            opts.pin.then_some(SERVER_CORE),
            Stdio::from(stderr),
        )?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        match wait_accepting(&mut child, addr) {
            Ok(()) => return Ok(Target::peer(label(peer), child, addr, log, dir)),
            Err(why) => {
                child.stop(Duration::from_secs(2));
                let tail = |name: &str| {
                    let text = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
                    let start = text.len().saturating_sub(600);
                    text.get(start..).unwrap_or_default().trim().to_string()
                };
                last = format!("{why}: {} {}", tail("stderr.log"), tail("error.log"));
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
    }
    Err(format!("could not start {}: {last}", label(peer)).into())
}

fn wait_accepting(child: &mut Child, addr: SocketAddr) -> std::result::Result<(), String> {
    let deadline = Instant::now() + START;
    for _ in 0..10_000 {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if !child.alive() {
            return Err("nginx exited".into());
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("nginx did not accept on {addr} within {START:?}"))
}

/// `subscribers: N` from Nchan's status page.
pub fn nchan_subscribers(status: &[u8]) -> Option<u64> {
    std::str::from_utf8(status)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("subscribers:"))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nchan_status() {
        let status = b"total published messages: 3\nstored messages: 3\nshared memory used: 16K\nshared memory limit: 131072K\nchannels: 1\nsubscribers: 1000\nredis pending commands: 0\n";
        assert_eq!(nchan_subscribers(status), Some(1000));
        assert_eq!(nchan_subscribers(b"nothing"), None);
    }
}
