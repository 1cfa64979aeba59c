//! A borrowed, flat view of a server frame: only the fields the devices use.
//!
//! The protocol's [`ServerFrame`](reference_server::protocol::ServerFrame) is
//! an internally tagged enum that owns its strings: serde buffers every frame
//! to find `type`, then copies `channel`, `client_msg_id` and the whole `text`
//! into new `String`s, for each of the thousands of frames a second a
//! generator reads. This view is one struct for every frame type, read in one
//! pass: strings are borrowed from the frame (copied only when escaped), the
//! text and every other field are skipped unread. The wire format still has one
//! definition: the tests below serialize each `ServerFrame` variant with the
//! server's own types and read it back through this view.
//!
//! Flat frames (acks, deliveries: two per chat message) go first through
//! [`scan`], a single pass over the exact JSON the server writes, which halved
//! the devices' parsing time per message (profile in
//! `reports/generator-cost/README.md`); whatever it cannot read exactly as
//! serde would, serde reads.

use std::borrow::Cow;

use serde::Deserialize;

/// One message as a device needs it (a `message` frame, or a `sync_batch` entry).
#[derive(Debug, Deserialize)]
pub struct MsgView<'a> {
    #[serde(borrow)]
    pub channel: Cow<'a, str>,
    pub id: u64,
    #[serde(default)]
    pub seq: Option<u64>,
    #[serde(default)]
    pub from: u64,
    #[serde(borrow, default)]
    pub client_msg_id: Cow<'a, str>,
}

/// Any server frame, flat; fields a type lacks read as their defaults.
#[derive(Debug, Deserialize)]
pub struct FrameView<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(default)]
    pub req: Option<i64>,
    #[serde(borrow, default)]
    pub channel: Cow<'a, str>,
    #[serde(default)]
    pub id: u64,
    /// `message` and `ack`: the inbox seq; `hello`: the inbox head.
    #[serde(default)]
    pub seq: Option<u64>,
    #[serde(borrow, default)]
    pub client_msg_id: Cow<'a, str>,
    #[serde(default)]
    pub from: u64,
    #[serde(borrow, default)]
    pub messages: Vec<MsgView<'a>>,
    #[serde(default)]
    pub more: bool,
    #[serde(borrow, default)]
    pub status: Cow<'a, str>,
    #[serde(default)]
    pub last_active_at: Option<u64>,
    #[serde(borrow, default)]
    pub code: Cow<'a, str>,
    #[serde(default)]
    pub offline_after_ms: u64,
}

impl<'a> FrameView<'a> {
    pub fn parse(text: &'a str) -> Option<FrameView<'a>> {
        serde_json::from_str(text).ok()
    }

    /// The same from a text frame's bytes (not UTF-8: `None`): the
    /// [`scan`] of a flat frame, else serde's reading.
    pub fn parse_bytes(text: &'a [u8]) -> Option<FrameView<'a>> {
        let text = std::str::from_utf8(text).ok()?;
        scan(text).or_else(|| FrameView::parse(text))
    }

    /// A `message` frame as a message.
    pub fn message(&self) -> MsgView<'_> {
        MsgView {
            channel: Cow::Borrowed(&self.channel),
            id: self.id,
            seq: self.seq,
            from: self.from,
            client_msg_id: Cow::Borrowed(&self.client_msg_id),
        }
    }
}

/// A frame's fields, for the check that each appears once.
const KEYS: [&str; 13] = [
    "type",
    "req",
    "channel",
    "id",
    "seq",
    "client_msg_id",
    "from",
    "messages",
    "more",
    "status",
    "last_active_at",
    "code",
    "offline_after_ms",
];

/// Reads a flat frame (every frame but `sync_batch`) the way the server
/// writes it, in one pass with no per-field dispatch through serde: each
/// device reads an ack and a delivery per message, and serde's reading was
/// most of the devices' own work per frame after the syscalls.
///
/// It takes only what it can read exactly as serde would: no whitespace,
/// strings without escapes or control characters, integers without a
/// fraction or exponent that fit their field, each field once, no nested
/// value (`messages` included). Anything else returns `None`, and the caller
/// asks serde, so a frame reads the same either way (the tests compare them).
pub fn scan(text: &str) -> Option<FrameView<'_>> {
    let mut s = Scan { t: text, i: 0 };
    let mut v = FrameView {
        kind: Cow::Borrowed(""),
        req: None,
        channel: Cow::Borrowed(""),
        id: 0,
        seq: None,
        client_msg_id: Cow::Borrowed(""),
        from: 0,
        messages: Vec::new(),
        more: false,
        status: Cow::Borrowed(""),
        last_active_at: None,
        code: Cow::Borrowed(""),
        offline_after_ms: 0,
    };
    let mut seen = 0u16;
    s.eat(b'{')?;
    if s.peek()? == b'}' {
        return None;
    }
    loop {
        let key = s.string()?;
        s.eat(b':')?;
        match KEYS.iter().position(|k| *k == key) {
            Some(k) => {
                if seen & (1 << k) != 0 {
                    return None;
                }
                seen |= 1 << k;
                match k {
                    0 => v.kind = Cow::Borrowed(s.string()?),
                    1 => v.req = s.nullable(Scan::i64)?,
                    2 => v.channel = Cow::Borrowed(s.string()?),
                    3 => v.id = s.u64()?,
                    4 => v.seq = s.nullable(Scan::u64)?,
                    5 => v.client_msg_id = Cow::Borrowed(s.string()?),
                    6 => v.from = s.u64()?,
                    8 => v.more = s.bool()?,
                    9 => v.status = Cow::Borrowed(s.string()?),
                    10 => v.last_active_at = s.nullable(Scan::u64)?,
                    11 => v.code = Cow::Borrowed(s.string()?),
                    12 => v.offline_after_ms = s.u64()?,
                    _ => return None, // `messages`: serde's
                }
            }
            None => s.skip_scalar()?,
        }
        match s.next()? {
            b',' => {}
            b'}' => break,
            _ => return None,
        }
    }
    // `type` is required; nothing may follow the object.
    (seen & 1 != 0 && s.i == s.t.len()).then_some(v)
}

/// A cursor over a frame's text.
struct Scan<'a> {
    t: &'a str,
    i: usize,
}

impl<'a> Scan<'a> {
    fn peek(&self) -> Option<u8> {
        self.t.as_bytes().get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }

    /// A string without escapes or control characters, borrowed.
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.i;
        let rest = &self.t.as_bytes()[start..];
        let len = rest
            .iter()
            .position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
        if rest[len] != b'"' {
            return None;
        }
        self.i = start + len + 1;
        // Quotes are ASCII: both ends fall on character boundaries.
        self.t.get(start..start + len)
    }

    /// An unsigned integer as JSON writes it (no leading zero, no fraction
    /// or exponent), that fits a u64.
    fn u64(&mut self) -> Option<u64> {
        let b = self.t.as_bytes();
        let start = self.i;
        let mut v: u64 = 0;
        while let Some(c) = b.get(self.i).filter(|c| c.is_ascii_digit()) {
            v = v.checked_mul(10)?.checked_add((c - b'0') as u64)?;
            self.i += 1;
        }
        let digits = self.i - start;
        if digits == 0 || (digits > 1 && b[start] == b'0') {
            return None;
        }
        match self.peek() {
            Some(b'.' | b'e' | b'E') => None,
            _ => Some(v),
        }
    }

    fn i64(&mut self) -> Option<i64> {
        if self.peek()? == b'-' {
            self.i += 1;
            return 0i64.checked_sub_unsigned(self.u64()?);
        }
        i64::try_from(self.u64()?).ok()
    }

    fn bool(&mut self) -> Option<bool> {
        self.literal(&["true", "false"]).map(|k| k == 0)
    }

    /// `null` as `None`, else what `read` reads.
    fn nullable<T>(&mut self, read: fn(&mut Self) -> Option<T>) -> Option<Option<T>> {
        if self.t[self.i..].starts_with("null") {
            self.i += 4;
            return Some(None);
        }
        read(self).map(Some)
    }

    /// Which of `words` comes next (and steps over it).
    fn literal(&mut self, words: &[&str]) -> Option<usize> {
        let k = words.iter().position(|w| self.t[self.i..].starts_with(w))?;
        self.i += words[k].len();
        Some(k)
    }

    /// A field the view does not keep: a string (one with escapes is
    /// declined), an integer, or a literal.
    fn skip_scalar(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'-' => self.i64().map(drop),
            b'0'..=b'9' => self.u64().map(drop),
            _ => self.literal(&["true", "false", "null"]).map(drop),
        }
    }
}

#[cfg(test)]
mod tests {
    use reference_server::protocol::{ErrorCode, Message, ServerFrame, Status};

    use super::*;

    fn msg(seq: Option<u64>) -> Message {
        Message {
            channel: "g:7".into(),
            id: 41,
            seq,
            from: 3,
            from_device: 4,
            client_msg_id: "1-2-3".into(),
            text: "a \"quoted\" text\nwith escapes".into(),
            ts: 9,
        }
    }

    fn view(f: &ServerFrame) -> String {
        serde_json::to_string(f).unwrap()
    }

    /// Every server frame the protocol defines reads through the view with the
    /// fields the devices use.
    #[test]
    fn the_view_reads_what_the_server_writes() {
        let t = view(&ServerFrame::Message(msg(Some(5))));
        let v = FrameView::parse(&t).unwrap();
        assert_eq!(v.kind, "message");
        let m = v.message();
        assert_eq!(
            (&*m.channel, m.id, m.seq, m.from, &*m.client_msg_id),
            ("g:7", 41, Some(5), 3, "1-2-3")
        );

        let t = view(&ServerFrame::Ack {
            req: Some(8),
            channel: "dm:1:2".into(),
            id: 6,
            seq: 12,
            ts: 1,
        });
        let v = FrameView::parse(&t).unwrap();
        assert_eq!(
            (&*v.kind, v.req, &*v.channel, v.id, v.seq),
            ("ack", Some(8), "dm:1:2", 6, Some(12))
        );

        let t = view(&ServerFrame::SyncBatch {
            req: Some(2),
            messages: vec![msg(Some(1)), msg(Some(2))],
            more: true,
        });
        let v = FrameView::parse(&t).unwrap();
        assert_eq!((&*v.kind, v.req, v.more), ("sync_batch", Some(2), true));
        assert_eq!(
            v.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
            vec![Some(1), Some(2)]
        );

        let t = view(&ServerFrame::Hello {
            user_id: 1,
            device_id: 2,
            seq: 30,
            heartbeat_interval_ms: 5000,
            offline_after_ms: 30000,
        });
        let v = FrameView::parse(&t).unwrap();
        assert_eq!(
            (&*v.kind, v.seq, v.offline_after_ms),
            ("hello", Some(30), 30000)
        );

        let t = view(&ServerFrame::Presence {
            user_id: 1,
            status: Status::Offline,
            last_active_at: Some(77),
        });
        let v = FrameView::parse(&t).unwrap();
        assert_eq!(
            (&*v.kind, &*v.status, v.last_active_at),
            ("presence", "offline", Some(77))
        );

        let t = view(&ServerFrame::error(Some(4), ErrorCode::RateLimited, "slow"));
        let v = FrameView::parse(&t).unwrap();
        assert_eq!(
            (&*v.kind, v.req, &*v.code),
            ("error", Some(4), ErrorCode::RateLimited.as_str())
        );
        assert!(FrameView::parse("not json").is_none());
    }

    /// The scanner reads what serde reads, or declines.
    fn same(text: &str, scanned: bool) {
        let by_serde = format!("{:?}", FrameView::parse(text));
        let by_scan = scan(text);
        assert_eq!(by_scan.is_some(), scanned, "{text}");
        if let Some(v) = by_scan {
            assert_eq!(format!("{:?}", Some(v)), by_serde, "{text}");
        }
        let read = format!("{:?}", FrameView::parse_bytes(text.as_bytes()));
        assert_eq!(read, by_serde, "{text}");
    }

    /// Every flat frame the server writes goes through the scanner and reads
    /// as serde reads it; a delivery as the server sends it (its seq spliced
    /// in front) too.
    #[test]
    fn the_scanner_reads_the_servers_flat_frames_as_serde_does() {
        let plain = Message {
            text: "the quick brown fox".into(),
            ..msg(None)
        };
        let shared = view(&ServerFrame::Message(plain.clone()));
        same(&reference_server::protocol::splice_seq(&shared, 77), true);
        same(
            &view(&ServerFrame::Message(Message {
                seq: Some(3),
                ..plain
            })),
            true,
        );
        for f in [
            ServerFrame::Ack {
                req: Some(-8),
                channel: "dm:1:2".into(),
                id: u64::MAX,
                seq: 12,
                ts: 1,
            },
            ServerFrame::Ack {
                req: None,
                channel: "g:9".into(),
                id: 0,
                seq: 0,
                ts: 0,
            },
            ServerFrame::Hello {
                user_id: 1,
                device_id: 2,
                seq: 30,
                heartbeat_interval_ms: 5000,
                offline_after_ms: 30000,
            },
            ServerFrame::Presence {
                user_id: 1,
                status: Status::Online,
                last_active_at: None,
            },
            ServerFrame::Presence {
                user_id: 1,
                status: Status::Offline,
                last_active_at: Some(77),
            },
            ServerFrame::error(Some(4), ErrorCode::RateLimited, "slow down"),
        ] {
            same(&view(&f), true);
        }
    }

    /// What the scanner cannot read exactly goes to serde: escapes, nesting,
    /// whitespace, fractions, out-of-range numbers, repeated keys, bad JSON.
    #[test]
    fn the_scanner_declines_what_it_cannot_read_exactly() {
        // The message of the test above has escapes in its text.
        same(&view(&ServerFrame::Message(msg(Some(5)))), false);
        same(
            &view(&ServerFrame::SyncBatch {
                req: Some(2),
                messages: vec![msg(Some(1))],
                more: true,
            }),
            false,
        );
        for text in [
            r#"{"type":"ack","channel":"dm:\u0031:2","id":1}"#,
            r#"{"type": "ack","id":1}"#,
            r#"{"type":"ack","id":1} "#,
            r#"{"type":"ack","id":1.0}"#,
            r#"{"type":"ack","id":1e3}"#,
            r#"{"type":"ack","id":-1}"#,
            r#"{"type":"ack","id":18446744073709551616}"#,
            r#"{"type":"ack","req":9223372036854775808}"#,
            r#"{"type":"ack","id":01}"#,
            r#"{"type":"ack","id":1,"id":2}"#,
            r#"{"type":"ack","extra":{"a":1}}"#,
            r#"{"type":"ack","extra":[1]}"#,
            r#"{"type":"ack","seq":"5"}"#,
            r#"{"type":"ack","id":null}"#,
            r#"{"type":"ack","more":1}"#,
            r#"{"id":1}"#,
            r#"{"type":"ack","id":1"#,
            r#"{"type":"ack","id":1}}"#,
            r#"{"type":"ack",}"#,
            "{}",
            "",
            "[]",
        ] {
            same(text, false);
        }
        // And what it does read, at the edges of its rules.
        for text in [
            r#"{"type":"ack","req":-9223372036854775808,"seq":null,"more":false}"#,
            r#"{"type":"x","unknown":"s","n":-3,"b":true,"z":null,"id":0}"#,
            r#"{"type":"presence","status":"online","last_active_at":null}"#,
        ] {
            same(text, true);
        }
        assert!(FrameView::parse_bytes(b"{\"type\":\"\xff\"}").is_none());
    }
}
