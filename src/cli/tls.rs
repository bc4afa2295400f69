//! TLS for every client subcommand: the one place that decides which certificate authorities
//! `deployd push|follow|deploy|apps|deployments|cancel|rollback|backup|bench` trust, and that
//! builds their HTTP client and their WebSocket connector from it, so HTTP and WebSocket
//! trust exactly the same roots. It also turns a failed handshake into a sentence naming the
//! real cause (the error's `source()` chain), instead of reqwest's "error sending request".
//!
//! Trusted: the Mozilla roots compiled in (`webpki-roots`), the platform's trust store
//! (`rustls-native-certs`, which reads `SSL_CERT_FILE` / `SSL_CERT_DIR` instead when they are
//! set), and the PEM file of `--cacert` (or `DEPLOYD_CACERT`; the flag wins). A `--cacert`
//! that cannot be read or holds no certificate is an error naming the file, never a silent
//! fallback to the other roots.
//!
//! It must not send anything itself, nor choose timeouts: the subcommands add those to the
//! builder they get.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{CertificateError, ClientConfig, RootCertStore};

use super::EXIT_USAGE_OR_AUTH;

/// The variable `rustls-native-certs` reads a CA bundle from instead of the platform's store;
/// when set it is the operator's explicit choice, so a bad one is reported, not ignored.
const SSL_CERT_FILE: &str = "SSL_CERT_FILE";

/// The hint printed after a certificate signed by nobody we trust.
const UNTRUSTED_HINT: &str = "is the server's CA trusted? pass --cacert or set DEPLOYD_CACERT";
/// The hint printed after a certificate for another host name.
const NAME_HINT: &str =
    "the certificate is not for this host name: use the name it was issued for in --url";
/// The hint printed after a certificate outside its validity period.
const DATES_HINT: &str = "check the server certificate's dates and this machine's clock";

/// The TLS flag every client subcommand takes.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// PEM file of one or more CA certificates to trust besides the system's (for a server
    /// behind a TLS proxy with a private CA)
    #[arg(long, env = "DEPLOYD_CACERT", value_name = "PATH", global = true)]
    pub cacert: Option<PathBuf>,
}

/// Why the trusted roots could not be assembled: the command stops before connecting.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// The CA file could not be read.
    #[error("CA certificate file {}: {reason} (--cacert / DEPLOYD_CACERT)", path.display())]
    Unreadable { path: PathBuf, reason: String },
    /// The CA file is readable but is not (only) PEM certificates.
    #[error("CA certificate file {}: {reason} (--cacert / DEPLOYD_CACERT)", path.display())]
    BadPem { path: PathBuf, reason: String },
    /// `SSL_CERT_FILE` / `SSL_CERT_DIR` are set but give no usable certificate.
    #[error("{SSL_CERT_FILE}/SSL_CERT_DIR: {0}")]
    Platform(String),
    /// rustls refused the configuration (no protocol version the provider supports).
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

impl TlsSetupError {
    /// Prints `PREFIX: why` to stderr and returns the exit code for it (usage error, 2).
    pub(crate) fn report(&self, prefix: &str) -> i32 {
        eprintln!("{prefix}: {self}");
        EXIT_USAGE_OR_AUTH
    }
}

impl From<TlsSetupError> for String {
    fn from(err: TlsSetupError) -> Self {
        err.to_string()
    }
}

/// The rustls client configuration of one command run; cheap to clone.
#[derive(Clone)]
pub(crate) struct ClientTls {
    config: Arc<ClientConfig>,
}

impl ClientTls {
    /// Assembles the trusted roots (module doc) into one rustls configuration.
    pub(crate) fn load(args: &TlsArgs) -> Result<Self, TlsSetupError> {
        let mut roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        add_platform_roots(&mut roots)?;
        if let Some(path) = &args.cacert {
            add_pem_file(&mut roots, path)?;
        }
        // One provider named explicitly: the process default would depend on which rustls
        // features other crates happen to enable.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            config: Arc::new(config),
        })
    }

    /// A reqwest builder using this configuration; the caller adds its timeouts.
    pub(crate) fn http_builder(&self) -> reqwest::ClientBuilder {
        reqwest::Client::builder().use_preconfigured_tls(ClientConfig::clone(&self.config))
    }

    /// The tokio-tungstenite connector using this configuration (plain for `ws://`).
    pub(crate) fn ws_connector(&self) -> tokio_tungstenite::Connector {
        tokio_tungstenite::Connector::Rustls(Arc::clone(&self.config))
    }
}

/// [`ClientTls::load`] then [`ClientTls::http_builder`]: what a command needing only HTTP calls.
pub(crate) fn http_builder(args: &TlsArgs) -> Result<reqwest::ClientBuilder, TlsSetupError> {
    Ok(ClientTls::load(args)?.http_builder())
}

fn add_platform_roots(roots: &mut RootCertStore) -> Result<(), TlsSetupError> {
    let found = rustls_native_certs::load_native_certs();
    let explicit = [SSL_CERT_FILE, "SSL_CERT_DIR"]
        .iter()
        .any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()));
    if explicit && found.certs.is_empty() {
        let why = match found.errors.first() {
            Some(err) => err.to_string(),
            None => "no PEM certificate found".to_owned(),
        };
        return Err(TlsSetupError::Platform(why));
    }
    // The platform store may hold a few certificates webpki cannot parse (old roots); they
    // are skipped, as every rustls-based client does, and a missing store leaves the
    // compiled-in roots.
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    tracing::debug!(added, ignored, errors = ?found.errors, "platform trust store");
    Ok(())
}

fn add_pem_file(roots: &mut RootCertStore, path: &Path) -> Result<(), TlsSetupError> {
    let bytes = std::fs::read(path).map_err(|err| TlsSetupError::Unreadable {
        path: path.to_owned(),
        reason: err.to_string(),
    })?;
    let bad = |reason: String| TlsSetupError::BadPem {
        path: path.to_owned(),
        reason,
    };
    let mut count = 0usize;
    for cert in CertificateDer::pem_slice_iter(&bytes) {
        let cert = cert.map_err(|err| bad(format!("not valid PEM: {err}")))?;
        roots
            .add(cert)
            .map_err(|err| bad(format!("certificate {} is not usable: {err}", count + 1)))?;
        count += 1;
    }
    if count == 0 {
        return Err(bad(
            "no PEM certificate (-----BEGIN CERTIFICATE-----) in it".into(),
        ));
    }
    Ok(())
}

/// What to print for a failed HTTP request: the handshake's real cause when TLS failed
/// (see [`handshake_failure`]), else reqwest's message followed by the innermost cause, which
/// reqwest's own `Display` leaves out ("error sending request for url (…)" alone says no why).
pub(crate) fn describe_http(err: &reqwest::Error) -> String {
    let origin = err.url().map(|url| url.as_str()).unwrap_or_default();
    if let Some(failure) = handshake_failure(err, origin) {
        return failure;
    }
    let mut root: &dyn std::error::Error = err;
    while let Some(next) = root.source() {
        root = next;
    }
    if std::ptr::addr_eq(root, err) {
        err.to_string()
    } else {
        format!("{err}: {root}")
    }
}

/// What to print for a failed WebSocket connection to `url`, like [`describe_http`].
pub(crate) fn describe_ws(err: &tokio_tungstenite::tungstenite::Error, url: &str) -> String {
    handshake_failure(err, url).unwrap_or_else(|| err.to_string())
}

/// `TLS handshake with ORIGIN failed: CAUSE (HINT)` when a rustls error is anywhere in the
/// error's `source()` chain, else `None`.
///
/// `std::io::Error::source()` skips the error it wraps (it returns that error's source), and
/// rustls' errors reach us wrapped in an `io::Error`, so each link's wrapped error is
/// inspected too.
pub(crate) fn handshake_failure(
    err: &(dyn std::error::Error + 'static),
    url: &str,
) -> Option<String> {
    let cause = rustls_cause(err)?;
    let hint = match cause {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                Some(UNTRUSTED_HINT)
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                Some(NAME_HINT)
            }
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => Some(DATES_HINT),
            _ => None,
        },
        _ => None,
    };
    let origin = origin(url);
    Some(match hint {
        Some(hint) => format!("TLS handshake with {origin} failed: {cause} ({hint})"),
        None => format!("TLS handshake with {origin} failed: {cause}"),
    })
}

fn rustls_cause<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut link = Some(err);
    while let Some(current) = link {
        if let Some(found) = current.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        if let Some(found) = current
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| rustls_cause(inner))
        {
            return Some(found);
        }
        link = current.source();
    }
    None
}

/// `scheme://host:port` of a URL: the part the handshake was with (no path, no credentials).
fn origin(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    format!("{scheme}://{host}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_keeps_scheme_host_and_port_only() {
        assert_eq!(
            origin("https://127.0.0.1:8443/v1/apps?page=2"),
            "https://127.0.0.1:8443"
        );
        assert_eq!(
            origin("wss://u:p@example.com/v1/apps/a/push"),
            "wss://example.com"
        );
        assert_eq!(origin("https://example.com"), "https://example.com");
    }

    #[test]
    fn a_file_without_certificates_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("garbage.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let err = ClientTls::load(&TlsArgs {
            cacert: Some(path.clone()),
        })
        .err()
        .expect("garbage must be refused");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        assert!(matches!(err, TlsSetupError::BadPem { .. }), "{err}");
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let err = ClientTls::load(&TlsArgs {
            cacert: Some("/nonexistent/ca.pem".into()),
        })
        .err()
        .expect("a missing file must be refused");
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
        assert!(matches!(err, TlsSetupError::Unreadable { .. }), "{err}");
    }

    #[test]
    fn a_rustls_error_inside_an_io_error_is_found() {
        let inner = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, inner);
        let ws = tokio_tungstenite::tungstenite::Error::Io(io);
        let text = describe_ws(&ws, "wss://127.0.0.1:9/v1/apps/a/push");
        assert_eq!(
            text,
            format!(
                "TLS handshake with wss://127.0.0.1:9 failed: invalid peer certificate: \
                 UnknownIssuer ({UNTRUSTED_HINT})"
            )
        );
    }

    #[test]
    fn other_errors_are_not_called_handshake_failures() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(handshake_failure(&io, "https://h:1"), None);
    }
}
