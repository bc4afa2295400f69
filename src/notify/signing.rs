//! Webhook signatures: HMAC-SHA256 over the exact body bytes with the notifier's secret, sent
//! as `X-Deployd-Signature: sha256=<lowercase hex>` (the form GitHub's webhooks use, so common
//! receivers verify it unchanged). Pure.

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

/// Bytes of randomness in a generated secret (256 bits, the HMAC-SHA256 block-size class).
const SECRET_BYTES: usize = 32;

/// The signature header's value for `body`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .expect("invariant: HMAC accepts a key of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A new random secret (hex), for a notifier created without one.
pub fn generate_secret() -> String {
    let mut bytes = [0u8; SECRET_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_matches_rfc_4231_test_case_2() {
        // RFC 4231, test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn generated_secrets_differ() {
        assert_ne!(generate_secret(), generate_secret());
        assert_eq!(generate_secret().len(), SECRET_BYTES * 2);
    }
}
