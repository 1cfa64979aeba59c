//! How a device reads its socket: a minimal client-side WebSocket frame reader
//! (RFC 6455 section 5), in place of tungstenite's read side.
//!
//! The engine already writes its own frames ([`crate::engine::wire`]); reading
//! through tungstenite cost, per connection, a read buffer and codec state
//! held while idle, and per frame an allocated payload and two `recv` calls
//! (its stream adapter reads until `EAGAIN`). Here:
//!
//! - A read lands in one per-thread scratch buffer, and every whole frame in it
//!   is handed over in place (borrowed). Only the bytes of an incomplete frame
//!   are copied into the device's own buffer, which is freed once that frame is
//!   complete: an idle device holds no read buffer.
//! - One `recv` per readiness event. A read shorter than the buffer drained the
//!   socket, so the readiness is cleared then and there, instead of by a second
//!   `recv` that would return `EAGAIN` (what tokio's own `poll_read` does).
//! - Control frames come out as [`Frame::Ping`] (the device answers with a
//!   pong), [`Frame::Pong`] and [`Frame::Close`]; fragmented messages are put
//!   back together (control frames may come between their fragments).
//!
//! Rules kept, each a [`WsError`]: server frames are not masked, reserved bits
//! are zero, opcodes are known, control frames are at most 125 bytes and not
//! fragmented, a continuation follows a started message, and a message (one
//! frame or its fragments together) is at most [`MAX_MESSAGE`] bytes, checked
//! from the header before anything is buffered. Text is not checked for UTF-8
//! here: the JSON reader rejects what is not ([`crate::engine::frame`]).

use std::cell::RefCell;
use std::io;
use std::os::fd::AsRawFd;

use nix::sys::socket::{recv, MsgFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// The largest message the devices accept: a sync page of 500 long messages
/// fits (the server bounds what it reads from clients, not its answers).
pub const MAX_MESSAGE: usize = 64 << 20;

/// Bytes one `recv` asks for.
const SCRATCH: usize = 64 * 1024;

thread_local! {
    /// Where reads land: one buffer per runtime thread, not one per device.
    static SCRATCH_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; SCRATCH]);
}

/// One frame from the server, borrowed from the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A whole text message (reassembled when it came in fragments).
    Text(&'a [u8]),
    /// A binary message (the protocol has none; its bytes are not kept).
    Binary,
    Ping(&'a [u8]),
    Pong,
    /// The close code, when the frame carried one.
    Close(Option<u16>),
}

/// A stream that breaks the framing rules: the connection cannot go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    #[error("websocket protocol error: {0}")]
    Protocol(&'static str),
    #[error("websocket message of {0} bytes, over the {MAX_MESSAGE}-byte limit")]
    TooLarge(u64),
}

/// A parsed frame header.
struct Header {
    fin: bool,
    opcode: u8,
    /// Header bytes (2 to 10: servers do not mask).
    len: usize,
    payload: usize,
}

/// Reads a header from the start of `buf`; `None` until enough bytes are there.
fn header(buf: &[u8]) -> Result<Option<Header>, WsError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(WsError::Protocol("reserved bits set"));
    }
    if b1 & 0x80 != 0 {
        return Err(WsError::Protocol("masked frame from the server"));
    }
    let (fin, opcode) = (b0 & 0x80 != 0, b0 & 0x0f);
    let (len, payload) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (4, u16::from_be_bytes([b[0], b[1]]) as u64),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => (10, u64::from_be_bytes(b.try_into().expect("8 bytes"))),
            None => return Ok(None),
        },
        n => (2, n as u64),
    };
    match opcode {
        0x0..=0x2 => {}
        0x8..=0xa => {
            if !fin {
                return Err(WsError::Protocol("fragmented control frame"));
            }
            if payload > 125 {
                return Err(WsError::Protocol("control frame over 125 bytes"));
            }
        }
        _ => return Err(WsError::Protocol("unknown opcode")),
    }
    if payload > MAX_MESSAGE as u64 {
        return Err(WsError::TooLarge(payload));
    }
    Ok(Some(Header {
        fin,
        opcode,
        len,
        payload: payload as usize,
    }))
}

/// A fragmented message being put back together.
#[derive(Debug, Default)]
struct Assembly {
    /// A data frame without FIN started one (text: its payload is kept).
    open: Option<bool>,
    text: Vec<u8>,
    /// Bytes so far (binary fragments are counted, not kept).
    size: usize,
}

/// What a device keeps between reads: nothing while idle.
#[derive(Debug, Default)]
pub struct FrameReader {
    /// The bytes of a frame not yet whole.
    partial: Vec<u8>,
    assembly: Assembly,
}

/// What one [`pump`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Pumped {
    /// The socket is drained: wait for it to be readable.
    Drained,
    /// The read filled the buffer: there may be more to read now.
    More,
    /// The handler asked to stop (bytes after that frame are kept).
    Stopped,
    /// The server closed its side.
    Eof,
}

impl FrameReader {
    /// A reader that starts with bytes already read (what came after the
    /// handshake's response).
    pub fn with(bytes: Vec<u8>) -> Self {
        FrameReader {
            partial: bytes,
            assembly: Assembly::default(),
        }
    }

    /// Bytes the reader holds on the heap.
    pub fn heap_bytes(&self) -> usize {
        self.partial.capacity() + self.assembly.text.capacity()
    }

    /// Hands every whole frame of what is held plus `data` to `on`, in order,
    /// and keeps the rest. `on` returns false to stop: the frames after that
    /// one stay held for the next call (which may pass no data). Returns
    /// false when stopped.
    pub fn feed(
        &mut self,
        data: &[u8],
        on: &mut dyn FnMut(Frame<'_>) -> bool,
    ) -> Result<bool, WsError> {
        let FrameReader { partial, assembly } = self;
        if partial.is_empty() {
            let (used, go) = frames(assembly, data, on)?;
            keep(partial, &data[used..])?;
            return Ok(go);
        }
        partial.extend_from_slice(data);
        let held = std::mem::take(partial);
        let (used, go) = frames(assembly, &held, on)?;
        if used < held.len() {
            let mut held = held;
            held.drain(..used);
            *partial = held;
        }
        // Otherwise `held` is dropped here: a device between frames holds no buffer.
        Ok(go)
    }
}

/// Keeps the bytes of an incomplete frame, with room for the whole frame once
/// its header says how long it is.
fn keep(partial: &mut Vec<u8>, rest: &[u8]) -> Result<(), WsError> {
    if rest.is_empty() {
        return Ok(());
    }
    if let Some(h) = header(rest)? {
        partial.reserve_exact(h.len + h.payload);
    }
    partial.extend_from_slice(rest);
    Ok(())
}

/// Hands the whole frames at the start of `buf` to `on`; returns the bytes
/// used and whether to go on.
fn frames(
    asm: &mut Assembly,
    buf: &[u8],
    on: &mut dyn FnMut(Frame<'_>) -> bool,
) -> Result<(usize, bool), WsError> {
    let mut at = 0;
    while let Some(h) = header(&buf[at..])? {
        let end = at + h.len + h.payload;
        if end > buf.len() {
            break;
        }
        let payload = &buf[at + h.len..end];
        at = end;
        let go = match h.opcode {
            0x8 => on(Frame::Close(match payload.len() {
                0 => None,
                1 => return Err(WsError::Protocol("close frame of one byte")),
                _ => Some(u16::from_be_bytes([payload[0], payload[1]])),
            })),
            0x9 => on(Frame::Ping(payload)),
            0xa => on(Frame::Pong),
            op => match data(asm, op, h.fin, payload)? {
                Some(Whole::Here(true)) => on(Frame::Text(payload)),
                Some(Whole::Here(false)) | Some(Whole::Assembled(false)) => on(Frame::Binary),
                Some(Whole::Assembled(true)) => {
                    let text = std::mem::take(&mut asm.text);
                    on(Frame::Text(&text))
                }
                None => true,
            },
        };
        if !go {
            return Ok((at, false));
        }
    }
    Ok((at, true))
}

/// A data message that is complete: in this frame, or assembled from
/// fragments (then in `Assembly::text`); `true` for text.
enum Whole {
    Here(bool),
    Assembled(bool),
}

/// A data frame (text, binary or continuation): whether it completes a message.
fn data(asm: &mut Assembly, op: u8, fin: bool, payload: &[u8]) -> Result<Option<Whole>, WsError> {
    if op == 0x0 {
        let Some(text) = asm.open else {
            return Err(WsError::Protocol("continuation without a message"));
        };
        asm.size += payload.len();
        if asm.size > MAX_MESSAGE {
            return Err(WsError::TooLarge(asm.size as u64));
        }
        if text {
            asm.text.extend_from_slice(payload);
        }
        if !fin {
            return Ok(None);
        }
        asm.open = None;
        asm.size = 0;
        return Ok(Some(Whole::Assembled(text)));
    }
    if asm.open.is_some() {
        return Err(WsError::Protocol("a new message inside a fragmented one"));
    }
    let text = op == 0x1;
    if fin {
        return Ok(Some(Whole::Here(text)));
    }
    asm.open = Some(text);
    asm.size = payload.len();
    if text {
        asm.text = payload.to_vec();
    }
    Ok(None)
}

/// One `recv` from `tcp` into the thread's scratch buffer, and the frames it
/// completes handed to `on`. Call it when the socket is readable; a short
/// read clears the readiness (no second `recv` to learn it is drained).
pub fn pump(
    tcp: &TcpStream,
    reader: &mut FrameReader,
    on: &mut dyn FnMut(Frame<'_>) -> bool,
) -> io::Result<Pumped> {
    let mut go = true;
    let pumped = recv_once(tcp, &mut |data| {
        go = reader
            .feed(data, on)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok(())
    })?;
    Ok(if go { pumped } else { Pumped::Stopped })
}

/// One `recv` from `tcp` into the thread's scratch buffer, its bytes handed to
/// `got` (none on end of stream): [`Pumped::Eof`], [`Pumped::Drained`] or
/// [`Pumped::More`]. The TLS path ([`crate::engine::secure`]) decrypts them.
pub fn recv_once(
    tcp: &TcpStream,
    got: &mut dyn FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<Pumped> {
    SCRATCH_BUF.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let buf = &mut scratch[..];
        let mut n = 0;
        let read = tcp.try_io(Interest::READABLE, || {
            n = recv(tcp.as_raw_fd(), buf, MsgFlags::empty()).map_err(io::Error::from)?;
            if n > 0 && n < buf.len() {
                // Drained: tokio clears the readiness it saw before this read.
                Err(io::ErrorKind::WouldBlock.into())
            } else {
                Ok(())
            }
        });
        if n == 0 {
            return match read {
                Ok(()) => Ok(Pumped::Eof),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Pumped::Drained),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(Pumped::More),
                Err(e) => Err(e),
            };
        }
        got(&scratch[..n])?;
        Ok(if n == SCRATCH {
            Pumped::More
        } else {
            Pumped::Drained
        })
    })
}

#[cfg(test)]
#[path = "inbound_tests.rs"]
mod tests;
