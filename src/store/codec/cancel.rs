//! The cancel request record (tag `0x0E`, key: deployment id): a cancel accepted (202) for a
//! running deployment that its session has not honoured yet. The writer stores it in the
//! cancel's own commit and deletes it in the commit that ends the deployment, so that a server
//! killed in between still knows, at restart, that the deployment was cancelled and by whom.
//! This module only encodes and decodes; `store::writer` decides when it is written.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{decode, encode, from_nanos, key, nanos, CodecError, TAG_CANCEL_REQUEST};
use crate::model::DeploymentId;

/// A pending cancel, as the writer records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelRequest {
    /// The username of who cancelled (the `Cancelled by` line names them).
    pub by: String,
    /// When the cancel was committed.
    pub at: OffsetDateTime,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct StoredCancelRequest {
    by: String,
    at: i64,
}

/// The key of a deployment's pending cancel.
pub fn cancel_request_key(deployment: DeploymentId) -> Vec<u8> {
    key(TAG_CANCEL_REQUEST, &[deployment.as_bytes()])
}

pub fn encode_cancel_request(request: &CancelRequest) -> Vec<u8> {
    encode(&StoredCancelRequest {
        by: request.by.clone(),
        at: nanos(request.at),
    })
}

pub fn decode_cancel_request(bytes: &[u8]) -> Result<CancelRequest, CodecError> {
    let stored: StoredCancelRequest = decode(bytes)?;
    Ok(CancelRequest {
        by: stored.by,
        at: from_nanos(stored.at)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_cancel_request_bytes() {
        let request = CancelRequest {
            by: "ann".into(),
            at: from_nanos(5).expect("time"),
        };
        let bytes = encode_cancel_request(&request);
        let mut expected = vec![super::super::FORMAT_V1];
        expected.extend(3u64.to_le_bytes());
        expected.extend(b"ann");
        expected.extend(5i64.to_le_bytes());
        assert_eq!(bytes, expected);
        assert_eq!(decode_cancel_request(&bytes).expect("decode"), request);
        assert!(decode_cancel_request(&[9]).is_err());
        let key = cancel_request_key(DeploymentId::from_bytes([4; 16]));
        assert_eq!(key[0], TAG_CANCEL_REQUEST);
        assert_eq!(key[1..], [4; 16]);
    }
}
