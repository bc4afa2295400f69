//! The push protocol: the frames an external builder (`deployd push`) and the server exchange
//! over the WebSocket at `/v1/apps/{app}/push`. Shared by the server and the client so both
//! sides spell every frame the same way.
//!
//! The upgrade request carries `Authorization: Bearer <jwt>` or `Basic base64(":" + token)`.
//! Every frame is one JSON object in a text frame.
//!
//! | direction | frame | meaning |
//! |---|---|---|
//! | client → server | `{"type":"start","git_ref":"abc"}` | create the deployment (`git_ref` may be null/absent: one is generated) |
//! | server → client | `{"type":"deployment","deployment":{…}}` | the created deployment (API shape); `status` is `building`, or `queued` when another deployment of the app is in progress |
//! | server → client | `{"type":"status","status":"building"}` | the deployment's status changed (also the answer to a client `status` frame) |
//! | client → server | `{"type":"logs","batch":7,"stream":"stdout","lines":["…","…"]}` | append lines (`stream` is `stdout` (default) or `stderr`) |
//! | server → client | `{"type":"ack","batch":7,"last_line":1234}` | every line up to `last_line` is durable |
//! | client → server | `{"type":"status","status":"pushing"}` | move the deployment |
//! | client → server | `{"type":"image_size","bytes":123}` | record the image size |
//! | server → client | `{"type":"error","code":"…","error":"…","batch":7?}` | the frame was refused; nothing changed |
//!
//! Logs and status changes are refused (`code: "queued"`) while the deployment is queued: the
//! client waits for `{"type":"status","status":"building"}`. After a terminal status the server
//! sends the `status` frame and closes the socket normally. If the socket ends before a terminal
//! status, the deployment becomes `aborted` (or `timeout-error` from `starting`).

use serde::{Deserialize, Serialize};

use crate::status::Status;

/// Largest accepted text frame from a pusher (a batch of lines), in bytes.
pub const MAX_PUSH_FRAME_BYTES: usize = 8 * 1024 * 1024;

/// Frames a pusher sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    Start {
        #[serde(default)]
        git_ref: Option<String>,
    },
    Logs {
        #[serde(default)]
        batch: u64,
        #[serde(default)]
        stream: PushStream,
        lines: Vec<String>,
    },
    Status {
        status: Status,
    },
    ImageSize {
        bytes: u64,
    },
}

impl ClientFrame {
    /// Parses a client frame in one pass.
    ///
    /// serde's internally tagged enums buffer the whole frame into an intermediate tree before
    /// picking the variant; a `logs` frame is a megabyte of strings on the ingest hot path, so
    /// this reads every field into one flat struct instead, then checks the variant's fields.
    pub fn from_json(text: &str) -> Result<ClientFrame, serde_json::Error> {
        use serde::de::Error;
        let flat: FlatClientFrame = serde_json::from_str(text)?;
        let allowed: &[&str] = match flat.kind.as_str() {
            "start" => &["git_ref"],
            "logs" => &["batch", "stream", "lines"],
            "status" => &["status"],
            "image_size" => &["bytes"],
            other => {
                return Err(serde_json::Error::unknown_variant(
                    other,
                    &["start", "logs", "status", "image_size"],
                ))
            }
        };
        let present = [
            ("git_ref", flat.git_ref.is_some()),
            ("batch", flat.batch.is_some()),
            ("stream", flat.stream.is_some()),
            ("lines", flat.lines.is_some()),
            ("status", flat.status.is_some()),
            ("bytes", flat.bytes.is_some()),
        ];
        if let Some((field, _)) = present
            .iter()
            .find(|(field, is_set)| *is_set && !allowed.contains(field))
        {
            return Err(serde_json::Error::custom(format!(
                "unexpected field `{field}` in a `{}` frame",
                flat.kind
            )));
        }
        Ok(match flat.kind.as_str() {
            "start" => ClientFrame::Start {
                git_ref: flat.git_ref,
            },
            "logs" => ClientFrame::Logs {
                batch: flat.batch.unwrap_or(0),
                stream: flat.stream.unwrap_or_default(),
                lines: flat
                    .lines
                    .ok_or_else(|| serde_json::Error::missing_field("lines"))?,
            },
            "status" => ClientFrame::Status {
                status: flat
                    .status
                    .ok_or_else(|| serde_json::Error::missing_field("status"))?,
            },
            _ => ClientFrame::ImageSize {
                bytes: flat
                    .bytes
                    .ok_or_else(|| serde_json::Error::missing_field("bytes"))?,
            },
        })
    }
}

/// Every field any client frame has (see [`ClientFrame::from_json`]).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FlatClientFrame {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    git_ref: Option<String>,
    #[serde(default)]
    batch: Option<u64>,
    #[serde(default)]
    stream: Option<PushStream>,
    #[serde(default)]
    lines: Option<Vec<String>>,
    #[serde(default)]
    status: Option<Status>,
    #[serde(default)]
    bytes: Option<u64>,
}

/// The output a pushed batch came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PushStream {
    #[default]
    Stdout,
    Stderr,
}

/// Frames the server sends to a pusher.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Deployment {
        deployment: serde_json::Value,
    },
    Status {
        status: Status,
    },
    Ack {
        batch: u64,
        last_line: u64,
    },
    Error {
        code: String,
        error: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        batch: Option<u64>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fast_parser_agrees_with_serde() {
        let frames = [
            r#"{"type":"start","git_ref":"abc"}"#,
            r#"{"type":"start"}"#,
            r#"{"type":"start","git_ref":null}"#,
            r#"{"type":"logs","batch":7,"lines":["a","b\nc"]}"#,
            r#"{"type":"logs","stream":"stderr","lines":[]}"#,
            r#"{"type":"status","status":"pushing"}"#,
            r#"{"type":"image_size","bytes":12}"#,
        ];
        for text in frames {
            let slow: ClientFrame = serde_json::from_str(text).expect(text);
            assert_eq!(ClientFrame::from_json(text).expect(text), slow, "{text}");
        }
    }

    #[test]
    fn bad_frames_are_refused() {
        for text in [
            r#"{"type":"nope"}"#,
            r#"{"type":"logs"}"#,
            r#"{"type":"logs","lines":"x"}"#,
            r#"{"type":"status","status":"done"}"#,
            r#"{"type":"status","status":"success","lines":[]}"#,
            r#"{"type":"start","extra":1}"#,
            r#"{"lines":[]}"#,
            "not json",
        ] {
            assert!(ClientFrame::from_json(text).is_err(), "{text}");
            assert!(serde_json::from_str::<ClientFrame>(text).is_err(), "{text}");
        }
    }
}
