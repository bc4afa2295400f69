//! Signed source URLs: the pre-authenticated upload and download URLs of `POST /v1/sources`
//! (compat.md), and where the uploaded archives live on disk.
//!
//! URL shape: `{public_url}/v1/sources/{id}/archive?expires={unix}&signature={hex}` where the
//! signature is HMAC-SHA256, keyed with the install's secret, over `"{PUT|GET} {id} {expires}"`.
//!
//! This module knows nothing of HTTP: the API layer (`api::sources`) serves the URLs, and the
//! built-in executor (`sessions`) reads an archive of ours straight from disk instead of
//! fetching it over the network. Checks here are pure and take `now`; the one that looks at
//! the disk ([`SourceUrls::local_archive`]) is async, so the executor never blocks on it.

use std::path::PathBuf;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How long upload and download URLs stay valid (compat.md: 10 minutes).
pub const SOURCE_URL_LIFETIME_SECS: i64 = 600;

/// What a signed URL lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `PUT` the archive (the upload URL).
    Upload,
    /// `GET` the archive (the download URL, also a deployment's `source_url`).
    Download,
}

impl Access {
    fn method(self) -> &'static str {
        match self {
            Access::Upload => "PUT",
            Access::Download => "GET",
        }
    }
}

/// Why a signed URL is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("invalid signature")]
    BadSignature,
    #[error("this URL has expired")]
    Expired,
}

/// Signs and checks source URLs for one install.
#[derive(Clone)]
pub struct SourceUrls {
    /// The base URL clients reach this server at (no trailing slash).
    public_url: String,
    /// The install's secret (also the JWT key), kept in the store.
    secret: [u8; 32],
    /// Where uploaded archives are kept (`DATA/sources`).
    dir: PathBuf,
}

impl SourceUrls {
    pub fn new(public_url: String, secret: [u8; 32], dir: PathBuf) -> Self {
        Self {
            public_url,
            secret,
            dir,
        }
    }

    /// The signed URL giving `access` to source `id` until `expires` (Unix seconds).
    pub fn signed_url(&self, access: Access, id: uuid::Uuid, expires: i64) -> String {
        format!(
            "{}/v1/sources/{id}/archive?expires={expires}&signature={}",
            self.public_url,
            hex::encode(self.mac(access, id, expires).finalize().into_bytes())
        )
    }

    /// Checks a URL's signature (hex) and expiry at `now` (Unix seconds).
    pub fn check(
        &self,
        access: Access,
        id: uuid::Uuid,
        expires: i64,
        signature: &str,
        now: i64,
    ) -> Result<(), UrlError> {
        if !self.verify(access, id, expires, signature) {
            return Err(UrlError::BadSignature);
        }
        if now > expires {
            return Err(UrlError::Expired);
        }
        Ok(())
    }

    /// Where the archive of source `id` is (or will be) stored.
    pub fn archive_path(&self, id: uuid::Uuid) -> PathBuf {
        self.dir.join(format!("{id}.tar.gz"))
    }

    /// The directory uploaded archives are stored in.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Whether `url` points at this server's sources (signed or not).
    pub fn is_own_url(&self, url: &str) -> bool {
        url.strip_prefix(&self.public_url)
            .is_some_and(|rest| rest.starts_with("/v1/sources/"))
    }

    /// The source a download URL of ours designates, if its signature is valid. Expiry is not
    /// checked: it is checked when the deployment is triggered ([`Self::live_download`]), and a
    /// deployment queued or recovered later must still find its archive.
    pub fn download(&self, url: &str) -> Option<uuid::Uuid> {
        let parsed = self.parse_own_url(url)?;
        self.verify(
            Access::Download,
            parsed.id,
            parsed.expires,
            &parsed.signature,
        )
        .then_some(parsed.id)
    }

    /// Like [`Self::download`], and the URL has not expired at `now` (Unix seconds).
    pub fn live_download(&self, url: &str, now: i64) -> Option<uuid::Uuid> {
        let parsed = self.parse_own_url(url)?;
        self.check(
            Access::Download,
            parsed.id,
            parsed.expires,
            &parsed.signature,
            now,
        )
        .ok()
        .map(|()| parsed.id)
    }

    /// The uploaded archive file a download URL of ours designates, if its signature is valid
    /// and the file is there (looked at off the async executor).
    pub async fn local_archive(&self, url: &str) -> Option<PathBuf> {
        existing_file(self.archive_path(self.download(url)?)).await
    }

    /// Like [`Self::local_archive`], and the URL has not expired at `now` (Unix seconds).
    pub async fn live_local_archive(&self, url: &str, now: i64) -> Option<PathBuf> {
        existing_file(self.archive_path(self.live_download(url, now)?)).await
    }

    fn mac(&self, access: Access, id: uuid::Uuid, expires: i64) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256>>::new_from_slice(&self.secret)
            .expect("invariant: HMAC takes any key length");
        mac.update(format!("{} {id} {expires}", access.method()).as_bytes());
        mac
    }

    fn verify(&self, access: Access, id: uuid::Uuid, expires: i64, given: &str) -> bool {
        let Ok(given) = hex::decode(given) else {
            return false;
        };
        self.mac(access, id, expires).verify_slice(&given).is_ok()
    }

    fn parse_own_url(&self, url: &str) -> Option<ParsedUrl> {
        let rest = url
            .strip_prefix(&self.public_url)?
            .strip_prefix("/v1/sources/")?;
        let (id, query) = rest.split_once("/archive?")?;
        let id = id.parse().ok()?;
        let mut expires = None;
        let mut signature = None;
        for pair in query.split('&') {
            match pair.split_once('=') {
                Some(("expires", v)) => expires = v.parse().ok(),
                Some(("signature", v)) => signature = Some(v.to_string()),
                _ => {}
            }
        }
        Some(ParsedUrl {
            id,
            expires: expires?,
            signature: signature?,
        })
    }
}

async fn existing_file(path: PathBuf) -> Option<PathBuf> {
    match tokio::fs::metadata(&path).await {
        Ok(meta) if meta.is_file() => Some(path),
        _ => None,
    }
}

/// The parts of a signed URL of ours.
struct ParsedUrl {
    id: uuid::Uuid,
    expires: i64,
    signature: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls() -> SourceUrls {
        SourceUrls::new(
            "http://127.0.0.1:5000".into(),
            [7; 32],
            "/data/sources".into(),
        )
    }

    #[test]
    fn a_signed_download_url_designates_its_source_until_it_expires() {
        let urls = urls();
        let id = uuid::Uuid::now_v7();
        let url = urls.signed_url(Access::Download, id, 1_000);
        assert!(urls.is_own_url(&url));
        assert_eq!(urls.download(&url), Some(id));
        assert_eq!(urls.live_download(&url, 1_000), Some(id));
        assert_eq!(urls.live_download(&url, 1_001), None);
        // Expired URLs still designate their archive for deployments already accepted.
        assert_eq!(urls.download(&url), Some(id));
    }

    #[test]
    fn an_upload_url_is_not_a_download_url() {
        let urls = urls();
        let id = uuid::Uuid::now_v7();
        let url = urls.signed_url(Access::Upload, id, 1_000);
        assert_eq!(urls.download(&url), None);
    }

    #[test]
    fn a_tampered_or_foreign_url_is_refused() {
        let urls = urls();
        let id = uuid::Uuid::now_v7();
        let url = urls.signed_url(Access::Download, id, 1_000);
        let tampered = url.replace("expires=1000", "expires=9000");
        assert_eq!(urls.download(&tampered), None);
        let other_install = SourceUrls::new("http://127.0.0.1:5000".into(), [8; 32], "/x".into());
        assert_eq!(other_install.download(&url), None);
        assert!(!urls.is_own_url("http://example.com/v1/sources/x"));
        assert!(!urls.is_own_url("http://127.0.0.1:5000/v1/apps"));
    }

    #[test]
    fn check_tells_a_bad_signature_from_an_expired_url() {
        let urls = urls();
        let id = uuid::Uuid::now_v7();
        let url = urls.signed_url(Access::Upload, id, 1_000);
        let signature = url.rsplit_once("signature=").expect("signature").1;
        assert_eq!(
            urls.check(Access::Upload, id, 1_000, signature, 999),
            Ok(())
        );
        assert_eq!(
            urls.check(Access::Upload, id, 1_000, signature, 1_001),
            Err(UrlError::Expired)
        );
        assert_eq!(
            urls.check(Access::Download, id, 1_000, signature, 999),
            Err(UrlError::BadSignature)
        );
        assert_eq!(
            urls.check(Access::Upload, id, 1_000, "zz", 999),
            Err(UrlError::BadSignature)
        );
    }
}
