//! The client subcommands over TLS with a private CA, through the real binary: a CA and server
//! certificates made with rcgen, a TLS-terminating proxy (tokio-rustls, forwarding bytes to a
//! real `deployd serve` on 127.0.0.1, as an operator's nginx would), and `deployd apps`,
//! `deploy`, `follow`, `push`… trusting the CA through `--cacert`, `DEPLOYD_CACERT` or
//! `SSL_CERT_FILE`, or failing with the handshake's real cause when they do not.
mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use common::{Options, Server, ADMIN_TOKEN};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;

/// Bound on one CLI run (a tiny app's deployment takes about a second).
const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// The hint a client prints when the server's CA is not trusted.
const UNTRUSTED: &str = "invalid peer certificate: UnknownIssuer (is the server's CA trusted? \
                         pass --cacert or set DEPLOYD_CACERT)";

/// A private CA and the PEM file of its certificate.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem_path: PathBuf,
}

impl Ca {
    fn new(dir: &Path) -> Ca {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "deployd test private CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("CA certificate");
        let pem_path = dir.join("ca.pem");
        std::fs::write(&pem_path, cert.pem()).expect("write CA");
        Ca {
            issuer: Issuer::new(params, key),
            pem_path,
        }
    }

    /// A server certificate for `name` (an IP address or a DNS name) signed by this CA;
    /// `expired` puts its validity period in the past.
    fn server_config(&self, name: &str, expired: bool) -> Arc<rustls::ServerConfig> {
        let key = KeyPair::generate().expect("server key");
        let mut params = CertificateParams::new(vec![name.to_owned()]).expect("server params");
        params.distinguished_name.push(DnType::CommonName, name);
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key)
            .expect("server TLS config");
        Arc::new(config)
    }
}

/// A TLS-terminating proxy on 127.0.0.1 forwarding every connection's bytes to `backend`.
/// Bound before the server starts so the server's public URL can name it.
struct Proxy {
    listener: TcpListener,
    url: String,
}

impl Proxy {
    async fn bind() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let url = format!("https://{}", listener.local_addr().expect("addr"));
        Proxy { listener, url }
    }

    fn forward_to(self, backend: String, config: Arc<rustls::ServerConfig>) -> String {
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = self.listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let backend = backend.clone();
                tokio::spawn(async move {
                    // A refused handshake is what several tests are about: nothing to forward.
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut upstream) = TcpStream::connect(&backend).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
                });
            }
        });
        self.url
    }
}

/// A real server behind a proxy presenting `cert_name`'s certificate; its public URL (the
/// upload URLs it hands out) is the proxy's.
struct Setup {
    server: Server,
    url: String,
    ca: Ca,
    dir: tempfile::TempDir,
}

async fn setup(cert_name: &str, expired: bool) -> Setup {
    let dir = tempfile::tempdir().expect("tmp");
    let ca = Ca::new(dir.path());
    let proxy = Proxy::bind().await;
    let server = Server::start_with(Options {
        env: vec![("DEPLOYD_PUBLIC_URL".into(), proxy.url.clone())],
        ..Options::default()
    });
    let url = proxy.forward_to(server.addr.clone(), ca.server_config(cert_name, expired));
    Setup {
        server,
        url,
        ca,
        dir,
    }
}

/// How a CLI run is told about the CA.
#[derive(Clone, Copy)]
enum Trust<'a> {
    Nothing,
    Flag(&'a Path),
    DeploydCacert(&'a Path),
    SslCertFile(&'a Path),
}

/// Runs `deployd ARGS` with only the given trust settings from the environment (the flag goes
/// right after the subcommand: `push` passes what follows `--` to its build command).
async fn deployd(args: &[&str], trust: Trust<'_>) -> Output {
    let (sub, rest) = args.split_first().expect("a subcommand");
    let mut command = tokio::process::Command::new(common::deployd_bin());
    command.arg(sub);
    if let Trust::Flag(path) = trust {
        command.arg("--cacert").arg(path);
    }
    command
        .args(rest)
        .env_remove("DEPLOYD_URL")
        .env_remove("DEPLOYD_TOKEN")
        .env_remove("DEPLOYD_CACERT")
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    match trust {
        Trust::Nothing | Trust::Flag(_) => {}
        Trust::DeploydCacert(path) => {
            command.env("DEPLOYD_CACERT", path);
        }
        Trust::SslCertFile(path) => {
            command.env("SSL_CERT_FILE", path);
        }
    }
    let child = command.spawn().expect("spawn deployd");
    tokio::time::timeout(CLI_TIMEOUT, child.wait_with_output())
        .await
        .expect("deployd must exit")
        .expect("output")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn write_app(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let app = dir.join("app");
    std::fs::create_dir_all(app.join("bin")).expect("mkdir");
    for (name, body) in [("build", "echo built over tls"), ("start", "echo started")] {
        let path = app.join("bin").join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    app
}

async fn deployment_ids(server: &Server, app: &str) -> Vec<String> {
    let (status, body) = server
        .admin()
        .get(&format!("/v1/apps/{app}/deployments"))
        .await;
    assert_eq!(status, 200, "{body}");
    body["deployments"]
        .as_array()
        .expect("deployments")
        .iter()
        .map(|d| d["id"].as_str().expect("id").to_owned())
        .collect()
}

/// `apps`, `deploy` (a directory: packed, uploaded through the proxy, followed), `follow` and
/// `push` all succeed through the proxy with `trust`.
async fn every_client_command_succeeds(setup: &Setup, trust: Trust<'_>, app: &str) {
    let (url, token) = (setup.url.as_str(), ADMIN_TOKEN);
    setup.server.create_app(&setup.server.admin(), app).await;

    let apps = deployd(&["apps", "--url", url, "--token", token], trust).await;
    let stdout = text(&apps.stdout);
    assert_eq!(
        apps.status.code(),
        Some(0),
        "{stdout}{}",
        text(&apps.stderr)
    );
    assert!(stdout.contains(app), "{stdout}");

    let source = write_app(setup.dir.path());
    let source = source.to_str().expect("utf-8 path");
    let deploy = deployd(
        &[
            "deploy", "--url", url, "--token", token, "--app", app, source,
        ],
        trust,
    )
    .await;
    let (stdout, stderr) = (text(&deploy.stdout), text(&deploy.stderr));
    assert_eq!(deploy.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("built over tls\n"), "{stdout}");
    assert!(stderr.contains("Deployment ended: success"), "{stderr}");

    let follow = deployd(
        &["follow", "--url", url, "--token", token, "--app", app],
        trust,
    )
    .await;
    let stdout = text(&follow.stdout);
    assert_eq!(
        follow.status.code(),
        Some(0),
        "{stdout}{}",
        text(&follow.stderr)
    );
    assert!(stdout.contains("built over tls\n"), "{stdout}");

    let push = deployd(
        &[
            "push",
            "--url",
            url,
            "--token",
            token,
            "--app",
            app,
            "--",
            "echo",
            "pushed over wss",
        ],
        trust,
    )
    .await;
    let stderr = text(&push.stderr);
    assert_eq!(
        push.status.code(),
        Some(0),
        "{}\n{stderr}",
        text(&push.stdout)
    );
    let ids = deployment_ids(&setup.server, app).await;
    assert_eq!(ids.len(), 2, "deploy and push each made one: {ids:?}");
    let (status, _, log) = setup
        .server
        .admin()
        .get_text(&format!("/v1/apps/{app}/deployments/{}/output", ids[0]))
        .await;
    assert_eq!(status, 200);
    assert!(log.contains("pushed over wss"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_deploy_follow_and_push_succeed_through_a_tls_proxy_trusting_the_cacert_flag() {
    let setup = setup("127.0.0.1", false).await;
    every_client_command_succeeds(&setup, Trust::Flag(&setup.ca.pem_path), "viaflag").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_deploy_follow_and_push_succeed_trusting_the_deployd_cacert_variable() {
    let setup = setup("127.0.0.1", false).await;
    let trust = Trust::DeploydCacert(&setup.ca.pem_path);
    every_client_command_succeeds(&setup, trust, "viaenv").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_deploy_follow_and_push_succeed_trusting_the_platform_store_named_by_ssl_cert_file() {
    let setup = setup("127.0.0.1", false).await;
    let trust = Trust::SslCertFile(&setup.ca.pem_path);
    every_client_command_succeeds(&setup, trust, "viasslfile").await;
}

/// Every client subcommand's arguments against `url` for app `app` (`bench` has its own test:
/// a run needs a scenario and its options).
fn every_subcommand<'a>(
    url: &'a str,
    app: &'a str,
    dest: &'a str,
    source: &'a str,
) -> Vec<Vec<&'a str>> {
    let target = ["--url", url, "--token", ADMIN_TOKEN];
    let with_app = |sub: &'a str, rest: &[&'a str]| {
        let mut args = vec![sub];
        args.extend(target);
        args.extend(["--app", app]);
        args.extend(rest);
        args
    };
    let mut apps = vec!["apps"];
    apps.extend(target);
    let mut backup = vec!["backup"];
    backup.extend(target);
    backup.push(dest);
    vec![
        apps,
        with_app("deployments", &[]),
        with_app("deploy", &[source]),
        with_app("follow", &[]),
        with_app("push", &["--", "echo", "never"]),
        with_app("cancel", &[]),
        with_app("rollback", &["00000000-0000-0000-0000-000000000000"]),
        backup,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_ca_every_subcommand_fails_with_unknown_issuer_and_exit_code_2() {
    let setup = setup("127.0.0.1", false).await;
    setup
        .server
        .create_app(&setup.server.admin(), "untrusted")
        .await;
    let source = write_app(setup.dir.path());
    let dest = setup.dir.path().join("backup");
    let (source, dest) = (
        source.to_str().expect("utf-8"),
        dest.to_str().expect("utf-8"),
    );
    for args in every_subcommand(&setup.url, "untrusted", dest, source) {
        let output = deployd(&args, Trust::Nothing).await;
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        // `https://` for the HTTP commands, `wss://` for `push`'s WebSocket.
        let origin = setup.url.trim_start_matches("https");
        assert!(
            stderr.contains(&format!("{origin} failed: {UNTRUSTED}")),
            "{args:?}: {stderr}"
        );
        assert!(stderr.contains("TLS handshake with "), "{args:?}: {stderr}");
    }
    assert!(deployment_ids(&setup.server, "untrusted").await.is_empty());
    assert!(
        !Path::new(dest).exists(),
        "a failed backup leaves no directory behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_name_fails_saying_it_is_not_valid_for_the_name() {
    let setup = setup("deployd.other.example", false).await;
    let trust = Trust::Flag(&setup.ca.pem_path);
    for sub in ["apps", "push"] {
        let mut args = vec![sub, "--url", &setup.url, "--token", ADMIN_TOKEN];
        if sub == "push" {
            args.extend(["--app", "any", "--", "true"]);
        }
        let output = deployd(&args, trust).await;
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{sub}: {stderr}");
        assert!(stderr.contains("TLS handshake with"), "{sub}: {stderr}");
        assert!(stderr.contains("not valid for name"), "{sub}: {stderr}");
        assert!(stderr.contains("deployd.other.example"), "{sub}: {stderr}");
        assert!(
            stderr.contains("the certificate is not for this host name"),
            "{sub}: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_fails_saying_it_expired() {
    let setup = setup("127.0.0.1", true).await;
    let output = deployd(
        &["apps", "--url", &setup.url, "--token", ADMIN_TOKEN],
        Trust::Flag(&setup.ca.pem_path),
    )
    .await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("TLS handshake with"), "{stderr}");
    assert!(
        stderr.contains("invalid peer certificate: certificate expired"),
        "{stderr}"
    );
    assert!(stderr.contains("this machine's clock"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_or_missing_ca_file_fails_naming_the_file_and_changes_nothing() {
    let setup = setup("127.0.0.1", false).await;
    setup
        .server
        .create_app(&setup.server.admin(), "garbage")
        .await;
    let garbage = setup.dir.path().join("garbage.pem");
    std::fs::write(&garbage, "this is not a certificate\n").expect("write");
    let broken = setup.dir.path().join("broken.pem");
    std::fs::write(
        &broken,
        "-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n",
    )
    .expect("write");
    let missing = setup.dir.path().join("missing.pem");
    let source = write_app(setup.dir.path());
    let dest = setup.dir.path().join("backup");
    let (source, dest) = (
        source.to_str().expect("utf-8"),
        dest.to_str().expect("utf-8"),
    );
    for file in [&garbage, &broken, &missing] {
        for trust in [Trust::Flag(file), Trust::DeploydCacert(file)] {
            for args in every_subcommand(&setup.url, "garbage", dest, source) {
                let output = deployd(&args, trust).await;
                let stderr = text(&output.stderr);
                assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
                assert!(
                    stderr.contains(&format!("CA certificate file {}", file.display())),
                    "{args:?}: {stderr}"
                );
            }
        }
    }
    assert!(deployment_ids(&setup.server, "garbage").await.is_empty());
    assert!(!Path::new(dest).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cacert_flag_wins_over_a_broken_deployd_cacert_variable() {
    let setup = setup("127.0.0.1", false).await;
    let garbage = setup.dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").expect("write");
    let mut command = tokio::process::Command::new(common::deployd_bin());
    command
        .args([
            "apps",
            "--url",
            &setup.url,
            "--token",
            ADMIN_TOKEN,
            "--cacert",
        ])
        .arg(&setup.ca.pem_path)
        .env("DEPLOYD_CACERT", &garbage)
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(CLI_TIMEOUT, command.output())
        .await
        .expect("deployd must exit")
        .expect("output");
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_ingest_runs_through_the_tls_proxy_with_the_cacert_flag_and_names_the_cause_without()
{
    let setup = setup("127.0.0.1", false).await;
    let args = [
        "bench",
        "--json",
        "--url",
        &setup.url,
        "--token",
        ADMIN_TOKEN,
        "ingest",
        "--pushers",
        "1",
        "--lines",
        "20",
        "--batch",
        "5",
    ];
    let output = deployd(&args, Trust::Flag(&setup.ca.pem_path)).await;
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("JSON report");
    assert_eq!(report["lines_acked"], 20, "{report}");

    let output = deployd(&args, Trust::Nothing).await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(UNTRUSTED), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_says_it_was_refused_not_only_that_sending_failed() {
    // A port nothing listens on any more.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let url = format!("https://127.0.0.1:{port}");
    let output = deployd(
        &["apps", "--url", &url, "--token", ADMIN_TOKEN],
        Trust::Nothing,
    )
    .await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("Connection refused"), "{stderr}");
}
