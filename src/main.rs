//! The `pollbridge` binary: configuration, logging, listeners, signals.

use std::process::ExitCode;

use pollbridge::{config::cli, App, Gateway, Listeners};

// jemalloc keeps per-connection memory smallest of the allocators measured
// (see API-NOTES §8 and BENCHMARKS.md) and returns freed memory steadily.
// The `system-alloc` feature switches it off, for heap profilers (massif,
// heaptrack) that only see the system allocator.
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    // `pollbridge healthcheck [--admin ADDR]`: for container HEALTHCHECKs,
    // which have no shell or curl.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "healthcheck") {
        return healthcheck(&args[2..]);
    }
    // Config checks syntax only; the files it names are loaded by the
    // gateway's own loaders, so their problems are reported with the rest.
    let invocation = match cli::parse(args, Gateway::load_problems) {
        Ok(invocation) => invocation,
        Err(problems) => {
            for problem in problems {
                eprintln!("pollbridge: {problem}");
            }
            return ExitCode::from(2);
        }
    };
    let config = invocation.config;
    if invocation.check_only {
        println!("{}", cli::check_summary(&config));
        return ExitCode::SUCCESS;
    }
    // The redis crate warns on every failed attempt while a server is
    // down; the bus logs the outage itself, once.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{},redis=error", config.log_level))
    });
    {
        use std::io::IsTerminal;
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .init();
    }

    if std::env::var_os("POLLBRIDGE_BENCH_NO_WIRE_METERING").is_some_and(|v| v == "1") {
        tracing::warn!("wire byte counting is OFF (benchmark switch); wire_bytes_total stays 0");
        pollbridge::net::meter::disable_counting_for_benchmarks();
    }
    // One worker per core by default; each worker also runs one fan-out
    // shard (see `Gateway::new`).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.worker_threads())
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(serve(config))
}

async fn serve(config: pollbridge::Config) -> ExitCode {
    let bind = |addr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))
    };
    let listeners = match (bind(config.listen).await, bind(config.admin_listen).await) {
        (Ok(public), Ok(admin)) => Listeners { public, admin },
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("pollbridge: {e}");
            return ExitCode::from(1);
        }
    };
    let app = match App::new(config) {
        Ok(app) => app,
        Err(e) => {
            eprintln!("pollbridge: {e}");
            return ExitCode::from(2);
        }
    };
    let (public, admin) = (
        listeners.public.local_addr().expect("bound"),
        listeners.admin.local_addr().expect("bound"),
    );
    tracing::info!(%public, %admin, "pollbridge listening");
    // Handlers are installed before anyone can learn we're up: a SIGHUP
    // (systemd ExecReload, a certificate-renewal hook) sent right after the
    // ready line must not kill the process.
    let hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(hangup) => hangup,
        Err(e) => {
            eprintln!("pollbridge: cannot install the SIGHUP handler: {e}");
            return ExitCode::from(1);
        }
    };
    let shutdown_signals = match ShutdownSignals::install() {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("pollbridge: cannot install the SIGTERM handler: {e}");
            return ExitCode::from(1);
        }
    };
    // The one line on stdout: tools and tests read the bound ports from it.
    println!("pollbridge ready public={public} admin={admin}");
    // systemd Type=notify: ready only now that both listeners accept.
    // A no-op without NOTIFY_SOCKET.
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    tokio::spawn(reload_on_sighup(app.gw.clone(), hangup));
    let shutdown = async {
        shutdown_signals.wait().await;
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    };
    pollbridge::run(app, listeners, shutdown).await;
    ExitCode::SUCCESS
}

/// GETs `/healthz` on the admin listener: exit 0 when it answers 200.
fn healthcheck(args: &[std::ffi::OsString]) -> ExitCode {
    use std::io::{Read, Write};
    use std::time::Duration;
    let mut admin =
        std::env::var("POLLBRIDGE_ADMIN_LISTEN").unwrap_or_else(|_| "127.0.0.1:9090".into());
    let mut rest = args.iter().map(|a| a.to_string_lossy().into_owned());
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--admin" => match rest.next() {
                Some(addr) => admin = addr,
                None => {
                    eprintln!("pollbridge healthcheck: --admin needs an address");
                    return ExitCode::from(2);
                }
            },
            other => {
                eprintln!("pollbridge healthcheck: unknown argument {other:?}; usage: pollbridge healthcheck [--admin ADDR]");
                return ExitCode::from(2);
            }
        }
    }
    let check = || -> Result<bool, String> {
        let addr: std::net::SocketAddr = admin
            .parse()
            .map_err(|e| format!("bad address {admin:?}: {e}"))?;
        let timeout = Duration::from_secs(3);
        let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        stream
            .set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        stream
            .set_write_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        stream
            .write_all(
                format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .map_err(|e| e.to_string())?;
        let mut head = [0u8; 12];
        stream
            .read_exact(&mut head)
            .map_err(|e| format!("no answer from {addr}: {e}"))?;
        Ok(&head[8..12] == b" 200")
    };
    match check() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("pollbridge healthcheck: {admin} is not healthy");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("pollbridge healthcheck: {e}");
            ExitCode::from(1)
        }
    }
}

/// SIGHUP re-reads the TLS certificate and key (connections stay open).
async fn reload_on_sighup(gateway: std::sync::Arc<Gateway>, mut hup: tokio::signal::unix::Signal) {
    while hup.recv().await.is_some() {
        match &gateway.tls {
            Some(tls) => match tls.reload() {
                Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
                Err(e) => {
                    tracing::warn!(error = %e, "SIGHUP: TLS reload failed; keeping the old certificate")
                }
            },
            None => tracing::info!("SIGHUP: nothing to reload (no TLS configured)"),
        }
    }
}

/// SIGTERM or SIGINT, listened for from the moment they are installed.
struct ShutdownSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn install() -> std::io::Result<ShutdownSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(ShutdownSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
