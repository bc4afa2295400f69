//! The `deployd` binary: parse the command line, install logging, run the subcommand.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use deployd::cli::bench::{run_bench, BenchArgs};
use deployd::cli::cancel::{run_cancel, CancelArgs};
use deployd::cli::check::{run_check, CheckArgs};
use deployd::cli::follow::{run_follow, FollowArgs};
use deployd::cli::push::{run_push, PushArgs};
use deployd::config::{Config, Overrides};

#[derive(Parser)]
#[command(
    name = "deployd",
    version,
    about = "Self-hosted deployments service, wire-compatible with Scalingo's deployments API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Run a build command and report it as a deployment (an external pusher).
    Push(PushArgs),
    /// Print a deployment's output live; the exit code says how it ended.
    Follow(FollowArgs),
    /// Load-test a running server over its real protocols (ingest, fanout, read).
    Bench(BenchArgs),
    /// Cancel a deployment (default: the app's running one); the exit code says what happened.
    Cancel(CancelArgs),
    /// Check a stopped server's data directory (records, index, log files); `--repair` fixes
    /// what can be fixed. Exit 0: clean, 1: problems remain, 2: could not check.
    Check(CheckArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on (HOST:PORT; a host name is resolved, e.g. localhost:8080).
    #[arg(long, env = "DEPLOYD_LISTEN", value_parser = deployd::listener::resolve_listen)]
    listen: Option<SocketAddr>,
    /// Data directory (store, sources, images, admin token).
    #[arg(long = "data", env = "DEPLOYD_DATA")]
    data_dir: Option<PathBuf>,
    /// Base URL clients reach this server at (default http://<listen>).
    #[arg(long, env = "DEPLOYD_PUBLIC_URL")]
    public_url: Option<String>,
    /// TOML configuration file.
    #[arg(long = "config", env = "DEPLOYD_CONFIG")]
    config_file: Option<PathBuf>,
    /// Let the executor fetch sources from loopback and private addresses.
    #[arg(long, env = "DEPLOYD_ALLOW_PRIVATE_SOURCES")]
    allow_private_sources: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(|| LossyStderr)
        // The subscriber would report a failed write with `eprint!`, which panics when stderr
        // is gone, taking the logging task (the signal handler, a connection) down with it.
        .log_internal_errors(false)
        .init();
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let code = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args).await.map(|()| 0),
            Command::Push(args) => run_push(args).await,
            Command::Follow(args) => run_follow(args).await,
            Command::Bench(args) => run_bench(args).await,
            Command::Cancel(args) => run_cancel(args).await,
            Command::Check(args) => Ok(tokio::task::block_in_place(|| run_check(args))),
        }
    })?;
    drop(runtime);
    std::process::exit(code);
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::load(Overrides {
        listen: args.listen,
        data_dir: args.data_dir,
        public_url: args.public_url,
        config_file: args.config_file,
        admin_token: std::env::var("DEPLOYD_ADMIN_TOKEN")
            .ok()
            .filter(|t| !t.is_empty()),
        allow_private_sources: args.allow_private_sources.then_some(true),
    })?;
    let server = deployd::server::start(config).await?;
    // Tests and scripts read this line to learn the port when listening on port 0.
    // Written, not `println!`: a closed stdout must not panic the server.
    {
        use std::io::Write;
        let mut stdout = std::io::stdout();
        let _ = writeln!(stdout, "deployd listening on http://{}", server.addr);
        let _ = stdout.flush();
    }
    let token = server.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        // Cancel before logging: nothing about the log may stand between a signal and shutdown.
        token.cancel();
        tracing::info!("shutting down");
    });
    server.wait().await;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Stderr for the log, dropping what cannot be written: with stderr a closed pipe (a dead log
/// shipper, `serve 2>&1 | tee` after `tee` died) logging must never fail or stop anything.
struct LossyStderr;

impl std::io::Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}
