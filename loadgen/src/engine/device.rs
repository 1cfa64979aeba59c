//! One simulated device: a tokio task driving one WebSocket connection at a
//! time, the way a phone app would.
//!
//! It connects (`?token=`, from its source address: [`crate::engine::source`];
//! the handshake: [`crate::engine::handshake`]), reads `hello`, catches up with
//! `sync` from its cursor when the server's inbox head is ahead, sends what
//! the scheduler queues, and receives ([`crate::engine::receive`]).
//! Heartbeats come from one shared tick, not a timer per device
//! ([`crate::engine::beat`]). Its cursor is the highest *contiguous* inbox
//! `seq`; a later seq arriving first (live order across channels is best
//! effort) is held aside, and if the hole is still there after a short grace
//! the device syncs from its cursor. Every seq is recorded once, as having
//! come live or by sync ([`DeviceState`]). Abrupt disconnects drop the socket
//! without a close frame; the device waits `reconnect_delay` and reconnects,
//! resending unacknowledged sends with the same `client_msg_id` (the server
//! answers a repeat with the first ack). When the *server* ended the
//! connection (a close frame, a reset), the catch-up after the reconnect is
//! timed as `recovery_latency`.
//!
//! Frames are read by the engine's own frame reader
//! ([`crate::engine::inbound`]): one `recv` per readiness event, no buffer
//! held between frames. The `select!` loop is biased: shutdown, then commands,
//! then a pending backlog and the gap timer, then the socket, so a burst of
//! frames never holds up a command. Its futures live across turns of the loop
//! (a waiter registered once, not once a turn), and what a connected device
//! rarely needs (the gap timer, the wait before a reconnect, the connect
//! itself) is boxed only while in use: a connected device's task stays small.

use std::future::poll_fn;
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::net::TcpStream;

use crate::engine::command::Cmd;
use crate::engine::frame::FrameView;
use crate::engine::handshake;
use crate::engine::inbound::{self, Frame, FrameReader, Pumped};
use crate::engine::inbox::{DeviceState, Pending};
use crate::engine::outbound::{closing, flush, unplug, write_frame, write_send, MAX_PENDING};
use crate::engine::receive::{caught_up, on_frame, start_sync, Conn};
use crate::engine::recorder::{inc, Metric};
use crate::engine::secure;
use crate::engine::sim::{lock, Sim};
use crate::engine::source;
use crate::engine::wire::{write_now, CLOSE, PONG};

/// How long a hole in the seq sequence may stay open before the device syncs.
const GAP_GRACE: Duration = Duration::from_millis(250);

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
    let task = run(sim.clone(), d, state);
    match &sim.runtime {
        Some(rt) => drop(sim.tasks.spawn_on(task, rt)),
        None => drop(sim.tasks.spawn(task)),
    }
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
        // Boxed: the connection is a large future; only the one running is
        // allocated, not the largest of them inside every task.
        let end = Box::pin(connection(&sim, d, &mut st)).await;
        lock(&slot.ctl).tls = None;
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
            Box::pin(pause(&sim, d, &mut st)).await;
        }
    }
}

/// The wait before a reconnect (`reconnect_delay`), cut short by a stop.
async fn pause(sim: &Sim, d: u32, st: &mut DeviceState) {
    let slot = &sim.slots[d as usize];
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

/// Records in `into` the bytes each device's own state accounts for, for the
/// devices connected at the end (called once they are stopped and parked): its
/// slot, the task's future while connected (measured, not estimated), its
/// state and the state's heap. Not counted: the socket's kernel buffers, the
/// runtime's I/O registration, and the frame reader's buffer (none between
/// frames: [`crate::engine::inbound`]).
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
    // Discovery may wait on a busy cluster (permits, its timeout): the end
    // of the run never waits for it.
    let asked = tokio::select! {
        _ = sim.stop_all.cancelled() => return End::Stop,
        t = Box::pin(target(sim, d)) => t,
    };
    let Some((node, known, token)) = asked else {
        inc(&rec.counters.connect_errors);
        rec.error("discovery");
        return End::Failed;
    };
    let t0 = Instant::now();
    let src = sim.sources.for_device(d);
    let first = Box::pin(async {
        let mut tcp =
            source::connect(src, known.addr).await.map_err(|e| {
                match source::exhaustion(&e, src) {
                    Some(why) => ConnectError::Exhausted(why),
                    None => ConnectError::Server(e.to_string()),
                }
            })?;
        let url = handshake::split_url(&known.ws);
        let (tcp, rest) = match &sim.tls {
            None => {
                let rest = handshake::open(&mut tcp, url, &token, rand::random())
                    .await
                    .map_err(ConnectError::Server)?;
                (tcp, rest)
            }
            Some(target) => {
                let (tcp, session, rest) =
                    secure::connect(target, tcp, url, &token, rand::random())
                        .await
                        .map_err(ConnectError::Server)?;
                lock(&sim.slots[d as usize].ctl).tls = Some(session);
                (tcp, rest)
            }
        };
        let mut reader = FrameReader::with(rest);
        let hello = read_hello(sim, d, &tcp, &mut reader)
            .await
            .map_err(ConnectError::Server)?;
        Ok((Arc::new(tcp), reader, hello))
    });
    let slot = &sim.slots[d as usize];
    let failed = || lock(&slot.ctl).link.avoid = node;
    let (tcp, mut reader, hello) = tokio::select! {
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
    let end = session(sim, d, st, &tcp, &mut reader, hello, t0).await;
    unplug(slot);
    slot.connected.store(false, Relaxed);
    rec.device_disconnected();
    end
}

/// Reads up to the first text frame, which must be `hello`: the server's
/// inbox head and presence timeout. Frames after it stay in the reader.
async fn read_hello(
    sim: &Sim,
    d: u32,
    tcp: &TcpStream,
    reader: &mut FrameReader,
) -> Result<(u64, u64), String> {
    let mut hello = Err("closed before hello");
    let mut on = |f: Frame<'_>| {
        hello = match f {
            Frame::Ping(_) | Frame::Pong => return true,
            Frame::Text(t) => match FrameView::parse_bytes(t) {
                Some(v) if v.kind == "hello" => Ok((v.seq.unwrap_or(0), v.offline_after_ms)),
                _ => Err("first frame is not hello"),
            },
            Frame::Binary => Err("first frame is not hello"),
            Frame::Close(_) => Err("closed before hello"),
        };
        false
    };
    let mut more = reader.feed(&[], &mut on).map_err(|e| e.to_string())?;
    while more {
        tcp.readable().await.map_err(|e| e.to_string())?;
        match read_once(sim, d, tcp, reader, &mut on).map_err(|e| e.to_string())? {
            Pumped::Eof => return Err("closed before hello".into()),
            Pumped::Stopped => more = false,
            Pumped::Drained | Pumped::More => {}
        }
    }
    hello.map_err(String::from)
}

#[allow(clippy::too_many_arguments)] // one call site: the connection's parts
async fn session(
    sim: &Sim,
    d: u32,
    st: &mut DeviceState,
    tcp: &Arc<TcpStream>,
    reader: &mut FrameReader,
    (head, offline_after_ms): (u64, u64),
    t0: Instant,
) -> End {
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
    let epoch = {
        // Unacknowledged sends from the last connection go again, same
        // client_msg_id; then the clock thread and the heartbeat tick may
        // write to this socket.
        let mut ctl = lock(&slot.ctl);
        let resend: Vec<Pending> = ctl.out.pending.drain(..).collect();
        for p in resend {
            if !write_send(sim, slot, &mut ctl, tcp, p.job, p.actual_us) {
                return lost(sim, "write");
            }
        }
        ctl.wire = Some(tcp.clone());
        ctl.epoch = ctl.epoch.wrapping_add(1);
        ctl.epoch
    };
    let first_beat = sim
        .behavior
        .heartbeat_interval
        .mul_f64(st.rng.random_range(0.0..1.0));
    lock(&sim.beats).schedule(d, epoch, tokio::time::Instant::now() + first_beat);
    slot.wake.notify_one(); // look at commands queued while disconnected
    let mut stop = pin!(sim.stop_all.cancelled());
    let mut wake = pin!(slot.wake.notified());
    let mut gap: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let mut end = None;
    // Frames that came in with `hello` first; then what each read brings.
    let on = &mut |f: Frame<'_>| frame_in(sim, d, st, &mut conn, tcp, f, &mut end);
    let mut read = reader.feed(&[], on).map_err(|e| e.to_string());
    loop {
        match read {
            Ok(true) => {}
            Ok(false) => return end.unwrap_or(End::Lost),
            Err(e) => {
                tracing::debug!(device = d, cause = %e, "connection lost");
                return lost(sim, "connection_lost");
            }
        }
        if gap.is_none() && conn.syncing.is_none() && st.has_gap() {
            gap = Some(Box::pin(tokio::time::sleep(GAP_GRACE)));
        }
        read = Ok(true);
        tokio::select! {
            biased;
            _ = &mut stop => return close(sim, d, tcp, reader).await,
            _ = &mut wake => {
                wake.set(slot.wake.notified());
                match commands(sim, d, tcp) {
                    Next::Continue => {}
                    Next::Close => return close(sim, d, tcp, reader).await,
                    Next::End(end) => return end,
                }
            }
            r = tcp.writable(), if slot.backlogged.load(Relaxed) => {
                if r.is_err() || !flush(slot, tcp) {
                    return lost(sim, "write");
                }
            }
            _ = async { if let Some(g) = gap.as_mut() { g.await } }, if gap.is_some() => {
                gap = None;
                if st.has_gap() && conn.syncing.is_none() && !start_sync(slot, tcp, &mut conn, st.cursor) {
                    return lost(sim, "write");
                }
            }
            r = poll_fn(|cx| tcp.poll_read_ready(cx)) => {
                let on = &mut |f: Frame<'_>| frame_in(sim, d, st, &mut conn, tcp, f, &mut end);
                read = match r.and_then(|()| read_once(sim, d, tcp, reader, on)) {
                    Ok(Pumped::Eof) => Err("closed by the server without a close frame".into()),
                    Ok(Pumped::Stopped) => Ok(false),
                    Ok(Pumped::Drained | Pumped::More) => Ok(true),
                    Err(e) => Err(e.to_string()),
                };
            }
        }
    }
}

/// One frame from the server; false to end the connection (`end` says how).
fn frame_in(
    sim: &Sim,
    d: u32,
    st: &mut DeviceState,
    conn: &mut Conn,
    tcp: &TcpStream,
    f: Frame<'_>,
    end: &mut Option<End>,
) -> bool {
    let slot = &sim.slots[d as usize];
    let ok = match f {
        Frame::Text(t) => match FrameView::parse_bytes(t) {
            Some(v) => on_frame(sim, d, st, conn, tcp, v),
            None => {
                sim.rec.error("bad_frame");
                true
            }
        },
        Frame::Ping(p) => write_frame(slot, tcp, PONG, p),
        Frame::Pong | Frame::Binary => true,
        Frame::Close(code) => {
            // Answer the close (RFC 6455 5.5.1), then reconnect.
            let echo = code.map(u16::to_be_bytes);
            write_frame(slot, tcp, CLOSE, echo.as_ref().map_or(&[][..], |c| &c[..]));
            *end = Some(lost(sim, &format!("closed_{}", code.unwrap_or(1005))));
            return false;
        }
    };
    if !ok {
        *end = Some(lost(sim, "write"));
    }
    ok
}

/// One read of the socket: plain, or decrypted through the device's TLS
/// session on a `wss://` run.
fn read_once(
    sim: &Sim,
    d: u32,
    tcp: &TcpStream,
    reader: &mut FrameReader,
    on: &mut dyn FnMut(Frame<'_>) -> bool,
) -> io::Result<Pumped> {
    match sim.tls {
        None => inbound::pump(tcp, reader, on),
        Some(_) => secure::read(&sim.slots[d as usize], tcp, reader, on),
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
                let ok = write_send(sim, slot, &mut ctl, tcp, job, actual_us);
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

/// A clean close (the user goes offline or the run ends): the backlog and a
/// close frame written, then the server's close awaited, for a second at most.
async fn close(sim: &Sim, d: u32, tcp: &TcpStream, reader: &mut FrameReader) -> End {
    let out = closing(&sim.slots[d as usize]);
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let mut done = 0;
        while done < out.len() {
            tcp.writable().await?;
            done += write_now(tcp, &out[done..])?;
        }
        loop {
            tcp.readable().await?;
            let until_close = &mut |f: Frame<'_>| !matches!(f, Frame::Close(_));
            if let Pumped::Eof | Pumped::Stopped = read_once(sim, d, tcp, reader, until_close)? {
                return Ok::<(), io::Error>(());
            }
        }
    })
    .await;
    End::Stop
}

#[cfg(test)]
pub(crate) mod footprint {
    use std::time::Duration;

    use crate::engine::recorder::{Clock, Recorder};
    use crate::engine::sim::{Sim, SimConfig};
    use crate::scenario::Scenario;

    pub(crate) fn config(behavior: crate::scenario::Behavior) -> SimConfig {
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
