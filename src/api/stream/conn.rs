//! A subscriber's upgraded socket: reads its masked frames into messages (answering pings and
//! closes itself), and buffers encoded server frames until the subscriber writes them out.
//!
//! Frames rendered once for every subscriber (a hub event's, a store read's) are queued as
//! shared slices and written straight from the one rendering with a vectored write, never
//! copied per subscriber; small frames are copied into one buffer (an iovec each would cost
//! more than the copy). Either way one wake-up writes everything queued with one call.
//!
//! It owns the socket's two buffers and nothing else: it decides neither what is sent (that is
//! `subscriber`'s) nor how frames are laid out in bytes (that is `crate::ws`'s).

use std::collections::VecDeque;
use std::io::IoSlice;
use std::ops::Range;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::frames::WireFrames;
use super::{MAX_SUBSCRIBER_FRAME_BYTES, SUBSCRIBER_READ_BUFFER_BYTES};
use crate::ws::{self, encode_frame, opcode, FrameError};

/// A message from a subscriber (control frames answered by [`Conn`] are not reported).
#[derive(Debug, PartialEq)]
pub(super) enum ClientMessage {
    Text(String),
    Binary,
    /// A ping; its pong is queued (to be written by the caller).
    Ping,
    /// The client closed; its close frame was answered.
    Close,
}

/// Why reading a subscriber's frames stopped.
#[derive(Debug, PartialEq)]
pub(super) enum ReadError {
    /// A frame or message larger than [`MAX_SUBSCRIBER_FRAME_BYTES`].
    TooBig,
    /// Not WebSocket (unmasked or malformed frame, bad UTF-8), or the socket failed.
    Broken,
}

/// A subscriber's upgraded socket: reads its (masked) frames, buffers encoded server frames.
pub(super) struct Conn<IO> {
    io: IO,
    input: BytesMut,
    /// `input` was grown past its first allocation (freed once it is empty again).
    input_grown: bool,
    /// A text message being reassembled from fragments.
    fragments: Option<Vec<u8>>,
    /// Encoded frames not written yet, in order.
    out: VecDeque<Piece>,
    /// The bytes of the [`Piece::Copied`] pieces (cleared once everything is written).
    copied: Vec<u8>,
    /// Bytes of `out` not written yet.
    buffered: usize,
}

/// Part of what is queued: a shared slice of a rendering, or a range of `Conn::copied`.
#[derive(Debug)]
enum Piece {
    Shared(Bytes),
    Copied(Range<usize>),
}

/// Bytes of frames a subscriber buffers before writing them out even within a flush interval.
pub(super) const WRITE_BUFFER_BYTES: usize = 128 * 1024;

/// A subscriber's first read buffer: its auth frame and pings are far smaller; a bigger frame
/// grows it (up to [`SUBSCRIBER_READ_BUFFER_BYTES`] at a time) and the buffer shrinks back once
/// it is parsed.
const FIRST_READ_BUFFER_BYTES: usize = 512;

/// Capacity of the copy buffer kept once everything queued is written; a bigger one (after a
/// burst, up to [`WRITE_BUFFER_BYTES`] and more) is freed.
const KEPT_COPY_BUFFER_BYTES: usize = 2 * 1024;

/// Queue slots kept once everything queued is written.
const KEPT_PIECES: usize = 64;

/// Shared slices shorter than this are copied instead: a one-line event's frame (~200 bytes)
/// is cheaper to copy than to reference-count (a shared count bounces between cores) and to
/// hand the kernel as an iovec of its own.
const SHARE_MIN_BYTES: usize = 4 * 1024;

/// Most buffers handed to one vectored write (Linux takes up to 1024; a write of this many
/// shared renderings is already far past [`WRITE_BUFFER_BYTES`]).
const MAX_IOVECS: usize = 64;

impl<IO> Conn<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    pub(super) fn new(io: IO) -> Self {
        Self {
            io,
            input: BytesMut::with_capacity(FIRST_READ_BUFFER_BYTES),
            input_grown: false,
            fragments: None,
            out: VecDeque::new(),
            copied: Vec::new(),
            buffered: 0,
        }
    }

    /// The next message; `Ok(None)` when the socket ended. Cancel-safe: a partly read frame
    /// stays in the input buffer.
    pub(super) async fn next_message(&mut self) -> Result<Option<ClientMessage>, ReadError> {
        loop {
            if let Some(message) = self.parse()? {
                return Ok(Some(message));
            }
            if self.input.is_empty() && self.input_grown {
                // A big frame is done with: back to a small buffer while idle (an advanced
                // `BytesMut` keeps its whole allocation).
                self.input = BytesMut::with_capacity(FIRST_READ_BUFFER_BYTES);
                self.input_grown = false;
            } else if self.input.capacity() - self.input.len() < FIRST_READ_BUFFER_BYTES / 4 {
                let grow = self
                    .input
                    .len()
                    .clamp(FIRST_READ_BUFFER_BYTES, SUBSCRIBER_READ_BUFFER_BYTES);
                self.input.reserve(grow);
                self.input_grown = true;
            }
            match self.io.read_buf(&mut self.input).await {
                Ok(0) | Err(_) => return Ok(None),
                Ok(_) => {}
            }
        }
    }

    /// Takes complete frames off the input buffer until one makes a message.
    fn parse(&mut self) -> Result<Option<ClientMessage>, ReadError> {
        loop {
            let Some(frame) = ws::parse_client_frame(&self.input, MAX_SUBSCRIBER_FRAME_BYTES)?
            else {
                return Ok(None);
            };
            let payload = frame.unmasked_payload(&self.input);
            self.input.advance(frame.len);
            let frame = ClientFrame {
                fin: frame.fin,
                opcode: frame.opcode,
                payload,
            };
            match frame.opcode {
                opcode::PING => {
                    let mut pong = Vec::with_capacity(frame.payload.len() + 2);
                    encode_frame(&mut pong, opcode::PONG, &frame.payload);
                    self.queue(&pong);
                    return Ok(Some(ClientMessage::Ping));
                }
                opcode::PONG => {}
                opcode::CLOSE => {
                    // Echo the code (RFC 6455, 5.5.1); the caller ends the stream.
                    let code = frame.payload.get(..2).unwrap_or_default();
                    let mut close = Vec::with_capacity(4);
                    encode_frame(&mut close, opcode::CLOSE, code);
                    self.queue(&close);
                    return Ok(Some(ClientMessage::Close));
                }
                opcode::TEXT | opcode::BINARY if self.fragments.is_some() => {
                    return Err(ReadError::Broken)
                }
                opcode::BINARY if frame.fin => return Ok(Some(ClientMessage::Binary)),
                opcode::TEXT if frame.fin => return text_message(frame.payload).map(Some),
                opcode::TEXT | opcode::BINARY => {
                    // A fragmented binary message is reported as binary once complete; its
                    // bytes are kept like text's, within the same size limit.
                    let mut first = frame.payload;
                    first.insert(0, frame.opcode);
                    self.fragments = Some(first);
                }
                opcode::CONTINUATION => {
                    let Some(buffer) = self.fragments.as_mut() else {
                        return Err(ReadError::Broken);
                    };
                    if buffer.len() - 1 + frame.payload.len() > MAX_SUBSCRIBER_FRAME_BYTES {
                        return Err(ReadError::TooBig);
                    }
                    buffer.extend_from_slice(&frame.payload);
                    if frame.fin {
                        let mut message = self.fragments.take().unwrap_or_default();
                        let kind = message.remove(0);
                        if kind == opcode::BINARY {
                            return Ok(Some(ClientMessage::Binary));
                        }
                        return text_message(message).map(Some);
                    }
                }
                _ => return Err(ReadError::Broken),
            }
        }
    }

    /// Queues encoded frames, copied.
    pub(super) fn queue(&mut self, frames: &[u8]) {
        if frames.is_empty() {
            return;
        }
        let start = self.copied.len();
        self.copied.extend_from_slice(frames);
        let end = self.copied.len();
        match self.out.back_mut() {
            // Right after the last copied piece: it grows (one iovec for consecutive copies).
            Some(Piece::Copied(last)) if last.end == start => last.end = end,
            _ => self.out.push_back(Piece::Copied(start..end)),
        }
        self.buffered += frames.len();
    }

    /// Queues encoded frames rendered once for every subscriber: written from that one
    /// rendering, not copied (unless short, see [`SHARE_MIN_BYTES`]).
    pub(super) fn queue_shared(&mut self, frames: Bytes) {
        if frames.len() < SHARE_MIN_BYTES {
            self.queue(&frames);
            return;
        }
        self.buffered += frames.len();
        self.out.push_back(Piece::Shared(frames));
    }

    /// Queues frames `skip..` of a rendering shared by every subscriber: short ones copied
    /// straight from it, long ones shared. A short event's frames were cloned (a shared count
    /// bumped) only to be copied and dropped: two atomic writes per event and subscriber on a
    /// count every subscriber's core touches, ~6 % of the server's samples at 1000 subscribers.
    pub(super) fn queue_rendered(&mut self, frames: &WireFrames, skip: usize) {
        let bytes = frames.starting_at(skip);
        if bytes.len() < SHARE_MIN_BYTES {
            self.queue(bytes);
        } else {
            self.queue_shared(frames.shared_from(skip));
        }
    }

    pub(super) fn buffered(&self) -> usize {
        self.buffered
    }

    /// Writes everything queued, each call handing the kernel every queued piece at once.
    /// Cancel-safe: what was written is remembered.
    pub(super) async fn write_out(&mut self) -> std::io::Result<()> {
        while !self.out.is_empty() {
            let n = {
                let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
                let mut count = 0;
                for (slot, piece) in slices.iter_mut().zip(&self.out) {
                    *slot = IoSlice::new(match piece {
                        Piece::Shared(bytes) => bytes,
                        Piece::Copied(range) => &self.copied[range.clone()],
                    });
                    count += 1;
                }
                self.io.write_vectored(&slices[..count]).await?
            };
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            self.advance(n);
        }
        self.copied.clear();
        if self.copied.capacity() > KEPT_COPY_BUFFER_BYTES {
            // A burst is written: an idle subscriber keeps no big buffer (10,000 subscribers
            // each keeping their largest burst was most of the server's memory).
            self.copied = Vec::new();
        }
        if self.out.capacity() > KEPT_PIECES {
            self.out = VecDeque::new();
        }
        self.io.flush().await
    }

    /// Drops the first `n` queued bytes (just written).
    fn advance(&mut self, mut n: usize) {
        self.buffered -= n;
        while n > 0 {
            let Some(front) = self.out.front_mut() else {
                return;
            };
            let len = match front {
                Piece::Shared(bytes) => bytes.len(),
                Piece::Copied(range) => range.len(),
            };
            if n < len {
                match front {
                    Piece::Shared(bytes) => bytes.advance(n),
                    Piece::Copied(range) => range.start += n,
                }
                return;
            }
            n -= len;
            self.out.pop_front();
        }
    }
}

fn text_message(payload: Vec<u8>) -> Result<ClientMessage, ReadError> {
    String::from_utf8(payload)
        .map(ClientMessage::Text)
        .map_err(|_| ReadError::Broken)
}

/// One client frame, unmasked.
struct ClientFrame {
    fin: bool,
    opcode: u8,
    payload: Vec<u8>,
}

impl From<FrameError> for ReadError {
    fn from(err: FrameError) -> Self {
        match err {
            FrameError::TooBig => ReadError::TooBig,
            FrameError::Malformed(_) => ReadError::Broken,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame, masked as clients must.
    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        ws::encode_client_frame(&mut out, first, payload, [1, 2, 3, 4]);
        out
    }

    #[tokio::test]
    async fn conn_answers_pings_and_reassembles_fragments() {
        let (client, server) = tokio::io::duplex(1 << 20);
        let mut conn = Conn::new(server);
        let (mut client_read, mut client_write) = tokio::io::split(client);
        let mut bytes = client_frame(0x89, b"p");
        bytes.extend(client_frame(0x01, b"hel"));
        bytes.extend(client_frame(0x80, b"lo"));
        bytes.extend(client_frame(0x82, b"\x00"));
        bytes.extend(client_frame(0x88, &1000u16.to_be_bytes()));
        client_write.write_all(&bytes).await.unwrap();
        assert_eq!(conn.next_message().await, Ok(Some(ClientMessage::Ping)));
        assert_eq!(
            conn.next_message().await,
            Ok(Some(ClientMessage::Text("hello".into())))
        );
        assert_eq!(conn.next_message().await, Ok(Some(ClientMessage::Binary)));
        assert_eq!(conn.next_message().await, Ok(Some(ClientMessage::Close)));
        conn.write_out().await.unwrap();
        let mut reply = [0u8; 7];
        client_read.read_exact(&mut reply).await.unwrap();
        assert_eq!(reply, [0x8A, 1, b'p', 0x88, 2, 0x03, 0xE8]);
    }

    #[tokio::test]
    async fn shared_and_copied_frames_go_out_in_queue_order_even_through_partial_writes() {
        // A 7-byte pipe: every write is partial, and pieces split at every possible point.
        let (mut client, server) = tokio::io::duplex(7);
        let mut conn = Conn::new(server);
        let big: Vec<u8> = (0..SHARE_MIN_BYTES + 3).map(|i| (i % 251) as u8).collect();
        let mut expected = Vec::new();
        for (i, piece) in [&b"ab"[..], &big, b"c", b"de", &big, b"f"]
            .iter()
            .enumerate()
        {
            if i % 2 == 1 {
                conn.queue_shared(Bytes::copy_from_slice(piece));
            } else {
                conn.queue(piece);
            }
            expected.extend_from_slice(piece);
        }
        assert_eq!(conn.buffered(), expected.len());
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; expected.len()];
            client.read_exact(&mut got).await.unwrap();
            assert!(got == expected, "the bytes arrived out of order");
        });
        conn.write_out().await.unwrap();
        assert_eq!(conn.buffered(), 0);
        assert!(conn.out.is_empty() && conn.copied.is_empty());
        reader.await.unwrap();
    }

    #[tokio::test]
    async fn conn_refuses_big_and_unmasked_frames_and_consumes_what_it_parsed() {
        let (client, server) = tokio::io::duplex(1 << 20);
        let mut conn = Conn::new(server);
        let (_client_read, mut client_write) = tokio::io::split(client);
        client_write
            .write_all(&client_frame(0x81, b"hello"))
            .await
            .unwrap();
        assert_eq!(
            conn.next_message().await,
            Ok(Some(ClientMessage::Text("hello".into())))
        );
        assert!(conn.input.is_empty(), "the parsed frame left the buffer");
        let big = client_frame(0x81, &vec![0; MAX_SUBSCRIBER_FRAME_BYTES + 1]);
        client_write.write_all(&big[..10]).await.unwrap();
        assert_eq!(conn.next_message().await, Err(ReadError::TooBig));

        let (client, server) = tokio::io::duplex(1 << 20);
        let mut conn = Conn::new(server);
        let (_client_read, mut client_write) = tokio::io::split(client);
        client_write.write_all(&[0x81, 0x01, b'a']).await.unwrap();
        assert_eq!(conn.next_message().await, Err(ReadError::Broken));
    }

    /// Regression: every subscriber kept the capacity of its largest burst (the copy buffer
    /// and its read buffer), so 10,000 subscribers of a 500-line deployment held 318 MB.
    #[tokio::test]
    async fn a_burst_written_out_or_a_big_frame_parsed_leaves_no_big_buffer_behind() {
        let (client, server) = tokio::io::duplex(1 << 20);
        let mut conn = Conn::new(server);
        let (mut client_read, mut client_write) = tokio::io::split(client);
        for _ in 0..64 {
            conn.queue(&[b'x'; 200]);
        }
        assert!(conn.copied.capacity() >= 64 * 200);
        conn.write_out().await.unwrap();
        assert!(conn.copied.capacity() <= KEPT_COPY_BUFFER_BYTES);
        assert!(conn.out.capacity() <= KEPT_PIECES);
        let mut written = vec![0; 64 * 200];
        client_read.read_exact(&mut written).await.unwrap();

        let text = "y".repeat(MAX_SUBSCRIBER_FRAME_BYTES - 1);
        client_write
            .write_all(&client_frame(0x81, text.as_bytes()))
            .await
            .unwrap();
        client_write
            .write_all(&client_frame(0x89, b"p"))
            .await
            .unwrap();
        assert_eq!(
            conn.next_message().await,
            Ok(Some(ClientMessage::Text(text)))
        );
        assert!(conn.input_grown);
        assert_eq!(conn.next_message().await, Ok(Some(ClientMessage::Ping)));
        // The next read (nothing comes: the client is gone) starts from a small buffer.
        drop((client_read, client_write));
        assert_eq!(conn.next_message().await, Ok(None));
        assert!(!conn.input_grown);
        assert_eq!(conn.input.capacity(), FIRST_READ_BUFFER_BYTES);
    }
}
