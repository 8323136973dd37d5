//! `proton-emulator`: a local AWS Proton (environment account connections only) on one port.
//!
//! The first line on stdout is `proton-emulator listening on http://HOST:PORT`, so scripts and
//! tests that pass `--listen 127.0.0.1:0` can find the port; logs go to stderr.
//!
//! The same port serves STS GetCallerIdentity and AssumeRole: point `AWS_ENDPOINT_URL_STS` at it
//! too.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use proton_emulator::RunningEmulator;
use proton_emulator::cli::Args;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();

    let accounts = match args.account_map() {
        Ok(accounts) => accounts,
        Err(err) => {
            // Usage errors look like clap's own: on stderr, exit status 2.
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    let emulator = match RunningEmulator::start(args.listen, args.config(accounts)).await {
        Ok(emulator) => emulator,
        Err(err) => {
            tracing::error!(listen = %args.listen, %err, "cannot start the emulator");
            return ExitCode::FAILURE;
        }
    };
    // Scripts wait for this exact line, so it goes out before anything else on stdout.
    let mut stdout = std::io::stdout().lock();
    let announced = writeln!(stdout, "proton-emulator listening on {}", emulator.url())
        .and_then(|()| stdout.flush());
    drop(stdout);
    if let Err(err) = announced {
        tracing::warn!(%err, "cannot write the listening line to stdout");
    }

    if let Err(err) = shutdown_signal().await {
        tracing::error!(%err, "cannot wait for a shutdown signal");
        emulator.shutdown().await;
        return ExitCode::FAILURE;
    }
    tracing::info!("shutting down");
    emulator.shutdown().await;
    ExitCode::SUCCESS
}

#[cfg(unix)]
async fn shutdown_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result,
        _ = terminate.recv() => Ok(()),
    }
}

#[cfg(not(unix))]
async fn shutdown_signal() -> std::io::Result<()> {
    tokio::signal::ctrl_c().await
}
