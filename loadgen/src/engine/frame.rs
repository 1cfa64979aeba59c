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

    /// The same from a text frame's bytes (not UTF-8: `None`).
    pub fn parse_bytes(text: &'a [u8]) -> Option<FrameView<'a>> {
        serde_json::from_slice(text).ok()
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
}
