//! The end-of-run audit: did every acknowledged message reach every device of
//! every member, exactly once, in channel order?
//!
//! What each device must hold (docs/scenarios.md states it for users): for
//! every message the server acknowledged during the run, every device of every
//! member of its channel, the sending device included, must hold it by the end
//! of the run. A device *holds* a message it received live, in a `sync_batch`,
//! or (the sending device) through its ack's `seq`; and, at the end, every
//! message of its user's inbox, read once per user with `sync` from seq 0 over a
//! fresh connection (a device that syncs from its first cursor, 0, gets exactly
//! the user's inbox, so one read serves all of a user's devices).
//!
//! - `lost`: a (message, member device) pair the device does not hold.
//! - `duplicated`: a device got the same seq twice live on one connection, or
//!   holds one (channel, id) under two different seqs.
//! - `reordered`: on one connection, a device received live a lower id after a
//!   higher one in the same channel.
//!
//! The live findings are recorded by the devices as they happen
//! ([`crate::engine::sim::Sim::finding`]); the rest is computed here.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use futures_util::SinkExt;
use reference_server::protocol::{ChannelId, ClientFrame, ServerFrame};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::engine::command::{chan_key, To};
use crate::engine::inbox::Rec;
use crate::engine::sim::{lock, Sim};
use crate::outcome::{Audit, AuditExample};

/// How long reading one user's inbox may take.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads a user's whole inbox over a fresh WebSocket: `sync` from 0, paging.
pub async fn read_inbox(ws_url: &str, token: &str) -> Result<Vec<Rec>, String> {
    let url = format!("{ws_url}?token={token}");
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
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
            if let Ok(ServerFrame::SyncBatch {
                req: Some(r),
                messages,
                more,
            }) = serde_json::from_str::<ServerFrame>(&text)
            {
                if r != req {
                    continue;
                }
                for m in &messages {
                    let seq = m.seq.unwrap_or(0);
                    out.push((chan_key(&m.channel), m.id, seq));
                    since = since.max(seq);
                }
                if !more || messages.is_empty() {
                    let _ = ws.close(None).await;
                    return Ok(out);
                }
                break;
            }
        }
    }
}

fn channel_name(sim: &Sim, sender: u32, to: To) -> String {
    match to {
        To::Group(g) => sim.pop.groups[g as usize].channel.clone(),
        To::User(u) => ChannelId::direct(
            sim.pop.users[sender as usize].id,
            sim.pop.users[u as usize].id,
        )
        .to_string(),
    }
}

/// Runs the audit. Devices must be stopped (their state parked) first.
/// `owns(user)`: this process drives that user (every user in a single
/// process); a duplicate stored in an inbox is counted by the owner only, so
/// workers auditing overlapping inboxes do not count it twice.
pub async fn audit(sim: &Arc<Sim>, concurrency: usize, owns: impl Fn(u32) -> bool) -> Audit {
    let ledger = std::mem::take(&mut *lock(&sim.ledger));
    let mut audit = std::mem::take(&mut *lock(&sim.findings));
    let pop = &sim.pop;

    // Each device's holdings.
    let held: Vec<Vec<Rec>> = sim
        .slots
        .iter()
        .map(|s| {
            lock(&s.ctl)
                .parked
                .as_ref()
                .map(|st| st.recs.clone())
                .unwrap_or_default()
        })
        .collect();
    let members_of = |a: &crate::engine::sim::Acked| -> Vec<u32> {
        let sender = pop.devices[a.device as usize].user;
        match a.to {
            To::User(u) => vec![sender, u],
            To::Group(g) => pop.groups[g as usize].members.clone(),
        }
    };
    let mut wanted: HashSet<u32> = HashSet::new();
    for a in &ledger {
        wanted.extend(members_of(a));
    }
    for (d, recs) in held.iter().enumerate() {
        if !recs.is_empty() {
            wanted.insert(pop.devices[d].user);
        }
    }
    let mut wanted: Vec<u32> = wanted.into_iter().collect();
    wanted.sort_unstable();

    // Each user's inbox, read once.
    let inboxes: HashMap<u32, Vec<Rec>> = stream::iter(wanted)
        .map(|u| {
            let token = pop.devices[pop.users[u as usize].devices[0] as usize]
                .token
                .clone();
            let url = pop.ws_url.clone();
            async move {
                let r = tokio::time::timeout(READ_TIMEOUT, read_inbox(&url, &token)).await;
                (u, r.map_err(|_| "timeout".to_string()).and_then(|r| r))
            }
        })
        .buffer_unordered(concurrency.max(1))
        .filter_map(|(u, r)| {
            let out = match r {
                Ok(recs) => Some((u, recs)),
                Err(e) => {
                    tracing::warn!(user = u, cause = %e, "audit: reading an inbox failed");
                    sim.rec.error("audit_read");
                    None
                }
            };
            async move { out }
        })
        .collect()
        .await;

    // Per user: (channel, id) -> seq from the inbox; a second seq is a duplicate.
    let mut inbox_maps: HashMap<u32, HashMap<(u64, u64), u64>> = HashMap::new();
    let example = |audit: &mut Audit, kind: &str, channel: String, id: u64, d: u32| {
        if audit.examples.len() < Audit::MAX_EXAMPLES {
            let dev = &pop.devices[d as usize];
            audit.examples.push(AuditExample {
                kind: kind.into(),
                channel,
                id,
                user: pop.users[dev.user as usize].id,
                device: dev.device_id,
            });
        }
    };
    for (&u, recs) in &inboxes {
        let mut map = HashMap::with_capacity(recs.len());
        for &(c, id, seq) in recs {
            if let Some(&other) = map.get(&(c, id)) {
                if other != seq && owns(u) {
                    // Stored twice for this user: every device of it holds two copies.
                    audit.duplicated += pop.users[u as usize].devices.len() as u64;
                }
            } else {
                map.insert((c, id), seq);
            }
        }
        inbox_maps.insert(u, map);
    }
    // A device's own holdings under a different seq than the inbox's.
    let mut extra: Vec<HashSet<(u64, u64)>> = vec![HashSet::new(); held.len()];
    for (d, recs) in held.iter().enumerate() {
        let Some(map) = inbox_maps.get(&pop.devices[d].user) else {
            continue;
        };
        let mut mine: HashMap<(u64, u64), u64> = HashMap::new();
        for &(c, id, seq) in recs {
            match map.get(&(c, id)) {
                Some(&s) if s != seq => audit.duplicated += 1,
                Some(_) => {}
                None => {
                    extra[d].insert((c, id));
                }
            }
            if let Some(&s) = mine.get(&(c, id)) {
                if s != seq {
                    audit.duplicated += 1;
                }
            }
            mine.insert((c, id), seq);
        }
    }

    for a in &ledger {
        audit.messages_checked += 1;
        let sender = pop.devices[a.device as usize].user;
        for u in members_of(a) {
            // An inbox that could not be read is counted as an error, not as losses.
            let Some(inbox) = inbox_maps.get(&u) else {
                continue;
            };
            for &d in &pop.users[u as usize].devices {
                audit.deliveries_expected += 1;
                let holds = inbox.contains_key(&(a.channel, a.id))
                    || extra[d as usize].contains(&(a.channel, a.id));
                if !holds {
                    audit.lost += 1;
                    example(&mut audit, "lost", channel_name(sim, sender, a.to), a.id, d);
                }
            }
        }
    }
    audit
}
