//! The `deployd` binary: parse the command line, install logging, run the subcommand.

use std::path::PathBuf;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};

use deployd::cli::apps::{run_apps, run_deployments, AppsArgs, DeploymentsArgs};
use deployd::cli::backup::{run_backup, BackupArgs};
use deployd::cli::bench::{run_bench, BenchArgs};
use deployd::cli::cancel::{run_cancel, CancelArgs};
use deployd::cli::check::{run_check, CheckArgs};
use deployd::cli::deploy::{run_deploy, DeployArgs};
use deployd::cli::follow::{run_follow, FollowArgs};
use deployd::cli::help;
use deployd::cli::migrate::{run_migrate, MigrateArgs};
use deployd::cli::push::{run_push, PushArgs};
use deployd::cli::rollback::{run_rollback, RollbackArgs};
use deployd::config::{Config, KeyFlags, Overrides};

/// `--version`: the crate version and the git commit it was built from (`build.rs`).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("DEPLOYD_GIT_COMMIT"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "deployd",
    version = VERSION,
    about = "Self-hosted deployments service, wire-compatible with Scalingo's deployments API",
    after_help = help::TOP
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
    #[command(after_help = help::SERVE)]
    Serve(ServeArgs),
    /// Run a build command and report it as a deployment (an external pusher).
    #[command(after_help = help::PUSH)]
    Push(PushArgs),
    /// Print a deployment's output live; the exit code says how it ended.
    #[command(after_help = help::FOLLOW)]
    Follow(FollowArgs),
    /// Load-test a running server over its real protocols (ingest, fanout, read).
    #[command(after_help = help::BENCH)]
    Bench(BenchArgs),
    /// Cancel a deployment (default: the app's running one); the exit code says what happened.
    Cancel(CancelArgs),
    /// Roll an app back to an earlier deployment: a new deployment starting its kept image.
    #[command(after_help = help::ROLLBACK)]
    Rollback(RollbackArgs),
    /// Check a stopped server's data directory (records, index, log files); `--repair` fixes
    /// what can be fixed. Exit 0: clean, 1: problems remain, 2: could not check.
    Check(CheckArgs),
    /// Download a consistent backup (admin token) into an empty directory that `serve --data`
    /// starts from. Exit 0: complete, 1: not written or not a backup, 2: usage, auth or HTTP
    /// error, 3: the download broke off (the directory is emptied again on any failure).
    Backup(BackupArgs),
    /// Deploy a directory (packed and uploaded) or an archive URL, and follow it to its end.
    #[command(after_help = help::DEPLOY)]
    Deploy(DeployArgs),
    /// List your apps.
    #[command(after_help = help::APPS)]
    Apps(AppsArgs),
    /// List an app's deployments, newest first.
    #[command(after_help = help::DEPLOYMENTS)]
    Deployments(DeploymentsArgs),
    /// Copy a stopped single node's data directory into a new cluster (`--store nats://…`).
    #[command(after_help = help::MIGRATE)]
    Migrate(MigrateArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(after_help = help::COMPLETIONS)]
    Completions(CompletionsArgs),
    /// Print the man page (roff), or write one page per subcommand into a directory.
    #[command(after_help = help::MAN)]
    Man(ManArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML configuration file.
    #[arg(long = "config", env = "DEPLOYD_CONFIG")]
    config_file: Option<PathBuf>,
    /// Every key of the file, as `--section-key` / `DEPLOYD_SECTION_KEY`.
    #[command(flatten)]
    keys: KeyFlags,
}

#[derive(clap::Args)]
struct CompletionsArgs {
    /// The shell to complete for.
    shell: clap_complete::Shell,
}

#[derive(clap::Args)]
struct ManArgs {
    /// Write deployd.1 and deployd-<subcommand>.1 into this directory instead of printing
    /// deployd(1).
    #[arg(long)]
    out_dir: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match &cli.command {
        Command::Completions(args) => {
            let mut command = Cli::command();
            clap_complete::generate(args.shell, &mut command, "deployd", &mut std::io::stdout());
            return Ok(());
        }
        Command::Man(args) => return man(args),
        _ => {}
    }
    let log = deployd::logging::init(cli.log_format);
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let code = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Push(args) => run_push(args).await,
            Command::Follow(args) => run_follow(args).await,
            Command::Bench(args) => run_bench(args).await,
            Command::Cancel(args) => run_cancel(args).await,
            Command::Rollback(args) => run_rollback(args).await,
            Command::Check(args) => Ok(tokio::task::block_in_place(|| run_check(args))),
            Command::Backup(args) => run_backup(args).await,
            Command::Deploy(args) => run_deploy(args).await,
            Command::Apps(args) => run_apps(args).await,
            Command::Deployments(args) => run_deployments(args).await,
            Command::Migrate(args) => run_migrate(args).await,
            Command::Completions(_) | Command::Man(_) => Ok(0),
        }
    })?;
    drop(runtime);
    // `exit` runs no destructors: flush the queued log lines first.
    drop(log);
    std::process::exit(code);
}

/// `deployd serve`'s exit code when a cluster setting is refused (before anything is contacted).
const EXIT_CLUSTER_CONFIG: i32 = 2;

async fn serve(args: ServeArgs) -> anyhow::Result<i32> {
    // Registered before anything else: a SIGTERM that arrives once the server says it listens
    // (systemd stopping it at once, a test) must shut it down gracefully, never take the
    // signal's default action.
    let signals = ShutdownSignals::register()?;
    let config = Config::load(
        Overrides {
            config_file: args.config_file,
            admin_token: std::env::var("DEPLOYD_ADMIN_TOKEN")
                .ok()
                .filter(|t| !t.is_empty()),
            ..Overrides::default()
        },
        &args.keys,
    );
    let config = match config {
        Ok(config) => config,
        Err(error) if Config::is_cluster_error(&error) => {
            eprintln!("deployd: {error}");
            return Ok(EXIT_CLUSTER_CONFIG);
        }
        Err(error) => return Err(error.into()),
    };
    if config.cluster.is_some() {
        return Ok(deployd::cluster::node::run(config, signals.wait()).await);
    }
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
        signals.wait().await;
        // Cancel before logging: nothing about the log may stand between a signal and shutdown.
        token.cancel();
        tracing::info!("shutting down");
    });
    server.wait().await;
    Ok(0)
}

/// SIGTERM and SIGINT, registered at once (tokio's `ctrl_c()` registers only when first polled).
struct ShutdownSignals {
    term: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn register() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("registering SIGTERM")?,
            interrupt: signal(SignalKind::interrupt()).context("registering SIGINT")?,
        })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}

/// `deployd man`: the page(s) rendered from the same clap definitions as `--help`.
fn man(args: &ManArgs) -> anyhow::Result<()> {
    let command = Cli::command();
    let Some(dir) = &args.out_dir else {
        clap_mangen::Man::new(command).render(&mut std::io::stdout())?;
        return Ok(());
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut pages = vec![("deployd.1".to_owned(), command.clone())];
    for sub in command.get_subcommands() {
        let name = format!("deployd-{}", sub.get_name());
        pages.push((format!("{name}.1"), sub.clone().name(name)));
    }
    for (file, page) in pages {
        let path = dir.join(&file);
        let mut out =
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        clap_mangen::Man::new(page).render(&mut out)?;
        println!("{}", path.display());
    }
    Ok(())
}
