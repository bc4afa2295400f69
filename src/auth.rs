//! Credentials: API tokens, the JWTs they are exchanged for, and the `Authorization` header.
//!
//! Owns the byte-level shape of every credential deployd hands out or accepts. Pure: no I/O, no
//! clock (callers pass `now_unix`), no storage; the only side effect is drawing randomness from
//! the operating system. Looking a token's hash up in the store, and deciding what a user may
//! see, belong to the API layer.
//!
//! - **API tokens** are `dpd_` followed by 64 lowercase hex digits (32 bytes = 256 bits from
//!   [`OsRng`]). They are shown once and stored only as [`hash_api_token`] (SHA-256): the token
//!   already carries 256 bits of entropy, so a slow password hash would add nothing.
//! - **JWTs** (from `POST /v1/tokens/exchange`) are HS256-signed compact JWS:
//!   `base64url(header) . base64url(claims) . base64url(HMAC-SHA256(secret, header.claims))`,
//!   unpadded, header exactly `{"alg":"HS256","typ":"JWT"}`, claims [`JwtClaims`], valid for
//!   [`JWT_LIFETIME_SECS`]. Scalingo's clients parse the JWT (three parts, a known `alg`, a
//!   numeric `exp`) without verifying it.
//! - **`Authorization`** accepts `Bearer <jwt>`, `Bearer <api token>` and
//!   `Basic base64(":" + api token)` (what `curl -u ":$TOKEN"` and the Scalingo SDK send).
//! - [`JwtMemo`] remembers JWTs already verified (a client sends the same one with every
//!   request for an hour), so a request pays a map lookup instead of base64, JSON and HMAC
//!   work; the expiry is still checked every time. Its only state is that memo: what a JWT
//!   says never changes, and whether its token was revoked is the store's (and its cache's)
//!   business, checked on every request.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::rngs::OsRng;
use rand::TryRngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::model::Grant;

type HmacSha256 = Hmac<Sha256>;

/// Prefix of every API token, so a leaked token is recognisable (secret scanners, logs).
pub const API_TOKEN_PREFIX: &str = "dpd_";

/// Random bytes in an API token: 256 bits, well above the 128 the design requires.
pub const API_TOKEN_RANDOM_BYTES: usize = 32;

/// How long an exchanged JWT is valid, in seconds (Scalingo's JWTs also last one hour).
pub const JWT_LIFETIME_SECS: i64 = 3600;

/// Longest `Authorization` header value or JWT we look at. Real ones are a few hundred bytes;
/// the bound keeps a hostile header from costing base64/JSON work.
pub const MAX_CREDENTIAL_BYTES: usize = 8 * 1024;

/// The JOSE header of every JWT deployd issues, serialised once, byte for byte.
const JWT_HEADER_JSON: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// Why a credential was refused. None of these say which part of a token was wrong beyond what
/// the caller could see for itself; the API turns all of them into one 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Not the right shape: wrong number of parts, bad base64, bad JSON, unknown scheme, empty.
    #[error("malformed credential: {0}")]
    Malformed(&'static str),
    /// The JWT header names an algorithm other than HS256 (`none` included).
    #[error("unsupported JWT algorithm")]
    UnsupportedAlgorithm,
    /// The JWT signature does not match (tampered, or signed with another secret).
    #[error("bad JWT signature")]
    BadSignature,
    /// The JWT's `exp` is not after `now`.
    #[error("JWT expired")]
    Expired,
}

/// What a JWT asserts. Field names are the wire names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwtClaims {
    /// The user id the JWT acts for.
    pub sub: String,
    /// The id of the API token the JWT was exchanged from: revoking the token revokes its JWTs,
    /// so the API must check that this token still exists.
    pub tid: String,
    /// Issued at, unix seconds.
    pub iat: i64,
    /// Expires at, unix seconds; the JWT is valid while `now < exp`.
    pub exp: i64,
    /// The scope of the token it was exchanged from (`read`, `deploy`, `full`), so that a
    /// client can see what it holds. Absent in JWTs issued before scopes (they act as their
    /// token does). The API takes the narrower of this and the token's stored scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The ids of the apps that token is limited to, if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apps: Option<Vec<String>>,
}

impl JwtClaims {
    /// Claims for a JWT issued at `now_unix`, expiring [`JWT_LIFETIME_SECS`] later.
    pub fn new(user_id: impl Into<String>, token_id: impl Into<String>, now_unix: i64) -> Self {
        JwtClaims {
            sub: user_id.into(),
            tid: token_id.into(),
            iat: now_unix,
            exp: now_unix.saturating_add(JWT_LIFETIME_SECS),
            scope: None,
            apps: None,
        }
    }

    /// The same claims, stating the token's scope and app list.
    pub fn with_grant(mut self, grant: &Grant) -> Self {
        self.scope = Some(grant.scope.as_str().to_owned());
        self.apps = grant
            .apps
            .as_ref()
            .map(|apps| apps.iter().map(ToString::to_string).collect());
        self
    }
}

/// The JOSE header, as parsed on verify (unknown fields such as `kid` are ignored).
#[derive(Deserialize)]
struct JwtHeader {
    alg: String,
}

/// A credential found in an `Authorization` header, not yet checked against anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// A compact JWT (three dot-separated parts); check with [`verify_jwt`].
    Jwt(String),
    /// A raw API token; look up [`hash_api_token`] of it.
    ApiToken(String),
}

/// A new API token: [`API_TOKEN_PREFIX`] then [`API_TOKEN_RANDOM_BYTES`] random bytes from the
/// OS as lowercase hex (68 characters). Contains no `.`, so it is never mistaken for a JWT.
pub fn generate_api_token() -> String {
    let mut bytes = [0u8; API_TOKEN_RANDOM_BYTES];
    OsRng
        .try_fill_bytes(&mut bytes)
        .expect("the OS random source (getrandom) works");
    format!("{API_TOKEN_PREFIX}{}", hex::encode(bytes))
}

/// The SHA-256 of an API token: the only form in which tokens are stored and looked up.
pub fn hash_api_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A new per-install JWT signing secret (256 random bits from the OS).
pub fn generate_jwt_secret() -> [u8; 32] {
    let mut secret = [0u8; 32];
    OsRng
        .try_fill_bytes(&mut secret)
        .expect("the OS random source (getrandom) works");
    secret
}

fn mac_for(secret: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length (longer ones are hashed first), so this cannot fail.
    <HmacSha256 as Mac>::new_from_slice(secret).expect("invariant: HMAC takes keys of any length")
}

/// Signs `claims` with `secret` as an HS256 compact JWT.
pub fn issue_jwt(secret: &[u8], claims: &JwtClaims) -> String {
    let header = URL_SAFE_NO_PAD.encode(JWT_HEADER_JSON);
    // Serialising a struct of strings and integers cannot fail.
    let payload_json =
        serde_json::to_vec(claims).expect("invariant: JwtClaims always serialises to JSON");
    let payload = URL_SAFE_NO_PAD.encode(payload_json);
    let signing_input = format!("{header}.{payload}");
    let mut mac = mac_for(secret);
    mac.update(signing_input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{signature}")
}

/// Checks an HS256 compact JWT signed with `secret` and returns its claims.
///
/// Errors: [`AuthError::Malformed`] unless there are exactly three unpadded base64url parts
/// whose first two are JSON; [`AuthError::UnsupportedAlgorithm`] unless `alg` is `HS256` (so
/// `none` is refused); [`AuthError::BadSignature`] if the signature does not match (compared in
/// constant time); [`AuthError::Expired`] unless `exp > now_unix`. The signature is checked
/// before the claims are parsed, so unsigned input never reaches the claims parser.
pub fn verify_jwt(secret: &[u8], token: &str, now_unix: i64) -> Result<JwtClaims, AuthError> {
    if token.len() > MAX_CREDENTIAL_BYTES {
        return Err(AuthError::Malformed("JWT too long"));
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed("a JWT has three parts"));
    };

    let header_json = URL_SAFE_NO_PAD
        .decode(header_b64)
        .map_err(|_| AuthError::Malformed("JWT header is not base64url"))?;
    let header: JwtHeader = serde_json::from_slice(&header_json)
        .map_err(|_| AuthError::Malformed("JWT header is not JSON"))?;
    if header.alg != "HS256" {
        return Err(AuthError::UnsupportedAlgorithm);
    }

    let signature = URL_SAFE_NO_PAD
        .decode(signature_b64)
        .map_err(|_| AuthError::Malformed("JWT signature is not base64url"))?;
    let mut mac = mac_for(secret);
    mac.update(header_b64.as_bytes());
    mac.update(b".");
    mac.update(payload_b64.as_bytes());
    mac.verify_slice(&signature)
        .map_err(|_| AuthError::BadSignature)?;

    let payload_json = URL_SAFE_NO_PAD
        .decode(payload_b64)
        .map_err(|_| AuthError::Malformed("JWT payload is not base64url"))?;
    let claims: JwtClaims = serde_json::from_slice(&payload_json)
        .map_err(|_| AuthError::Malformed("JWT claims are not valid"))?;
    if claims.exp <= now_unix {
        return Err(AuthError::Expired);
    }
    Ok(claims)
}

/// Most bytes of JWTs [`JwtMemo`] remembers (each counted with [`MEMO_ENTRY_OVERHEAD_BYTES`]):
/// a few thousand clients' JWTs of a few hundred bytes each. Past it the memo is emptied and
/// refills as clients come back; only JWTs whose signature checked are remembered, so only
/// the holders of valid JWTs can fill it.
pub const MAX_MEMO_BYTES: usize = 1024 * 1024;

/// What one remembered JWT costs beyond its text: the map slot and the parsed claims.
const MEMO_ENTRY_OVERHEAD_BYTES: usize = 256;

/// JWTs whose signature and claims were verified, by their text (see the module doc).
#[derive(Default)]
pub struct JwtMemo {
    inner: Mutex<Memo>,
}

#[derive(Default)]
struct Memo {
    claims: HashMap<Box<str>, Arc<JwtClaims>>,
    bytes: usize,
}

impl JwtMemo {
    /// [`verify_jwt`], remembering what verified: the same answer for the same
    /// `(secret, token, now_unix)`. `secret` must be the same for every call on one memo (the
    /// server's install secret).
    pub fn verify(
        &self,
        secret: &[u8],
        token: &str,
        now_unix: i64,
    ) -> Result<Arc<JwtClaims>, AuthError> {
        let remembered = self.lock().claims.get(token).cloned();
        let claims = match remembered {
            Some(claims) => claims,
            None => {
                let claims = Arc::new(verify_jwt(secret, token, now_unix)?);
                self.remember(token, claims.clone());
                claims
            }
        };
        if claims.exp <= now_unix {
            return Err(AuthError::Expired);
        }
        Ok(claims)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Memo> {
        // Every mutation is one map operation plus a counter: a poisoned memo is still valid.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn remember(&self, token: &str, claims: Arc<JwtClaims>) {
        let cost = token.len() + MEMO_ENTRY_OVERHEAD_BYTES;
        let mut memo = self.lock();
        if memo.claims.contains_key(token) {
            return;
        }
        if memo.bytes + cost > MAX_MEMO_BYTES {
            memo.claims.clear();
            memo.bytes = 0;
        }
        memo.bytes += cost;
        memo.claims.insert(token.into(), claims);
    }

    /// Number of remembered JWTs and their counted bytes.
    #[cfg(test)]
    pub fn usage(&self) -> (usize, usize) {
        let memo = self.lock();
        (memo.claims.len(), memo.bytes)
    }
}

/// Reads an `Authorization` header value.
///
/// - `Bearer <x>`: [`Credential::Jwt`] if `x` has exactly two dots, else
///   [`Credential::ApiToken`] (API tokens are accepted as bearer tokens too).
/// - `Basic base64(user:pass)`: [`Credential::ApiToken`] of `pass`, or of `user` when `pass` is
///   empty (both `-u ":$TOKEN"` and `-u "$TOKEN:"` work).
///
/// The scheme is case-insensitive. Errors: [`AuthError::Malformed`] for any other scheme, an
/// empty credential, bad base64, non-UTF-8, a Basic value without `:`, or an oversized header.
pub fn parse_authorization(header: &str) -> Result<Credential, AuthError> {
    if header.len() > MAX_CREDENTIAL_BYTES {
        return Err(AuthError::Malformed("authorization header too long"));
    }
    let header = header.trim();
    let (scheme, value) = header
        .split_once(' ')
        .ok_or(AuthError::Malformed("authorization header has no scheme"))?;
    let value = value.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        if value.is_empty() {
            return Err(AuthError::Malformed("empty bearer token"));
        }
        if value.matches('.').count() == 2 {
            Ok(Credential::Jwt(value.to_owned()))
        } else {
            Ok(Credential::ApiToken(value.to_owned()))
        }
    } else if scheme.eq_ignore_ascii_case("basic") {
        let decoded = STANDARD
            .decode(value)
            .map_err(|_| AuthError::Malformed("basic credentials are not base64"))?;
        let decoded = String::from_utf8(decoded)
            .map_err(|_| AuthError::Malformed("basic credentials are not UTF-8"))?;
        let (user, pass) = decoded
            .split_once(':')
            .ok_or(AuthError::Malformed("basic credentials have no ':'"))?;
        let token = if pass.is_empty() { user } else { pass };
        if token.is_empty() {
            return Err(AuthError::Malformed("empty basic credentials"));
        }
        Ok(Credential::ApiToken(token.to_owned()))
    } else {
        Err(AuthError::Malformed("unsupported authorization scheme"))
    }
}

/// The `Authorization` value a client sends for an API token: `Basic base64(":" + token)`,
/// the form Scalingo's clients use for `/v1/tokens/exchange`.
pub fn basic_authorization_for_token(token: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!(":{token}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const NOW: i64 = 1_700_000_000;

    fn claims() -> JwtClaims {
        JwtClaims::new("user-1", "token-1", NOW)
    }

    #[test]
    fn api_token_has_prefix_and_256_bits_of_hex() {
        let token = generate_api_token();
        let hex_part = token.strip_prefix(API_TOKEN_PREFIX).unwrap();
        assert_eq!(hex_part.len(), 64);
        assert!(hex_part
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert_ne!(token, generate_api_token(), "tokens must not repeat");
    }

    #[test]
    fn api_token_is_never_taken_for_a_jwt() {
        let token = generate_api_token();
        let header = format!("Bearer {token}");
        assert_eq!(
            parse_authorization(&header).unwrap(),
            Credential::ApiToken(token)
        );
    }

    #[test]
    fn token_hash_is_sha256() {
        // SHA-256("abc"), FIPS 180-2 test vector.
        assert_eq!(
            hex::encode(hash_api_token("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn a_remembered_jwt_still_expires_and_a_bad_one_is_never_remembered() {
        let memo = JwtMemo::default();
        let jwt = issue_jwt(SECRET, &claims());
        assert_eq!(*memo.verify(SECRET, &jwt, NOW).unwrap(), claims());
        assert_eq!(*memo.verify(SECRET, &jwt, NOW + 1).unwrap(), claims());
        assert_eq!(memo.usage().0, 1);
        assert_eq!(
            memo.verify(SECRET, &jwt, NOW + JWT_LIFETIME_SECS),
            Err(AuthError::Expired)
        );
        let forged = issue_jwt(b"another secret, another install!", &claims());
        assert_eq!(
            memo.verify(SECRET, &forged, NOW),
            Err(AuthError::BadSignature)
        );
        assert_eq!(memo.usage().0, 1, "only verified JWTs are remembered");
    }

    #[test]
    fn the_jwt_memo_never_holds_more_than_its_byte_cap() {
        let memo = JwtMemo::default();
        for i in 0..20_000 {
            let jwt = issue_jwt(SECRET, &JwtClaims::new(format!("user-{i}"), "token-1", NOW));
            memo.verify(SECRET, &jwt, NOW).unwrap();
            assert!(memo.usage().1 <= MAX_MEMO_BYTES);
        }
        assert!(memo.usage().0 > 0);
    }

    #[test]
    fn jwt_secrets_differ() {
        assert_ne!(generate_jwt_secret(), generate_jwt_secret());
    }

    #[test]
    fn jwt_round_trips() {
        let jwt = issue_jwt(SECRET, &claims());
        assert_eq!(jwt.matches('.').count(), 2);
        assert_eq!(verify_jwt(SECRET, &jwt, NOW).unwrap(), claims());
        assert_eq!(
            verify_jwt(SECRET, &jwt, NOW + JWT_LIFETIME_SECS - 1).unwrap(),
            claims()
        );
    }

    #[test]
    fn jwt_claims_carry_the_scope_and_apps_of_their_token() {
        let app = crate::model::AppId::from_bytes([1; 16]);
        let grant = Grant {
            scope: crate::model::Scope::Deploy,
            apps: Some(vec![app]),
        };
        let claims = claims().with_grant(&grant);
        let jwt = issue_jwt(SECRET, &claims);
        let verified = verify_jwt(SECRET, &jwt, NOW).unwrap();
        assert_eq!(verified.scope.as_deref(), Some("deploy"));
        assert_eq!(verified.apps, Some(vec![app.to_string()]));
        // A JWT from before scopes has neither claim and still verifies.
        let plain = issue_jwt(SECRET, &self::claims());
        let payload = plain.split('.').nth(1).unwrap();
        let text = String::from_utf8(URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        assert!(!text.contains("scope"), "{text}");
        assert_eq!(verify_jwt(SECRET, &plain, NOW).unwrap().scope, None);
    }

    #[test]
    fn jwt_header_is_exactly_hs256_jwt() {
        let jwt = issue_jwt(SECRET, &claims());
        let header = jwt.split('.').next().unwrap();
        assert_eq!(
            URL_SAFE_NO_PAD.decode(header).unwrap(),
            br#"{"alg":"HS256","typ":"JWT"}"#
        );
    }

    #[test]
    fn jwt_claims_have_numeric_exp_for_scalingo_clients() {
        let jwt = issue_jwt(SECRET, &claims());
        let payload = jwt.split('.').nth(1).unwrap();
        let value: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        assert_eq!(value["exp"], serde_json::json!(NOW + JWT_LIFETIME_SECS));
        assert_eq!(value["sub"], "user-1");
        assert_eq!(value["tid"], "token-1");
    }

    #[test]
    fn jwt_expired_at_exp() {
        let jwt = issue_jwt(SECRET, &claims());
        assert_eq!(
            verify_jwt(SECRET, &jwt, NOW + JWT_LIFETIME_SECS),
            Err(AuthError::Expired)
        );
        assert_eq!(
            verify_jwt(SECRET, &jwt, NOW + 10 * JWT_LIFETIME_SECS),
            Err(AuthError::Expired)
        );
    }

    #[test]
    fn jwt_wrong_secret_is_bad_signature() {
        let jwt = issue_jwt(SECRET, &claims());
        assert_eq!(
            verify_jwt(b"another secret", &jwt, NOW),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn jwt_tampered_payload_is_bad_signature() {
        let jwt = issue_jwt(SECRET, &claims());
        let mut parts: Vec<&str> = jwt.split('.').collect();
        let mut forged = claims();
        forged.sub = "admin".into();
        forged.exp = i64::MAX;
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        parts[1] = &forged_payload;
        assert_eq!(
            verify_jwt(SECRET, &parts.join("."), NOW),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn jwt_tampered_signature_is_bad_signature() {
        let jwt = issue_jwt(SECRET, &claims());
        let (rest, signature) = jwt.rsplit_once('.').unwrap();
        let mut bytes = URL_SAFE_NO_PAD.decode(signature).unwrap();
        bytes[0] ^= 1;
        let tampered = format!("{rest}.{}", URL_SAFE_NO_PAD.encode(bytes));
        assert_eq!(
            verify_jwt(SECRET, &tampered, NOW),
            Err(AuthError::BadSignature)
        );
        // A truncated signature is refused too (verify_slice checks the length).
        let truncated = format!("{rest}.{}", &signature[..8]);
        assert_eq!(
            verify_jwt(SECRET, &truncated, NOW),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn jwt_alg_none_is_refused() {
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims()).unwrap());
        for token in [
            format!("{header}.{payload}."),
            format!("{header}.{payload}.AAAA"),
        ] {
            assert_eq!(
                verify_jwt(SECRET, &token, NOW),
                Err(AuthError::UnsupportedAlgorithm)
            );
        }
    }

    #[test]
    fn jwt_other_alg_is_refused() {
        let jwt = issue_jwt(SECRET, &claims());
        let rest = jwt.split_once('.').unwrap().1;
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS512","typ":"JWT"}"#);
        assert_eq!(
            verify_jwt(SECRET, &format!("{header}.{rest}"), NOW),
            Err(AuthError::UnsupportedAlgorithm)
        );
    }

    #[test]
    fn jwt_wrong_part_count_is_malformed() {
        let jwt = issue_jwt(SECRET, &claims());
        for token in [
            "".to_owned(),
            "a.b".to_owned(),
            format!("{jwt}.extra"),
            jwt.replacen('.', "", 1),
        ] {
            assert!(
                matches!(
                    verify_jwt(SECRET, &token, NOW),
                    Err(AuthError::Malformed(_))
                ),
                "{token:?}"
            );
        }
    }

    #[test]
    fn jwt_bad_base64_is_malformed() {
        let jwt = issue_jwt(SECRET, &claims());
        let (header, rest) = jwt.split_once('.').unwrap();
        // `+` and `/` are not in the URL-safe alphabet; `=` padding is not allowed unpadded.
        assert!(matches!(
            verify_jwt(SECRET, &format!("{header}+.{rest}"), NOW),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(
            verify_jwt(SECRET, &format!("{jwt}=="), NOW),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(
            verify_jwt(SECRET, &format!("{header}.{rest}*"), NOW),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn jwt_signed_non_json_payload_is_malformed() {
        // Correctly signed but the claims are not JwtClaims: refused after the signature check.
        let header = URL_SAFE_NO_PAD.encode(JWT_HEADER_JSON);
        let payload = URL_SAFE_NO_PAD.encode(r#"{"sub":"u"}"#);
        let input = format!("{header}.{payload}");
        let mut mac = mac_for(SECRET);
        mac.update(input.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        assert!(matches!(
            verify_jwt(SECRET, &format!("{input}.{signature}"), NOW),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn jwt_oversized_is_malformed() {
        let token = "a".repeat(MAX_CREDENTIAL_BYTES + 1);
        assert!(matches!(
            verify_jwt(SECRET, &token, NOW),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn bearer_jwt_and_bearer_token() {
        assert_eq!(
            parse_authorization("Bearer a.b.c").unwrap(),
            Credential::Jwt("a.b.c".into())
        );
        assert_eq!(
            parse_authorization("bearer dpd_abc").unwrap(),
            Credential::ApiToken("dpd_abc".into())
        );
        assert_eq!(
            parse_authorization("BEARER   a.b.c  ").unwrap(),
            Credential::Jwt("a.b.c".into())
        );
    }

    #[test]
    fn basic_with_empty_user_takes_password() {
        let header = basic_authorization_for_token("dpd_secret");
        assert_eq!(header, format!("Basic {}", STANDARD.encode(":dpd_secret")));
        assert_eq!(
            parse_authorization(&header).unwrap(),
            Credential::ApiToken("dpd_secret".into())
        );
    }

    #[test]
    fn basic_ignores_user_when_password_present() {
        let header = format!("basic {}", STANDARD.encode("someone:dpd_pw"));
        assert_eq!(
            parse_authorization(&header).unwrap(),
            Credential::ApiToken("dpd_pw".into())
        );
    }

    #[test]
    fn basic_with_empty_password_takes_user() {
        let header = format!("Basic {}", STANDARD.encode("dpd_user:"));
        assert_eq!(
            parse_authorization(&header).unwrap(),
            Credential::ApiToken("dpd_user".into())
        );
    }

    #[test]
    fn bad_authorization_headers_are_malformed() {
        for header in [
            "".to_owned(),
            "Bearer".to_owned(),
            "Bearer ".to_owned(),
            "Token abc".to_owned(),
            "Basic !!!notbase64".to_owned(),
            format!("Basic {}", STANDARD.encode("nocolon")),
            format!("Basic {}", STANDARD.encode(":")),
            format!("Basic {}", STANDARD.encode([0xff, b':', 0xfe])),
            format!("Bearer {}", "a".repeat(MAX_CREDENTIAL_BYTES)),
        ] {
            assert!(
                matches!(parse_authorization(&header), Err(AuthError::Malformed(_))),
                "{header:?}"
            );
        }
    }
}
