//! The `pollbridge` binary: configuration, logging, listeners, signals.

use std::process::ExitCode;

use pollbridge::{config::cli, Gateway, Listeners};

fn main() -> ExitCode {
    let invocation = match cli::parse(std::env::args_os()) {
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
        println!(
            "pollbridge: configuration OK (public {}, admin {}, bus {}, upstream {}, {} channel rule(s))",
            config.listen,
            config.admin_listen,
            pollbridge::bus::redis::redact(&config.bus),
            config.upstream.as_deref().unwrap_or("none"),
            config.channels.len()
        );
        return ExitCode::SUCCESS;
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let runtime = tokio::runtime::Builder::new_multi_thread()
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
    let gateway = match Gateway::new(config) {
        Ok(gateway) => gateway,
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
    // The one line on stdout: tools and tests read the bound ports from it.
    println!("pollbridge ready public={public} admin={admin}");
    pollbridge::run(gateway, listeners, shutdown_signal()).await;
    ExitCode::SUCCESS
}

/// SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
