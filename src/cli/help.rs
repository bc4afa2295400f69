//! The `--help` epilogues: examples and exit codes of each subcommand, shown after the
//! generated option list (and in the man pages, which render the same definitions).
//!
//! Text only; the codes themselves are the constants of [`crate::cli`].

/// `deployd --help`.
pub const TOP: &str = "\
Examples:
  deployd serve --data /var/lib/deployd --listen 0.0.0.0:8080
  deployd deploy --url http://127.0.0.1:8080 --token \"$TOKEN\" --app web ./web
  deployd completions bash > /etc/bash_completion.d/deployd
  deployd man --out-dir /usr/local/share/man/man1

Client commands read --url and --token from DEPLOYD_URL and DEPLOYD_TOKEN too.";

/// `deployd serve --help`.
pub const SERVE: &str = "\
Every key of the TOML file is also a flag --section-key and a variable DEPLOYD_SECTION_KEY
(e.g. [stream] ping_interval_secs: --stream-ping-interval-secs, DEPLOYD_STREAM_PING_INTERVAL_SECS).
Flags win over variables, which win over the file. For every limit, 0 means unlimited.

Examples:
  deployd serve
  deployd serve --config /etc/deployd.toml --listen 0.0.0.0:8080
  DEPLOYD_EXECUTOR_START_TIMEOUT_SECS=120 deployd serve --data-dir /var/lib/deployd

Exit codes:
  0  stopped by SIGINT/SIGTERM after a graceful shutdown
  1  could not start (bad configuration, data directory, address in use)
  2  usage error";

/// The exit codes shared by `push`, `follow` and `deploy`.
macro_rules! deployment_exit_codes {
    () => {
        "Exit codes:
  0    the deployment ended in success
  1    it ended in another terminal status (printed), or the server refused a frame
  2    usage, authentication, HTTP or connection-refused error: nothing was followed
  3    the connection was lost before the deployment finished
  130  interrupted (Ctrl-C)"
    };
}

/// `deployd push --help`.
pub const PUSH: &str = concat!(
    "Examples:
  deployd push --url http://127.0.0.1:8080 --token \"$TOKEN\" --app web --git-ref v1 -- make build
  DEPLOYD_URL=http://deployd:8080 DEPLOYD_TOKEN=… deployd push --app web -- ./ci/build.sh

",
    deployment_exit_codes!(),
    " (push marks the deployment aborted first when it can)"
);

/// `deployd follow --help`.
pub const FOLLOW: &str = concat!(
    "Examples:
  deployd follow --url http://127.0.0.1:8080 --token \"$TOKEN\" --app web
  deployd follow --app web --deployment 0190f6c3-…   # with DEPLOYD_URL / DEPLOYD_TOKEN set

",
    deployment_exit_codes!()
);

/// `deployd deploy --help`.
pub const DEPLOY: &str = concat!(
    "A directory is packed into a tar.gz with one root folder named after it, leaving out .git and
what .deploydignore files exclude (gitignore syntax, in any directory), uploaded through
POST /v1/sources, and deployed. A .tar.gz file is uploaded as it is; an http(s) URL is deployed
directly. The deployment is then followed like `deployd follow`.

Examples:
  deployd deploy --url http://127.0.0.1:8080 --token \"$TOKEN\" --app web .
  deployd deploy --app web --git-ref v2 ./build/web.tar.gz
  deployd deploy --app web --no-follow https://example.com/web-v2.tar.gz

",
    deployment_exit_codes!(),
    "
  (--no-follow: 0 once the deployment is created, its id on stdout; 2 otherwise)"
);

/// `deployd bench --help`.
pub const BENCH: &str = "\
Examples:
  deployd bench --url http://127.0.0.1:8080 --token \"$TOKEN\" ingest
  deployd bench --url http://127.0.0.1:8080 --token \"$TOKEN\" --json fanout
  taskset -c 0 deployd bench fanout --subscriber-prefix 'taskset -c 1'
  deployd bench compare            # starts its own deployd and redis-server

Exit codes:
  0  the run finished (fanout, catchup: every subscriber got every line once, in order)
  1  fanout, catchup or compare saw violations (printed)
  2  usage, connection or protocol error (compare: also redis-server not on PATH)";

/// `deployd apps --help`.
pub const APPS: &str = "\
Examples:
  deployd apps --url http://127.0.0.1:8080 --token \"$TOKEN\"
  deployd apps --json | jq -r '.apps[].name'

Exit codes:
  0  the list was printed
  2  usage, authentication, HTTP or connection error";

/// `deployd deployments --help`.
pub const DEPLOYMENTS: &str = "\
Examples:
  deployd deployments --app web
  deployd deployments --app web --per-page 100 --page 2 --json

Exit codes:
  0  the list was printed
  2  usage, authentication, HTTP or connection error";

/// `deployd completions --help`.
pub const COMPLETIONS: &str = "\
Examples:
  deployd completions bash > /etc/bash_completion.d/deployd
  deployd completions zsh > \"${fpath[1]}/_deployd\"
  deployd completions fish > ~/.config/fish/completions/deployd.fish

Exit codes:
  0  the script was printed
  2  usage error (unknown shell)";

/// `deployd man --help`.
pub const MAN: &str = "\
Examples:
  deployd man | man -l -
  deployd man --out-dir /usr/local/share/man/man1

Exit codes:
  0  the page(s) were written
  1  a page could not be written
  2  usage error";

/// `deployd rollback --help`.
pub const ROLLBACK: &str = concat!(
    "Examples:
  deployd rollback --url http://127.0.0.1:8080 --token \"$TOKEN\" --app web 0190f6c3-…
  deployd rollback --app web 0190f6c3-… --follow   # with DEPLOYD_URL / DEPLOYD_TOKEN set

The new deployment's id is printed on stdout. Without --follow:
  0    the rollback deployment was created (it queues like any other)
  1    the deployment cannot be rolled back to (not successful, or its image is no longer kept)
  2    usage, authentication, HTTP or connection error (an unknown app or deployment: 404)

With --follow, the exit code is the one of deployd follow:
",
    deployment_exit_codes!()
);

/// `deployd migrate --help`.
pub const MIGRATE: &str = "\
Stop the server first. The cluster must be new (its write-ahead stream empty); the nats-servers
need `jetstream { sync_interval: always }`. Then start the nodes with --store on the same URLs.

Examples:
  deployd migrate --from /var/lib/deployd --to nats://10.0.0.1:4222,nats://10.0.0.2:4222

Exit codes:
  0  everything is in the cluster (the counts are printed)
  1  the copy failed midway (the partial stream is deleted: run it again)
  2  no such data directory, a server runs on it, or the cluster is not empty
  3  the cluster store is unreachable";
