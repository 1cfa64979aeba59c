//! `accept` on Redis, in four steps that each stay inside one hash slot, so the same
//! code runs on one Redis or a Redis Cluster. The order makes a crash at any point
//! safe and the outcome the same as the all-in-one-transaction accept of the other
//! backends, for every property the conformance suite checks:
//!
//! 1. **Check** (one pipeline): the sender's dedupe record (`{u:from}`) and that
//!    every member exists (each `{u:m}`). A final dedupe record answers at once.
//! 2. **Channel** (one script, `{c:channel}`): dedupe `(from, client_msg_id)` within
//!    the channel, else take the next id (gap-free, in this script's order), store the
//!    message and mark it *pending* with its member list. The script returns every
//!    pending message of the channel up to this one.
//! 3. **Members** (one script per member, one pipeline): each member's script
//!    appends every pending message it belongs to and does not have yet, in id
//!    order, with the member's next seq; the sender's writes the sender's dedupe
//!    record. So a member's inbox holds each message once and in id order within a
//!    channel even when accepts on several nodes overlap: whoever gets to a member
//!    first appends all earlier pending messages too (helping), and nobody appends
//!    an id below one already appended.
//! 4. **Finalize** (`{c:channel}`): the pending messages this accept saw are now in
//!    every member's inbox; they stop being pending.
//!
//! What is atomic: each step. What is not: the whole. A crash after step 2 leaves a
//! stored, pending message that is in some inboxes or none; it was never acked. The
//! next accept in that channel finishes it (step 3 helps every pending message), and
//! a retry of the same send finds it through the channel dedupe and finishes it too,
//! answering it as a duplicate. Nothing acked depends on a step that did not happen.
//! The one case left: the same `client_msg_id` sent *concurrently* into two channels
//! (a client bug) stores it in both; the sender's dedupe record keeps the first.

use std::collections::BTreeMap;

use fred::prelude::*;

use super::scripts::Call;
use super::{backend, int, text, RedisStore};
use crate::protocol::{Seq, UserId};
use crate::store::{Accepted, NewMessage, StoreError, StoreResult};

/// A pending message of the channel, as step 2 returns it.
struct Pending {
    id: u64,
    from: UserId,
    ts: u64,
    members: Vec<UserId>,
    client_msg_id: String,
}

fn bad(what: &str, v: &impl std::fmt::Debug) -> StoreError {
    StoreError::Backend(format!("redis: {what} answered {v:?}"))
}

/// The answer to a send that was seen before: the first one's, from its
/// dedupe record `channel\nid\nseq\nts`.
fn duplicate(record: &str) -> StoreResult<Accepted> {
    let parts: Vec<&str> = record.split('\n').collect();
    let [channel, id, seq, ts] = parts[..] else {
        return Err(bad("dedupe record", &record));
    };
    let num = |s: &str| s.parse::<u64>().map_err(|_| bad("dedupe record", &record));
    Ok(Accepted {
        channel: channel.to_string(),
        id: num(id)?,
        ts: num(ts)?,
        sender_seq: num(seq)?,
        recipients: Vec::new(),
        duplicate: true,
    })
}

fn parse_pending(id: &Value, entry: &Value) -> StoreResult<Pending> {
    let id = int(id)?;
    let entry = text(entry)?;
    let mut parts = entry.splitn(4, '\n');
    let (Some(from), Some(ts), Some(members), Some(cmid)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("pending entry", &entry));
    };
    let num = |s: &str| s.parse::<u64>().map_err(|_| bad("pending entry", &entry));
    Ok(Pending {
        id,
        from: num(from)?,
        ts: num(ts)?,
        members: members
            .split(',')
            .filter(|m| !m.is_empty())
            .map(num)
            .collect::<StoreResult<_>>()?,
        client_msg_id: cmid.to_string(),
    })
}

pub(super) async fn accept(
    s: &RedisStore,
    msg: NewMessage<'_>,
    payload: String,
) -> StoreResult<Accepted> {
    let keys = &s.keys;
    let client = s.pool.next();
    let mut members: Vec<UserId> = Vec::with_capacity(msg.members.len());
    for &m in msg.members {
        if !members.contains(&m) {
            members.push(m);
        }
    }

    // 1. The sender's dedupe record, and that every member exists.
    let pipe = client.pipeline();
    let _: () = pipe
        .hget(keys.user_part(msg.from, "dd"), msg.client_msg_id)
        .await
        .map_err(backend)?;
    for &m in &members {
        let _: () = pipe.exists(keys.user(m)).await.map_err(backend)?;
    }
    let checks: Vec<Value> = pipe.all().await.map_err(backend)?;
    if let Some(seen) = checks.first().and_then(Value::as_string) {
        return duplicate(&seen);
    }
    if checks[1..].iter().any(|v| v.as_i64() != Some(1)) {
        return Err(StoreError::NotFound);
    }

    // 2. The channel: dedupe, id, message, pending.
    let csv = members
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let reply = s
        .scripts
        .run(
            client,
            Call {
                script: &s.scripts.accept_channel,
                keys: keys.accept_keys(msg.channel),
                args: vec![
                    msg.from.to_string().into(),
                    msg.client_msg_id.into(),
                    msg.ts.to_string().into(),
                    payload.into(),
                    csv.into(),
                ],
            },
        )
        .await?
        .into_array();
    if reply.len() < 2 || reply.len() % 2 != 0 {
        return Err(bad("accept_channel", &reply));
    }
    let created = int(&reply[0])? == 1;
    let id = int(&reply[1])?;
    let pending: Vec<Pending> = reply[2..]
        .chunks_exact(2)
        .map(|p| parse_pending(&p[0], &p[1]))
        .collect::<StoreResult<_>>()?;
    let Some(this) = pending.iter().find(|p| p.id == id) else {
        // Seen in the channel and already finalized: finalizing came after the
        // sender's dedupe record was written, which step 1 just missed.
        let seen: Option<String> = client
            .hget(keys.user_part(msg.from, "dd"), msg.client_msg_id)
            .await
            .map_err(backend)?;
        return match seen {
            Some(seen) => duplicate(&seen),
            None => Err(StoreError::Backend(format!(
                "redis: {} {id} is neither pending nor deduplicated",
                msg.channel
            ))),
        };
    };

    // 3. Every member of every pending message: append what it lacks, in id order.
    let mut per_member: BTreeMap<UserId, Vec<Value>> = BTreeMap::new();
    for p in &pending {
        for &m in &p.members {
            let cmid = if m == p.from {
                p.client_msg_id.as_str()
            } else {
                ""
            };
            let entry = per_member
                .entry(m)
                .or_insert_with(|| vec![msg.channel.into(), id.to_string().into()]);
            entry.extend([
                p.id.to_string().into(),
                cmid.into(),
                p.ts.to_string().into(),
            ]);
        }
    }
    let order: Vec<UserId> = per_member.keys().copied().collect();
    let calls = per_member
        .into_iter()
        .map(|(m, args)| Call {
            script: &s.scripts.accept_member,
            keys: keys.inbox_keys(m),
            args,
        })
        .collect();
    let seqs = s.scripts.run_many(client, calls).await?;
    let seq_of = |m: UserId| -> StoreResult<Seq> {
        let i = order.binary_search(&m).map_err(|_| bad("accept", &m))?;
        match int(&seqs[i])? {
            0 => Err(bad("accept_member (no seq)", &m)),
            seq => Ok(seq),
        }
    };
    let recipients: Vec<(UserId, Seq)> = this
        .members
        .iter()
        .map(|&m| Ok((m, seq_of(m)?)))
        .collect::<StoreResult<_>>()?;
    let sender_seq = recipients
        .iter()
        .find(|(m, _)| *m == this.from)
        .map_or(0, |&(_, seq)| seq);

    // 4. Finalize what this accept saw. A failure here is harmless: the messages
    // are in every inbox already, and a later accept finalizes them.
    let finalize = keys.accept_keys(msg.channel);
    let call = Call {
        script: &s.scripts.accept_finalize,
        keys: vec![finalize[2].clone(), finalize[3].clone()],
        args: pending.iter().map(|p| p.id.to_string().into()).collect(),
    };
    if let Err(e) = s.scripts.run(client, call).await {
        tracing::debug!(cause = %e, "redis: finalizing an accept failed");
    }
    if created && !this.members.contains(&msg.from) {
        // A sender outside the member list: no member script wrote its record.
        let record = format!("{}\n{id}\n0\n{}", msg.channel, this.ts);
        let _: bool = client
            .hsetnx(keys.user_part(msg.from, "dd"), msg.client_msg_id, record)
            .await
            .map_err(backend)?;
    }

    Ok(Accepted {
        channel: msg.channel.to_string(),
        id,
        ts: this.ts,
        sender_seq,
        recipients: if created { recipients } else { Vec::new() },
        duplicate: !created,
    })
}
