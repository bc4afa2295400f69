//! The push protocol: the frames an external builder (`deployd push`) and the server exchange
//! over the WebSocket at `/v1/apps/{app}/push`. Shared by the server and the client so both
//! sides spell every frame the same way.
//!
//! The upgrade request carries `Authorization: Bearer <jwt>` or `Basic base64(":" + token)`.
//! Every frame is one JSON object in a text message (or, once negotiated, a binary `logs`
//! message: [`encode_binary_logs`]), at most [`MAX_PUSH_FRAME_BYTES`]. A frame
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
//! | client | binary `logs` | a binary message: kind `0x01` (1 byte), stream (1 byte: 0 stdout, 1 stderr), `batch` (u64), line count N (u32), then N times a line's length (u32) and its UTF-8 bytes; integers big-endian, nothing after the last line | the same append as a JSON `logs` frame (answered by the same `ack`), without JSON escaping; only after the server granted `binary_logs`. Without that grant a binary message is answered `bad_frame` and changes nothing; with it, one that breaks the layout closes the socket with 1002 (1007 for a line that is not UTF-8) and nothing of it is stored |
//! | client | `{"type":"start",…,"capabilities":["binary_logs"]}` | `capabilities`: array of strings, optional; unknown names are ignored | asks for optional frames; the only one so far is `binary_logs` |
//! | server | `{"type":"deployment",…,"capabilities":["binary_logs"]}` | `capabilities`: what the server grants out of what `start` asked (absent when nothing was asked) | a pusher uses only what is granted, so old servers and old pushers keep to JSON |
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

use std::borrow::Cow;

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
        Self::from_json_with_capabilities(text).map(|(frame, _)| frame)
    }

    /// [`Self::from_json`], plus the capabilities a `start` frame asks for (none for the
    /// other frames, which may not carry the field).
    pub fn from_json_with_capabilities(
        text: &str,
    ) -> Result<(ClientFrame, Capabilities), serde_json::Error> {
        let (frame, capabilities) = ParsedFrame::from_json_with_capabilities(text)?;
        Ok((frame.into_owned(), capabilities))
    }
}

/// A client frame as the server parses it: a `logs` frame's lines borrow from the frame's
/// text when they hold no escape (most build output), so a batch costs no allocation per line
/// (they are packed into the store's `Lines` next). Every other frame is a [`ClientFrame`].
#[derive(Debug, Clone, PartialEq)]
pub enum ParsedFrame<'a> {
    Logs {
        batch: u64,
        stream: LogStream,
        lines: Vec<Cow<'a, str>>,
    },
    Other(ClientFrame),
}

impl<'a> ParsedFrame<'a> {
    /// Parses a client frame in one pass (see [`ClientFrame::from_json`]).
    pub fn from_json(text: &'a str) -> Result<ParsedFrame<'a>, serde_json::Error> {
        Self::from_json_with_capabilities(text).map(|(frame, _)| frame)
    }

    /// The frame with its lines owned.
    pub fn into_owned(self) -> ClientFrame {
        match self {
            ParsedFrame::Logs {
                batch,
                stream,
                lines,
            } => ClientFrame::Logs {
                batch,
                stream,
                lines: lines.into_iter().map(Cow::into_owned).collect(),
            },
            ParsedFrame::Other(frame) => frame,
        }
    }

    /// [`Self::from_json`], plus the capabilities a `start` frame asks for (none for the
    /// other frames, which may not carry the field).
    pub fn from_json_with_capabilities(
        text: &'a str,
    ) -> Result<(ParsedFrame<'a>, Capabilities), serde_json::Error> {
        use serde::de::Error;
        let flat: FlatClientFrame<'a> = serde_json::from_str(text)?;
        let allowed: &[&str] = match flat.kind.as_str() {
            "start" => &["git_ref", "capabilities"],
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
            ("capabilities", flat.capabilities.is_some()),
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
        let capabilities =
            Capabilities::from_names(flat.capabilities.iter().flatten().map(String::as_str));
        let frame = match flat.kind.as_str() {
            "start" => ClientFrame::Start {
                git_ref: flat.git_ref,
            },
            "logs" => {
                let lines = flat
                    .lines
                    .ok_or_else(|| serde_json::Error::missing_field("lines"))?;
                let logs = ParsedFrame::Logs {
                    batch: flat.batch.unwrap_or(0),
                    stream: flat.stream.map_or_else(default_stream, |s| s.0),
                    lines: lines.into_iter().map(|line| line.0).collect(),
                };
                return Ok((logs, capabilities));
            }
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
        };
        Ok((ParsedFrame::Other(frame), capabilities))
    }
}

/// One line of a `logs` frame, borrowed from the frame's text when it holds no escape.
#[derive(Deserialize)]
#[serde(transparent)]
struct PushedLine<'a>(#[serde(borrow)] Cow<'a, str>);

/// Every field any client frame has (see [`ClientFrame::from_json`]).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FlatClientFrame<'a> {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    git_ref: Option<String>,
    #[serde(default)]
    batch: Option<u64>,
    #[serde(default)]
    stream: Option<OptionalStream>,
    #[serde(default)]
    #[serde(borrow)]
    lines: Option<Vec<PushedLine<'a>>>,
    #[serde(default)]
    status: Option<Status>,
    #[serde(default)]
    bytes: Option<u64>,
    #[serde(default)]
    capabilities: Option<Vec<String>>,
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

/// The text of the `deployment` frame answering `start`, with the capabilities granted (the
/// field is absent when `start` asked for none, so such a pusher sees the frame it always saw).
pub fn deployment_frame_text(deployment: serde_json::Value, granted: Capabilities) -> String {
    let mut text = serde_json::to_string(&ServerFrame::Deployment { deployment })
        .expect("invariant: server frames serialise");
    if granted != Capabilities::default() {
        // The frame is an object: its closing brace is the last byte.
        text.pop();
        text.push_str(r#","capabilities":"#);
        text.push_str(&serde_json::json!(granted.names()).to_string());
        text.push('}');
    }
    text
}

/// The text of a `start` frame asking for `asked` (the frame it always was when none).
pub fn start_frame_text(git_ref: Option<String>, asked: Capabilities) -> String {
    let mut text = serde_json::to_string(&ClientFrame::Start { git_ref })
        .expect("invariant: client frames serialise");
    if asked != Capabilities::default() {
        // The frame is an object: its closing brace is the last byte.
        text.pop();
        text.push_str(r#","capabilities":"#);
        text.push_str(&serde_json::json!(asked.names()).to_string());
        text.push('}');
    }
    text
}

/// The capabilities a server frame's text grants (none for a frame without the field, such as
/// every frame of a server that predates them).
pub fn granted_capabilities(text: &str) -> Capabilities {
    #[derive(Deserialize)]
    struct Granted {
        #[serde(default)]
        capabilities: Vec<String>,
    }
    serde_json::from_str::<Granted>(text)
        .map(|g| Capabilities::from_names(g.capabilities.iter().map(String::as_str)))
        .unwrap_or_default()
}
// ---- The binary `logs` frame -------------------------------------------------------------

/// The capabilities a pusher may ask for in `start` (`"capabilities":[…]`) and the server
/// grants in its `deployment` answer: only what both sides know is used, so an old server
/// (which answers none) or an old client (which asks none) keeps to JSON frames.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// `binary_logs`: `logs` batches may come as binary messages ([`encode_binary_logs`]).
    pub binary_logs: bool,
}

/// The wire name of [`Capabilities::binary_logs`].
pub const BINARY_LOGS: &str = "binary_logs";

impl Capabilities {
    /// From the names in a frame; unknown names are ignored (a newer peer's).
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        let mut caps = Self::default();
        for name in names {
            if name == BINARY_LOGS {
                caps.binary_logs = true;
            }
        }
        caps
    }

    /// The names, for a frame (empty when none).
    pub fn names(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if self.binary_logs {
            names.push(BINARY_LOGS);
        }
        names
    }
}

/// First byte of a binary `logs` message: its kind (the only one so far), so that a later
/// binary frame kind gets a byte of its own instead of a new negotiation.
pub const BINARY_LOGS_KIND: u8 = 0x01;
/// Bytes before the first line: kind, stream, batch (u64), line count (u32).
pub const BINARY_LOGS_HEADER_BYTES: usize = 1 + 1 + 8 + 4;
/// Bytes of each line's length prefix (u32, big-endian).
const BINARY_LINE_PREFIX_BYTES: usize = 4;

/// A decoded binary `logs` message: the same append as a JSON `logs` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryLogs<'a> {
    pub batch: u64,
    pub stream: LogStream,
    /// The lines, borrowed from the message.
    pub lines: Vec<&'a str>,
}

/// Why a binary message is not a `logs` frame. Each closes the socket (a pusher whose
/// encoder is broken cannot be trusted with the next byte either), with [`Self::close_code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BinaryFrameError {
    #[error("binary frame: {0}")]
    Malformed(&'static str),
    #[error("binary frame: line {0} is not UTF-8")]
    NotUtf8(usize),
}

impl BinaryFrameError {
    /// The RFC 6455 close code: 1007 for a line that is not UTF-8 (data inconsistent with the
    /// message's type), 1002 for a breach of the layout.
    pub fn close_code(&self) -> u16 {
        match self {
            BinaryFrameError::Malformed(_) => 1002,
            BinaryFrameError::NotUtf8(_) => 1007,
        }
    }
}

fn stream_byte(stream: LogStream) -> u8 {
    match stream {
        LogStream::Stdout => 0,
        LogStream::Stderr => 1,
        // Never sent by a pusher (the server refuses it): encoded as the refused value.
        LogStream::System => 2,
    }
}

/// Encodes a binary `logs` message (layout in the module's table).
pub fn encode_binary_logs<'a>(
    batch: u64,
    stream: LogStream,
    lines: impl ExactSizeIterator<Item = &'a str> + Clone,
) -> Vec<u8> {
    let text: usize = lines.clone().map(str::len).sum();
    let mut out = Vec::with_capacity(
        BINARY_LOGS_HEADER_BYTES + lines.len() * BINARY_LINE_PREFIX_BYTES + text,
    );
    out.push(BINARY_LOGS_KIND);
    out.push(stream_byte(stream));
    out.extend_from_slice(&batch.to_be_bytes());
    out.extend_from_slice(&(lines.len() as u32).to_be_bytes());
    for line in lines {
        out.extend_from_slice(&(line.len() as u32).to_be_bytes());
        out.extend_from_slice(line.as_bytes());
    }
    out
}

/// Decodes a binary `logs` message. Refuses (and allocates nothing beyond what the message
/// itself proves is there) anything that is not exactly the layout: a short header, another
/// kind, a stream other than stdout/stderr, a count or a length running past the end, bytes
/// after the last line, a line that is not UTF-8.
pub fn decode_binary_logs(bytes: &[u8]) -> Result<BinaryLogs<'_>, BinaryFrameError> {
    use BinaryFrameError::Malformed;
    let Some((header, mut rest)) = bytes.split_first_chunk::<BINARY_LOGS_HEADER_BYTES>() else {
        return Err(Malformed("shorter than its header"));
    };
    if header[0] != BINARY_LOGS_KIND {
        return Err(Malformed("unknown kind"));
    }
    let stream = match header[1] {
        0 => LogStream::Stdout,
        1 => LogStream::Stderr,
        _ => return Err(Malformed("stream must be 0 (stdout) or 1 (stderr)")),
    };
    let mut batch = [0; 8];
    batch.copy_from_slice(&header[2..10]);
    let mut count = [0; 4];
    count.copy_from_slice(&header[10..14]);
    let count = u32::from_be_bytes(count) as usize;
    // Every line takes at least its prefix: a count the message cannot hold is refused before
    // anything is allocated for it.
    if count > rest.len() / BINARY_LINE_PREFIX_BYTES {
        return Err(Malformed("more lines announced than the message holds"));
    }
    let mut lines = Vec::with_capacity(count);
    for i in 0..count {
        let Some((len, after)) = rest.split_first_chunk::<BINARY_LINE_PREFIX_BYTES>() else {
            return Err(Malformed("a line's length runs past the end"));
        };
        let len = u32::from_be_bytes(*len) as usize;
        if len > after.len() {
            return Err(Malformed("a line runs past the end"));
        }
        let (line, after) = after.split_at(len);
        let line = std::str::from_utf8(line).map_err(|_| BinaryFrameError::NotUtf8(i))?;
        lines.push(line);
        rest = after;
    }
    if !rest.is_empty() {
        return Err(Malformed("bytes after the last line"));
    }
    Ok(BinaryLogs {
        batch: u64::from_be_bytes(batch),
        stream,
        lines,
    })
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
    fn logs_lines_without_escapes_are_borrowed_from_the_frame_text() {
        let text = r#"{"lines":["plain","tab\there"],"type":"logs","stream":"stderr","batch":3}"#;
        let Ok(ParsedFrame::Logs {
            batch,
            stream,
            lines,
        }) = ParsedFrame::from_json(text)
        else {
            panic!("a logs frame")
        };
        assert_eq!((batch, stream), (3, LogStream::Stderr));
        assert!(matches!(lines[0], Cow::Borrowed("plain")));
        assert!(matches!(&lines[1], Cow::Owned(line) if line == "tab\there"));
        assert_eq!(
            ParsedFrame::from_json(text)
                .map(ParsedFrame::into_owned)
                .ok(),
            serde_json::from_str::<ClientFrame>(text).ok()
        );
    }

    #[test]
    fn binary_logs_frames_decode_to_what_was_encoded() {
        let lines = ["a", "", "é \"quoted\" \\ \u{0}", "b\nc"];
        let bytes = encode_binary_logs(7, LogStream::Stderr, lines.iter().copied());
        assert_eq!(
            bytes.len(),
            BINARY_LOGS_HEADER_BYTES + 4 * 4 + lines.concat().len()
        );
        assert_eq!(
            decode_binary_logs(&bytes),
            Ok(BinaryLogs {
                batch: 7,
                stream: LogStream::Stderr,
                lines: lines.to_vec(),
            })
        );
        let empty = encode_binary_logs(u64::MAX, LogStream::Stdout, std::iter::empty());
        assert_eq!(decode_binary_logs(&empty).map(|l| l.lines.len()), Ok(0));
    }

    #[test]
    fn hostile_binary_frames_are_refused_with_the_close_code_that_says_why() {
        let good = encode_binary_logs(1, LogStream::Stdout, ["abc", "de"].into_iter());
        let with = |at: usize, byte: u8| {
            let mut b = good.clone();
            b[at] = byte;
            b
        };
        let mut trailing = good.clone();
        trailing.push(0);
        let mut huge_count = good.clone();
        huge_count[10..14].copy_from_slice(&u32::MAX.to_be_bytes());
        let mut long_line = good.clone();
        long_line[14..18].copy_from_slice(&1000u32.to_be_bytes());
        let not_utf8 = with(BINARY_LOGS_HEADER_BYTES + 4, 0xFF);
        let cases: Vec<(&str, Vec<u8>, u16)> = vec![
            ("empty", Vec::new(), 1002),
            (
                "short header",
                good[..BINARY_LOGS_HEADER_BYTES - 1].to_vec(),
                1002,
            ),
            ("unknown kind", with(0, 0x02), 1002),
            ("system stream", with(1, 2), 1002),
            ("unknown stream", with(1, 9), 1002),
            ("count past the end", huge_count, 1002),
            ("fewer lines than counted", with(13, 3), 1002),
            ("line past the end", long_line, 1002),
            ("truncated line", good[..good.len() - 1].to_vec(), 1002),
            ("trailing bytes", trailing, 1002),
            ("not UTF-8", not_utf8, 1007),
        ];
        for (what, bytes, code) in cases {
            let err = decode_binary_logs(&bytes).expect_err(what);
            assert_eq!(err.close_code(), code, "{what}: {err}");
        }
    }

    #[test]
    fn capabilities_are_asked_in_start_and_granted_in_the_deployment_frame_only() {
        let (frame, asked) = ClientFrame::from_json_with_capabilities(
            r#"{"type":"start","git_ref":"x","capabilities":["binary_logs","from_the_future"]}"#,
        )
        .unwrap();
        assert_eq!(
            frame,
            ClientFrame::Start {
                git_ref: Some("x".into())
            }
        );
        assert_eq!(asked, Capabilities { binary_logs: true });
        let (_, none) = ClientFrame::from_json_with_capabilities(r#"{"type":"start"}"#).unwrap();
        assert_eq!(none, Capabilities::default());
        assert!(
            ClientFrame::from_json(r#"{"type":"logs","lines":[],"capabilities":[]}"#).is_err(),
            "only start carries capabilities"
        );
        let deployment = serde_json::json!({"id": "d"});
        let old = deployment_frame_text(deployment.clone(), Capabilities::default());
        assert_eq!(old, r#"{"type":"deployment","deployment":{"id":"d"}}"#);
        assert_eq!(granted_capabilities(&old), Capabilities::default());
        let start = start_frame_text(Some("x".into()), asked);
        assert_eq!(
            ClientFrame::from_json_with_capabilities(&start).unwrap(),
            (frame, asked)
        );
        assert_eq!(
            start_frame_text(None, Capabilities::default()),
            r#"{"type":"start","git_ref":null}"#
        );
        let granted = deployment_frame_text(deployment, asked);
        assert_eq!(granted_capabilities(&granted), asked);
        // An old client reads the frame as it always did.
        assert!(matches!(
            serde_json::from_str::<ServerFrame>(&granted),
            Ok(ServerFrame::Deployment { .. })
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
