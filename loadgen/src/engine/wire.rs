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

use std::io;

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
    mask_in_place(&mut out[start..], mask);
}

/// XORs `bytes` with the repeating 4-byte `mask`, eight bytes at a time (the
/// clock thread masks every send it writes).
fn mask_in_place(bytes: &mut [u8], mask: [u8; 4]) {
    let word = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = bytes.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes((&*c).try_into().expect("8 bytes")) ^ word;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    // The tail starts at a multiple of 8, so the mask's phase is 0 there.
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Appends `v` in decimal: what `write!` does, without the formatting machinery.
fn push_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// The same for a signed value.
fn push_i64(out: &mut Vec<u8>, v: i64) {
    if v < 0 {
        out.push(b'-');
    }
    push_u64(out, v.unsigned_abs());
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
    out.extend_from_slice(b"{\"type\":\"send\",\"req\":");
    push_i64(out, req);
    match to {
        Dest::User(u) => {
            out.extend_from_slice(b",\"to\":{\"user\":");
            push_u64(out, u);
            out.push(b'}');
        }
        Dest::Channel(c) => {
            out.extend_from_slice(b",\"to\":{\"channel\":\"");
            out.extend_from_slice(c.as_bytes());
            out.extend_from_slice(b"\"}");
        }
    }
    out.extend_from_slice(b",\"client_msg_id\":\"");
    push_u64(out, sched);
    out.push(b'-');
    push_u64(out, actual);
    out.push(b'-');
    push_u64(out, n);
    if let Some(k) = node {
        out.push(b'-');
        push_u64(out, k as u64);
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

    /// The hand-written numbers and the word-wise mask give what `format!`
    /// and a byte-wise mask give, for every length's tail and the extremes.
    #[test]
    fn numbers_and_masks_match_the_plain_forms() {
        for v in [0u64, 1, 9, 10, 99, 100, 1_700_000_000_123_456, u64::MAX] {
            let mut out = Vec::new();
            push_u64(&mut out, v);
            assert_eq!(out, v.to_string().into_bytes());
        }
        for v in [0i64, -1, 42, i64::MIN, i64::MAX] {
            let mut out = Vec::new();
            push_i64(&mut out, v);
            assert_eq!(out, v.to_string().into_bytes());
        }
        let mask = [0x12, 0x34, 0x56, 0x78];
        for len in 0..40 {
            let payload: Vec<u8> = (0..len as u8).map(|b| b.wrapping_mul(37)).collect();
            let mut fast = payload.clone();
            mask_in_place(&mut fast, mask);
            let slow: Vec<u8> = payload
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i & 3])
                .collect();
            assert_eq!(fast, slow, "length {len}");
        }
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
        // In a cluster the node is the id's fourth part.
        let mut json = Vec::new();
        send_json(&mut json, 10, Dest::User(5), (1, 2, 3), Some(7), 1);
        let f: ClientFrame = serde_json::from_slice(&json).unwrap();
        assert!(matches!(f, ClientFrame::Send { client_msg_id, .. } if client_msg_id == "1-2-3-7"));
    }
}
