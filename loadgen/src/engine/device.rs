//! One simulated device: a tokio task driving one WebSocket connection at a
//! time, the way a phone app would.
//!
//! It connects (`?token=`), reads `hello`, catches up with `sync` from its
//! cursor when the server's inbox head is ahead, heartbeats every interval
//! with ±10% jitter, sends what the scheduler queues, and receives. Its cursor
//! is the highest *contiguous* inbox `seq`; a later seq arriving first (live
//! order across channels is best effort) is held aside, and if the hole is
//! still there after a short grace the device syncs from its cursor. Every seq
//! is counted once (dedupe by seq), whether it came live or by sync. Abrupt
//! disconnects drop the socket without a close frame; the device waits
//! `reconnect_delay` and reconnects, resending unacknowledged sends with the
//! same `client_msg_id` (the server answers a repeat with the first ack).
//!
//! The `select!` loop is biased: shutdown, then commands, then timers, then the
//! socket, so timer lateness (recorded as generator lag) measures the
//! generator, not a burst of frames.
//!
//! Memory per device is kept small: a 512-byte read buffer and no write buffer
//! in the WebSocket, state boxed once, maps allocated only when traffic flows.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use reference_server::protocol::{ClientFrame, Message, Recipient, ServerFrame, Status};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::engine::command::{chan_key, decode_msg_id, encode_msg_id, text_of, Cmd, SendJob, To};
use crate::engine::inbox::{Bits, DeviceState, Pending};
use crate::engine::recorder::{inc, Metric};
use crate::engine::sim::{lock, Sim};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a hole in the seq sequence may stay open before the device syncs.
const GAP_GRACE: Duration = Duration::from_millis(250);
/// Page size of a `sync`.
const SYNC_LIMIT: u32 = 500;

/// Why a connection ended.
enum End {
    /// Stop asked (offline, end of run): park.
    Stop,
    /// The scenario dropped it, or it failed: reconnect after a delay.
    Reconnect,
}

/// Starts a device's task (or cancels its pending stop): the scheduler brings
/// a user online with this.
pub fn start(sim: &Arc<Sim>, d: u32) {
    let slot = &sim.slots[d as usize];
    let mut ctl = lock(&slot.ctl);
    ctl.stop = false;
    if ctl.running {
        return;
    }
    ctl.running = true;
    let state = ctl.parked.take();
    drop(ctl);
    sim.tasks.spawn(run(sim.clone(), d, state));
}

/// The device task: connects, runs, reconnects, until stopped; then parks its state.
pub async fn run(sim: Arc<Sim>, d: u32, state: Option<Box<DeviceState>>) {
    let mut st = state.unwrap_or_else(|| Box::new(DeviceState::new(sim.seed, d)));
    let slot = &sim.slots[d as usize];
    loop {
        {
            let mut ctl = lock(&slot.ctl);
            if ctl.stop || sim.stop_all.is_cancelled() {
                ctl.running = false;
                ctl.parked = Some(st);
                return;
            }
        }
        // Boxed: the connect handshake and the session are large futures; only
        // the one running is allocated, not the largest of them inside every task.
        if let End::Reconnect = Box::pin(connection(&sim, d, &mut st)).await {
            let (lo, hi) = sim.behavior.reconnect_delay;
            let delay = if hi > lo {
                st.rng.random_range(lo..=hi)
            } else {
                lo
            };
            let until = tokio::time::Instant::now() + delay;
            loop {
                tokio::select! {
                    _ = sim.stop_all.cancelled() => break,
                    _ = slot.wake.notified() => {
                        let stop = lock(&slot.ctl).stop;
                        if stop {
                            break;
                        }
                    }
                    _ = tokio::time::sleep_until(until) => break,
                }
            }
        }
    }
}

/// Per-connection bookkeeping.
#[derive(Default)]
struct Conn {
    /// Seqs received live on this connection (a second live copy is a
    /// duplicate), counted from `live_base`, the inbox head at `hello`, so the
    /// set stays as small as this connection's traffic.
    live: Bits,
    live_base: u64,
    /// Highest id received live per channel (a lower one after it is a reorder).
    last_live: HashMap<u64, u64>,
    /// The `req` of the sync in progress, and the highest seq it returned.
    syncing: Option<i64>,
    sync_high: u64,
    /// Set until the first catch-up after connecting is done.
    catching_up: Option<Instant>,
    gap_deadline: Option<tokio::time::Instant>,
    /// The server's presence timeout, from `hello` (dates offline changes).
    offline_after_ms: u64,
}

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(512)
        .write_buffer_size(0)
        .max_write_buffer_size(4 * 1024 * 1024)
        .max_message_size(Some(64 << 20))
}

async fn connection(sim: &Sim, d: u32, st: &mut DeviceState) -> End {
    let dev = &sim.pop.devices[d as usize];
    let rec = &sim.rec;
    let t0 = Instant::now();
    let first = Box::pin(async {
        let url = format!("{}?token={}", sim.pop.ws_url, dev.token);
        let connect = tokio_tungstenite::connect_async_with_config(url, Some(ws_config()), true);
        let (mut ws, _) = connect.await.map_err(|e| e.to_string())?;
        loop {
            match ws.next().await {
                Some(Ok(WsMessage::Text(t))) => match serde_json::from_str::<ServerFrame>(&t) {
                    Ok(ServerFrame::Hello {
                        seq,
                        offline_after_ms,
                        ..
                    }) => return Ok((ws, (seq, offline_after_ms))),
                    _ => return Err("first frame is not hello".to_string()),
                },
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
                Some(Ok(_)) => return Err("first frame is not hello".into()),
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("closed before hello".into()),
            }
        }
    });
    let (mut ws, (head, offline_after_ms)) = tokio::select! {
        _ = sim.stop_all.cancelled() => return End::Stop,
        r = tokio::time::timeout(sim.connect_timeout, first) => match r {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => {
                inc(&rec.counters.connect_errors);
                rec.error("connect");
                tracing::debug!(device = d, cause = %e, "connect failed");
                return End::Reconnect;
            }
            Err(_) => {
                inc(&rec.counters.connect_errors);
                rec.error("connect_timeout");
                return End::Reconnect;
            }
        }
    };
    rec.record(Metric::CONNECT, t0.elapsed().as_micros() as u64);
    inc(&rec.counters.connects);
    if st.connections > 0 {
        inc(&rec.counters.reconnects);
    }
    st.connections += 1;
    let slot = &sim.slots[d as usize];
    slot.connected.store(true, Relaxed);
    rec.device_connected();
    let end = session(sim, d, st, &mut ws, (head, offline_after_ms), t0).await;
    slot.connected.store(false, Relaxed);
    rec.device_disconnected();
    end
}

async fn send(ws: &mut Ws, frame: &ClientFrame) -> bool {
    let text = serde_json::to_string(frame).expect("client frames serialize");
    ws.send(WsMessage::Text(text.into())).await.is_ok()
}

fn send_frame(sim: &Sim, req: i64, job: &SendJob, actual_us: u64) -> ClientFrame {
    let to = match job.to {
        To::User(u) => Recipient::user(sim.pop.users[u as usize].id),
        To::Group(g) => Recipient::channel(sim.pop.groups[g as usize].channel.clone()),
    };
    ClientFrame::Send {
        req: Some(req),
        to,
        client_msg_id: encode_msg_id(job.sched_us, actual_us, job.n),
        text: text_of(job.len),
    }
}

async fn start_sync(ws: &mut Ws, st: &mut DeviceState, conn: &mut Conn, since: u64) -> bool {
    let req = st.req();
    conn.syncing = Some(req);
    send(
        ws,
        &ClientFrame::Sync {
            req: Some(req),
            since,
            limit: Some(SYNC_LIMIT),
        },
    )
    .await
}

async fn session(
    sim: &Sim,
    d: u32,
    st: &mut DeviceState,
    ws: &mut Ws,
    (head, offline_after_ms): (u64, u64),
    t0: Instant,
) -> End {
    let rec = &sim.rec;
    let slot = &sim.slots[d as usize];
    let mut conn = Conn {
        offline_after_ms,
        live_base: head,
        ..Conn::default()
    };
    if head > st.cursor {
        conn.catching_up = Some(t0);
        if !start_sync(ws, st, &mut conn, st.cursor).await {
            return lost(sim, "write");
        }
    } else {
        rec.record(Metric::SYNC, t0.elapsed().as_micros() as u64);
    }
    // Unacknowledged sends from the last connection go again, same client_msg_id.
    let resend = std::mem::take(&mut st.pending);
    for mut p in resend {
        p.req = st.req();
        let frame = send_frame(sim, p.req, &p.job, p.actual_us);
        st.pending.push(p);
        if !send(ws, &frame).await {
            return lost(sim, "write");
        }
    }
    let interval = sim.behavior.heartbeat_interval;
    let first_beat = interval.mul_f64(st.rng.random_range(0.0..1.0));
    let mut next_beat = tokio::time::Instant::now() + first_beat;
    slot.wake.notify_one(); // look at commands queued while disconnected
    let far = || tokio::time::Instant::now() + Duration::from_secs(3600);
    loop {
        tokio::select! {
            biased;
            _ = sim.stop_all.cancelled() => return close(ws).await,
            _ = slot.wake.notified() => {
                let (stop, cmds): (bool, Vec<Cmd>) = {
                    let mut ctl = lock(&slot.ctl);
                    (ctl.stop, ctl.cmds.drain(..).collect())
                };
                if stop {
                    // Commands left unsent go back for the next connection.
                    {
                        let mut ctl = lock(&slot.ctl);
                        for cmd in cmds.into_iter().rev() {
                            ctl.cmds.push_front(cmd);
                        }
                    }
                    return close(ws).await;
                }
                let mut cmds = cmds.into_iter();
                while let Some(cmd) = cmds.next() {
                    match cmd {
                        Cmd::Drop => {
                            inc(&rec.counters.disconnects);
                            // Commands after the drop wait for the next connection.
                            let mut ctl = lock(&slot.ctl);
                            for cmd in cmds.rev() {
                                ctl.cmds.push_front(cmd);
                            }
                            // Drop the socket without a close frame: an abrupt loss.
                            return End::Reconnect;
                        }
                        Cmd::Send(job) => {
                            let req = st.req();
                            let actual_us = rec.clock.now_us();
                            let frame = send_frame(sim, req, &job, actual_us);
                            st.pending.push(Pending { req, job, actual_us });
                            if !send(ws, &frame).await {
                                return lost(sim, "write");
                            }
                            inc(&rec.counters.messages_sent);
                        }
                    }
                }
            }
            _ = tokio::time::sleep_until(next_beat) => {
                rec.record_lag(tokio::time::Instant::now().saturating_duration_since(next_beat));
                next_beat += st.jittered(interval);
                if !send(ws, &ClientFrame::Heartbeat { req: None }).await {
                    return lost(sim, "write");
                }
                inc(&rec.counters.heartbeats);
            }
            _ = tokio::time::sleep_until(conn.gap_deadline.unwrap_or_else(far)), if conn.gap_deadline.is_some() => {
                conn.gap_deadline = None;
                if st.has_gap() && conn.syncing.is_none() && !start_sync(ws, st, &mut conn, st.cursor).await {
                    return lost(sim, "write");
                }
            }
            frame = ws.next() => {
                let text = match frame {
                    Some(Ok(WsMessage::Text(t))) => t,
                    Some(Ok(WsMessage::Close(c))) => {
                        let code = c.map_or(1005, |c| u16::from(c.code));
                        return lost(sim, &format!("closed_{code}"));
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => return lost(sim, "connection_lost"),
                };
                match serde_json::from_str::<ServerFrame>(&text) {
                    Ok(f) => {
                        if !on_frame(sim, d, st, &mut conn, ws, f).await {
                            return lost(sim, "write");
                        }
                    }
                    Err(_) => rec.error("bad_frame"),
                }
                if st.has_gap() && conn.gap_deadline.is_none() && conn.syncing.is_none() {
                    conn.gap_deadline = Some(tokio::time::Instant::now() + GAP_GRACE);
                }
            }
        }
    }
}

/// The server closed or the socket failed: count it, reconnect.
fn lost(sim: &Sim, why: &str) -> End {
    inc(&sim.rec.counters.server_closes);
    sim.rec.error(why);
    End::Reconnect
}

/// A clean close (the user goes offline or the run ends).
async fn close(ws: &mut Ws) -> End {
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
    End::Stop
}

/// Handles one server frame; false if a write failed.
async fn on_frame(
    sim: &Sim,
    d: u32,
    st: &mut DeviceState,
    conn: &mut Conn,
    ws: &mut Ws,
    frame: ServerFrame,
) -> bool {
    let rec = &sim.rec;
    match frame {
        ServerFrame::Message(m) => receive(sim, d, st, conn, &m, true, true),
        ServerFrame::Ack {
            req,
            channel,
            id,
            seq,
            ..
        } => {
            let Some(i) = st.pending.iter().position(|p| Some(p.req) == req) else {
                return true;
            };
            let p = st.pending.swap_remove(i);
            let now = rec.clock.now_us();
            rec.record(Metric::ACK, now.saturating_sub(p.job.sched_us));
            rec.record(Metric::ACK_UNCORRECTED, now.saturating_sub(p.actual_us));
            inc(&rec.counters.messages_acked);
            let key = chan_key(&channel);
            lock(&sim.ledger).push(crate::engine::sim::Acked {
                channel: key,
                id,
                device: d,
                to: p.job.to,
            });
            if seq > 0 && !st.seen.get(seq) {
                st.seen.set(seq);
                st.recs.push((key, id, seq));
                st.advance(seq);
            }
        }
        ServerFrame::SyncBatch {
            req,
            messages,
            more,
        } => {
            if req.is_none() || conn.syncing != req {
                return true;
            }
            // Messages missed while offline say how long the device was away,
            // not how fast the server is: their latency is not recorded (the
            // catch-up itself is, as sync_latency). A gap sync's are.
            let timed = conn.catching_up.is_none();
            for m in &messages {
                conn.sync_high = conn.sync_high.max(m.seq.unwrap_or(0));
                receive(sim, d, st, conn, m, false, timed);
            }
            if more {
                let since = messages.last().and_then(|m| m.seq).unwrap_or(st.cursor);
                return start_sync(ws, st, conn, since).await;
            }
            // The server answered everything after the cursor: a seq below the
            // highest it returned that it did not return does not exist.
            conn.syncing = None;
            inc(&rec.counters.syncs);
            st.settle(conn.sync_high);
            conn.sync_high = 0;
            if let Some(t0) = conn.catching_up.take() {
                rec.record(Metric::SYNC, t0.elapsed().as_micros() as u64);
            }
        }
        ServerFrame::Presence {
            status,
            last_active_at,
            ..
        } => {
            inc(&rec.counters.presence_frames);
            if let Some(at_ms) = last_active_at {
                // The change happened at the connect (online) or when the
                // timeout ran out after the last heartbeat (offline).
                let caused_ms = match status {
                    Status::Online => at_ms,
                    Status::Offline => at_ms + conn.offline_after_ms,
                };
                let now_ms = rec.clock.now_us() / 1000;
                rec.record(Metric::PRESENCE, now_ms.saturating_sub(caused_ms) * 1000);
            }
        }
        ServerFrame::Error { req, code, .. } => {
            if let Some(i) = st.pending.iter().position(|p| Some(p.req) == req) {
                st.pending.swap_remove(i);
                inc(&rec.counters.send_errors);
            } else if req.is_some() && conn.syncing == req {
                conn.syncing = None;
            }
            rec.error(code.as_str());
        }
        ServerFrame::Hello { .. } => {}
    }
    true
}

/// A message arrived (live, or in a sync batch); `timed`: record its latency.
fn receive(
    sim: &Sim,
    d: u32,
    st: &mut DeviceState,
    conn: &mut Conn,
    m: &Message,
    live: bool,
    timed: bool,
) {
    let rec = &sim.rec;
    let seq = m.seq.unwrap_or(0);
    let key = chan_key(&m.channel);
    if live {
        // A seq at or below the head announced in `hello` can still come live
        // (stored between the connection's registration and the hello); such
        // races are rare and not tracked, rather than all sharing one bit.
        if let Some(at) = seq.checked_sub(conn.live_base + 1) {
            if conn.live.get(at) {
                sim.finding("duplicated", &m.channel, m.id, d);
            }
            conn.live.set(at);
        }
        let last = conn.last_live.entry(key).or_insert(0);
        if m.id < *last {
            sim.finding("reordered", &m.channel, m.id, d);
        } else {
            *last = m.id;
        }
    }
    if st.seen.get(seq) {
        return;
    }
    st.seen.set(seq);
    st.recs.push((key, m.id, seq));
    st.advance(seq);
    inc(&rec.counters.deliveries);
    if !timed {
        return;
    }
    let Some((sched, actual)) = decode_msg_id(&m.client_msg_id) else {
        return;
    };
    let now = rec.clock.now_us();
    let group = m.channel.starts_with("g:");
    rec.record(Metric::DELIVERY, now.saturating_sub(sched));
    rec.record(
        if group {
            Metric::DELIVERY_GROUP
        } else {
            Metric::DELIVERY_1TO1
        },
        now.saturating_sub(sched),
    );
    rec.record(Metric::DELIVERY_UNCORRECTED, now.saturating_sub(actual));
    if live && group {
        let mut f = lock(&sim.fanout);
        let e = f.entry((key, m.id)).or_insert((sched, now));
        e.1 = e.1.max(now);
    }
}

#[cfg(test)]
mod footprint {
    use std::time::Duration;

    use crate::engine::recorder::{Clock, Recorder};
    use crate::engine::sim::Sim;
    use crate::scenario::Scenario;

    /// Per-device memory is mostly the task's future: keep the always-live part
    /// small (the connection is boxed, and allocated only while connected).
    #[test]
    fn a_device_task_is_small() {
        let s = Scenario::parse("[[phase]]\nduration = \"1s\"\n", "t").unwrap();
        let rec = Recorder::new(Clock::new(), Duration::from_secs(1));
        let sim = Sim::new(
            Default::default(),
            rec,
            s.behavior,
            Duration::from_secs(1),
            1,
        );
        let mut st = crate::engine::inbox::DeviceState::new(1, 0);
        let conn = super::connection(&sim, 0, &mut st);
        assert!(
            std::mem::size_of_val(&conn) < 3 * 1024,
            "connection future: {} bytes",
            std::mem::size_of_val(&conn)
        );
        drop(conn);
        let task = super::run(sim, 0, None);
        assert!(
            std::mem::size_of_val(&task) < 1024,
            "device task: {} bytes",
            std::mem::size_of_val(&task)
        );
    }
}

#[cfg(test)]
mod latency {
    use std::time::Duration;

    use reference_server::protocol::Message;

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
            users: vec![User {
                id: 1,
                devices: vec![0],
                ..User::default()
            }],
            devices: vec![Device {
                user: 0,
                device_id: 9,
                token: String::new(),
            }],
            ..Population::default()
        };
        let sim = Sim::new(
            pop,
            Recorder::new(Clock::new(), Duration::from_secs(1)),
            s.behavior,
            Duration::from_secs(1),
            1,
        );
        let now = sim.rec.clock.now_us();
        let m = Message {
            channel: "dm:1:2".into(),
            id: 1,
            seq: Some(1),
            from: 2,
            from_device: 3,
            client_msg_id: encode_msg_id(now - 500_000, now - 100_000, 1),
            text: "hi".into(),
            ts: 0,
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
