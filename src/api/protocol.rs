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
