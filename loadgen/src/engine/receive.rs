//! What a device does with each server frame: acks (latency, the ledger),
//! messages (delivery latency, duplicates, reorders, its seq records), sync
//! batches (paging, the catch-up after a connect), presence and errors.
//!
//! The frames arrive through a borrowed view ([`crate::engine::frame`]) from
//! the frame reader ([`crate::engine::inbound`]); the device's connection loop
//! ([`crate::engine::device`]) calls [`on_frame`] for each.

use std::time::Instant;

use reference_server::protocol::ClientFrame;
use tokio::net::TcpStream;

use crate::engine::command::{chan_key, decode_msg_id, decode_node};
use crate::engine::frame::{FrameView, MsgView};
use crate::engine::inbox::{Arrival, DeviceState};
use crate::engine::ledger::Entry;
use crate::engine::outbound::{write_client, MAX_PENDING};
use crate::engine::recorder::{inc, Metric};
use crate::engine::sim::{lock, Sim, Slot};

/// Page size of a `sync`.
const SYNC_LIMIT: u32 = 500;

/// Per-connection bookkeeping.
#[derive(Default)]
pub struct Conn {
    /// Highest id received live per channel (a lower one after it is a
    /// reorder); one entry per channel the user talks in.
    pub last_live: Vec<(u64, u64)>,
    /// The `req` of the sync in progress, and the highest seq it returned.
    pub syncing: Option<i64>,
    pub sync_high: u64,
    /// Set until the first catch-up after connecting is done.
    pub catching_up: Option<Instant>,
    /// The server's presence timeout, from `hello` (dates offline changes).
    pub offline_after_ms: u64,
    /// The node this connection is on (a cluster): deliveries are split into
    /// same-node and cross-node by the sender's node in `client_msg_id`.
    pub node: Option<u16>,
}

pub fn start_sync(slot: &Slot, tcp: &TcpStream, conn: &mut Conn, since: u64) -> bool {
    let req = lock(&slot.ctl).out.req();
    conn.syncing = Some(req);
    write_client(
        slot,
        tcp,
        &ClientFrame::Sync {
            req: Some(req),
            since,
            limit: Some(SYNC_LIMIT),
        },
    )
}

/// The catch-up after connecting is done: time it, and the recovery when the
/// server had ended the last connection.
pub fn caught_up(sim: &Sim, st: &mut DeviceState, t0: Instant) {
    sim.rec
        .record(Metric::SYNC, t0.elapsed().as_micros() as u64);
    if let Some(lost) = st.lost_at.take() {
        sim.rec
            .record(Metric::RECOVERY, lost.elapsed().as_micros() as u64);
    }
}

/// Handles one server frame; false if a write failed.
pub fn on_frame(
    sim: &Sim,
    d: u32,
    st: &mut DeviceState,
    conn: &mut Conn,
    tcp: &TcpStream,
    f: FrameView<'_>,
) -> bool {
    let rec = &sim.rec;
    let slot = &sim.slots[d as usize];
    match &*f.kind {
        "message" => receive(sim, d, st, conn, &f.message(), true, true),
        "ack" => {
            let (p, room) = {
                let mut ctl = lock(&slot.ctl);
                let p = f.req.and_then(|r| ctl.out.take(r));
                (
                    p,
                    ctl.out.pending.len() + 1 == MAX_PENDING && !ctl.cmds.is_empty(),
                )
            };
            let Some(p) = p else {
                return true;
            };
            let now = rec.clock.now_us();
            rec.latency(Metric::ACK, now, p.job.sched_us);
            rec.latency(Metric::ACK_UNCORRECTED, now, p.actual_us);
            inc(&rec.counters.messages_acked);
            if room {
                // Sends that waited for room can go now.
                slot.wake.notify_one();
            }
            sim.ledger.append(&Entry {
                channel: chan_key(&f.channel),
                id: f.id,
                sender: sim.pop.devices[d as usize].user,
                to: p.job.to,
            });
            // The sending device holds its own message through the ack.
            if let Some(seq) = f.seq.filter(|&s| s > 0) {
                st.arrived_live(seq);
            }
        }
        "sync_batch" => {
            if f.req.is_none() || conn.syncing != f.req {
                return true;
            }
            // Messages missed while offline say how long the device was away,
            // not how fast the server is: their latency is not recorded (the
            // catch-up itself is, as sync_latency or recovery_latency). A gap
            // sync's are.
            let timed = conn.catching_up.is_none();
            for m in &f.messages {
                conn.sync_high = conn.sync_high.max(m.seq.unwrap_or(0));
                receive(sim, d, st, conn, m, false, timed);
            }
            if f.more {
                let since = f.messages.last().and_then(|m| m.seq).unwrap_or(st.cursor);
                return start_sync(slot, tcp, conn, since);
            }
            // The server answered everything after the cursor: a seq below the
            // highest it returned that it did not return does not exist.
            conn.syncing = None;
            inc(&rec.counters.syncs);
            st.settle(conn.sync_high);
            conn.sync_high = 0;
            if let Some(t0) = conn.catching_up.take() {
                caught_up(sim, st, t0);
            }
        }
        "presence" => {
            inc(&rec.counters.presence_frames);
            if let Some(at_ms) = f.last_active_at {
                // The change happened at the connect (online) or when the
                // timeout ran out after the last heartbeat (offline).
                let caused_ms = match &*f.status {
                    "offline" => at_ms + conn.offline_after_ms,
                    _ => at_ms,
                };
                rec.latency(Metric::PRESENCE, rec.clock.now_us(), caused_ms * 1000);
            }
        }
        "error" => {
            let answered = f.req.and_then(|r| lock(&slot.ctl).out.take(r));
            if answered.is_some() {
                inc(&rec.counters.send_errors);
            } else if f.req.is_some() && conn.syncing == f.req {
                conn.syncing = None;
            }
            rec.error(&f.code);
        }
        _ => {}
    }
    true
}

/// A message arrived (live, or in a sync batch); `timed`: record its latency.
fn receive(
    sim: &Sim,
    d: u32,
    st: &mut DeviceState,
    conn: &mut Conn,
    m: &MsgView<'_>,
    live: bool,
    timed: bool,
) {
    let rec = &sim.rec;
    let seq = m.seq.unwrap_or(0);
    let key = chan_key(&m.channel);
    if live {
        match conn.last_live.iter_mut().find(|(c, _)| *c == key) {
            Some((_, last)) if m.id < *last => sim.finding("reordered", &m.channel, m.id, d),
            Some((_, last)) => *last = m.id,
            None => conn.last_live.push((key, m.id)),
        }
    }
    let arrival = if live {
        st.arrived_live(seq)
    } else {
        st.arrived_by_sync(seq)
    };
    match arrival {
        Arrival::Duplicate => {
            sim.finding("duplicated", &m.channel, m.id, d);
            return;
        }
        Arrival::Held => return,
        Arrival::New => {}
    }
    inc(&rec.counters.deliveries);
    if !timed {
        return;
    }
    let Some((sched, actual)) = decode_msg_id(&m.client_msg_id) else {
        return;
    };
    let now = rec.clock.now_us();
    let group = m.channel.starts_with("g:");
    rec.latency(Metric::DELIVERY, now, sched);
    rec.latency(
        if group {
            Metric::DELIVERY_GROUP
        } else {
            Metric::DELIVERY_1TO1
        },
        now,
        sched,
    );
    rec.latency(Metric::DELIVERY_UNCORRECTED, now, actual);
    if let (Some(me), Some(from)) = (conn.node, decode_node(&m.client_msg_id)) {
        let split = if me == from {
            Metric::DELIVERY_SAME_NODE
        } else {
            Metric::DELIVERY_CROSS_NODE
        };
        rec.latency(split, now, sched);
    }
    if live && group {
        sim.fanout_arrival((key, m.id), sched, now);
    }
}

#[cfg(test)]
mod latency {
    use std::time::Duration;

    use crate::engine::frame::MsgView;

    use crate::engine::command::encode_msg_id;
    use crate::engine::inbox::DeviceState;
    use crate::engine::recorder::{Clock, Recorder};
    use crate::engine::sim::Sim;
    use crate::outcome::Outcome;
    use crate::population::{Device, Population, User};
    use crate::scenario::Scenario;

    /// Delivery latency runs from the *scheduled* send time carried in the
    /// `client_msg_id`; the uncorrected figure from the actual send. A send the
    /// generator made 400 ms late shows 500 ms, not 100 ms.
    #[test]
    fn delivery_latency_counts_from_the_scheduled_time() {
        let s = Scenario::parse("[[phase]]\nduration = \"1s\"\n", "t").unwrap();
        let pop = Population {
            users: crate::population::Sparse::whole(vec![User {
                id: 1,
                devices: vec![0],
                ..User::default()
            }]),
            devices: vec![Device {
                user: 0,
                device_id: 9,
                token: String::new(),
            }],
            ..Population::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let sim = Sim::new(
            pop,
            Recorder::new(Clock::new(), Duration::from_secs(1)),
            crate::engine::device::footprint::config(s.behavior),
            dir.path(),
        );
        let now = sim.rec.clock.now_us();
        let m = MsgView {
            channel: "dm:1:2".into(),
            id: 1,
            seq: Some(1),
            from: 2,
            client_msg_id: encode_msg_id(now - 500_000, now - 100_000, 1).into(),
        };
        let mut st = DeviceState::new(1, 0);
        let mut conn = super::Conn::default();
        super::receive(&sim, 0, &mut st, &mut conn, &m, true, true);
        // The same seq again, by sync: not a second delivery.
        super::receive(&sim, 0, &mut st, &mut conn, &m, false, true);
        let mut o = Outcome::new("t", 50.0);
        sim.rec.drain_into(&mut o);
        let corrected = o.histograms["delivery_latency"].max();
        let uncorrected = o.histograms["delivery_latency_uncorrected"].max();
        assert_eq!(o.histograms["delivery_latency"].len(), 1);
        assert!((500_000..600_000).contains(&corrected), "{corrected}");
        assert!((100_000..200_000).contains(&uncorrected), "{uncorrected}");
        assert_eq!(o.histograms["delivery_latency_1to1"].len(), 1);
        assert_eq!(o.counters.deliveries, 1);
        assert_eq!(st.cursor, 1);
    }
}
