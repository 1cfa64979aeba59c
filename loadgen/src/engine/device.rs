//! One simulated device: a tokio task driving one WebSocket connection at a
//! time, the way a phone app would.
//!
//! It connects (`?token=`, from its source address: [`crate::engine::source`]),
//! reads `hello`, catches up with `sync` from its cursor when the server's
//! inbox head is ahead, heartbeats every interval with ±10% jitter, sends what
//! the scheduler queues, and receives. Its cursor is the highest *contiguous*
//! inbox `seq`; a later seq arriving first (live order across channels is best
//! effort) is held aside, and if the hole is still there after a short grace
//! the device syncs from its cursor. Every seq is recorded once, as having
//! come live or by sync ([`DeviceState`]). Abrupt disconnects drop the socket
//! without a close frame; the device waits `reconnect_delay` and reconnects,
//! resending unacknowledged sends with the same `client_msg_id` (the server
//! answers a repeat with the first ack). When the *server* ended the
//! connection (a close frame, a reset), the catch-up after the reconnect is
//! timed as `recovery_latency`.
//!
//! Frames are read through a borrowed view ([`crate::engine::frame`]) that
//! parses only the fields used. The `select!` loop is biased: shutdown, then
//! commands, then timers, then the socket, so timer lateness (recorded as
//! generator lag) measures the generator, not a burst of frames. One timer
//! serves the heartbeat and the gap grace, reset rather than recreated.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rand::Rng;
use reference_server::protocol::ClientFrame;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

use crate::engine::command::{chan_key, decode_msg_id, decode_node, Cmd};
use crate::engine::frame::{FrameView, MsgView};
use crate::engine::inbox::{Arrival, DeviceState, Pending};
use crate::engine::ledger::Entry;
use crate::engine::outbound::{flush, unplug, write_client, write_send, MAX_PENDING};
use crate::engine::recorder::{inc, Metric};
use crate::engine::sim::{lock, Sim, Slot};
use crate::engine::source;
use crate::engine::wire::SharedTcp;

type Ws = WebSocketStream<SharedTcp>;

/// How long a hole in the seq sequence may stay open before the device syncs.
const GAP_GRACE: Duration = Duration::from_millis(250);
/// Page size of a `sync`.
const SYNC_LIMIT: u32 = 500;

/// Why a connection ended.
enum End {
    /// Stop asked (offline, end of run): park.
    Stop,
    /// The scenario dropped it: reconnect after a delay.
    Dropped,
    /// The server closed it or it failed: reconnect, and time the recovery.
    Lost,
    /// It could not be made: reconnect after a delay.
    Failed,
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
                // Offline now: a failover it did not finish is not timed.
                ctl.link.lost = None;
                return;
            }
        }
        // Boxed: the connect handshake and the session are large futures; only
        // the one running is allocated, not the largest of them inside every task.
        let end = Box::pin(connection(&sim, d, &mut st)).await;
        if let End::Lost = end {
            st.lost_at.get_or_insert_with(Instant::now);
            // In a cluster: fail over to another node, and time it.
            let mut ctl = lock(&slot.ctl);
            let link = &mut ctl.link;
            link.avoid = link.node;
            if link.lost.is_none() {
                link.lost = link.node.map(|n| (n, sim.rec.clock.now_us()));
            }
        }
        if let End::Dropped | End::Lost | End::Failed = end {
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
    /// Highest id received live per channel (a lower one after it is a
    /// reorder); one entry per channel the user talks in.
    last_live: Vec<(u64, u64)>,
    /// The `req` of the sync in progress, and the highest seq it returned.
    syncing: Option<i64>,
    sync_high: u64,
    /// Set until the first catch-up after connecting is done.
    catching_up: Option<Instant>,
    gap_deadline: Option<tokio::time::Instant>,
    /// The server's presence timeout, from `hello` (dates offline changes).
    offline_after_ms: u64,
    /// The node this connection is on (a cluster): deliveries are split into
    /// same-node and cross-node by the sender's node in `client_msg_id`.
    node: Option<u16>,
}

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(512)
        .write_buffer_size(0)
        .max_write_buffer_size(4 * 1024 * 1024)
        .max_message_size(Some(64 << 20))
}

/// Records in `into` the bytes each device's own state accounts for, for the
/// devices connected at the end (called once they are stopped and parked): its
/// slot, the task's future while connected (measured, not estimated), its
/// state and the state's heap. Not counted: the socket's kernel buffers and
/// the WebSocket library's read buffer (512 bytes).
pub fn account_memory(sim: &Arc<Sim>, connected: &[bool], into: &mut hdrhistogram::Histogram<u64>) {
    let mut probe = DeviceState::new(0, 0);
    let task = std::mem::size_of_val(&run(sim.clone(), 0, None))
        + std::mem::size_of_val(&connection(sim, 0, &mut probe));
    for (d, slot) in sim.slots.iter().enumerate() {
        if !connected.get(d).copied().unwrap_or(false) {
            continue;
        }
        let ctl = lock(&slot.ctl);
        let state = ctl
            .parked
            .as_ref()
            .map_or(0, |st| std::mem::size_of::<DeviceState>() + st.heap_bytes());
        let queue = ctl.cmds.capacity() * std::mem::size_of::<Cmd>();
        let bytes = std::mem::size_of_val(slot) + task + state + queue;
        let _ = into.record(bytes as u64);
    }
}

/// Why a connect failed: a server-side error, or the generator's own limit.
enum ConnectError {
    Server(String),
    Exhausted(String),
}

/// Where a device connects now: the server login named, or in a cluster the
/// node discovery names (passing over the one it lost); `None` when discovery
/// could not be asked (counted as a `discovery` error).
async fn target(sim: &Sim, d: u32) -> Option<(Option<u16>, crate::engine::nodes::Known, String)> {
    let dev = &sim.pop.devices[d as usize];
    let slot = &sim.slots[d as usize];
    let (token, avoid) = {
        let ctl = lock(&slot.ctl);
        let token = ctl.token.as_deref().unwrap_or(&dev.token).to_string();
        (token, ctl.link.avoid)
    };
    let nodes = &sim.nodes;
    if !nodes.discover {
        let known = crate::engine::nodes::Known {
            ws: sim.ws.url.clone(),
            addr: sim.ws.addr,
        };
        return Some((nodes.index_of(&sim.ws.url), known, token));
    }
    let (servers, token) = match nodes.ask(&token).await {
        Ok(s) => (s, token),
        Err(crate::engine::nodes::Ask::Refused) => {
            // The token is refused: log in again as the same device.
            let user = &sim.pop.users[dev.user as usize];
            let k = user.devices.iter().position(|&x| x == d).unwrap_or(0);
            let name = sim.pop.username(dev.user);
            match nodes.login(name, format!("d{k}")).await {
                Ok(t) => {
                    lock(&slot.ctl).token = Some(t.clone().into());
                    match nodes.ask(&t).await {
                        Ok(s) => (s, t),
                        Err(_) => return None,
                    }
                }
                Err(e) => {
                    tracing::debug!(device = d, cause = %e, "login again failed");
                    sim.rec.error("login_again");
                    return None;
                }
            }
        }
        Err(crate::engine::nodes::Ask::Unreachable(why)) => {
            tracing::debug!(device = d, cause = %why, "discovery failed");
            return None;
        }
    };
    let (i, known) = nodes.pick(&servers, avoid)?;
    Some((Some(i), known, token))
}

async fn connection(sim: &Sim, d: u32, st: &mut DeviceState) -> End {
    let rec = &sim.rec;
    let Some((node, known, token)) = Box::pin(target(sim, d)).await else {
        inc(&rec.counters.connect_errors);
        rec.error("discovery");
        return End::Failed;
    };
    let t0 = Instant::now();
    let src = sim.sources.for_device(d);
    let first = Box::pin(async {
        let tcp = source::connect(src, known.addr).await.map_err(|e| {
            match source::exhaustion(&e, src) {
                Some(why) => ConnectError::Exhausted(why),
                None => ConnectError::Server(e.to_string()),
            }
        })?;
        let tcp = Arc::new(tcp);
        let url = format!("{}?token={token}", known.ws);
        let shared = SharedTcp(tcp.clone());
        let (mut ws, _) =
            tokio_tungstenite::client_async_with_config(url, shared, Some(ws_config()))
                .await
                .map_err(|e| ConnectError::Server(e.to_string()))?;
        loop {
            match ws.next().await {
                Some(Ok(WsMessage::Text(t))) => match FrameView::parse(&t) {
                    Some(f) if f.kind == "hello" => {
                        let hello = (f.seq.unwrap_or(0), f.offline_after_ms);
                        return Ok((ws, tcp, hello));
                    }
                    _ => return Err(ConnectError::Server("first frame is not hello".into())),
                },
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
                Some(Ok(_)) => return Err(ConnectError::Server("first frame is not hello".into())),
                Some(Err(e)) => return Err(ConnectError::Server(e.to_string())),
                None => return Err(ConnectError::Server("closed before hello".into())),
            }
        }
    });
    let slot = &sim.slots[d as usize];
    let failed = || lock(&slot.ctl).link.avoid = node;
    let (mut ws, tcp, hello) = tokio::select! {
        _ = sim.stop_all.cancelled() => return End::Stop,
        r = tokio::time::timeout(sim.connect_timeout, first) => match r {
            Ok(Ok(x)) => x,
            Ok(Err(ConnectError::Exhausted(why))) => {
                // The generator's limit, not the server's: no connect error.
                tracing::warn!(device = d, "{why}");
                rec.exhausted(why);
                failed();
                return End::Failed;
            }
            Ok(Err(ConnectError::Server(e))) => {
                inc(&rec.counters.connect_errors);
                rec.error("connect");
                tracing::debug!(device = d, cause = %e, "connect failed");
                failed();
                return End::Failed;
            }
            Err(_) => {
                inc(&rec.counters.connect_errors);
                rec.error("connect_timeout");
                failed();
                return End::Failed;
            }
        }
    };
    rec.record(Metric::CONNECT, t0.elapsed().as_micros() as u64);
    inc(&rec.counters.connects);
    if st.connections > 0 {
        inc(&rec.counters.reconnects);
    }
    st.connections += 1;
    let lost = {
        let mut ctl = lock(&slot.ctl);
        ctl.link.node = node;
        ctl.link.avoid = None;
        ctl.link.lost.take()
    };
    // A device that lost its node to a fault: failed over, on a live node.
    if let Some(down) = lost.and_then(|(n, at)| sim.nodes.faults.down_at(n as usize, at)) {
        rec.latency(Metric::FAILOVER, rec.clock.now_us(), down);
    }
    slot.connected.store(true, Relaxed);
    rec.device_connected();
    let end = session(sim, d, st, &mut ws, &tcp, hello, t0).await;
    unplug(slot);
    slot.connected.store(false, Relaxed);
    rec.device_disconnected();
    end
}

fn start_sync(slot: &Slot, tcp: &TcpStream, conn: &mut Conn, since: u64) -> bool {
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
fn caught_up(sim: &Sim, st: &mut DeviceState, t0: Instant) {
    sim.rec
        .record(Metric::SYNC, t0.elapsed().as_micros() as u64);
    if let Some(lost) = st.lost_at.take() {
        sim.rec
            .record(Metric::RECOVERY, lost.elapsed().as_micros() as u64);
    }
}

#[allow(clippy::too_many_arguments)] // one call site: the connection's parts
async fn session(
    sim: &Sim,
    d: u32,
    st: &mut DeviceState,
    ws: &mut Ws,
    tcp: &Arc<TcpStream>,
    (head, offline_after_ms): (u64, u64),
    t0: Instant,
) -> End {
    let rec = &sim.rec;
    let slot = &sim.slots[d as usize];
    let mut conn = Conn {
        offline_after_ms,
        node: lock(&slot.ctl).link.node.filter(|_| sim.nodes.discover),
        ..Conn::default()
    };
    if head > st.cursor {
        conn.catching_up = Some(t0);
        if !start_sync(slot, tcp, &mut conn, st.cursor) {
            return lost(sim, "write");
        }
    } else {
        caught_up(sim, st, t0);
    }
    {
        // Unacknowledged sends from the last connection go again, same
        // client_msg_id; then the clock thread may write to this socket.
        let mut ctl = lock(&slot.ctl);
        let resend: Vec<Pending> = ctl.out.pending.drain(..).collect();
        for p in resend {
            if !write_send(sim, &mut ctl, tcp, p.job, p.actual_us) {
                return lost(sim, "write");
            }
        }
        ctl.wire = Some(tcp.clone());
    }
    let interval = sim.behavior.heartbeat_interval;
    let first_beat = interval.mul_f64(st.rng.random_range(0.0..1.0));
    let mut next_beat = tokio::time::Instant::now() + first_beat;
    // One timer for the heartbeat and the gap grace, reset in place.
    let timer = tokio::time::sleep_until(next_beat);
    tokio::pin!(timer);
    slot.wake.notify_one(); // look at commands queued while disconnected
    loop {
        let due = conn.gap_deadline.map_or(next_beat, |g| g.min(next_beat));
        if timer.deadline() != due {
            timer.as_mut().reset(due);
        }
        let backlog = !lock(&slot.ctl).backlog.is_empty();
        tokio::select! {
            biased;
            _ = sim.stop_all.cancelled() => return close(slot, ws).await,
            _ = slot.wake.notified() => {
                match commands(sim, d, tcp) {
                    Next::Continue => {}
                    Next::Close => return close(slot, ws).await,
                    Next::End(end) => return end,
                }
            }
            r = tcp.writable(), if backlog => {
                if r.is_err() || !flush(slot, tcp) {
                    return lost(sim, "write");
                }
            }
            _ = &mut timer => {
                let now = tokio::time::Instant::now();
                if now >= next_beat {
                    rec.record_lag(now.saturating_duration_since(next_beat));
                    next_beat += st.jittered(interval);
                    if !write_client(slot, tcp, &ClientFrame::Heartbeat { req: None }) {
                        return lost(sim, "write");
                    }
                    inc(&rec.counters.heartbeats);
                }
                if conn.gap_deadline.is_some_and(|g| now >= g) {
                    conn.gap_deadline = None;
                    if st.has_gap() && conn.syncing.is_none() && !start_sync(slot, tcp, &mut conn, st.cursor) {
                        return lost(sim, "write");
                    }
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
                match FrameView::parse(&text) {
                    Some(f) => {
                        if !on_frame(sim, d, st, &mut conn, tcp, f) {
                            return lost(sim, "write");
                        }
                    }
                    None => rec.error("bad_frame"),
                }
                if st.has_gap() && conn.gap_deadline.is_none() && conn.syncing.is_none() {
                    conn.gap_deadline = Some(tokio::time::Instant::now() + GAP_GRACE);
                }
            }
        }
    }
}

/// What the commands ask of the connection.
enum Next {
    Continue,
    /// Close cleanly (the user goes offline).
    Close,
    End(End),
}

/// Runs the commands queued for the device.
fn commands(sim: &Sim, d: u32, tcp: &TcpStream) -> Next {
    let rec = &sim.rec;
    let slot = &sim.slots[d as usize];
    let mut ctl = lock(&slot.ctl);
    loop {
        if ctl.stop {
            // Commands left unsent wait for the next connection.
            return Next::Close;
        }
        if ctl.out.pending.len() >= MAX_PENDING && matches!(ctl.cmds.front(), Some(Cmd::Send(_))) {
            // Too many unacked: further sends wait for acks (next wake).
            return Next::Continue;
        }
        match ctl.cmds.pop_front() {
            None => return Next::Continue,
            Some(Cmd::Drop) => {
                inc(&rec.counters.disconnects);
                // Drop the socket without a close frame: an abrupt loss.
                return Next::End(End::Dropped);
            }
            Some(Cmd::Send(job)) => {
                let actual_us = rec.clock.now_us();
                rec.record_send_delay(actual_us, job.sched_us);
                let ok = write_send(sim, &mut ctl, tcp, job, actual_us);
                inc(&rec.counters.messages_sent);
                if !ok {
                    return Next::End(lost(sim, "write"));
                }
            }
        }
    }
}

/// The server closed or the socket failed: count it, reconnect.
fn lost(sim: &Sim, why: &str) -> End {
    inc(&sim.rec.counters.server_closes);
    sim.rec.error(why);
    End::Lost
}

/// A clean close (the user goes offline or the run ends).
async fn close(slot: &Slot, ws: &mut Ws) -> End {
    unplug(slot);
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
    End::Stop
}

/// Handles one server frame; false if a write failed.
fn on_frame(
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
mod footprint {
    use std::time::Duration;

    use crate::engine::recorder::{Clock, Recorder};
    use crate::engine::sim::{Sim, SimConfig};
    use crate::scenario::Scenario;

    pub(super) fn config(behavior: crate::scenario::Behavior) -> SimConfig {
        SimConfig {
            behavior,
            connect_timeout: Duration::from_secs(1),
            seed: 1,
            sources: Vec::new(),
        }
    }

    /// Per-device memory is mostly the task's future: keep the always-live part
    /// small (the connection is boxed, and allocated only while connected).
    #[test]
    fn a_device_task_is_small() {
        let s = Scenario::parse("[[phase]]\nduration = \"1s\"\n", "t").unwrap();
        let rec = Recorder::new(Clock::new(), Duration::from_secs(1));
        let dir = tempfile::tempdir().unwrap();
        let sim = Sim::new(Default::default(), rec, config(s.behavior), dir.path());
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
            super::footprint::config(s.behavior),
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
