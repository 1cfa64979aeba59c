//! How a device's frames reach its socket: the clock thread's sends, written
//! straight from that thread, the heartbeat tick's heartbeats
//! ([`crate::engine::beat`]), and the device task's own frames (syncs,
//! resends, pongs, its close), all under the device's slot lock so they never
//! interleave.
//!
//! A write the socket cannot take whole leaves its remainder in the slot's
//! backlog; everything after it queues behind, and the device's task flushes
//! the backlog when the socket is writable. A send for a device that is not
//! connected, or that has commands queued ahead of it, is queued for its task
//! ([`crate::engine::command::Cmd::Send`]). Sends in flight are the slot's
//! [`crate::engine::inbox::Outbox`], bounded by [`MAX_PENDING`].

use std::cell::RefCell;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::LazyLock;

use reference_server::protocol::ClientFrame;
use tokio::net::TcpStream;

use crate::engine::command::{Cmd, SendJob, To};
use crate::engine::inbox::Pending;
use crate::engine::recorder::inc;
use crate::engine::secure;
use crate::engine::sim::{lock, Ctl, Sim, Slot, MAX_QUEUED};
use crate::engine::wire::{encode, encode_text, send_json, write_now, Dest, CLOSE};

/// Sends a device keeps written-but-unacked; past it, queued sends wait.
pub const MAX_PENDING: usize = 4096;

thread_local! {
    /// Frame-building buffers, reused: no allocation per send.
    static BUFS: RefCell<(Vec<u8>, Vec<u8>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// The mask of the frames a device's task and the heartbeat tick write (a
/// client must mask; the value does not matter, the server unmasks).
const MASK: [u8; 4] = [0x5a, 0x17, 0xc3, 0x8e];

/// A heartbeat frame, made once: every heartbeat is the same bytes.
static HEARTBEAT: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let json = serde_json::to_vec(&ClientFrame::Heartbeat { req: None }).expect("serializes");
    let mut frame = Vec::new();
    encode_text(&mut frame, &json, MASK);
    frame
});

/// Writes one frame (`head`: FIN and opcode) on the socket, behind any
/// backlog. False when the connection is gone.
pub fn write_frame(slot: &Slot, tcp: &TcpStream, head: u8, payload: &[u8]) -> bool {
    BUFS.with(|b| {
        let frame = &mut b.borrow_mut().1;
        frame.clear();
        encode(frame, head, payload, MASK);
        place(slot, &mut lock(&slot.ctl), tcp, frame)
    })
}

/// Writes `frame` now, or behind the backlog; what the socket does not take
/// joins the backlog (the task flushes it when the socket is writable).
fn place(slot: &Slot, ctl: &mut Ctl, tcp: &TcpStream, frame: &[u8]) -> bool {
    if let Some(conn) = ctl.tls.as_mut() {
        // Over TLS the session's own buffer is the backlog.
        return match secure::write(conn, tcp, frame) {
            Ok(all) => {
                if !all {
                    slot.backlogged.store(true, Relaxed);
                }
                true
            }
            Err(_) => false,
        };
    }
    if !ctl.backlog.is_empty() {
        ctl.backlog.extend_from_slice(frame);
        return true;
    }
    match write_now(tcp, frame) {
        Ok(n) => {
            if n < frame.len() {
                ctl.backlog.extend_from_slice(&frame[n..]);
                slot.backlogged.store(true, Relaxed);
            }
            true
        }
        Err(_) => false,
    }
}

/// Writes a client frame the protocol types describe (heartbeats, syncs).
pub fn write_client(slot: &Slot, tcp: &TcpStream, frame: &ClientFrame) -> bool {
    let json = serde_json::to_vec(frame).expect("client frames serialize");
    write_frame(slot, tcp, crate::engine::wire::TEXT, &json)
}

/// A heartbeat for `d`'s connection `epoch`, from the heartbeat tick: written
/// if that connection is still the device's; false if it is gone (nothing
/// more to schedule for it).
pub fn heartbeat(sim: &Sim, d: u32, epoch: u32) -> bool {
    let slot = &sim.slots[d as usize];
    let mut ctl = lock(&slot.ctl);
    if ctl.epoch != epoch {
        return false;
    }
    let Some(tcp) = ctl.wire.clone() else {
        return false;
    };
    let ok = place(slot, &mut ctl, &tcp, &HEARTBEAT);
    drop(ctl);
    inc(&sim.rec.counters.heartbeats);
    if !ok || slot.backlogged.load(Relaxed) {
        // A broken socket or a backlog: the task takes over.
        slot.wake.notify_one();
    }
    ok
}

/// Writes one send (a new one, or a resend with its first `actual_us`) and
/// records it as pending under a fresh `req`.
pub fn write_send(
    sim: &Sim,
    slot: &Slot,
    ctl: &mut Ctl,
    tcp: &TcpStream,
    mut job: SendJob,
    actual_us: u64,
) -> bool {
    let req = ctl.out.req();
    let to = match job.to {
        To::User(u) => Dest::User(sim.pop.user_id(u)),
        To::Group(g) => Dest::Channel(&sim.pop.groups[g as usize].channel),
    };
    let ok = BUFS.with(|b| {
        let (json, frame) = &mut *b.borrow_mut();
        json.clear();
        // In a cluster the send names its node (same- vs cross-node latency):
        // the node of its first write, so that a resend after a failover keeps
        // its client_msg_id (else the server would store it twice).
        if job.node.is_none() {
            job.node = ctl.link.node.filter(|_| sim.nodes.discover);
        }
        send_json(
            json,
            req,
            to,
            (job.sched_us, actual_us, job.n),
            job.node,
            job.len,
        );
        frame.clear();
        let mask = (actual_us as u32 ^ req as u32).to_le_bytes();
        encode_text(frame, json, mask);
        place(slot, ctl, tcp, frame)
    });
    ctl.out.pending.push_back(Pending {
        req,
        job,
        actual_us,
    });
    ok
}

/// A send from the scheduler: written at once, from the calling thread (the
/// clock), when the device is connected with nothing queued ahead of it;
/// queued for its task otherwise. False when the queue is full (refused).
pub fn send(sim: &Sim, d: u32, job: SendJob) -> bool {
    let slot = &sim.slots[d as usize];
    let mut ctl = lock(&slot.ctl);
    let direct = ctl.cmds.is_empty() && ctl.out.pending.len() < MAX_PENDING;
    // The socket is taken out of the slot for the write and put back (the
    // lock is held throughout): no reference count touched per send.
    match ctl.wire.take_if(|_| direct) {
        Some(tcp) => {
            let rec = &sim.rec;
            let actual_us = rec.clock.now_us();
            rec.record_send_delay(actual_us, job.sched_us);
            let ok = write_send(sim, slot, &mut ctl, &tcp, job, actual_us);
            ctl.wire = Some(tcp);
            inc(&rec.counters.messages_sent);
            if !ok || slot.backlogged.load(Relaxed) {
                // A broken socket or a backlog: the task takes over.
                drop(ctl);
                slot.wake.notify_one();
            }
            true
        }
        None => {
            if ctl.cmds.len() >= MAX_QUEUED {
                return false;
            }
            ctl.cmds.push_back(Cmd::Send(job));
            drop(ctl);
            slot.wake.notify_one();
            true
        }
    }
}

/// The connection is over: the clock thread no longer writes to it. Returns
/// what was still waiting to be written.
pub fn unplug(slot: &Slot) -> Vec<u8> {
    let mut ctl = lock(&slot.ctl);
    ctl.wire = None;
    slot.backlogged.store(false, Relaxed);
    std::mem::take(&mut ctl.backlog)
}

/// Ends the connection cleanly: no more writes from other threads, and the
/// bytes still to write are the backlog and then a close frame (code 1000).
pub fn closing(slot: &Slot) -> Vec<u8> {
    let mut out = unplug(slot);
    let mut ctl = lock(&slot.ctl);
    match ctl.tls.as_mut() {
        Some(conn) => {
            let mut close = Vec::new();
            encode(&mut close, CLOSE, &1000u16.to_be_bytes(), MASK);
            // The session still holds what it could not write: all of it goes
            // out as ciphertext, the close frame last.
            if secure::write_only(conn, &close).is_ok() {
                out = secure::take_ciphertext(conn);
            }
        }
        None => encode(&mut out, CLOSE, &1000u16.to_be_bytes(), MASK),
    }
    out
}

/// Writes what the backlog holds as far as the socket takes it.
pub fn flush(slot: &Slot, tcp: &TcpStream) -> bool {
    let mut ctl = lock(&slot.ctl);
    if let Some(conn) = ctl.tls.as_mut() {
        return match secure::push(conn, tcp) {
            Ok(all) => {
                if all {
                    slot.backlogged.store(false, Relaxed);
                }
                true
            }
            Err(_) => false,
        };
    }
    match write_now(tcp, &ctl.backlog) {
        Ok(n) => {
            ctl.backlog.drain(..n);
            if ctl.backlog.is_empty() {
                // Give the memory back: a backlog is rare and can be large.
                ctl.backlog = Vec::new();
                slot.backlogged.store(false, Relaxed);
            }
            true
        }
        Err(_) => false,
    }
}
