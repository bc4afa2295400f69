//! A subscriber's upgraded socket: reads its masked frames into messages (answering pings and
//! closes itself), and buffers encoded server frames until the subscriber writes them out.
//!
//! It owns the socket's two buffers and nothing else: it decides neither what is sent (that is
//! `subscriber`'s) nor how frames are laid out in bytes (that is `crate::ws`'s).

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

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
    /// A text message being reassembled from fragments.
    fragments: Option<Vec<u8>>,
    /// Encoded frames not written yet; `out[written..]` is what is left.
    out: Vec<u8>,
    written: usize,
}

/// Bytes of frames a subscriber buffers before writing them out even within a flush interval.
pub(super) const WRITE_BUFFER_BYTES: usize = 128 * 1024;

impl<IO> Conn<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    pub(super) fn new(io: IO) -> Self {
        Self {
            io,
            input: BytesMut::with_capacity(SUBSCRIBER_READ_BUFFER_BYTES),
            fragments: None,
            out: Vec::with_capacity(SUBSCRIBER_READ_BUFFER_BYTES),
            written: 0,
        }
    }

    /// The next message; `Ok(None)` when the socket ended. Cancel-safe: a partly read frame
    /// stays in the input buffer.
    pub(super) async fn next_message(&mut self) -> Result<Option<ClientMessage>, ReadError> {
        loop {
            if let Some(message) = self.parse()? {
                return Ok(Some(message));
            }
            if self.input.capacity() - self.input.len() < SUBSCRIBER_READ_BUFFER_BYTES / 4 {
                self.input.reserve(SUBSCRIBER_READ_BUFFER_BYTES);
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
                    encode_frame(&mut self.out, opcode::PONG, &frame.payload);
                    return Ok(Some(ClientMessage::Ping));
                }
                opcode::PONG => {}
                opcode::CLOSE => {
                    // Echo the code (RFC 6455, 5.5.1); the caller ends the stream.
                    let code = frame.payload.get(..2).unwrap_or_default();
                    encode_frame(&mut self.out, opcode::CLOSE, code);
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

    /// Queues encoded frames.
    pub(super) fn queue(&mut self, frames: &[u8]) {
        self.out.extend_from_slice(frames);
    }

    pub(super) fn buffered(&self) -> usize {
        self.out.len() - self.written
    }

    /// Writes everything queued. Cancel-safe: what was written is remembered.
    pub(super) async fn write_out(&mut self) -> std::io::Result<()> {
        while self.written < self.out.len() {
            let n = self.io.write(&self.out[self.written..]).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            self.written += n;
        }
        self.out.clear();
        self.written = 0;
        self.io.flush().await
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
}
