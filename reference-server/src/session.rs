//! One WebSocket connection: one device of one user, one task, one loop.
//!
//! The loop waits on two things, in this order:
//! 1. the connection's [`Outbox`]: write queued frames, or close with the code
//!    the outbox was marked with (1008 slow consumer, 1000 logout, 1001
//!    shutdown: the server marks every outbox when it stops);
//! 2. the socket: handle one client frame.
//!
//! Outbound frames come first so that a busy client cannot starve its own
//! deliveries. Answers to the client's own frames (acks, sync batches, errors)
//! take the same bounded path as deliveries: they are pushed on the outbox, never
//! written straight from the read path, so a client that sends and never reads
//! cannot park its session in a write. Every write is raced against the outbox's
//! close mark, shutdown, and a write timeout (`--write-timeout-ms`): a client that
//! stops reading is closed with 1008 within that time instead of the task waiting
//! forever.
//!
//! An idle connection spends its life in [`next_event`], so that wait is kept
//! to two borrowed polls with no state of their own: every byte of it is paid
//! once per connected device (see `docs/performance.md`).
//!
//! Every client frame is handled in order, so a burst of sends from one device is
//! acked and numbered in the order it was sent.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Error as WsError;

use crate::auth::now_ms;
use crate::chat::App;
use crate::error::ApiError;
use crate::http::{Auth, Upgrade};
use crate::metrics::Metrics;
use crate::outbox::{CloseReason, Outbox, Pushed};
use crate::protocol::{ack_json, parse_client_frame, ClientFrame, ErrorCode, ServerFrame};
use crate::store::TokenOwner;

/// Frames written per wake-up before the loop looks at the socket again.
const WRITE_BATCH: usize = 64;
/// How long a closing handshake may take before the socket is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// How long a frame written outside the outbox (`hello`, the `too_large` error
/// before a 1009 close) may take: the kernel's socket buffer always has room
/// for one on a connection that is not stuck.
const WRITE_TIMEOUT_ALONE: Duration = Duration::from_secs(10);

/// `GET /v1/ws`: authenticate (401 before the upgrade), then run a session.
pub async fn upgrade(State(app): State<Arc<App>>, auth: Auth, ws: Upgrade) -> Response {
    let cfg = &app.config;
    let open = app
        .metrics
        .connections
        .load(std::sync::atomic::Ordering::Relaxed) as usize;
    if open >= app.max_connections || app.shutdown.is_cancelled() {
        let e = app.count(ApiError::new(
            ErrorCode::Overloaded,
            "this node is at its connection limit; try another server from discovery",
        ));
        return e.into_response();
    }
    let ws = ws
        .read_buffer_size(cfg.ws_read_buffer_bytes)
        // Write each frame out at once (no coalescing buffer kept per connection);
        // the bound on what may wait unwritten is the frame limit plus slack.
        .write_buffer_size(0)
        .max_write_buffer_size(cfg.max_frame_bytes * 2 + 64 * 1024)
        .max_message_size(cfg.max_frame_bytes)
        .max_frame_size(cfg.max_frame_bytes);
    let session_app = app.clone();
    ws.on_upgrade(move |socket| async move {
        // A task of its own, rather than running inside axum's upgrade task: that
        // task's future also holds the upgrade machinery, which an idle
        // connection would otherwise carry for its whole life.
        let app = session_app.clone();
        session_app
            .sessions
            .spawn(run(app, socket, auth.owner, auth.token.into()));
    })
}

/// One connection's whole life. Not an `async fn`: an async fn keeps a second
/// copy of its by-value arguments in its state (rust-lang/rust#62958), and the
/// WebSocket is the biggest thing an idle connection holds.
#[allow(clippy::manual_async_fn)]
fn run(
    app: Arc<App>,
    mut socket: WebSocket,
    owner: TokenOwner,
    // Kept for logout; a boxed str is a word smaller than a String.
    token: Box<str>,
) -> impl Future<Output = ()> + Send {
    async move {
        let outbox = Arc::new(Outbox::new(
            app.config.outbox_max_frames,
            app.config.outbox_max_bytes,
        ));
        let conn = app
            .hub
            .register(owner.user_id, owner.device_id, outbox.clone());
        Metrics::inc(&app.metrics.connections);
        Metrics::inc(&app.metrics.connections_total);
        app.presence.touch(owner.user_id, owner.device_id, now_ms());
        // Shutdown marks the outboxes registered in the hub; one registered
        // after that pass sees the token instead.
        if app.shutdown.is_cancelled() {
            outbox.close(CloseReason::ShuttingDown);
        }

        let close = match Box::pin(hello(&app, &mut socket, &outbox, owner)).await {
            Err(close) => close,
            // The loop lives in this future itself rather than in a function
            // it awaits: that would hold a second copy of every reference.
            Ok(()) => {
                let mut allowance = SendAllowance::new(app.config.send_burst);
                loop {
                    // Everything but the wait is boxed: an idle connection holds
                    // only the wait's small future, not the space of the busy paths.
                    let event = next_event(&mut socket, &outbox).await;
                    let (app, token) = (&*app, &*token);
                    let step = Box::pin(on_event(
                        app,
                        &mut socket,
                        &outbox,
                        owner,
                        token,
                        &mut allowance,
                        event,
                    ))
                    .await;
                    if let Step::Close(close) = step {
                        break close;
                    }
                }
            }
        };
        if let Some((code, reason)) = close {
            let frame = CloseFrame {
                code,
                reason: Utf8Bytes::from_static(reason),
            };
            Box::pin(close_with(&mut socket, frame)).await;
        }

        app.hub.unregister(owner.user_id, conn);
        app.metrics
            .connections
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        // The user stays online until `offline_after` passes without a heartbeat:
        // a dropped connection is not a logout.
    }
}

/// Bytes the server accounts to one connection, for the per-connection memory
/// histogram: its task (the session future in tokio's task cell, which pads to
/// 128 bytes), the WebSocket read buffer (`read_buffer`, or the largest frame
/// read), its write buffer (the largest frame written), and its outbox with the
/// frames queued in it. Not counted: the socket's kernel buffers, tokio's I/O
/// registration, the hub and presence entries (see `docs/performance.md`).
pub fn connection_bytes(outbox: &Outbox, read_buffer: usize) -> usize {
    // Frame headers: 14 bytes at most in, 10 out (the server does not mask).
    let f = outbox.footprint();
    task_bytes()
        + read_buffer.max(f.largest_in + 14)
        + f.largest_out
        + 10
        + std::mem::size_of::<Outbox>()
        + 16
        + f.queued_bytes
        + f.queue_capacity * std::mem::size_of::<Utf8Bytes>()
}

/// One session task: the future of [`run`], tracked by the server's
/// `TaskTracker`, in tokio's task cell (about 104 bytes of its own, padded to a
/// multiple of 128).
fn task_bytes() -> usize {
    fn future_bytes<A, B, C, D, R>(_: &impl Fn(A, B, C, D) -> R) -> usize {
        std::mem::size_of::<R>()
    }
    (future_bytes(&run) + 8 + 104).next_multiple_of(128)
}

/// What woke the session.
enum Event {
    Outbox,
    Incoming(Option<Result<WsMessage, axum::Error>>),
}

/// What the session does next.
enum Step {
    Continue,
    /// End the session, sending this close frame (if any).
    Close(Option<(u16, &'static str)>),
}

/// The idle wait, where every connection spends most of its life: queued
/// frames (and close marks) first, then the socket, so a busy client cannot
/// starve its own deliveries. A plain poll of the two, with no waiter or timer
/// state to carry.
async fn next_event(socket: &mut WebSocket, outbox: &Outbox) -> Event {
    std::future::poll_fn(|cx| {
        if outbox.poll_ready(cx).is_ready() {
            return Poll::Ready(Event::Outbox);
        }
        socket.poll_next_unpin(cx).map(Event::Incoming)
    })
    .await
}

/// Handles what woke the session: queued frames to write, or a client frame.
async fn on_event(
    app: &App,
    socket: &mut WebSocket,
    outbox: &Outbox,
    owner: TokenOwner,
    token: &str,
    allowance: &mut SendAllowance,
    event: Event,
) -> Step {
    match event {
        Event::Outbox => write_queued(app, socket, outbox).await,
        Event::Incoming(incoming) => {
            on_incoming(app, socket, outbox, owner, token, allowance, incoming).await
        }
    }
}

/// Writes up to a batch of queued frames, raced against the outbox's close mark
/// (a client that stops reading blocks the write while its outbox overflows;
/// shutdown marks it too) and a write timeout: a frame that cannot be written
/// within `--write-timeout-ms` (the client stopped reading) closes the
/// connection with 1008.
async fn write_queued(app: &App, socket: &mut WebSocket, outbox: &Outbox) -> Step {
    let limit = app.config.write_timeout;
    // Frames are taken one at a time (a lock each, no batch to allocate), so
    // frames queued while the first ones are written go out in the same turn.
    let mut closing_now = None;
    let write = async {
        for _ in 0..WRITE_BATCH {
            let frame = match outbox.pop() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(reason) => {
                    closing_now = Some(reason);
                    return Ok(());
                }
            };
            outbox.note_frame(frame.len(), false);
            within(limit, socket.feed(WsMessage::Text(frame)))
                .await?
                .map_err(|_| WriteFailed::Gone)?;
        }
        within(limit, socket.flush())
            .await?
            .map_err(|_| WriteFailed::Gone)
    };
    tokio::select! {
        r = write => match r {
            Ok(()) => {}
            Err(WriteFailed::Gone) => return Step::Close(None),
            Err(WriteFailed::TimedOut) => {
                Metrics::inc(&app.metrics.slow_consumer_disconnects);
                let reason = CloseReason::SlowConsumer;
                return Step::Close(Some((reason.code(), reason.text())));
            }
        },
        // Shutdown marks the outbox too, so this also ends a write at shutdown.
        reason = closing(outbox) => return Step::Close(Some((reason.code(), reason.text()))),
    }
    if let Some(reason) = closing_now {
        return Step::Close(Some((reason.code(), reason.text())));
    }
    // More may be queued than one batch: come back without waiting.
    if outbox.has_frames() {
        outbox.wake();
    }
    Step::Continue
}

/// `fut` within `limit`. A write that completes at once (the kernel's socket
/// buffer has room: nearly always) is not given a timer: arming one reads the
/// clock, which on some virtual machines is a system call per frame.
async fn within<F: Future>(limit: Duration, fut: F) -> Result<F::Output, WriteFailed> {
    let mut fut = std::pin::pin!(fut);
    // One poll with the task's own waker: if it is pending, `timeout` polls
    // again and registers the same waker, so nothing is missed.
    if let Poll::Ready(out) = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await {
        return Ok(out);
    }
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| WriteFailed::TimedOut)
}

/// Why a write did not complete.
enum WriteFailed {
    /// The connection failed or was closed by the peer.
    Gone,
    /// No progress within the write timeout: the client does not read.
    TimedOut,
}

/// Queues an answer on the outbox like any delivery; `Some` is the step to take
/// when that overflows it (1008: the client does not read its answers). Only
/// the session's own task calls this, and its loop looks at the outbox before
/// it waits again, so the push marks the outbox without waking the task (a
/// wake-up would only poll it once more for nothing).
fn queue_reply(app: &App, outbox: &Outbox, reply: String) -> Option<Step> {
    match outbox.push_own(reply.into()) {
        Pushed::Queued => None,
        Pushed::Overflowed => {
            Metrics::inc(&app.metrics.slow_consumer_disconnects);
            let reason = CloseReason::SlowConsumer;
            Some(Step::Close(Some((reason.code(), reason.text()))))
        }
        Pushed::Closed => outbox
            .closing()
            .map(|reason| Step::Close(Some((reason.code(), reason.text())))),
    }
}

/// Handles what the socket produced: a frame, an error, or its end.
async fn on_incoming(
    app: &App,
    socket: &mut WebSocket,
    outbox: &Outbox,
    owner: TokenOwner,
    token: &str,
    allowance: &mut SendAllowance,
    incoming: Option<Result<WsMessage, axum::Error>>,
) -> Step {
    let msg = match incoming {
        None => return Step::Close(None),
        Some(Err(e)) if is_too_large(&e) => {
            let err = ServerFrame::error(
                None,
                ErrorCode::TooLarge,
                "frame over the server's frame limit",
            );
            app.metrics.error(ErrorCode::TooLarge);
            send_text(socket, err.to_json()).await;
            return Step::Close(Some((1009, "frame too large")));
        }
        Some(Err(_)) => return Step::Close(None),
        Some(Ok(msg)) => msg,
    };
    if let WsMessage::Text(t) = &msg {
        outbox.note_frame(t.len(), true);
    }
    match msg {
        WsMessage::Text(text) => {
            let (reply, end) = handle(app, owner, token, &text, allowance).await;
            if end {
                // Logging out marked this outbox closed already: the ack goes
                // out directly, then the close.
                if let Some(reply) = reply {
                    send_text(socket, reply).await;
                }
                return Step::Close(Some((1000, "logged out")));
            }
            if let Some(reply) = reply {
                if let Some(close) = queue_reply(app, outbox, reply) {
                    return close;
                }
            }
        }
        WsMessage::Binary(_) => {
            app.metrics.error(ErrorCode::BadRequest);
            let err = ServerFrame::error(
                None,
                ErrorCode::BadRequest,
                "binary frames are not supported; send JSON text frames",
            );
            if let Some(close) = queue_reply(app, outbox, err.to_json()) {
                return close;
            }
        }
        WsMessage::Close(_) => return Step::Close(None),
        // Pings are answered by the WebSocket layer itself.
        WsMessage::Ping(_) | WsMessage::Pong(_) => {}
    }
    Step::Continue
}

/// Sends the `hello` frame: `Err` carries what to close with (if anything).
async fn hello(
    app: &App,
    socket: &mut WebSocket,
    outbox: &Outbox,
    owner: TokenOwner,
) -> Result<(), Option<(u16, &'static str)>> {
    let head = match app.attach(owner).await {
        Ok(seq) => seq,
        Err(e) => {
            tracing::warn!(user_id = owner.user_id, cause = %e, "reading inbox head failed");
            return Err(Some((1011, "storage unavailable")));
        }
    };
    let hello = ServerFrame::Hello {
        user_id: owner.user_id,
        device_id: owner.device_id,
        seq: head,
        heartbeat_interval_ms: app.config.heartbeat_interval.as_millis() as u64,
        offline_after_ms: app.config.offline_after.as_millis() as u64,
    };
    let hello = hello.to_json();
    outbox.note_frame(hello.len(), false);
    if send_text(socket, hello).await {
        Ok(())
    } else {
        Err(None)
    }
}

/// Writes one text frame; false if the connection is gone. Boxed so that the
/// session's idle state does not carry a send future's space.
fn send_text<'a>(
    socket: &'a mut WebSocket,
    text: String,
) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>> {
    let limit = WRITE_TIMEOUT_ALONE;
    Box::pin(async move {
        matches!(
            tokio::time::timeout(limit, socket.send(WsMessage::Text(text.into()))).await,
            Ok(Ok(()))
        )
    })
}

/// Sends a close frame and waits (briefly) for the peer's answer, so the
/// closing handshake completes and the peer reads the frame before the socket goes.
async fn close_with(socket: &mut WebSocket, frame: CloseFrame) {
    let handshake = async {
        socket.send(WsMessage::Close(Some(frame))).await?;
        while let Some(msg) = socket.recv().await {
            if matches!(msg?, WsMessage::Close(_)) {
                break;
            }
        }
        Ok::<_, axum::Error>(())
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, handshake).await;
}

/// Resolves once the outbox is marked to close.
async fn closing(outbox: &Outbox) -> CloseReason {
    loop {
        if let Some(reason) = outbox.closing() {
            return reason;
        }
        outbox.ready().await;
    }
}

/// True if a read failed because a frame or message passed the size limit.
fn is_too_large(e: &axum::Error) -> bool {
    use std::error::Error as _;
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(WsError::Capacity(_)) = s.downcast_ref::<WsError>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// Handles one text frame; returns the reply (if any) and whether to end the session.
async fn handle(
    app: &App,
    owner: TokenOwner,
    token: &str,
    text: &str,
    allowance: &mut SendAllowance,
) -> (Option<String>, bool) {
    let frame = match parse_client_frame(text) {
        Ok(f) => f,
        Err(bad) => {
            app.metrics.error(ErrorCode::BadRequest);
            return (Some(bad.to_error_frame().to_json()), false);
        }
    };
    let reply = |req: Option<i64>, r: Result<ServerFrame, ApiError>| match r {
        Ok(f) => Some(f.to_json()),
        Err(e) => {
            let e = app.count(e);
            Some(ServerFrame::error(req, e.code, e.message).to_json())
        }
    };
    match frame {
        ClientFrame::Send {
            req,
            to,
            client_msg_id,
            text,
        } => {
            if !allowance.take(app.config.send_rate_per_sec, app.config.send_burst) {
                let e = ApiError::new(
                    ErrorCode::RateLimited,
                    "sending faster than this connection's allowance; slow down",
                );
                return (reply(req, Err(e)), false);
            }
            match app.send(owner, &to, &client_msg_id, &text).await {
                Ok(a) => (
                    Some(ack_json(req, &a.channel, a.id, a.sender_seq, a.ts)),
                    false,
                ),
                Err(e) => (reply(req, Err(e)), false),
            }
        }
        ClientFrame::Heartbeat { req } => {
            app.presence.touch(owner.user_id, owner.device_id, now_ms());
            (req.map(|r| format!(r#"{{"type":"ack","req":{r}}}"#)), false)
        }
        ClientFrame::Sync { req, since, limit } => {
            match app.sync(owner.user_id, since, limit).await {
                Ok(page) => (Some(page.sync_batch_json(req)), false),
                Err(e) => (reply(req, Err(e)), false),
            }
        }
        ClientFrame::Logout { req } => match app.logout(token, owner).await {
            Ok(()) => (req.map(|r| format!(r#"{{"type":"ack","req":{r}}}"#)), true),
            Err(e) => (reply(req, Err(e)), false),
        },
    }
}

/// A token bucket for `send` frames: `rate` per second sustained, `burst` at once.
/// Refilled lazily when a send arrives; the rate and burst come from the
/// server's configuration at each take, so a connection holds two numbers.
struct SendAllowance {
    tokens: f32,
    last: Option<std::time::Instant>,
}

impl SendAllowance {
    fn new(burst: u32) -> Self {
        SendAllowance {
            tokens: burst as f32,
            last: None,
        }
    }

    fn take(&mut self, rate: u32, burst: u32) -> bool {
        if rate == 0 {
            return true;
        }
        let now = std::time::Instant::now();
        if let Some(last) = self.last {
            self.tokens = (self.tokens + now.duration_since(last).as_secs_f32() * rate as f32)
                .min(burst as f32);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every idle connection holds one task whose future is `run`'s; tokio pads
    /// a task to a multiple of 128 bytes and adds about 112 of its own, so past
    /// 536 bytes each connection pays 128 more (docs/performance.md).
    #[test]
    fn an_idle_session_fits_a_640_byte_task() {
        assert_eq!(
            task_bytes(),
            640,
            "the session task grew: box the new state, or update docs/performance.md"
        );
    }

    #[test]
    fn connection_bytes_count_buffers_and_queued_frames() {
        let outbox = Outbox::new(16, 1 << 20);
        let idle = connection_bytes(&outbox, 256);
        assert_eq!(idle, 640 + 256 + 10 + std::mem::size_of::<Outbox>() + 16);
        outbox.note_frame(120, false);
        outbox.note_frame(1000, true);
        assert_eq!(
            connection_bytes(&outbox, 256),
            idle + 120 + (1000 + 14 - 256)
        );
        assert_eq!(
            outbox.push("x".repeat(300).into()),
            crate::outbox::Pushed::Queued
        );
        let queued = connection_bytes(&outbox, 256);
        assert!(queued >= idle + 120 + 758 + 300, "{queued}");
    }
}
