//! The client side the scenarios share: `logs` frames built from a pre-serialised line, the
//! substring search subscribers use instead of parsing JSON, app creation over HTTP, and a push
//! connection ([`Push`]) that starts a deployment, sends lines in a window of unacknowledged
//! batches and finishes it.
//!
//! It measures nothing itself beyond the send→ack latency of the batches it sends.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::report::Histogram;
use super::{
    protocol, BenchError, Target, CONNECT_TIMEOUT, FRAME_OVERHEAD_BYTES, INDEX_DIGITS,
    MAX_LINE_BYTES, MAX_WINDOW,
};
use crate::api::protocol::{
    granted_capabilities, start_frame_text, Capabilities, ClientFrame, ServerFrame,
    BINARY_LOGS_HEADER_BYTES, BINARY_LOGS_KIND, MAX_PUSH_FRAME_BYTES,
};
use crate::cli::tls::{describe_http, describe_ws, ClientTls, TlsArgs, TlsSetupError};
use crate::cli::{basic_auth_header, encode_path_segment, http_url, ws_url};
use crate::status::Status;

/// Builds `logs` frames by copying one pre-serialised line; only the batch number and, for
/// numbered lines, the first 10 characters of each line change.
pub(super) struct FrameBuilder {
    /// `"<text>",` : one JSON string and a comma.
    line_json: Vec<u8>,
    numbered: bool,
    /// Added to every line index (`catchup`'s live lines follow the ones stored before).
    first_index: u64,
}

impl FrameBuilder {
    pub(super) fn new(line_bytes: usize, numbered: bool) -> Self {
        // Printable ASCII needing no JSON escape, readable in /output.
        const FILLER: &[u8] =
            b"deployd bench line: the quick brown fox jumps over the lazy dog 0123456789 ";
        let mut line_json = Vec::with_capacity(line_bytes + 3);
        line_json.push(b'"');
        line_json.extend(FILLER.iter().cycle().take(line_bytes));
        line_json.extend_from_slice(b"\",");
        if numbered {
            line_json[1 + INDEX_DIGITS] = b' ';
        }
        Self {
            line_json,
            numbered,
            first_index: 0,
        }
    }

    /// The same frames with line indexes counted from `first_index`.
    pub(super) fn numbered_from(mut self, first_index: u64) -> Self {
        self.first_index = first_index;
        self
    }

    /// The frame of batch `batch` holding lines `first..first + count` (0-based indexes).
    pub(super) fn frame(&self, batch: u64, first: u64, count: usize) -> Message {
        let mut out = Vec::with_capacity(64 + count * self.line_json.len());
        let _ = write!(
            VecWriter(&mut out),
            "{{\"type\":\"logs\",\"batch\":{batch},\"lines\":["
        );
        for i in 0..count as u64 {
            let start = out.len();
            out.extend_from_slice(&self.line_json);
            if self.numbered {
                let mut index = self.first_index + first + i;
                for digit in out[start + 1..start + 1 + INDEX_DIGITS].iter_mut().rev() {
                    *digit = b'0' + (index % 10) as u8;
                    index /= 10;
                }
            }
        }
        if count > 0 {
            out.pop(); // the last comma
        }
        out.extend_from_slice(b"]}");
        let text = String::from_utf8(out).expect("invariant: frames are ASCII");
        Message::Text(text.into())
    }

    /// One line's text as the frames carry it (unquoted; numbered lines start with 10 zeros),
    /// for peers that send the same lines another way (`compare`'s Redis side).
    pub(super) fn line_text(&self) -> Vec<u8> {
        let mut text = self.line_json[1..self.line_json.len() - 2].to_vec();
        if self.numbered {
            text[..INDEX_DIGITS].fill(b'0');
        }
        text
    }
}

/// How `bench ingest` frames its batches (`--frame`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum FrameKind {
    /// JSON `logs` text frames, what every pusher can send
    #[default]
    Json,
    /// Binary `logs` messages (the `binary_logs` capability; the server must grant it)
    Binary,
}

/// Builds binary `logs` messages (`api::protocol::encode_binary_logs`'s layout) by copying one
/// line; only the batch number and, for numbered lines, the first 10 bytes of each line change.
pub(super) struct BinaryFrameBuilder {
    /// A line's length prefix and its text.
    line: Vec<u8>,
    numbered: bool,
}

/// Bytes of a binary line's length prefix.
const BINARY_LINE_PREFIX_BYTES: usize = 4;

impl BinaryFrameBuilder {
    pub(super) fn new(line_bytes: usize, numbered: bool) -> Self {
        let text = FrameBuilder::new(line_bytes, numbered);
        // `"<text>",`: the text without its quotes and comma.
        let text = &text.line_json[1..text.line_json.len() - 2];
        let mut line = Vec::with_capacity(BINARY_LINE_PREFIX_BYTES + text.len());
        line.extend_from_slice(&(text.len() as u32).to_be_bytes());
        line.extend_from_slice(text);
        Self { line, numbered }
    }

    /// The message of batch `batch` holding lines `first..first + count` (0-based indexes).
    pub(super) fn frame(&self, batch: u64, first: u64, count: usize) -> Message {
        let mut out = Vec::with_capacity(BINARY_LOGS_HEADER_BYTES + count * self.line.len());
        out.push(BINARY_LOGS_KIND);
        out.push(0); // stdout
        out.extend_from_slice(&batch.to_be_bytes());
        out.extend_from_slice(&(count as u32).to_be_bytes());
        for i in 0..count as u64 {
            let start = out.len() + BINARY_LINE_PREFIX_BYTES;
            out.extend_from_slice(&self.line);
            if self.numbered {
                let mut index = first + i;
                for digit in out[start..start + INDEX_DIGITS].iter_mut().rev() {
                    *digit = b'0' + (index % 10) as u8;
                    index /= 10;
                }
            }
        }
        Message::Binary(out.into())
    }
}

/// What [`Push::send_lines`] builds its batches with.
pub(super) trait BuildFrame {
    /// The message of batch `batch` holding lines `first..first + count` (0-based indexes).
    fn frame(&self, batch: u64, first: u64, count: usize) -> Message;
}

impl BuildFrame for FrameBuilder {
    fn frame(&self, batch: u64, first: u64, count: usize) -> Message {
        FrameBuilder::frame(self, batch, first, count)
    }
}

impl<T: BuildFrame> BuildFrame for std::sync::Arc<T> {
    fn frame(&self, batch: u64, first: u64, count: usize) -> Message {
        T::frame(self, batch, first, count)
    }
}

impl BuildFrame for AnyFrameBuilder {
    fn frame(&self, batch: u64, first: u64, count: usize) -> Message {
        AnyFrameBuilder::frame(self, batch, first, count)
    }
}

/// Either builder, as `--frame` chose.
pub(super) enum AnyFrameBuilder {
    Json(FrameBuilder),
    Binary(BinaryFrameBuilder),
}

impl AnyFrameBuilder {
    pub(super) fn new(kind: FrameKind, line_bytes: usize, numbered: bool) -> Self {
        match kind {
            FrameKind::Json => Self::Json(FrameBuilder::new(line_bytes, numbered)),
            FrameKind::Binary => Self::Binary(BinaryFrameBuilder::new(line_bytes, numbered)),
        }
    }

    pub(super) fn frame(&self, batch: u64, first: u64, count: usize) -> Message {
        match self {
            Self::Json(builder) => builder.frame(batch, first, count),
            Self::Binary(builder) => builder.frame(batch, first, count),
        }
    }
}

struct VecWriter<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for VecWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// The line index a fanout line starts with.
pub(super) fn parse_index(content: &[u8]) -> Option<u64> {
    let digits = content.get(..INDEX_DIGITS)?;
    let mut value: u64 = 0;
    for d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        value = value * 10 + u64::from(d - b'0');
    }
    Some(value)
}

/// Where `needle` first occurs in `haystack` at or after `from`. memchr's SIMD search (a
/// byte-by-byte window compare was 85 % of the tool's CPU in fanout), with the needle's
/// searcher built once by the caller: `memmem::find` built it on every call, 30 % of the
/// subscriber child's CPU at 1000 subscribers.
pub(super) fn find(
    haystack: &[u8],
    needle: &memchr::memmem::Finder<'_>,
    from: usize,
) -> Option<usize> {
    needle.find(haystack.get(from..)?).map(|p| p + from)
}

pub(super) fn parse_u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    let digits = bytes.get(at..)?;
    let len = digits.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&digits[..len]).ok()?.parse().ok()
}

// ---- HTTP and the push protocol ------------------------------------------------------------

pub(super) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The trusted roots of this run, set once by `run_bench` ([`use_tls`]) before any scenario
/// connects; one `deployd bench` process runs one scenario, so one setting for the process is
/// the command line's.
static TLS: std::sync::OnceLock<ClientTls> = std::sync::OnceLock::new();

/// Sets the roots every HTTP client and WebSocket of this run trusts (`--cacert`).
pub(super) fn use_tls(args: &TlsArgs) -> Result<(), TlsSetupError> {
    let tls = ClientTls::load(args)?;
    // A second call (never made by `run_bench`) keeps the first roots.
    let _ = TLS.set(tls);
    Ok(())
}

/// The roots [`use_tls`] set, else the default ones (no `--cacert`: unit tests, scenarios
/// called directly).
fn tls() -> Result<ClientTls, BenchError> {
    match TLS.get() {
        Some(tls) => Ok(tls.clone()),
        None => ClientTls::load(&TlsArgs::default()).map_err(|e| BenchError::Usage(e.to_string())),
    }
}

pub(super) fn http_client() -> Result<reqwest::Client, BenchError> {
    tls()?
        .http_builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .build()
        .map_err(|e| BenchError::Http(e.to_string()))
}

/// A random lowercase suffix for app names, so runs never collide.
pub(super) fn random_suffix() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..8)
        .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
        .collect()
}

/// Creates an app; returns its name.
pub(super) async fn create_app(
    client: &reqwest::Client,
    target: &Target,
    name: &str,
) -> Result<String, BenchError> {
    let url = http_url(&target.url, "/v1/apps");
    let response = client
        .post(&url)
        .header(
            reqwest::header::AUTHORIZATION,
            basic_auth_header(&target.token),
        )
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(serde_json::json!({ "app": { "name": name } }).to_string())
        .send()
        .await
        .map_err(|e| BenchError::Http(format!("POST {url}: {}", describe_http(&e))))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        return Err(BenchError::Http(format!(
            "POST {url}: HTTP {status}: {body}"
        )));
    }
    Ok(name.to_owned())
}

pub(super) async fn connect(request_url: &str, token: Option<&str>) -> Result<Ws, BenchError> {
    let mut request = request_url
        .into_client_request()
        .map_err(|e| BenchError::Usage(format!("bad URL {request_url}: {e}")))?;
    if let Some(token) = token {
        let auth = HeaderValue::from_str(&basic_auth_header(token))
            .map_err(|_| BenchError::Usage("the token is not a valid header value".into()))?;
        request.headers_mut().insert(AUTHORIZATION, auth);
    }
    let connector = Some(tls()?.ws_connector());
    let connecting =
        tokio_tungstenite::connect_async_tls_with_config(request, None, false, connector);
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(e)) => Err(BenchError::Http(format!(
            "connect {request_url}: {}",
            describe_ws(&e, request_url)
        ))),
        Err(_) => Err(BenchError::Http(format!(
            "connect {request_url}: timed out"
        ))),
    }
}

/// One pusher connection with a started deployment.
pub(super) struct Push {
    tx: SplitSink<Ws, Message>,
    rx: SplitStream<Ws>,
    pub(super) deployment: String,
}

fn client_frame(frame: &ClientFrame) -> Message {
    Message::Text(
        serde_json::to_string(frame)
            .expect("invariant: client frames serialise")
            .into(),
    )
}

/// The next server frame (pings and pongs skipped).
async fn next_frame(rx: &mut SplitStream<Ws>) -> Result<ServerFrame, BenchError> {
    loop {
        match rx.next().await {
            Some(Ok(Message::Text(body))) => {
                return serde_json::from_str(&body)
                    .map_err(|e| protocol(format!("bad server frame {body}: {e}")))
            }
            Some(Ok(Message::Close(frame))) => {
                return Err(protocol(format!(
                    "the server closed the push socket: {frame:?}"
                )))
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(protocol(format!("push socket: {e}"))),
            None => return Err(protocol("the server closed the push socket")),
        }
    }
}

impl Push {
    /// Connects to the app's push endpoint and starts a deployment (it must reach `building`).
    pub(super) async fn start(target: &Target, app: &str) -> Result<Push, BenchError> {
        let url = ws_url(
            &target.url,
            &format!("/v1/apps/{}/push", encode_path_segment(app)),
        )
        .map_err(|e| BenchError::Usage(e.to_string()))?;
        let ws = connect(&url, Some(&target.token)).await?;
        let (mut tx, mut rx) = ws.split();
        tx.send(client_frame(&ClientFrame::Start {
            git_ref: Some("bench".into()),
        }))
        .await
        .map_err(protocol)?;
        let deployment = match next_frame(&mut rx).await? {
            ServerFrame::Deployment { deployment } => deployment,
            other => {
                return Err(protocol(format!(
                    "expected a deployment frame, got {other:?}"
                )))
            }
        };
        let id = deployment["id"]
            .as_str()
            .ok_or_else(|| protocol("the deployment frame has no id"))?
            .to_owned();
        if deployment["status"].as_str() != Some("building") {
            return Err(protocol(format!(
                "the bench deployment is {} (another deployment of the app is in progress?)",
                deployment["status"]
            )));
        }
        Ok(Push {
            tx,
            rx,
            deployment: id,
        })
    }

    /// Like [`Push::start`], asking for the capabilities `frame` needs: fails when the server
    /// does not grant them (it predates binary `logs` frames).
    pub(super) async fn start_for(
        target: &Target,
        app: &str,
        frame: FrameKind,
    ) -> Result<Push, BenchError> {
        if frame == FrameKind::Json {
            return Push::start(target, app).await;
        }
        let asked = Capabilities { binary_logs: true };
        let url = ws_url(
            &target.url,
            &format!("/v1/apps/{}/push", encode_path_segment(app)),
        )
        .map_err(|e| BenchError::Usage(e.to_string()))?;
        let ws = connect(&url, Some(&target.token)).await?;
        let (mut tx, mut rx) = ws.split();
        tx.send(Message::Text(
            start_frame_text(Some("bench".into()), asked).into(),
        ))
        .await
        .map_err(protocol)?;
        let text = loop {
            match rx.next().await {
                Some(Ok(Message::Text(text))) => break text,
                Some(Ok(Message::Close(frame))) => {
                    return Err(protocol(format!(
                        "the server closed the push socket: {frame:?}"
                    )))
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(protocol(format!("push socket: {e}"))),
                None => return Err(protocol("the server closed the push socket")),
            }
        };
        let frame: ServerFrame = serde_json::from_str(&text)
            .map_err(|e| protocol(format!("bad server frame {text}: {e}")))?;
        let ServerFrame::Deployment { deployment } = frame else {
            return Err(protocol(format!("expected a deployment frame, got {text}")));
        };
        if granted_capabilities(&text) != asked {
            return Err(protocol(
                "the server does not offer binary logs frames (--frame binary)",
            ));
        }
        if deployment["status"].as_str() != Some("building") {
            return Err(protocol(format!(
                "the bench deployment is {} (another deployment of the app is in progress?)",
                deployment["status"]
            )));
        }
        let id = deployment["id"]
            .as_str()
            .ok_or_else(|| protocol("the deployment frame has no id"))?
            .to_owned();
        Ok(Push {
            tx,
            rx,
            deployment: id,
        })
    }

    /// Sends `lines` lines in batches of `batch`, at most `window` unacknowledged; paces batches
    /// at `rate` lines/s when not 0. Calls `on_ack(batch, instant)` for every ack; returns the
    /// send→ack latency histogram and the instant the first batch was sent.
    pub(super) async fn send_lines(
        &mut self,
        frames: &impl BuildFrame,
        lines: u64,
        batch: usize,
        window: usize,
        rate: u64,
        mut on_ack: impl FnMut(u64, Instant),
    ) -> Result<(Histogram, Instant), BenchError> {
        let batch_lines = batch as u64;
        let batches = lines.div_ceil(batch_lines);
        let mut in_flight: VecDeque<(u64, Instant)> = VecDeque::with_capacity(window);
        let mut latency = Histogram::default();
        let mut next = 0u64;
        let started = Instant::now();
        let batch_interval =
            (rate > 0).then(|| Duration::from_secs_f64(batch_lines as f64 / rate as f64));
        while next < batches || !in_flight.is_empty() {
            // Send what the window (and the pace) allows, then flush once.
            let mut sent_any = false;
            while next < batches && in_flight.len() < window {
                if let Some(interval) = batch_interval {
                    let due = started + interval.mul_f64(next as f64);
                    if Instant::now() < due {
                        if sent_any || !in_flight.is_empty() {
                            break;
                        }
                        tokio::time::sleep_until(due).await;
                    }
                }
                let first = next * batch_lines;
                let count = batch_lines.min(lines - first) as usize;
                self.tx
                    .feed(frames.frame(next, first, count))
                    .await
                    .map_err(protocol)?;
                in_flight.push_back((next, Instant::now()));
                next += 1;
                sent_any = true;
            }
            if sent_any {
                self.tx.flush().await.map_err(protocol)?;
            }
            if in_flight.is_empty() {
                continue;
            }
            // Wait for an ack, or for the next batch's turn when pacing.
            let frame = match batch_interval.filter(|_| next < batches && in_flight.len() < window)
            {
                Some(interval) => {
                    let due = started + interval.mul_f64(next as f64);
                    match tokio::time::timeout_at(due, next_frame(&mut self.rx)).await {
                        Ok(frame) => frame?,
                        Err(_) => continue,
                    }
                }
                None => next_frame(&mut self.rx).await?,
            };
            match frame {
                ServerFrame::Ack {
                    batch: acked,
                    dropped,
                    ..
                } => {
                    if dropped > 0 {
                        // Every figure would count lines the server did not store.
                        return Err(protocol(format!(
                            "the server dropped {dropped} lines of batch {acked}: the deployment reached the server's [retention] max_log_bytes (256 MiB by default); run it with --retention-max-log-bytes 0 for this benchmark"
                        )));
                    }
                    let now = Instant::now();
                    let Some((expected, sent_at)) = in_flight.pop_front() else {
                        return Err(protocol(format!("ack for batch {acked} that was not sent")));
                    };
                    if acked != expected {
                        return Err(protocol(format!(
                            "ack for batch {acked}, expected {expected}"
                        )));
                    }
                    latency.record(now.duration_since(sent_at).as_micros() as u64);
                    on_ack(acked, now);
                }
                ServerFrame::Error { code, error, batch } => {
                    return Err(protocol(format!(
                        "the server refused batch {batch:?}: {code}: {error}"
                    )))
                }
                ServerFrame::Status { .. }
                | ServerFrame::Deployment { .. }
                | ServerFrame::Cancel { .. }
                | ServerFrame::Ping => {}
            }
        }
        Ok((latency, started))
    }

    /// Ends the deployment: pushing → starting → success.
    pub(super) async fn finish(mut self) -> Result<(), BenchError> {
        for status in [Status::Pushing, Status::Starting, Status::Success] {
            self.tx
                .send(client_frame(&ClientFrame::Status { status }))
                .await
                .map_err(protocol)?;
            loop {
                match next_frame(&mut self.rx).await? {
                    ServerFrame::Status { status: now } if now == status => break,
                    ServerFrame::Status { .. } | ServerFrame::Ack { .. } => {}
                    ServerFrame::Error { code, error, .. } => {
                        return Err(protocol(format!("moving to {status}: {code}: {error}")))
                    }
                    ServerFrame::Deployment { .. }
                    | ServerFrame::Cancel { .. }
                    | ServerFrame::Ping => {}
                }
            }
        }
        let _ = self.tx.close().await;
        Ok(())
    }
}

pub(super) fn check_line_and_batch(
    line_bytes: usize,
    batch: usize,
    window: usize,
) -> Result<(), BenchError> {
    if line_bytes == 0 || line_bytes > MAX_LINE_BYTES {
        return Err(BenchError::Usage(format!(
            "--line-bytes must be 1..={MAX_LINE_BYTES}"
        )));
    }
    if batch == 0
        || batch.saturating_mul(line_bytes + 3) + FRAME_OVERHEAD_BYTES > MAX_PUSH_FRAME_BYTES
    {
        return Err(BenchError::Usage(format!(
            "--batch must be at least 1 and batch x (line-bytes + 3) under {MAX_PUSH_FRAME_BYTES} bytes"
        )));
    }
    if window == 0 || window > MAX_WINDOW {
        return Err(BenchError::Usage(format!(
            "--window must be 1..={MAX_WINDOW}"
        )));
    }
    Ok(())
}

pub(super) fn per_sec(count: f64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        count / secs
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_frames_decode_to_the_lines_the_json_frames_hold() {
        use crate::api::protocol::decode_binary_logs;
        let json = FrameBuilder::new(20, true);
        let binary = BinaryFrameBuilder::new(20, true);
        let Message::Text(body) = json.frame(7, 41, 3) else {
            panic!("text frame")
        };
        let Ok(ClientFrame::Logs { lines, .. }) = serde_json::from_str(&body) else {
            panic!("logs frame")
        };
        let Message::Binary(bytes) = binary.frame(7, 41, 3) else {
            panic!("binary frame")
        };
        let decoded = decode_binary_logs(&bytes).expect("valid binary frame");
        assert_eq!(decoded.batch, 7);
        assert_eq!(decoded.lines, lines);
    }

    #[test]
    fn frames_are_valid_logs_frames_with_numbered_lines() {
        let frames = FrameBuilder::new(20, true);
        let Message::Text(body) = frames.frame(7, 41, 3) else {
            panic!("text frame")
        };
        let frame: ClientFrame = serde_json::from_str(&body).expect("valid frame");
        let ClientFrame::Logs { batch, lines, .. } = frame else {
            panic!("logs frame")
        };
        assert_eq!(batch, 7);
        assert_eq!(lines.len(), 3);
        for (i, line) in lines.iter().enumerate() {
            assert_eq!(line.len(), 20);
            assert_eq!(parse_index(line.as_bytes()), Some(41 + i as u64));
        }
        let plain = FrameBuilder::new(100, false);
        let Message::Text(body) = plain.frame(0, 0, 2) else {
            panic!("text frame")
        };
        let ClientFrame::Logs { lines, .. } = serde_json::from_str(&body).expect("valid") else {
            panic!("logs frame")
        };
        assert!(lines.iter().all(|l| l.len() == 100));
    }
}
