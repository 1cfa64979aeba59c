//! The client frames written on a device's socket, and the write itself.
//!
//! A send must leave when it is scheduled, not when a busy runtime gets round
//! to the device's task: the clock thread ([`crate::engine::clock`]) writes a
//! send frame straight to the device's socket (`try_write`, a non-blocking
//! `write(2)`) under the device's slot lock. The task reads the same socket
//! ([`crate::engine::inbound`]) and writes its own frames (syncs, resends,
//! pongs, its close) the same way, and so does the heartbeat tick
//! ([`crate::engine::beat`]), so frames never interleave. A write the socket
//! cannot take whole leaves its remainder in the slot's backlog, which the
//! task flushes when the socket is writable; anything queued behind a backlog
//! waits its turn.
//!
//! Client frames are masked WebSocket text frames (RFC 6455 5.3). A send's
//! JSON is written by hand into one buffer: no `String` per field, no serde
//! pass; a test reads it back with the server's own `ClientFrame`.

use std::io::{self, Write as _};

use tokio::net::TcpStream;

/// Opcodes (with FIN) of the frames a device writes.
pub const TEXT: u8 = 0x81;
pub const CLOSE: u8 = 0x88;
pub const PONG: u8 = 0x8a;

/// Appends `payload` to `out` as one masked text frame.
pub fn encode_text(out: &mut Vec<u8>, payload: &[u8], mask: [u8; 4]) {
    encode(out, TEXT, payload, mask);
}

/// Appends `payload` to `out` as one masked frame; `head` is FIN and the opcode.
pub fn encode(out: &mut Vec<u8>, head: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(head);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    for (i, b) in out[start..].iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Where a send goes, as the frame names it.
pub enum Dest<'a> {
    User(u64),
    Channel(&'a str),
}

/// Writes a `send` frame's JSON into `out`: `text` is `len` characters of a
/// fixed ASCII pattern (nothing to escape); `channel` must need no escaping
/// either (loadgen's group channels are `g:N`). `node`: the sending device's
/// node in a cluster, the `client_msg_id`'s fourth part.
pub fn send_json(
    out: &mut Vec<u8>,
    req: i64,
    to: Dest<'_>,
    client_msg_id: (u64, u64, u64),
    node: Option<u16>,
    len: u32,
) {
    const PATTERN: &[u8] = b"the quick brown fox jumps over the lazy dog 0123456789 ";
    let (sched, actual, n) = client_msg_id;
    let _ = write!(out, "{{\"type\":\"send\",\"req\":{req},\"to\":");
    let _ = match to {
        Dest::User(u) => write!(out, "{{\"user\":{u}}}"),
        Dest::Channel(c) => write!(out, "{{\"channel\":\"{c}\"}}"),
    };
    let _ = write!(out, ",\"client_msg_id\":\"{sched}-{actual}-{n}");
    if let Some(k) = node {
        let _ = write!(out, "-{k}");
    }
    out.extend_from_slice(b"\",\"text\":\"");
    let mut left = len as usize;
    while left > 0 {
        let take = left.min(PATTERN.len());
        out.extend_from_slice(&PATTERN[..take]);
        left -= take;
    }
    out.extend_from_slice(b"\"}");
}

/// Writes as much of `bytes` as the socket takes now; the rest is returned
/// for the backlog. An error means the connection is gone.
pub fn write_now(tcp: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < bytes.len() {
        match tcp.try_write(&bytes[done..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use reference_server::protocol::{ClientFrame, Recipient};

    use super::*;

    fn unmask(frame: &[u8]) -> Vec<u8> {
        let (len, at) = match frame[1] & 0x7f {
            126 => (u16::from_be_bytes([frame[2], frame[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(frame[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        let mask = &frame[at..at + 4];
        frame[at + 4..at + 4 + len]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i & 3])
            .collect()
    }

    /// What loadgen writes is what the server reads: the server's own
    /// `ClientFrame` parses the hand-written JSON, through a masked frame.
    #[test]
    fn the_server_reads_what_the_clock_writes() {
        for (to, len) in [
            (Dest::User(42), 10u32),
            (Dest::Channel("g:7"), 300),
            (Dest::User(1), 70_000),
        ] {
            let mut json = Vec::new();
            let expect_to = match &to {
                Dest::User(u) => Recipient::user(*u),
                Dest::Channel(c) => Recipient::channel(c.to_string()),
            };
            send_json(&mut json, 9, to, (100, 105, 3), None, len);
            let mut frame = Vec::new();
            encode_text(&mut frame, &json, [1, 2, 3, 4]);
            assert_eq!(frame[0], 0x81);
            let back = unmask(&frame);
            match serde_json::from_slice::<ClientFrame>(&back).unwrap() {
                ClientFrame::Send {
                    req,
                    to,
                    client_msg_id,
                    text,
                } => {
                    assert_eq!(req, Some(9));
                    assert_eq!(to, expect_to);
                    assert_eq!(client_msg_id, "100-105-3");
                    assert_eq!(text.len(), len as usize);
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
