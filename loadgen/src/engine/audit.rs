//! The end-of-run audit: every acknowledged message against every device of
//! every member, classified pair by pair.
//!
//! Each user's inbox is read once over a fresh WebSocket (`sync` from seq 0,
//! paging) and compared with the ledger of acked messages
//! ([`crate::engine::ledger`], read back from the run directory) and with what
//! each device recorded as it ran ([`crate::engine::inbox::DeviceState`]).
//! For an acked message and a member device:
//!
//! - `delivered_live`: the device got it in a `message` frame (the sending
//!   device: through its ack);
//! - `recovered`: it came in a `sync_batch` (a gap sync, or the catch-up after
//!   a reconnect);
//! - `undelivered`: it is in the member's inbox but the device never got it,
//!   although it was connected at the end of the run or had received a later
//!   seq (a hole it never filled): the live path failed, only this read found it;
//! - `awaiting_sync`: it is in the inbox above everything a device that was
//!   offline at the end had received: its next sync brings it;
//! - `lost`: it is not in the member's inbox at all.
//!
//! Also `duplicated` (a device got one seq twice live; an inbox holds one
//! (channel, id) under two seqs, or one send, the sender's `client_msg_id`
//! send number, under two ids: an idempotency failure after a resend) and
//! `reordered` (live, a lower id after a higher one in a channel). The live
//! findings are recorded by the devices as they happen
//! ([`crate::engine::sim::Sim::finding`]). Sends never acked by the end of the
//! drain count as `unacked` (written) or `unsent` (still queued); sends the
//! generator's queue refused as `refused`.
//!
//! Only the inboxes a message could have reached are read
//! ([`crate::engine::reach`]: the senders', their friends' and their group
//! mates'); every member of an acked message's channel is among them, so
//! every pair is still checked, and a user no message could reach (most of a
//! million accounts with 2% online) costs nothing. `inboxes_read` and
//! `inboxes_skipped` count them.
//!
//! With several processes (workers, shards) each reads its own users'
//! inboxes only: it counts `lost` for its own acked messages and its own
//! members, and classifies its devices' copies of its own messages. A message
//! in one of its inboxes that its ledger lacks was sent by another process:
//! its pairs are classified here and handed to the merge
//! ([`crate::engine::handoff::Pending`]), which counts them once it knows the
//! message was acked, and checks the members other processes drive
//! ([`crate::parts`]). An inbox it cannot read, a ledger it cannot read or
//! write, or a device that did not stop makes the audit **incomplete**: the
//! run is then never a pass (exit 3).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use futures_util::SinkExt;
use reference_server::protocol::{ChannelId, ClientFrame};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::engine::command::{chan_key, send_number, Cmd, To};
use crate::engine::frame::FrameView;
use crate::engine::handoff::{Pending, Records};
use crate::engine::ledger::{self, Entry};
use crate::engine::reach::{self, Senders};
use crate::engine::sim::{lock, Sim};
use crate::outcome::{Audit, AuditExample};
use crate::population::Population;

/// How long reading one user's inbox may take.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Tries at reading one user's inbox before it counts as unread.
const READ_ATTEMPTS: u32 = 3;

/// One message of an inbox, as the audit compares it.
#[derive(Debug, Clone, Copy)]
pub struct InboxRec {
    pub channel: u64,
    pub id: u64,
    pub seq: u64,
    pub from: u64,
    /// The send number of a `client_msg_id` this generator made.
    pub send: Option<u64>,
}

/// Reads a user's whole inbox over a fresh WebSocket: `sync` from 0, paging.
pub async fn read_inbox(ws_url: &str, token: &str) -> Result<Vec<InboxRec>, String> {
    let url = format!("{ws_url}?token={token}");
    let (mut ws, _) = crate::tls::connect(&url, None)
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut since = 0;
    let mut req = 0;
    loop {
        req += 1;
        let frame = ClientFrame::Sync {
            req: Some(req),
            since,
            limit: Some(1000),
        };
        ws.send(WsMessage::Text(
            serde_json::to_string(&frame).expect("serializes").into(),
        ))
        .await
        .map_err(|e| e.to_string())?;
        loop {
            let text = match ws.next().await {
                Some(Ok(WsMessage::Text(t))) => t,
                Some(Ok(WsMessage::Close(_))) | None => {
                    return Err("closed during the audit read".into())
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.to_string()),
            };
            let Some(f) = FrameView::parse(&text).filter(|f| f.kind == "sync_batch") else {
                continue;
            };
            if f.req != Some(req) {
                continue;
            }
            for m in &f.messages {
                let seq = m.seq.unwrap_or(0);
                out.push(InboxRec {
                    channel: chan_key(&m.channel),
                    id: m.id,
                    seq,
                    from: m.from,
                    send: send_number(&m.client_msg_id),
                });
                since = since.max(seq);
            }
            if !f.more || f.messages.is_empty() {
                let _ = ws.close(None).await;
                return Ok(out);
            }
            break;
        }
    }
}

fn channel_name(sim: &Sim, sender: u32, to: To) -> String {
    match to {
        To::Group(g) => sim.pop.groups[g as usize].channel.clone(),
        To::User(u) => ChannelId::direct(sim.pop.user_id(sender), sim.pop.user_id(u)).to_string(),
    }
}

/// What the audit reads besides the simulation's own state.
pub struct Inputs {
    /// This process's ledger, or why it is unusable.
    pub own: Result<PathBuf, String>,
    /// Where to write the pairs of other processes' messages (a part of a
    /// split run); `None` alone.
    pub pending: Option<PathBuf>,
    /// Per device: connected when the run ended (before the devices stopped).
    pub connected_at_end: Vec<bool>,
    /// A device did not stop in time: its record is not there to check.
    pub unstopped: bool,
    /// Every send's sender ([`crate::engine::reach`]): only the inboxes a
    /// message could have reached are read. `None` (the schedule's thread
    /// did not come back): every own user's inbox.
    pub senders: Option<Senders>,
}

/// How a user's devices got one message.
#[derive(Default)]
struct Classes {
    live: u16,
    recovered: u16,
    undelivered: u16,
    awaiting: u16,
}

/// Runs the audit. Devices must be stopped (their state parked) first.
/// `owns(user)`: this process drives that user (every user in a single process).
pub async fn audit(
    sim: &Arc<Sim>,
    concurrency: usize,
    owns: impl Fn(u32) -> bool,
    inputs: Inputs,
) -> Audit {
    let mut audit = std::mem::take(&mut *lock(&sim.findings));
    let pop = &sim.pop;
    if inputs.unstopped {
        audit.incomplete(
            "some devices did not stop within 15 s: their records could not be checked",
        );
    }
    let own = match inputs.own.and_then(|p| ledger::read(&p)) {
        Ok(entries) => entries,
        Err(why) => {
            audit.incomplete(format!("the ledger of acked messages: {why}"));
            Vec::new()
        }
    };
    let acked: HashSet<(u64, u64)> = own.iter().map(|e| (e.channel, e.id)).collect();
    // Sends never acked, and sends the generator refused.
    for (d, slot) in sim.slots.iter().enumerate() {
        if !owns(pop.devices[d].user) {
            continue;
        }
        let ctl = lock(&slot.ctl);
        audit.unacked += ctl.out.pending.len() as u64;
        audit.unsent += ctl
            .cmds
            .iter()
            .filter(|c| matches!(c, Cmd::Send(_)))
            .count() as u64;
    }
    audit.refused += sim.refused.load(std::sync::atomic::Ordering::Relaxed);

    // Own acked messages each own user's inbox must hold (members other
    // processes drive are checked by the merge).
    let mut expected: HashMap<u32, u64> = HashMap::new();
    for e in &own {
        audit.messages_checked += 1;
        for u in members(pop, e) {
            if owns(u) {
                *expected.entry(u).or_default() += 1;
                audit.deliveries_expected += pop.users[u as usize].devices.len() as u64;
            }
        }
    }
    let mut pending = match inputs.pending.as_deref().map(Records::create).transpose() {
        Ok(w) => w,
        Err(e) => {
            audit.incomplete(format!("cannot write the pending pairs: {e}"));
            None
        }
    };
    let own_users: Vec<u32> = pop
        .users
        .indexed()
        .map(|(u, _)| u)
        .filter(|&u| owns(u))
        .collect();
    let wanted: Vec<u32> = match &inputs.senders {
        Some(senders) => own_users
            .iter()
            .copied()
            .filter(|&u| reach::could_receive(pop, u, senders))
            .collect(),
        None => own_users.clone(),
    };
    audit.inboxes_read += wanted.len() as u64;
    audit.inboxes_skipped += (own_users.len() - wanted.len()) as u64;
    let mut reads = stream::iter(wanted)
        .map(|u| {
            let token = pop.devices[pop.users[u as usize].devices[0] as usize]
                .token
                .clone();
            let sim = sim.clone();
            async move {
                // A read the server cut short (a node busy with a disconnect
                // storm, its storage slow) is tried again: an unread inbox
                // leaves the run incomplete.
                let mut attempt = 0;
                loop {
                    let url = inbox_url(&sim, &token).await;
                    let r = tokio::time::timeout(READ_TIMEOUT, read_inbox(&url, &token)).await;
                    let r = r.map_err(|_| "timeout".to_string()).and_then(|r| r);
                    attempt += 1;
                    if r.is_ok() || attempt >= READ_ATTEMPTS {
                        break (u, r);
                    }
                    tokio::time::sleep(Duration::from_millis(500) * attempt).await;
                }
            }
        })
        .buffer_unordered(concurrency.max(1));
    while let Some((u, read)) = reads.next().await {
        let inbox = match read {
            Ok(inbox) => inbox,
            Err(e) => {
                tracing::warn!(user = u, cause = %e, "audit: reading an inbox failed");
                audit.incomplete(format!(
                    "the inbox of user {} could not be read: {e}",
                    pop.users[u as usize].id
                ));
                // Tell the merge, so other parts' messages to this user are
                // not counted lost: nobody looked.
                if let Some(w) = pending.as_mut() {
                    if let Err(e) = w.pending(&Pending::unread(u)) {
                        audit.incomplete(format!("cannot write the pending pairs: {e}"));
                        pending = None;
                    }
                }
                continue;
            }
        };
        let others = check_inbox(
            sim,
            &mut audit,
            u,
            &inbox,
            &acked,
            &own,
            expected.get(&u).copied().unwrap_or(0),
            &inputs.connected_at_end,
        );
        if let Some(w) = pending.as_mut() {
            let written = others.iter().try_for_each(|p| w.pending(p));
            if let Err(e) = written {
                audit.incomplete(format!("cannot write the pending pairs: {e}"));
                pending = None;
            }
        }
    }
    if let Some(w) = pending {
        if let Err(e) = w.finish() {
            audit.incomplete(format!("cannot write the pending pairs: {e}"));
        }
    }
    audit
}

/// Where an inbox is read: the server login named, or in a cluster a live
/// node discovery names (the first node may be down by now).
async fn inbox_url(sim: &Sim, token: &str) -> String {
    if sim.nodes.discover {
        if let Ok(servers) = sim.nodes.ask(token).await {
            if let Some(first) = servers.into_iter().next() {
                return first;
            }
        }
    }
    sim.pop.ws_url.clone()
}

/// The members of an acked message's channel (user indices).
pub fn members(pop: &Population, e: &Entry) -> Vec<u32> {
    match e.to {
        To::User(u) => vec![e.sender, u],
        To::Group(g) => pop.groups[g as usize].members.clone(),
    }
}

/// Compares one own user's inbox with the ledger and its devices' records;
/// returns the pairs of messages this process did not send.
#[allow(clippy::too_many_arguments)] // one call site; the audit's working set
fn check_inbox(
    sim: &Sim,
    audit: &mut Audit,
    u: u32,
    inbox: &[InboxRec],
    acked: &HashSet<(u64, u64)>,
    own: &[Entry],
    expected: u64,
    at_end: &[bool],
) -> Vec<Pending> {
    let pop = &sim.pop;
    let devices = &pop.users[u as usize].devices;
    let example = |audit: &mut Audit, kind: &str, channel: String, id: u64, d: u32| {
        if audit.examples.len() < Audit::MAX_EXAMPLES {
            let dev = &pop.devices[d as usize];
            audit.examples.push(AuditExample {
                kind: kind.into(),
                channel,
                id,
                user: pop.user_id(dev.user),
                device: dev.device_id,
            });
        }
    };
    // (channel, id) -> seq; a second seq for one message, or a second id for
    // one send, is a copy stored twice: every device of the user holds two.
    let mut seqs: HashMap<(u64, u64), u64> = HashMap::with_capacity(inbox.len());
    let mut sends: HashMap<(u64, u64), (u64, u64)> = HashMap::new();
    let mut found = 0u64;
    let mut held = Vec::with_capacity(inbox.len());
    for r in inbox {
        if let Some(&seq) = seqs.get(&(r.channel, r.id)) {
            if seq != r.seq {
                audit.duplicated += devices.len() as u64;
            }
            continue;
        }
        seqs.insert((r.channel, r.id), r.seq);
        if let Some(n) = r.send {
            match sends.get(&(r.from, n)) {
                Some(&first) if first != (r.channel, r.id) => {
                    audit.duplicated += devices.len() as u64;
                    if let Some(&d) = devices.first() {
                        example(
                            audit,
                            "duplicated",
                            format!("send {n} of user {}", r.from),
                            r.id,
                            d,
                        );
                    }
                }
                Some(_) => {}
                None => {
                    sends.insert((r.from, n), (r.channel, r.id));
                }
            }
        }
        let mine = acked.contains(&(r.channel, r.id));
        found += u64::from(mine);
        held.push((r, mine));
    }
    // Own acked messages this user's inbox lacks: lost for each of its devices.
    let missing = expected.saturating_sub(found);
    if missing > 0 {
        audit.lost += missing * devices.len() as u64;
        if audit.examples.len() < Audit::MAX_EXAMPLES {
            for e in own {
                if members(pop, e).contains(&u) && !seqs.contains_key(&(e.channel, e.id)) {
                    for &d in devices {
                        example(audit, "lost", channel_name(sim, e.sender, e.to), e.id, d);
                    }
                    if audit.examples.len() >= Audit::MAX_EXAMPLES {
                        break;
                    }
                }
            }
        }
    }
    // Each of this user's devices against every message in the inbox: own
    // messages counted now, the others' handed to the merge.
    let mut others = Vec::new();
    let states: Vec<_> = devices
        .iter()
        .map(|&d| lock(&sim.slots[d as usize].ctl))
        .collect();
    for (r, mine) in held {
        let mut c = Classes::default();
        for (&d, ctl) in devices.iter().zip(&states) {
            let st = ctl.parked.as_deref();
            let connected = at_end.get(d as usize).copied().unwrap_or(false);
            let max_seen = st.map_or(0, |s| s.max_seen());
            match st {
                Some(s) if s.live.contains(r.seq) => c.live += 1,
                Some(s) if s.synced.contains(r.seq) => c.recovered += 1,
                _ if connected || r.seq <= max_seen => {
                    c.undelivered += 1;
                    if mine {
                        example(audit, "undelivered", format!("seq {}", r.seq), r.id, d);
                    }
                }
                _ => c.awaiting += 1,
            }
        }
        if mine {
            audit.delivered_live += u64::from(c.live);
            audit.recovered += u64::from(c.recovered);
            audit.undelivered += u64::from(c.undelivered);
            audit.awaiting_sync += u64::from(c.awaiting);
        } else {
            others.push(Pending {
                user: u,
                channel: r.channel,
                id: r.id,
                live: c.live,
                recovered: c.recovered,
                undelivered: c.undelivered,
                awaiting: c.awaiting,
            });
        }
    }
    others
}
