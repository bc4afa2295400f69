//! `GET /healthz` and `GET /readyz`: unauthenticated probes for load balancers and
//! orchestrators.
//!
//! `/healthz` says the process answers HTTP (always 200 while it does). `/readyz` says whether
//! it can take writes: the writer is neither failing (a transient store error it retries on its
//! own) nor latched (a failure that needs a restart), and the data directory's file system has
//! at least `limits.min_free_disk_bytes` free. 200 when ready, else 503 with every reason.
//!
//! Reads only: never writes, never takes the writer's queue (a probe must not queue behind a
//! slow disk), and reveals nothing about apps or users.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::AppState;
use crate::store::writer::Health;

/// `GET /healthz`.
pub async fn healthz() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

/// `GET /readyz`.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let mut reasons = Vec::new();
    let store = match state.writer.health() {
        Health::Ready => json!({ "state": "ready" }),
        Health::Failing {
            reason,
            since,
            probes,
        } => {
            reasons.push(format!(
                "the store is failing (refusing writes, retrying on its own): {reason}"
            ));
            json!({
                "state": "failing",
                "reason": reason,
                "failing_for_ms": since.elapsed().as_millis() as u64,
                "probes": probes,
            })
        }
        Health::Latched { reason } => {
            reasons.push(format!(
                "the store refuses writes until deployd restarts: {reason}"
            ));
            json!({ "state": "latched", "reason": reason })
        }
    };
    let min_free = state.config.limits.min_free_disk_bytes;
    let data_dir = state.config.data_dir.clone();
    let free = tokio::task::spawn_blocking(move || free_bytes(&data_dir))
        .await
        .map_err(|err| err.to_string())
        .and_then(|free| free.map_err(|err| err.to_string()));
    let disk = match free {
        Ok(free) => {
            if min_free > 0 && free < min_free {
                reasons.push(format!(
                    "the data directory's file system has {free} bytes free, below \
                     limits.min_free_disk_bytes = {min_free}"
                ));
            }
            json!({ "free_bytes": free, "min_free_bytes": min_free })
        }
        Err(err) => {
            reasons.push(format!(
                "cannot read the data directory's free space: {err}"
            ));
            json!({ "error": err, "min_free_bytes": min_free })
        }
    };
    let ready = reasons.is_empty();
    let mut body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "store": store,
        "disk": disk,
    });
    if !ready {
        body["error"] = json!(reasons.join("; "));
        body["reasons"] = json!(reasons);
    }
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// Bytes available to an unprivileged writer on the file system holding `path`.
pub(crate) fn free_bytes(path: &std::path::Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("the data directory path holds a NUL byte"))?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c_path` is a valid NUL-terminated string and `stat` points to writable memory
    // of the right size; statvfs fills it completely on success and we read it only then.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it initialised the struct.
    let stat = unsafe { stat.assume_init() };
    #[allow(clippy::useless_conversion)] // the field widths differ between targets
    Ok(u64::from(stat.f_bavail).saturating_mul(u64::from(stat.f_frsize)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_of_an_existing_directory_is_read_and_a_missing_one_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(free_bytes(dir.path()).expect("statvfs") > 0);
        assert!(free_bytes(&dir.path().join("missing")).is_err());
    }
}
