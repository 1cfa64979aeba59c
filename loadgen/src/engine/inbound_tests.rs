//! The frame reader against hand-made server frames: whole, split at every
//! byte, fragmented, large, control frames, and streams that break the rules.

use super::*;

/// A server frame (unmasked) with the given first byte and payload.
fn frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![b0];
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= u16::MAX as usize => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

const TEXT: u8 = 0x81;
const PING: u8 = 0x89;
const PONG: u8 = 0x8a;
const CLOSE: u8 = 0x88;

/// What a reader hands over, owned.
#[derive(Debug, PartialEq, Eq)]
enum Got {
    Text(Vec<u8>),
    Binary,
    Ping(Vec<u8>),
    Pong,
    Close(Option<u16>),
}

fn collect(r: &mut FrameReader, data: &[u8], out: &mut Vec<Got>) -> Result<bool, WsError> {
    r.feed(data, &mut |f| {
        out.push(match f {
            Frame::Text(t) => Got::Text(t.to_vec()),
            Frame::Binary => Got::Binary,
            Frame::Ping(p) => Got::Ping(p.to_vec()),
            Frame::Pong => Got::Pong,
            Frame::Close(c) => Got::Close(c),
        });
        true
    })
}

fn read_all(data: &[u8]) -> Result<Vec<Got>, WsError> {
    let mut r = FrameReader::default();
    let mut out = Vec::new();
    collect(&mut r, data, &mut out)?;
    Ok(out)
}

/// A stream of every kind of frame, the way a server writes it.
fn mixed() -> (Vec<u8>, Vec<Got>) {
    let big = vec![b'x'; 70_000];
    let mut s = Vec::new();
    s.extend(frame(TEXT, br#"{"type":"hello"}"#));
    s.extend(frame(PING, b"p1"));
    s.extend(frame(TEXT, &big));
    s.extend(frame(0x82, &[1, 2, 3]));
    s.extend(frame(PONG, b""));
    s.extend(frame(TEXT, &vec![b'y'; 300]));
    s.extend(frame(CLOSE, &[0x03, 0xe8, b'b', b'y', b'e']));
    let expect = vec![
        Got::Text(br#"{"type":"hello"}"#.to_vec()),
        Got::Ping(b"p1".to_vec()),
        Got::Text(big),
        Got::Binary,
        Got::Pong,
        Got::Text(vec![b'y'; 300]),
        Got::Close(Some(1000)),
    ];
    (s, expect)
}

#[test]
fn whole_frames_of_every_kind_come_out_in_order() {
    let (s, expect) = mixed();
    assert_eq!(read_all(&s).unwrap(), expect);
}

/// However the bytes are split across reads (one byte at a time, or odd
/// chunks), the frames are the same, and a reader between frames holds no
/// buffer.
#[test]
fn frames_split_across_reads_come_out_the_same() {
    let (s, expect) = mixed();
    for chunk in [1, 2, 3, 7, 125, 126, 4096, 65_536] {
        let mut r = FrameReader::default();
        let mut out = Vec::new();
        for piece in s.chunks(chunk) {
            collect(&mut r, piece, &mut out).unwrap();
        }
        assert_eq!(out, expect, "chunk {chunk}");
        assert_eq!(
            r.heap_bytes(),
            0,
            "chunk {chunk}: an idle reader holds no buffer"
        );
    }
}

/// Fragments are put back together; control frames between them come out
/// on their own; a fragmented binary message is one `Binary`.
#[test]
fn fragmented_messages_are_reassembled() {
    let mut s = Vec::new();
    s.extend(frame(0x01, b"{\"type\":")); // text, no FIN
    s.extend(frame(PING, b"mid"));
    s.extend(frame(0x00, b"\"mes")); // continuation
    s.extend(frame(0x80, b"sage\"}")); // final continuation
    s.extend(frame(0x02, &[9; 10])); // binary, no FIN
    s.extend(frame(0x80, &[9; 10]));
    s.extend(frame(TEXT, b"after"));
    let expect = vec![
        Got::Ping(b"mid".to_vec()),
        Got::Text(br#"{"type":"message"}"#.to_vec()),
        Got::Binary,
        Got::Text(b"after".to_vec()),
    ];
    assert_eq!(read_all(&s).unwrap(), expect);
    for chunk in [1, 5, 9] {
        let mut r = FrameReader::default();
        let mut out = Vec::new();
        for piece in s.chunks(chunk) {
            collect(&mut r, piece, &mut out).unwrap();
        }
        assert_eq!(out, expect, "chunk {chunk}");
        assert_eq!(r.heap_bytes(), 0);
    }
}

/// A 1 MiB text frame (a large sync page), in 64 KiB reads; and the same
/// size in 16 fragments.
#[test]
fn large_messages_come_through_whole() {
    let big: Vec<u8> = (0..1 << 20).map(|i| b'a' + (i % 26) as u8).collect();
    let s = frame(TEXT, &big);
    assert_eq!(s[1], 127, "a 64-bit length");
    let mut r = FrameReader::default();
    let mut out = Vec::new();
    for piece in s.chunks(SCRATCH) {
        collect(&mut r, piece, &mut out).unwrap();
        if out.is_empty() {
            // Room for the whole frame was taken once its header was known.
            assert!(r.heap_bytes() >= s.len(), "{}", r.heap_bytes());
        }
    }
    assert_eq!(out, vec![Got::Text(big.clone())]);
    assert_eq!(r.heap_bytes(), 0);

    let mut s = Vec::new();
    let parts: Vec<&[u8]> = big.chunks(big.len() / 16).collect();
    for (i, p) in parts.iter().enumerate() {
        let b0 = match (i, i + 1 == parts.len()) {
            (0, _) => 0x01,
            (_, true) => 0x80,
            _ => 0x00,
        };
        s.extend(frame(b0, p));
    }
    assert_eq!(read_all(&s).unwrap(), vec![Got::Text(big)]);
}

#[test]
fn streams_that_break_the_rules_are_refused() {
    let bad: Vec<(Vec<u8>, WsError)> = vec![
        (
            vec![0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2],
            WsError::Protocol("masked frame from the server"),
        ),
        (frame(0xc1, b"x"), WsError::Protocol("reserved bits set")),
        (frame(0x83, b"x"), WsError::Protocol("unknown opcode")),
        (frame(0x8b, b""), WsError::Protocol("unknown opcode")),
        (
            frame(0x09, b"p"),
            WsError::Protocol("fragmented control frame"),
        ),
        (
            frame(PING, &[0; 126]),
            WsError::Protocol("control frame over 125 bytes"),
        ),
        (
            frame(0x80, b"x"),
            WsError::Protocol("continuation without a message"),
        ),
        (
            [frame(0x01, b"a"), frame(TEXT, b"b")].concat(),
            WsError::Protocol("a new message inside a fragmented one"),
        ),
        (
            frame(CLOSE, &[3]),
            WsError::Protocol("close frame of one byte"),
        ),
    ];
    for (s, want) in bad {
        assert_eq!(read_all(&s).unwrap_err(), want, "{s:?}");
    }
}

/// A length over the limit is refused from the header alone: nothing is
/// buffered for it, whether it is one frame or the sum of fragments.
#[test]
fn messages_over_the_limit_are_refused_before_buffering() {
    let mut head = vec![0x81, 127];
    head.extend_from_slice(&(MAX_MESSAGE as u64 + 1).to_be_bytes());
    let mut r = FrameReader::default();
    let err = collect(&mut r, &head, &mut Vec::new()).unwrap_err();
    assert_eq!(err, WsError::TooLarge(MAX_MESSAGE as u64 + 1));
    assert_eq!(r.heap_bytes(), 0);
    // u64::MAX: no overflow, the same refusal.
    let mut head = vec![0x81, 127];
    head.extend_from_slice(&u64::MAX.to_be_bytes());
    assert!(matches!(read_all(&head), Err(WsError::TooLarge(_))));

    // Fragments that together pass the limit.
    let mut r = FrameReader::default();
    let piece = vec![b'z'; 1 << 20];
    let mut out = Vec::new();
    collect(&mut r, &frame(0x01, &piece), &mut out).unwrap();
    let mut refused = None;
    for _ in 0..(MAX_MESSAGE >> 20) {
        if let Err(e) = collect(&mut r, &frame(0x00, &piece), &mut out) {
            refused = Some(e);
            break;
        }
    }
    assert!(matches!(refused, Some(WsError::TooLarge(_))), "{refused:?}");
    assert!(out.is_empty());
}

/// A handler that stops (the device saw `hello` and hands over to its
/// session) leaves the frames after it for the next call, even with no new
/// data.
#[test]
fn frames_after_a_stop_stay_for_the_next_call() {
    let mut s = frame(TEXT, b"hello");
    s.extend(frame(TEXT, b"first"));
    s.extend(frame(TEXT, b"sec"));
    let cut = s.len() - 2;
    let mut r = FrameReader::default();
    let mut seen = Vec::new();
    let go = r
        .feed(&s[..cut], &mut |f| {
            if let Frame::Text(t) = f {
                seen.push(t.to_vec());
            }
            false
        })
        .unwrap();
    assert!(!go);
    assert_eq!(seen, vec![b"hello".to_vec()]);
    let mut out = Vec::new();
    collect(&mut r, &[], &mut out).unwrap();
    assert_eq!(out, vec![Got::Text(b"first".to_vec())]);
    collect(&mut r, &s[cut..], &mut out).unwrap();
    assert_eq!(out[1], Got::Text(b"sec".to_vec()));
    assert_eq!(r.heap_bytes(), 0);
}

/// Over a real socket: frames written in pieces are read with one `recv`
/// per readiness, and the peer's close is `Eof`.
#[tokio::test]
async fn pump_reads_a_socket_until_its_end() {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client = TcpStream::connect(addr).await.unwrap();
    let (mut server, _) = listener.accept().await.unwrap();
    let (s, expect) = mixed();
    let writer = tokio::spawn(async move {
        for piece in s.chunks(40_000) {
            server.write_all(piece).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        server.shutdown().await.unwrap();
    });
    let mut r = FrameReader::default();
    let mut out = Vec::new();
    loop {
        client.readable().await.unwrap();
        let p = pump(&client, &mut r, &mut |f| {
            out.push(format!("{f:?}").len());
            true
        })
        .unwrap();
        if p == Pumped::Eof {
            break;
        }
    }
    writer.await.unwrap();
    assert_eq!(out.len(), expect.len());
    assert_eq!(r.heap_bytes(), 0);
}
