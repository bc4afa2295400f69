//! The push protocol: the frames an external builder (`deployd push`) and the server exchange
//! over the WebSocket at `/v1/apps/{app}/push`. Shared by the server and the client so both
//! sides spell every frame the same way.
//!
//! The upgrade request carries `Authorization: Bearer <jwt>` or `Basic base64(":" + token)`.
//! Every frame is one JSON object in a text message, at most [`MAX_PUSH_FRAME_BYTES`]. A frame
//! whose `type` is not in the table (reserved rows included), or with a field its type does not
//! have, is refused with `bad_frame` and changes nothing.
//!
//! Every push frame, both ways. Rows marked *reserved* are documentation only: they name what
//! later issues add, so nobody spends the names on something else; today they are refused (or,
//! for a field, not sent).
//!
//! | sent by | frame | fields | meaning |
//! |---|---|---|---|
//! | client | `{"type":"start","git_ref":"abc"}` | `git_ref`: string, optional (absent, null or blank: one is generated) | the first frame, within 30 s: create the deployment. Another first text frame gets an error (`not_started`, or `bad_frame` when unreadable) and the socket closes, as it does on anything else; a second `start` gets `already_started` |
//! | server | `{"type":"deployment","deployment":{…}}` | `deployment`: the API's deployment object | the answer to `start`: `status` is `building`, or `queued` while another deployment of the app is in progress |
//! | client | `{"type":"logs","batch":7,"stream":"stdout","lines":["…","…"]}` | `batch`: integer (default 0; the client numbers from 1); `stream`: `stdout` (default) or `stderr`, never `system` (deployd's own lines); `lines`: array of strings, required | append lines, in frame order; several batches may be in flight |
//! | server | `{"type":"ack","batch":7,"last_line":1234}` | `batch`: the acknowledged batch; `last_line`: the deployment's last durable line number | every line up to `last_line` is durable (so every earlier batch is acknowledged too) |
//! | server | `{"type":"ack",…,"dropped":3}` | `dropped`: how many lines of the batch were refused because the deployment reached `[retention] max_log_bytes` (absent when none; `last_line` counts stored lines only, the one `!     Log limit of N bytes reached; further output dropped` line included) | the deployment goes on; output past the limit is not stored |
//! | server | `{"type":"ack",…,"cut":2}` *reserved* | `cut`: how many lines of the batch the server dropped or cut (at 64 KiB) | lets a pusher report what was not stored as sent; absent today |
//! | client | `{"type":"status","status":"pushing"}` | `status`: a status name | move the deployment, after the batches sent before it are committed |
//! | server | `{"type":"status","status":"building"}` | `status`: a status name | the status changed: the answer to a client `status`, or a change made by deployd (out of `queued`; ended because the app was deleted) |
//! | client | `{"type":"image_size","bytes":123}` | `bytes`: integer | record the image size; answered only when refused |
//! | server | `{"type":"error","code":"…","error":"…","batch":7}` | `code`: `not_started`, `bad_frame`, `already_started`, `queued`, `illegal_transition`, `not_found`, `finished`, `cancelling`, `unavailable`; `error`: text for humans; `batch`: the refused batch, absent for other frames | the frame was refused; nothing changed |
//! | server | `{"type":"cancel","by":"<username>"}` | `by`: who cancelled | a user cancelled the deployment (the line `!     Cancelled by <username>` is already stored): the pusher stops its command and ends the deployment `aborted` (`timeout-error` from `starting`); any other status is refused (`cancelling`). Past `[push] cancel_grace_secs` (default 10) the server ends it and closes the socket |
//! | server | `{"type":"ping"}` | none | sent every 20 s: liveness check through proxies that swallow WebSocket pings |
//! | client | `{"type":"pong"}` | none | the answer to `ping`. A pusher that sends no frame at all (pongs included) for `[push] idle_timeout_secs` (default 120) is lost: its deployment ends `aborted` (`timeout-error` from `starting`) with a line saying why |
//! | client | binary `logs` *reserved* | negotiated in `start` / `deployment` | the same append as `logs` without JSON escaping; today a binary message is answered `bad_frame` |
//!
//! Logs and status changes are refused (`code: "queued"`) while the deployment is queued: the
//! client waits for `{"type":"status","status":"building"}`. After a terminal status the server
//! sends the `status` frame and closes the socket normally. If the socket ends before a terminal
//! status, the deployment becomes `aborted` (or `timeout-error` from `starting`).
//!
//! `start`'s `git_ref` follows the REST trigger's rule (`model::check_git_ref`: at most 256
//! bytes, no control characters); a refused one gets `bad_frame`. When the socket closes because
//! of what the client sent, the close code says why (RFC 6455): 1003 for a binary first frame,
//! 1002 for a first frame that is not `start` or not readable (and any breach of RFC 6455
//! framing), 1007 for a text frame that is not UTF-8, 1008 for an invalid `start` or none within
//! 30 s, 1009 for a message above [`MAX_PUSH_FRAME_BYTES`].

use serde::{Deserialize, Serialize};

use crate::lines::{MAX_BATCH_BYTES, MAX_BATCH_LINES};
use crate::model::LogStream;
use crate::status::Status;

/// Largest accepted text frame from a pusher (a batch of lines), in bytes.
pub const MAX_PUSH_FRAME_BYTES: usize = 8 * 1024 * 1024;

// A full batch always fits one frame: JSON escaping grows a byte up to six (`\u0000`), each line
// adds its quotes and comma, and 1 KiB covers the rest of the frame.
const _: () = assert!(6 * MAX_BATCH_BYTES + 4 * MAX_BATCH_LINES + 1024 < MAX_PUSH_FRAME_BYTES);

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
        #[serde(default = "default_stream", with = "PushedStream")]
        stream: LogStream,
        lines: Vec<String>,
    },
    Status {
        status: Status,
    },
    ImageSize {
        bytes: u64,
    },
    /// The answer to [`ServerFrame::Ping`].
    Pong,
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
            "pong" => &[],
            other => {
                return Err(serde_json::Error::unknown_variant(
                    other,
                    &["start", "logs", "status", "image_size", "pong"],
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
                stream: flat.stream.map_or_else(default_stream, |s| s.0),
                lines: flat
                    .lines
                    .ok_or_else(|| serde_json::Error::missing_field("lines"))?,
            },
            "status" => ClientFrame::Status {
                status: flat
                    .status
                    .ok_or_else(|| serde_json::Error::missing_field("status"))?,
            },
            "pong" => ClientFrame::Pong,
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
    stream: Option<OptionalStream>,
    #[serde(default)]
    lines: Option<Vec<String>>,
    #[serde(default)]
    status: Option<Status>,
    #[serde(default)]
    bytes: Option<u64>,
}

/// A pushed batch's `stream` when the frame has none.
fn default_stream() -> LogStream {
    LogStream::Stdout
}

/// How a [`LogStream`] is spelt in a `logs` frame: `"stdout"` or `"stderr"`. `system` is
/// refused on input, so a pusher cannot write lines that look like deployd's own; it exists
/// here only because serde's remote definitions must list every variant (which also makes a
/// new `LogStream` variant a compile error here until its spelling is decided).
#[derive(Serialize, Deserialize)]
#[serde(remote = "LogStream", rename_all = "snake_case")]
enum PushedStream {
    Stdout,
    Stderr,
    #[serde(skip_deserializing)]
    System,
}

/// The fast parser's optional `stream` field, in [`PushedStream`]'s spelling.
#[derive(Deserialize)]
#[serde(transparent)]
struct OptionalStream(#[serde(with = "PushedStream")] LogStream);

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
        /// Lines of the batch refused past `[retention] max_log_bytes`; absent when none.
        #[serde(default, skip_serializing_if = "is_zero")]
        dropped: u64,
    },
    Error {
        code: String,
        error: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        batch: Option<u64>,
    },
    /// A user cancelled the deployment: stop the command and end it.
    Cancel {
        by: String,
    },
    /// Answer with [`ClientFrame::Pong`] (any frame proves liveness).
    Ping,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
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
            r#"{"type":"pong"}"#,
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
            r#"{"type":"logs","stream":"system","lines":["x"]}"#,
            r#"{"type":"logs","stream":"stdweird","lines":["x"]}"#,
            "not json",
        ] {
            assert!(ClientFrame::from_json(text).is_err(), "{text}");
            assert!(serde_json::from_str::<ClientFrame>(text).is_err(), "{text}");
        }
    }

    #[test]
    fn a_pusher_cannot_write_system_lines_and_is_told_which_streams_exist() {
        let text = r#"{"type":"logs","stream":"system","lines":["x"]}"#;
        let fast = ClientFrame::from_json(text).unwrap_err().to_string();
        let slow = serde_json::from_str::<ClientFrame>(text)
            .unwrap_err()
            .to_string();
        for message in [fast, slow] {
            assert!(
                message.starts_with("unknown variant `system`, expected `stdout` or `stderr`"),
                "{message}"
            );
        }
    }

    #[test]
    fn logs_frames_keep_their_wire_spelling() {
        let frame = ClientFrame::Logs {
            batch: 3,
            stream: LogStream::Stderr,
            lines: vec!["x".into()],
        };
        let text = r#"{"type":"logs","batch":3,"stream":"stderr","lines":["x"]}"#;
        assert_eq!(serde_json::to_string(&frame).unwrap(), text);
        assert_eq!(ClientFrame::from_json(text).unwrap(), frame);
        let defaulted = ClientFrame::from_json(r#"{"type":"logs","stream":null,"lines":[]}"#);
        assert!(matches!(
            defaulted,
            Ok(ClientFrame::Logs {
                stream: LogStream::Stdout,
                ..
            })
        ));
    }

    #[test]
    fn control_frames_keep_their_wire_spelling() {
        let cancel = ServerFrame::Cancel { by: "ann".into() };
        assert_eq!(
            serde_json::to_string(&cancel).unwrap(),
            r#"{"type":"cancel","by":"ann"}"#
        );
        assert_eq!(
            serde_json::to_string(&ServerFrame::Ping).unwrap(),
            r#"{"type":"ping"}"#
        );
        assert_eq!(
            serde_json::to_string(&ClientFrame::Pong).unwrap(),
            r#"{"type":"pong"}"#
        );
        // The server's parser (serde's derive lets a unit variant's extra fields through).
        assert!(ClientFrame::from_json(r#"{"type":"pong","batch":1}"#).is_err());
    }
}
