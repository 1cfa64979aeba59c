//! The relay floor: the least a WebSocket server can do per chat `send` with the
//! same stack as the chat server (tokio, tungstenite, a 512-byte read buffer, no
//! write buffer), measured beside the chat server and the echo by `echo-ratio`.
//!
//! It does the chat protocol's frame work and nothing else. One task per
//! connection; for each frame read it queues a delivery on each recipient's
//! bounded queue (which the recipient's own task drains and writes, as the chat
//! server's outboxes are) and writes an ack-sized frame back to the sender. No
//! storage, no ids, no JSON: the client names the recipients in a header line
//! (connection indices, `3,4,5\n`) in front of the delivery's bytes, which the
//! relay forwards without copying. A full queue closes its connection (1008),
//! as the chat server's bound does. So what the chat server spends per delivery
//! above this relay is the cost of the chat service itself (storage, ordering,
//! serialization, its outbox), not of moving frames: what is left below is the
//! protocol's floor on this stack and machine.
//!
//! A connection says which index it is by its URL path (`ws://HOST:PORT/7`);
//! [`RelayFrames`] makes the client side's frames from the same [`World`] as
//! the chat run, so each send reaches the same number of connections.

use std::fmt::Write as _;
use std::sync::{Arc, RwLock};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Bytes, Message, Utf8Bytes};

use crate::drive::{Frames, Rng};
use crate::world::World;

/// Frames a connection's queue holds before it is closed as a slow consumer
/// (the chat server's default `--outbox-max-frames`).
const QUEUE_FRAMES: usize = 1024;

/// What the relay answers each frame with: the size of a chat ack
/// (`{"type":"ack","req":N,"channel":"dm:A:B","id":N,"seq":N,"ts":MS}`).
const ACK: &str = r#"{"type":"ack","req":12345,"channel":"dm:1234:1235","id":12345,"seq":1234,"ts":1700000000000}"#;

/// Each connection's queue, by the index in its URL path.
type Peers = RwLock<Vec<Option<mpsc::Sender<Utf8Bytes>>>>;

/// Relays on every connection until the process ends.
pub async fn serve(listener: TcpListener, read_buffer: usize) -> std::io::Result<()> {
    let peers: Arc<Peers> = Arc::default();
    let ack = Utf8Bytes::from_static(ACK);
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        tokio::spawn(connection(tcp, read_buffer, peers.clone(), ack.clone()));
    }
}

// The handshake callback's error type is tungstenite's (an HTTP response).
#[allow(clippy::result_large_err)]
async fn connection(tcp: TcpStream, read_buffer: usize, peers: Arc<Peers>, ack: Utf8Bytes) {
    // As the chat server configures its sockets (session.rs).
    let config = WebSocketConfig::default()
        .read_buffer_size(read_buffer)
        .write_buffer_size(0);
    let mut index = None;
    let learn_index = |req: &Request, resp: Response| {
        index = req
            .uri()
            .path()
            .trim_start_matches('/')
            .parse::<usize>()
            .ok();
        Ok(resp)
    };
    let Ok(mut ws) =
        tokio_tungstenite::accept_hdr_async_with_config(tcp, learn_index, Some(config)).await
    else {
        return;
    };
    let Some(me) = index else {
        return;
    };
    let (tx, mut rx) = mpsc::channel::<Utf8Bytes>(QUEUE_FRAMES);
    {
        let mut p = peers.write().expect("never poisoned");
        if p.len() <= me {
            p.resize(me + 1, None);
        }
        p[me] = Some(tx);
    }
    loop {
        // Queued deliveries first, as the chat session's loop does.
        tokio::select! {
            biased;
            queued = rx.recv() => match queued {
                Some(frame) => {
                    if ws.send(Message::Text(frame)).await.is_err() {
                        break;
                    }
                }
                // Dropped from the peers: its queue overflowed.
                None => {
                    let close = CloseFrame {
                        code: CloseCode::Policy,
                        reason: "slow consumer".into(),
                    };
                    let _ = ws.close(Some(close)).await;
                    break;
                }
            },
            read = ws.next() => match read {
                Some(Ok(Message::Text(text))) => {
                    let Some((to, delivery)) = split(&text) else {
                        break;
                    };
                    relay(&peers, to, &delivery);
                    if ws.send(Message::Text(ack.clone())).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
        }
    }
    if let Some(slot) = peers.write().expect("never poisoned").get_mut(me) {
        *slot = None;
    }
}

/// `3,4,5\n{...}`: the recipients' indices and the delivery's bytes (shared
/// with the frame read, not copied).
fn split(text: &Utf8Bytes) -> Option<(&str, Utf8Bytes)> {
    let newline = text.as_str().find('\n')?;
    let bytes: &Bytes = text.as_ref();
    let delivery = Utf8Bytes::try_from(bytes.slice(newline + 1..)).ok()?;
    Some((&text.as_str()[..newline], delivery))
}

/// Queues `delivery` for each recipient; a full queue drops the recipient
/// from the peers, which ends its task with 1008.
fn relay(peers: &Peers, to: &str, delivery: &Utf8Bytes) {
    let mut overflowed = Vec::new();
    {
        let p = peers.read().expect("never poisoned");
        for i in to.split(',').filter_map(|i| i.parse::<usize>().ok()) {
            if let Some(Some(tx)) = p.get(i) {
                if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(delivery.clone()) {
                    overflowed.push(i);
                }
            }
        }
    }
    if !overflowed.is_empty() {
        let mut p = peers.write().expect("never poisoned");
        for i in overflowed {
            p[i] = None;
        }
    }
}

/// The body of a measuring program's `serve-relay` sub-command: binds a free
/// loopback port, prints `listening on ws://HOST:PORT`, relays until killed.
pub fn run(read_buffer: usize) -> anyhow::Result<()> {
    use std::io::Write as _;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        println!("listening on ws://{}", listener.local_addr()?);
        std::io::stdout().flush()?;
        serve(listener, read_buffer).await?;
        Ok(())
    })
}

/// The relay clients' frames: device `i` of a [`World`] sends to the same
/// connections as its chat device would reach (its group's other members with
/// probability `group_share`, else its partner), choosing with the same random
/// draws as [`crate::world::SendFrames`]; the delivery is shaped as the chat
/// server's `message` frame for that send, with as many characters of text.
pub struct RelayFrames {
    /// Per device: its user id, the partner's index, the group's other indices
    /// and the group's channel.
    targets: Vec<Target>,
    group_share: f64,
    text: String,
}

struct Target {
    user: u64,
    partner: usize,
    partner_user: u64,
    group: Vec<usize>,
    channel: String,
}

impl RelayFrames {
    pub fn new(world: &World, group_share: f64, text_chars: usize) -> RelayFrames {
        let index_of: std::collections::HashMap<u64, usize> = world
            .devices
            .iter()
            .enumerate()
            .map(|(i, d)| (d.user, i))
            .collect();
        let targets = world
            .devices
            .iter()
            .enumerate()
            .map(|(i, d)| Target {
                user: d.user,
                partner: index_of[&d.partner],
                partner_user: d.partner,
                group: world
                    .devices
                    .iter()
                    .enumerate()
                    .filter(|(j, o)| *j != i && o.group == d.group)
                    .map(|(j, _)| j)
                    .collect(),
                channel: d.group.clone(),
            })
            .collect();
        RelayFrames {
            targets,
            group_share,
            text: crate::world::text_of(text_chars),
        }
    }

    /// The URL of each device's relay connection.
    pub fn urls(&self, base: &str) -> Vec<String> {
        (0..self.targets.len())
            .map(|i| format!("{base}/{i}"))
            .collect()
    }
}

impl Frames for RelayFrames {
    fn frame(&self, conn: usize, n: u64, rng: &mut Rng) -> String {
        let t = &self.targets[conn % self.targets.len()];
        let mut f = String::with_capacity(self.text.len() + 200);
        let channel = if rng.unit() < self.group_share {
            for (k, i) in t.group.iter().enumerate() {
                let _ = write!(f, "{}{i}", if k == 0 { "" } else { "," });
            }
            t.channel.clone()
        } else {
            let _ = write!(f, "{}", t.partner);
            let (a, b) = (t.user.min(t.partner_user), t.user.max(t.partner_user));
            format!("dm:{a}:{b}")
        };
        // The bytes of the chat server's delivery for this send (its seq, id and
        // ts are as long as a busy run's).
        let _ = write!(
            f,
            "\n{{\"seq\":{n},\"type\":\"message\",\"channel\":\"{channel}\",\"id\":{n},\"from\":{},\"from_device\":{},\"client_msg_id\":\"c{conn}-{n}\",\"text\":\"{}\",\"ts\":1700000000000}}",
            t.user, t.user, self.text
        );
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_splits_into_recipients_and_the_delivery() {
        let text: Utf8Bytes = "3,4,5\n{\"seq\":1}".into();
        let (to, delivery) = split(&text).unwrap();
        assert_eq!(to, "3,4,5");
        assert_eq!(delivery.as_str(), "{\"seq\":1}");
        assert!(split(&"no header".into()).is_none());
    }
}
