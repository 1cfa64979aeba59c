//! Wire protocol, version 1: every JSON body and frame the server and its clients
//! exchange, the error codes, and the limits.
//!
//! This is the one place these types live. The load generator imports this module,
//! so the server and the generator cannot drift apart. Field names follow
//! `docs/protocol.md` exactly; unknown fields are ignored on input (serde's default)
//! so newer peers can add fields without breaking older ones.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// A user's id: a JSON integer below 2^53.
pub type UserId = u64;
/// A device's id, unique across all users.
pub type DeviceId = u64;
/// A message's id within its channel: 1, 2, 3, ...
pub type MessageId = u64;
/// A position in one user's inbox: 1, 2, 3, ...
pub type Seq = u64;
/// Milliseconds since the Unix epoch.
pub type Millis = u64;

/// Longest message text, in Unicode scalar values (not bytes).
pub const MAX_TEXT_CHARS: usize = 100_000;
/// Most members a group may have, its creator included.
pub const MAX_GROUP_MEMBERS: usize = 100;
/// Longest `client_msg_id`, in characters.
pub const MAX_CLIENT_MSG_ID_CHARS: usize = 64;
/// Default and largest page of `GET /v1/channels/{channel}/messages`.
pub const HISTORY_DEFAULT_LIMIT: usize = 50;
pub const HISTORY_MAX_LIMIT: usize = 500;
/// Default and largest page of a `sync` answer.
pub const SYNC_DEFAULT_LIMIT: usize = 100;
pub const SYNC_MAX_LIMIT: usize = 1000;
/// Encoded messages in one `sync_batch` or history page, at most (a page always
/// holds at least one message, whatever its size). Well under the frame limit
/// (1 MiB) and the WebSocket write limit, so an answer always goes through.
pub const REPLY_BUDGET_BYTES: usize = 256 * 1024;

/// Every error code of the protocol. The HTTP status for each lives in
/// [`ErrorCode::http_status`] and nowhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    Conflict,
    TooLarge,
    GroupFull,
    RateLimited,
    Overloaded,
    /// Not in the contract's table: a storage failure the client can retry.
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 10] = [
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::Conflict,
        ErrorCode::TooLarge,
        ErrorCode::GroupFull,
        ErrorCode::RateLimited,
        ErrorCode::Overloaded,
        ErrorCode::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::GroupFull => "group_full",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Internal => "internal",
        }
    }

    /// The HTTP status that goes with the code (the protocol's error table).
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest | ErrorCode::GroupFull => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::TooLarge => 413,
            ErrorCode::RateLimited => 429,
            ErrorCode::Overloaded => 503,
            ErrorCode::Internal => 500,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `{"error": CODE, "message": TEXT}`: the body of every HTTP error answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorCode,
    pub message: String,
}

/// Presence status of a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Online,
    Offline,
}

// ---------------------------------------------------------------------------
// HTTP bodies
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignupRequest {
    pub username: String,
    pub password: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignupResponse {
    pub user_id: UserId,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginResponse {
    pub token: String,
    pub user_id: UserId,
    pub device_id: DeviceId,
    pub servers: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiscoveryResponse {
    pub servers: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserRef {
    pub user_id: UserId,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Friend {
    pub user_id: UserId,
    pub username: String,
    pub status: Status,
    pub last_active_at: Option<Millis>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FriendsResponse {
    pub friends: Vec<Friend>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateGroupRequest {
    pub name: String,
    pub members: Vec<UserId>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateGroupResponse {
    pub channel: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryResponse {
    pub messages: Vec<Message>,
    /// True when more messages lie past this page in the direction asked (an
    /// extension: pages are cut at a byte budget as well as at `limit`).
    #[serde(default)]
    pub more: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PresenceEntry {
    pub user_id: UserId,
    pub status: Status,
    pub last_active_at: Option<Millis>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PresenceResponse {
    pub presence: Vec<PresenceEntry>,
}

// ---------------------------------------------------------------------------
// WebSocket frames
// ---------------------------------------------------------------------------

/// Where a `send` goes: exactly one of `user` and `channel`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Recipient {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<UserId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
}

impl Recipient {
    pub fn user(id: UserId) -> Self {
        Recipient {
            user: Some(id),
            channel: None,
        }
    }
    pub fn channel(id: impl Into<String>) -> Self {
        Recipient {
            user: None,
            channel: Some(id.into()),
        }
    }
}

/// A frame from a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    Send {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<i64>,
        to: Recipient,
        client_msg_id: String,
        text: String,
    },
    Heartbeat {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<i64>,
    },
    Sync {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<i64>,
        since: Seq,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    Logout {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<i64>,
    },
}

/// Decodes a client frame (see [`parse_client_frame`] for the `bad_request`
/// answer when it fails). Every field the frames use is read in one pass over
/// a flat struct with borrowed strings, then the variant is built: serde's
/// internally tagged [`ClientFrame`] buffers each field (keys and strings
/// copied) until it has found `type`, which costs more than the rest of the
/// parse. Anything the flat pass cannot take (a missing field, a wrong type, an
/// unknown `type`) goes through [`ClientFrame`]'s own deserializer, so the
/// outcome and the error are the same as parsing a `ClientFrame`.
pub fn decode_client_frame(text: &str) -> Result<ClientFrame, serde_json::Error> {
    #[derive(Deserialize)]
    struct Flat<'a> {
        #[serde(rename = "type", borrow)]
        kind: Cow<'a, str>,
        #[serde(default)]
        req: Option<i64>,
        #[serde(default, borrow)]
        to: Option<FlatRecipient<'a>>,
        #[serde(default, borrow)]
        client_msg_id: Option<Cow<'a, str>>,
        #[serde(default, borrow)]
        text: Option<Cow<'a, str>>,
        #[serde(default)]
        since: Option<Seq>,
        #[serde(default)]
        limit: Option<u32>,
    }
    #[derive(Deserialize)]
    struct FlatRecipient<'a> {
        #[serde(default)]
        user: Option<UserId>,
        #[serde(default, borrow)]
        channel: Option<Cow<'a, str>>,
    }
    let fast = serde_json::from_str::<Flat<'_>>(text).ok().and_then(|f| {
        Some(match f.kind.as_ref() {
            "send" => {
                let to = f.to?;
                ClientFrame::Send {
                    req: f.req,
                    to: Recipient {
                        user: to.user,
                        channel: to.channel.map(Cow::into_owned),
                    },
                    client_msg_id: f.client_msg_id?.into_owned(),
                    text: f.text?.into_owned(),
                }
            }
            "heartbeat" => ClientFrame::Heartbeat { req: f.req },
            "sync" => ClientFrame::Sync {
                req: f.req,
                since: f.since?,
                limit: f.limit,
            },
            "logout" => ClientFrame::Logout { req: f.req },
            _ => return None,
        })
    });
    match fast {
        Some(frame) => Ok(frame),
        None => serde_json::from_str(text),
    }
}

/// What can be read from a frame that failed to parse: enough to answer it with
/// an `error` frame that carries its `req` and names its `type`.
#[derive(Debug, Default, Deserialize)]
pub struct FrameEnvelope {
    #[serde(default)]
    pub req: Option<serde_json::Value>,
    #[serde(default, rename = "type")]
    pub kind: Option<serde_json::Value>,
}

impl FrameEnvelope {
    /// The `req` of a frame, when it is an integer.
    pub fn req(&self) -> Option<i64> {
        self.req.as_ref().and_then(|v| v.as_i64())
    }
}

/// A client frame that could not be parsed: what its `error` frame says.
#[derive(Debug, Clone, PartialEq)]
pub struct BadFrame {
    /// The frame's `req`, when it had a readable integer one.
    pub req: Option<i64>,
    pub message: String,
}

impl BadFrame {
    /// The `error` frame (`bad_request`) that answers it.
    pub fn to_error_frame(&self) -> ServerFrame {
        ServerFrame::error(self.req, ErrorCode::BadRequest, self.message.clone())
    }
}

/// Parses a client text frame, or says why not (for its `bad_request` answer):
/// an unknown type, a frame without one, or a malformed or mistyped field.
pub fn parse_client_frame(text: &str) -> Result<ClientFrame, BadFrame> {
    decode_client_frame(text).map_err(|e| {
        let env: FrameEnvelope = serde_json::from_str(text).unwrap_or_default();
        let message = match env.kind.as_ref().and_then(|k| k.as_str()) {
            Some(kind) if !matches!(kind, "send" | "heartbeat" | "sync" | "logout") => {
                format!("unknown frame type {kind:?}")
            }
            _ if env.kind.is_none() && serde_json::from_str::<serde_json::Value>(text).is_ok() => {
                "frame has no type".to_string()
            }
            _ => format!("malformed frame: {e}"),
        };
        BadFrame {
            req: env.req(),
            message,
        }
    })
}

/// A stored message as clients see it: in `message` frames, `sync_batch` answers
/// and history pages. `seq` is the receiving user's inbox position; history pages,
/// which are per channel rather than per user, leave it out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub channel: String,
    pub id: MessageId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<Seq>,
    pub from: UserId,
    pub from_device: DeviceId,
    pub client_msg_id: String,
    pub text: String,
    pub ts: Millis,
}

/// A borrowed message, for serializing fan-out frames without cloning the text.
#[derive(Debug, Clone, Serialize)]
pub struct MessageRef<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub channel: &'a str,
    pub id: MessageId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<Seq>,
    pub from: UserId,
    pub from_device: DeviceId,
    pub client_msg_id: &'a str,
    pub text: &'a str,
    pub ts: Millis,
}

/// `{"seq":N,` followed by a serialized object without its opening brace: the
/// member's `message` frame, built with one copy of the shared bytes.
pub fn splice_seq(shared: &str, seq: u64) -> String {
    let body = shared.strip_prefix('{').unwrap_or(shared);
    let mut digits = [0u8; 20];
    let seq = decimal(seq, &mut digits);
    let mut frame = String::with_capacity(body.len() + seq.len() + 8);
    frame.push_str("{\"seq\":");
    frame.push_str(seq);
    frame.push(',');
    frame.push_str(body);
    frame
}

/// The `message` frame of `m` for the member whose inbox `seq` it is: the
/// same bytes as `splice_seq(&serde_json::to_string(m), seq)`, written into
/// one buffer sized up front (no shared copy, no growing).
pub fn message_frame(m: &MessageRef<'_>, seq: Seq) -> String {
    let mut out = Vec::with_capacity(m.text.len() + m.client_msg_id.len() + m.channel.len() + 160);
    out.extend_from_slice(b"{\"seq\":");
    let mut digits = [0u8; 20];
    out.extend_from_slice(decimal(seq, &mut digits).as_bytes());
    let brace = out.len();
    serde_json::to_writer(&mut out, m).expect("message frames always serialize");
    // `{"seq":N{"type":...}` -> `{"seq":N,"type":...}`
    out[brace] = b',';
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// Another member's frame of the same message: a [`message_frame`] (or
/// [`splice_seq`]) result with its `seq` replaced.
pub fn reseq(frame: &str, seq: Seq) -> String {
    let after_seq = &frame["{\"seq\":".len()..];
    let body = &after_seq[after_seq.find(',').unwrap_or(0)..];
    let mut digits = [0u8; 20];
    let seq = decimal(seq, &mut digits);
    let mut out = String::with_capacity(body.len() + seq.len() + 7);
    out.push_str("{\"seq\":");
    out.push_str(seq);
    out.push_str(body);
    out
}

/// An `ack` frame: the same bytes as serializing [`ServerFrame::Ack`], without
/// serde's per-field machinery (one is written for every `send`).
pub fn ack_json(req: Option<i64>, channel: &str, id: MessageId, seq: Seq, ts: Millis) -> String {
    let mut out = Vec::with_capacity(channel.len() + 96);
    out.extend_from_slice(b"{\"type\":\"ack\",");
    let mut digits = [0u8; 20];
    if let Some(req) = req {
        out.extend_from_slice(b"\"req\":");
        if req < 0 {
            out.push(b'-');
        }
        out.extend_from_slice(decimal(req.unsigned_abs(), &mut digits).as_bytes());
        out.push(b',');
    }
    out.extend_from_slice(b"\"channel\":");
    serde_json::to_writer(&mut out, channel).expect("strings always serialize");
    for (name, n) in [
        (&b",\"id\":"[..], id),
        (b",\"seq\":", seq),
        (b",\"ts\":", ts),
    ] {
        out.extend_from_slice(name);
        out.extend_from_slice(decimal(n, &mut digits).as_bytes());
    }
    out.push(b'}');
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// `n` in decimal, written into the end of `buf` (no allocation, no `fmt`).
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).expect("ASCII digits")
}

/// A frame from the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Hello {
        user_id: UserId,
        device_id: DeviceId,
        seq: Seq,
        heartbeat_interval_ms: u64,
        offline_after_ms: u64,
    },
    Message(Message),
    Presence {
        user_id: UserId,
        status: Status,
        last_active_at: Option<Millis>,
    },
    /// The answer to a `send` (all fields), or to a `heartbeat` or `logout` that
    /// carried a `req` (only `req`; the other fields read as empty/0).
    Ack {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<i64>,
        #[serde(default)]
        channel: String,
        #[serde(default)]
        id: MessageId,
        #[serde(default)]
        seq: Seq,
        #[serde(default)]
        ts: Millis,
    },
    SyncBatch {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<i64>,
        messages: Vec<Message>,
        more: bool,
    },
    Error {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<i64>,
        code: ErrorCode,
        message: String,
    },
}

impl ServerFrame {
    pub fn error(req: Option<i64>, code: ErrorCode, message: impl Into<String>) -> Self {
        ServerFrame::Error {
            req,
            code,
            message: message.into(),
        }
    }

    /// Serializes the frame. Serializing these types cannot fail (no maps with
    /// non-string keys, no foreign `Serialize` impls), hence no `Result`.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server frames always serialize")
    }
}

// ---------------------------------------------------------------------------
// Channels
// ---------------------------------------------------------------------------

/// A channel id, parsed: `dm:A:B` (A < B) or `g:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelId {
    Direct(UserId, UserId),
    Group(u64),
}

impl ChannelId {
    /// The one-to-one channel of two users, whatever their order.
    pub fn direct(a: UserId, b: UserId) -> Self {
        if a <= b {
            ChannelId::Direct(a, b)
        } else {
            ChannelId::Direct(b, a)
        }
    }

    /// Parses `dm:A:B` (with A < B) or `g:N`; anything else is `None`.
    pub fn parse(s: &str) -> Option<Self> {
        if let Some(rest) = s.strip_prefix("dm:") {
            let (a, b) = rest.split_once(':')?;
            let (a, b) = (parse_id(a)?, parse_id(b)?);
            (a < b).then_some(ChannelId::Direct(a, b))
        } else if let Some(n) = s.strip_prefix("g:") {
            parse_id(n).map(ChannelId::Group)
        } else {
            None
        }
    }
}

/// A canonical decimal id: digits only, no sign, no leading zeros.
fn parse_id(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

impl std::fmt::Display for ChannelId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChannelId::Direct(a, b) => write!(f, "dm:{a}:{b}"),
            ChannelId::Group(n) => write!(f, "g:{n}"),
        }
    }
}

/// Checks a username: 1-64 characters of `[A-Za-z0-9_.-]`.
pub fn valid_username(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// True when a string holds U+0000, which the server refuses in every string it
/// stores (texts, client_msg_ids, group and device names): PostgreSQL's TEXT
/// cannot hold it, and every backend must store exactly the same strings.
pub fn has_nul(s: &str) -> bool {
    s.as_bytes().contains(&0)
}

/// Checks a message text: 1 to 100,000 Unicode scalar values, none of them U+0000.
pub fn check_text(text: &str) -> Result<(), (ErrorCode, Cow<'static, str>)> {
    if text.is_empty() {
        return Err((ErrorCode::BadRequest, "text is empty".into()));
    }
    if has_nul(text) {
        return Err((
            ErrorCode::BadRequest,
            "text holds U+0000, which the server does not store".into(),
        ));
    }
    // A byte count at or under the limit cannot hold more characters than that;
    // counting characters is only needed for long texts.
    if text.len() > MAX_TEXT_CHARS {
        let chars = text.chars().count();
        if chars > MAX_TEXT_CHARS {
            return Err((
                ErrorCode::TooLarge,
                format!("text has {chars} characters, the limit is {MAX_TEXT_CHARS}").into(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_ids_round_trip_and_reject_non_canonical_forms() {
        assert_eq!(ChannelId::parse("dm:1:2"), Some(ChannelId::Direct(1, 2)));
        assert_eq!(ChannelId::direct(9, 3).to_string(), "dm:3:9");
        assert_eq!(ChannelId::parse("g:17"), Some(ChannelId::Group(17)));
        for bad in [
            "dm:2:1", "dm:1:1", "dm:01:2", "g:", "g:-1", "x:1", "dm:1", "g:1a",
        ] {
            assert_eq!(ChannelId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn text_limits_count_characters_not_bytes() {
        assert!(check_text(&"é".repeat(MAX_TEXT_CHARS)).is_ok());
        assert_eq!(
            check_text(&"é".repeat(MAX_TEXT_CHARS + 1)).unwrap_err().0,
            ErrorCode::TooLarge
        );
        assert_eq!(check_text("").unwrap_err().0, ErrorCode::BadRequest);
        assert_eq!(check_text("a\0b").unwrap_err().0, ErrorCode::BadRequest);
        assert!(check_text("\u{1}\u{7f}\u{2028}\u{fffd}\u{10ffff}").is_ok());
    }

    #[test]
    fn frames_use_the_contract_field_names() {
        let f: ClientFrame = serde_json::from_str(
            r#"{"type":"send","req":3,"to":{"user":2},"client_msg_id":"a","text":"hi","extra":1}"#,
        )
        .unwrap();
        assert!(matches!(f, ClientFrame::Send { req: Some(3), .. }));
        let ack = ServerFrame::Ack {
            req: Some(3),
            channel: "dm:1:2".into(),
            id: 1,
            seq: 4,
            ts: 5,
        };
        assert_eq!(
            ack.to_json(),
            r#"{"type":"ack","req":3,"channel":"dm:1:2","id":1,"seq":4,"ts":5}"#
        );
    }

    #[test]
    fn hand_written_frames_are_the_bytes_serde_writes() {
        for (req, channel, id, seq, ts) in [
            (Some(3), "dm:1:2", 1, 4, 5),
            (None, "g:77", 0, u64::MAX, 1_700_000_000_000),
            (Some(-12), "odd \"name\"\u{1}", 10, 100, 0),
            (Some(i64::MIN), "g:1", 9, 99, 999),
        ] {
            let serde = ServerFrame::Ack {
                req,
                channel: channel.into(),
                id,
                seq,
                ts,
            }
            .to_json();
            assert_eq!(ack_json(req, channel, id, seq, ts), serde);
        }
        let m = MessageRef {
            kind: "message",
            channel: "g:1",
            id: 7,
            seq: None,
            from: 1,
            from_device: 2,
            client_msg_id: "c\"1",
            text: "hé \"quoted\" \u{7}",
            ts: 99,
        };
        let shared = serde_json::to_string(&m).unwrap();
        for seq in [0, 9, 10, 12345, u64::MAX] {
            let spliced = splice_seq(&shared, seq);
            assert_eq!(message_frame(&m, seq), spliced);
            assert_eq!(reseq(&message_frame(&m, 3), seq), spliced);
            assert_eq!(reseq(&spliced, 42), splice_seq(&shared, 42));
        }
    }

    #[test]
    fn the_fast_parse_agrees_with_the_tagged_enum() {
        let frames = [
            r#"{"type":"send","req":1,"to":{"user":2},"client_msg_id":"c1","text":"hi"}"#,
            r#"{"type":"send","to":{"channel":"g:7"},"client_msg_id":"c\"2","text":"a \u00e9 \n b","x":[1]}"#,
            r#"{"text":"t","client_msg_id":"c","to":{"user":1,"channel":"g:1"},"type":"send"}"#,
            r#"{"type":"send","to":{"user":2},"text":"no id"}"#,
            r#"{"type":"send","client_msg_id":"c","text":"no to"}"#,
            r#"{"type":"heartbeat"}"#,
            r#"{"type":"heartbeat","req":4,"since":"not a number"}"#,
            r#"{"type":"sync","req":5,"since":10,"limit":20}"#,
            r#"{"type":"sync","req":5}"#,
            r#"{"type":"sync","since":-1}"#,
            r#"{"type":"logout","req":6}"#,
            r#"{"type":"dance"}"#,
            r#"{"req":7}"#,
            r#"{"type":"send","req":"x","to":{"user":2},"client_msg_id":"c","text":"t"}"#,
            "not json",
        ];
        for text in frames {
            let slow = serde_json::from_str::<ClientFrame>(text);
            let fast = decode_client_frame(text);
            match (&slow, &fast) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{text}"),
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{text}"),
                _ => panic!("{text}: {slow:?} vs {fast:?}"),
            }
        }
    }
}
