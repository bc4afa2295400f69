//! The WebSocket codec (RFC 6455): opcodes, frame encoding, frame parsing for either side of a
//! connection, and the handshake's accept key.
//!
//! One codec for the whole crate: the server's subscriber stream (`api::stream`) parses client
//! frames and encodes its own, and `deployd bench`'s subscribers parse the server's frames with
//! the same code. Pure: bytes in, bytes or [`Frame`]s out. It knows nothing of sockets, HTTP,
//! JSON, the store or the hub, and it never allocates beyond what the caller hands it (except
//! [`Frame::unmasked_payload`]).

use std::ops::Range;

/// WebSocket opcodes (RFC 6455, 5.2).
pub mod opcode {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

/// The FIN bit of a frame's first byte: the last (or only) frame of a message.
const FIN: u8 = 0x80;
/// The reserved bits of a frame's first byte: must be 0, since no extension is ever negotiated.
const RSV: u8 = 0x70;
/// The MASK bit of a frame's second byte: set on every client frame, never on a server frame.
const MASK: u8 = 0x80;
/// Control frames carry at most this many payload bytes (RFC 6455, 5.5).
const MAX_CONTROL_PAYLOAD: u64 = 125;

/// One complete frame found at the start of a buffer. The payload stays in the buffer (masked,
/// for a client frame): [`Frame::payload`] says where.
///
/// Invariant: `payload.end == len <= buffer.len()` for the buffer it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Last frame of its message.
    pub fin: bool,
    pub opcode: u8,
    /// The masking key of a client frame; `None` for a server frame.
    pub mask: Option<[u8; 4]>,
    /// Payload range in the buffer.
    pub payload: Range<usize>,
    /// Bytes the whole frame takes (header, mask and payload).
    pub len: usize,
}

impl Frame {
    /// The payload, unmasked (a copy); `buf` is the buffer the frame was parsed from.
    pub fn unmasked_payload(&self, buf: &[u8]) -> Vec<u8> {
        let payload = &buf[self.payload.clone()];
        match self.mask {
            Some(mask) => payload
                .iter()
                .enumerate()
                .map(|(i, byte)| byte ^ mask[i % 4])
                .collect(),
            None => payload.to_vec(),
        }
    }
}

/// Why a frame could not be parsed. Either way the connection cannot go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The header announces a payload larger than the caller's limit (known as soon as the
    /// length bytes arrived, before the payload).
    TooBig,
    /// Not a frame this side may receive: reserved bits, wrong masking, a long or fragmented
    /// control frame.
    Malformed(&'static str),
}

/// Parses the frame a client sent at the start of `buf` (the server's side): client frames
/// must be masked (RFC 6455, 5.1). `Ok(None)` until the whole frame is in `buf`; a payload over
/// `max_payload` is refused as soon as its header arrives.
pub fn parse_client_frame(buf: &[u8], max_payload: usize) -> Result<Option<Frame>, FrameError> {
    parse_frame(buf, max_payload, true)
}

/// Parses the frame a server sent at the start of `buf` (a client's side): server frames are
/// never masked. Otherwise as [`parse_client_frame`].
pub fn parse_server_frame(buf: &[u8], max_payload: usize) -> Result<Option<Frame>, FrameError> {
    parse_frame(buf, max_payload, false)
}

fn parse_frame(buf: &[u8], max_payload: usize, masked: bool) -> Result<Option<Frame>, FrameError> {
    let [b0, b1, ..] = buf[..] else {
        return Ok(None);
    };
    if b0 & RSV != 0 {
        return Err(FrameError::Malformed("reserved bits set"));
    }
    if (b1 & MASK != 0) != masked {
        return Err(FrameError::Malformed(if masked {
            "unmasked client frame"
        } else {
            "masked server frame"
        }));
    }
    let (len, header) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            Some(bytes) => (u64::from(u16::from_be_bytes([bytes[0], bytes[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(bytes) => {
                let mut be = [0; 8];
                be.copy_from_slice(bytes);
                (u64::from_be_bytes(be), 10)
            }
            None => return Ok(None),
        },
        len => (u64::from(len), 2),
    };
    if len > max_payload as u64 {
        return Err(FrameError::TooBig);
    }
    let opcode = b0 & 0x0F;
    let fin = b0 & FIN != 0;
    if opcode >= opcode::CLOSE && (len > MAX_CONTROL_PAYLOAD || !fin) {
        // Control frames are short and never fragmented (RFC 6455, 5.5).
        return Err(FrameError::Malformed("long or fragmented control frame"));
    }
    // Within `max_payload`, a usize.
    let len = len as usize;
    let (mask, start) = if masked {
        let Some(mask) = buf.get(header..header + 4) else {
            return Ok(None);
        };
        (Some([mask[0], mask[1], mask[2], mask[3]]), header + 4)
    } else {
        (None, header)
    };
    if buf.len() < start + len {
        return Ok(None);
    }
    Ok(Some(Frame {
        fin,
        opcode,
        mask,
        payload: start..start + len,
        len: start + len,
    }))
}

/// Appends one unmasked, unfragmented server frame (RFC 6455, 5.2), with the shortest length
/// encoding.
pub fn encode_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.push(FIN | opcode);
    push_length(out, 0, payload.len());
    out.extend_from_slice(payload);
}

/// Appends one client frame masked with `mask` (RFC 6455, 5.3). `first` is the whole first
/// byte (FIN and opcode), so that fragments can be written too. Only tests play the client:
/// the load tool's sockets use tokio-tungstenite to send.
#[cfg(test)]
pub fn encode_client_frame(out: &mut Vec<u8>, first: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(first);
    push_length(out, MASK, payload.len());
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
}

/// Appends a close frame: the code, then the reason (RFC 6455, 5.5.1).
pub fn encode_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason.as_bytes());
    encode_frame(out, opcode::CLOSE, &payload);
}

/// The second byte (with `mask_bit`) and the extended length.
fn push_length(out: &mut Vec<u8>, mask_bit: u8, len: usize) {
    match len {
        0..=125 => out.push(mask_bit | len as u8),
        126..=0xFFFF => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
}

/// The `Sec-WebSocket-Accept` value answering a `Sec-WebSocket-Key` (RFC 6455, 4.2.2).
pub fn accept_key(key: &[u8]) -> String {
    tokio_tungstenite::tungstenite::handshake::derive_accept_key(key)
}

/// The payload of one encoded unmasked text frame (a test helper for every frame encoder).
#[cfg(test)]
pub(crate) fn text_payload(frame: &[u8]) -> &[u8] {
    assert_eq!(frame[0], 0x81);
    let header = match frame[1] {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    &frame[header..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_client_frame(&mut out, first, payload, [1, 2, 3, 4]);
        out
    }

    #[test]
    fn server_frames_use_the_shortest_length_encoding() {
        for len in [0, 125, 126, 65535, 65536] {
            let mut out = Vec::new();
            encode_frame(&mut out, opcode::TEXT, &vec![b'a'; len]);
            let header = out.len() - len;
            assert_eq!(
                header,
                if len < 126 {
                    2
                } else if len < 65536 {
                    4
                } else {
                    10
                }
            );
            assert_eq!(text_payload(&out).len(), len);
        }
    }

    #[test]
    fn client_frames_are_unmasked_waited_for_and_limited() {
        let input = client_frame(0x81, b"hello");
        let frame = parse_client_frame(&input, 64 * 1024).unwrap().unwrap();
        assert_eq!((frame.fin, frame.opcode, frame.len), (true, 1, input.len()));
        assert_eq!(frame.unmasked_payload(&input), b"hello");

        // Partial frames wait for more bytes.
        let whole = client_frame(0x81, &[b'x'; 300]);
        assert!(parse_client_frame(&whole[..100], 64 * 1024)
            .unwrap()
            .is_none());
        let frame = parse_client_frame(&whole, 64 * 1024).unwrap().unwrap();
        assert_eq!(frame.unmasked_payload(&whole), vec![b'x'; 300]);

        // Too big as soon as the header says so; unmasked is broken.
        let big = client_frame(0x81, &vec![0; 70_000]);
        assert_eq!(
            parse_client_frame(&big[..10], 64 * 1024).err(),
            Some(FrameError::TooBig)
        );
        assert!(matches!(
            parse_client_frame(&[0x81u8, 0x01, b'a'], 64 * 1024),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn server_frames_parse_in_every_length_form() {
        const MAX: usize = 16 * 1024 * 1024;
        assert_eq!(parse_server_frame(&[0x81], MAX), Ok(None));
        let frame = |fin, opcode, payload: Range<usize>| Frame {
            fin,
            opcode,
            mask: None,
            len: payload.end,
            payload,
        };
        assert_eq!(
            parse_server_frame(&[0x81, 2, b'h', b'i', 0x81], MAX),
            Ok(Some(frame(true, 1, 2..4)))
        );
        assert_eq!(parse_server_frame(&[0x81, 3, b'h'], MAX), Ok(None));
        let mut medium = vec![0x81, 126, 0x01, 0x00];
        medium.extend(vec![b'x'; 256]);
        assert_eq!(
            parse_server_frame(&medium, MAX),
            Ok(Some(frame(true, 1, 4..260)))
        );
        let mut long = vec![0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0];
        long.extend(vec![0; 65536]);
        assert_eq!(
            parse_server_frame(&long, MAX),
            Ok(Some(frame(true, 2, 10..65546)))
        );
        assert_eq!(
            parse_server_frame(&[0x01, 0], MAX),
            Ok(Some(frame(false, 1, 2..2))),
            "a fragment is reported as not final"
        );
        assert!(
            parse_server_frame(&[0x81, 0x80], MAX).is_err(),
            "masked server frames are refused"
        );
        assert_eq!(
            parse_server_frame(&long[..10], 1000),
            Err(FrameError::TooBig)
        );
    }

    #[test]
    fn close_frames_carry_the_code_then_the_reason() {
        let mut out = Vec::new();
        encode_close(&mut out, 4001, "bad");
        assert_eq!(out, [0x88, 5, 0x0F, 0xA1, b'b', b'a', b'd']);
    }

    #[test]
    fn the_accept_key_is_rfc_6455_s_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
