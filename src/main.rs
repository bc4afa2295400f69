//! The `deployd` binary: parse the command line, install logging, run the subcommand.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use deployd::cli::bench::{run_bench, BenchArgs};
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
    /// Format of deployd's own log on stderr (`json`: one object per line, for log shippers).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "DEPLOYD_LOG_FORMAT"
    )]
    log_format: deployd::logging::LogFormat,
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
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "DEPLOYD_LISTEN")]
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
    let log = deployd::logging::init(cli.log_format);
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let code = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args).await.map(|()| 0),
            Command::Push(args) => run_push(args).await,
            Command::Follow(args) => run_follow(args).await,
            Command::Bench(args) => run_bench(args).await,
        }
    })?;
    drop(runtime);
    // `exit` runs no destructors: flush the queued log lines first.
    drop(log);
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
    println!("deployd listening on http://{}", server.addr);
    let token = server.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        token.cancel();
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
