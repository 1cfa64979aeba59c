//! `accept` on Redis: one script on a single Redis, single-slot steps on a Redis
//! Cluster. Both write the same keys, so the data does not depend on the mode.
//!
//! In both, a group's members are read inside the atomic step that takes the
//! message's id (they live in the channel's slot, `P:{c:g:N}:m`): the sender must
//! be one of them (else `NotMember`, after the dedupe check, so a resend of an
//! accepted message still gets its ack), and they, not the caller's list, get the
//! message. So a member removed concurrently cannot slip one more message in or
//! out. A dm's members are its two users, fixed by its name (`dm:A:B`): there the
//! caller's list is used. Dedupe records expire after the window ([`super::dedupe`]).
//!
//! **One Redis** ([`single`], `accept_single.lua`): the whole accept in one
//! script, one round trip, atomic; its keys span slots, which only a single Redis
//! allows. Its keys are those of the members the caller passed; if the group has
//! gained one since, the script says so and is called again with them all.
//!
//! **A Redis Cluster** ([`stepwise`]): four steps that each stay inside one hash
//! slot. The order makes a crash at any point safe and the outcome the same as the
//! all-in-one accept, for every property the conformance suite checks:
//!
//! 1. **Check** (one pipeline): the sender's dedupe record (`{u:from}`) and, for a
//!    dm, that both members exist (each `{u:m}`). A live dedupe record answers at once.
//! 2. **Channel** (one script, `{c:channel}`): dedupe `(from, client_msg_id)` within
//!    the channel, else check the sender against the group's members, take the next
//!    id (gap-free, in this script's order), store the message and mark it *pending*
//!    with its member list (the group's, read here). The script returns every
//!    pending message of the channel up to this one.
//! 3. **Members** (one script per member, one pipeline): each member's script
//!    appends every pending message it belongs to and does not have yet, in id
//!    order, with the member's next seq; the sender's writes the sender's dedupe
//!    record. So a member's inbox holds each message once and in id order within a
//!    channel even when accepts on several nodes overlap: whoever gets to a member
//!    first appends all earlier pending messages too (helping), and nobody appends
//!    an id below one already appended.
//! 4. **Finalize** (`{c:channel}`, after the answer: nothing waits for it): the
//!    pending messages this accept saw are in every member's inbox; they stop
//!    being pending. If it never happens, the next accept in the channel redoes
//!    step 3 for them (a no-op) and finalizes them.
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
use crate::store::{group_of, Accepted, NewMessage, StoreError, StoreResult};

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

/// The members in order, each once.
fn distinct(members: &[UserId]) -> Vec<UserId> {
    let mut out: Vec<UserId> = Vec::with_capacity(members.len());
    for &m in members {
        if !out.contains(&m) {
            out.push(m);
        }
    }
    out
}

/// A user's seq among the recipients (0 if it is not one).
fn seq_among(recipients: &[(UserId, Seq)], user: UserId) -> Seq {
    recipients
        .iter()
        .find(|(m, _)| *m == user)
        .map_or(0, |&(_, seq)| seq)
}

/// Most calls of `accept_single.lua` for one send: each retry follows a member
/// added to the group between the caller's read of the members and the script.
const SINGLE_ATTEMPTS: usize = 4;

/// The whole accept in one script (a single Redis).
pub(super) async fn single(
    s: &RedisStore,
    msg: NewMessage<'_>,
    payload: String,
) -> StoreResult<Accepted> {
    let mut members = distinct(msg.members);
    for _ in 0..SINGLE_ATTEMPTS {
        let reply = single_call(s, &msg, &payload, &members).await?;
        let status = reply.first().map(int).transpose()?;
        let field = |i: usize| reply.get(i).ok_or_else(|| bad("accept_single", &reply));
        match status {
            Some(0) => {
                let id = int(field(1)?)?;
                s.dedupe.expired(int(field(2)?)?);
                let recipients: Vec<(UserId, Seq)> = reply[3..]
                    .chunks_exact(2)
                    .map(|p| Ok((int(&p[0])?, int(&p[1])?)))
                    .collect::<StoreResult<_>>()?;
                let sender_seq = seq_among(&recipients, msg.from);
                return Ok(Accepted {
                    channel: msg.channel.to_string(),
                    id,
                    ts: msg.ts,
                    sender_seq,
                    recipients,
                    duplicate: false,
                });
            }
            Some(1) => return duplicate(&text(field(1)?)?),
            Some(2) => return Err(StoreError::NotFound),
            Some(3) => return Err(StoreError::NotMember),
            // The group has a member the caller did not know of: again, with them all.
            Some(4) => members = reply[1..].iter().map(int).collect::<StoreResult<_>>()?,
            _ => return Err(bad("accept_single", &reply)),
        }
    }
    Err(StoreError::Backend(format!(
        "redis: the members of {} kept changing during the accept",
        msg.channel
    )))
}

/// One call of `accept_single.lua` with these members' keys.
async fn single_call(
    s: &RedisStore,
    msg: &NewMessage<'_>,
    payload: &str,
    members: &[UserId],
) -> StoreResult<Vec<Value>> {
    let keys = &s.keys;
    let channel_keys = keys.accept_keys(msg.channel);
    let mut call_keys = vec![
        keys.user_part(msg.from, "dd"),
        keys.user_part(msg.from, "dt"),
        channel_keys[0].clone(),
        channel_keys[1].clone(),
        channel_keys[4].clone(),
        channel_keys[5].clone(),
    ];
    let group = group_of(msg.channel);
    if let Some(g) = group {
        call_keys.extend(keys.group_keys(g));
    }
    let [cutoff, ttl] = s.dedupe.args();
    let mut args: Vec<Value> = vec![
        msg.channel.into(),
        msg.from.to_string().into(),
        msg.client_msg_id.into(),
        msg.ts.to_string().into(),
        payload.into(),
        cutoff,
        ttl,
        if group.is_some() { "1" } else { "0" }.into(),
    ];
    for &m in members {
        call_keys.push(keys.user(m));
        call_keys.extend(keys.inbox_keys(m).into_iter().take(3));
        args.push(m.to_string().into());
    }
    let call = Call {
        script: &s.scripts.accept_single,
        keys: call_keys,
        args,
    };
    Ok(s.scripts.run(s.pool.next(), call).await?.into_array())
}

/// The accept in single-slot steps (a Redis Cluster; see the module doc).
pub(super) async fn stepwise(
    s: &RedisStore,
    msg: NewMessage<'_>,
    payload: String,
) -> StoreResult<Accepted> {
    let keys = &s.keys;
    let client = s.pool.next();
    let members = distinct(msg.members);
    let group = group_of(msg.channel);
    let [cutoff, ttl] = s.dedupe.args();

    // 1. The sender's dedupe record, and that every member exists. A group's
    //    members are read in step 2 instead; each account was checked when it
    //    joined, and accounts are never removed.
    let pipe = client.pipeline();
    let _: () = pipe
        .hget(keys.user_part(msg.from, "dd"), msg.client_msg_id)
        .await
        .map_err(backend)?;
    if group.is_none() {
        for &m in &members {
            let _: () = pipe.exists(keys.user(m)).await.map_err(backend)?;
        }
    }
    let checks: Vec<Value> = pipe.all().await.map_err(backend)?;
    if let Some(seen) = checks.first().and_then(Value::as_string) {
        // An expired record the member script has not removed yet is no answer.
        if !s.dedupe.is_expired(&seen) {
            return duplicate(&seen);
        }
    }
    if checks[1..].iter().any(|v| v.as_i64() != Some(1)) {
        return Err(StoreError::NotFound);
    }

    // 2. The channel: dedupe, membership, id, message, pending.
    let csv = members
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let mut channel_keys = keys.accept_keys(msg.channel);
    if let Some(g) = group {
        channel_keys.extend(keys.group_keys(g));
    }
    let reply = s
        .scripts
        .run(
            client,
            Call {
                script: &s.scripts.accept_channel,
                keys: channel_keys,
                args: vec![
                    msg.from.to_string().into(),
                    msg.client_msg_id.into(),
                    msg.ts.to_string().into(),
                    payload.into(),
                    csv.into(),
                    cutoff.clone(),
                    ttl.clone(),
                    if group.is_some() { "1" } else { "0" }.into(),
                ],
            },
        )
        .await?
        .into_array();
    match reply.first().map(int).transpose()? {
        Some(2) if reply.len() == 1 => return Err(StoreError::NotFound),
        Some(3) if reply.len() == 1 => return Err(StoreError::NotMember),
        _ if reply.len() < 3 || reply.len() % 2 == 0 => return Err(bad("accept_channel", &reply)),
        _ => {}
    }
    let created = int(&reply[0])? == 1;
    let id = int(&reply[1])?;
    s.dedupe.expired(int(&reply[2])?);
    let pending: Vec<Pending> = reply[3..]
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
            let entry = per_member.entry(m).or_insert_with(|| {
                vec![
                    msg.channel.into(),
                    id.to_string().into(),
                    cutoff.clone(),
                    ttl.clone(),
                ]
            });
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
    let sender_seq = seq_among(&recipients, this.from);

    // 4. Finalize what this accept saw, without making the sender wait for it.
    let finalize = keys.accept_keys(msg.channel);
    let finalize = vec![finalize[2].clone(), finalize[3].clone()];
    let ids: Vec<Value> = pending.iter().map(|p| p.id.to_string().into()).collect();
    let (scripts, client_owned) = (s.scripts.clone(), client.clone());
    tokio::spawn(async move {
        let call = Call {
            script: &scripts.accept_finalize,
            keys: finalize,
            args: ids,
        };
        if let Err(e) = scripts.run(&client_owned, call).await {
            tracing::debug!(cause = %e, "redis: finalizing an accept failed (the next one will)");
        }
    });
    if created && !this.members.contains(&msg.from) {
        // A sender outside a dm's member list (a caller's bug): no member script
        // wrote its record. Its ts goes beside it, so that it expires too.
        let record = format!("{}\n{id}\n0\n{}", msg.channel, this.ts);
        let pipe = client.pipeline();
        let _: () = pipe
            .hsetnx(keys.user_part(msg.from, "dd"), msg.client_msg_id, record)
            .await
            .map_err(backend)?;
        let _: () = pipe
            .zadd(
                keys.user_part(msg.from, "dt"),
                Some(SetOptions::NX),
                None,
                false,
                false,
                (this.ts as f64, msg.client_msg_id),
            )
            .await
            .map_err(backend)?;
        let _: Vec<Value> = pipe.all().await.map_err(backend)?;
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
