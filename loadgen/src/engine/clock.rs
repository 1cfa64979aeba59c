//! The generator's own clock: a dedicated thread that runs the schedule and
//! wakes on time.
//!
//! tokio's timer has a 1 ms resolution, and a task waiting on it also waits
//! for a busy runtime to poll it: every send scheduled on it went out about a
//! millisecond late, and every corrected latency carried that millisecond. The
//! schedule ([`crate::engine::schedule`]) therefore runs on its own OS thread,
//! which sleeps with the kernel's high-resolution timers:
//!
//! - It asks for `SCHED_FIFO` at the lowest real-time priority, so a machine
//!   busy with the server and the devices still wakes it on time (measured
//!   here on 2 cores loaded by other builds: p99 wake-up error 2-7 ms as a
//!   normal thread, 50-70 us as a real-time one).
//!   Without the privilege it stays a normal thread with a 1 ns timer slack,
//!   and the report says so (`generator.clock`).
//! - It writes each send itself, straight to the device's socket
//!   ([`crate::engine::wire`]): no hand-off to a task a busy runtime would
//!   poll late.
//! - It sleeps until the next arrival and does not spin: spinning the last
//!   tens of microseconds before each send would cost a core at 10,000 sends/s
//!   on a 2-core machine.
//! - A real-time thread that falls behind could starve the machine, so it
//!   never works more than [`MAX_BUSY`] without a [`REST`]: a saturated
//!   generator then shows as send delay (and a generator-limited run), not as
//!   a frozen server.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// Longest stretch of work without a sleep.
pub const MAX_BUSY: Duration = Duration::from_millis(5);
/// The sleep that ends such a stretch.
pub const REST: Duration = Duration::from_millis(1);

/// How the clock thread is scheduled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClockMode {
    /// `SCHED_FIFO`, lowest priority.
    Realtime,
    /// A normal thread (why real-time was refused).
    Normal(String),
}

impl ClockMode {
    pub fn describe(&self) -> String {
        match self {
            ClockMode::Realtime => "realtime (SCHED_FIFO)".into(),
            ClockMode::Normal(why) => format!("normal thread ({why})"),
        }
    }
}

/// Makes the calling thread the clock: real-time if allowed, 1 ns timer slack.
pub fn become_clock() -> ClockMode {
    use thread_priority::{
        set_thread_priority_and_policy, thread_native_id, RealtimeThreadSchedulePolicy,
        ThreadPriority, ThreadSchedulePolicy,
    };
    let _ = nix::sys::prctl::set_timerslack(1);
    match set_thread_priority_and_policy(
        thread_native_id(),
        ThreadPriority::Min,
        ThreadSchedulePolicy::Realtime(RealtimeThreadSchedulePolicy::Fifo),
    ) {
        Ok(()) => ClockMode::Realtime,
        Err(e) => ClockMode::Normal(format!("real-time scheduling refused: {e:?}")),
    }
}

/// Sleeps until deadlines, precisely, and keeps the thread's duty cycle bounded.
pub struct Timer {
    busy_since: Instant,
    /// Wake-ups fall on multiples of this since `origin` (zero: on each
    /// deadline). A coarser clock wakes less often and batches the sends due,
    /// trading send delay (recorded) for CPU: every wake-up is two context
    /// switches, which cost microseconds on a virtual machine.
    resolution: Duration,
    origin: Instant,
}

impl Default for Timer {
    fn default() -> Self {
        Timer::new(Duration::ZERO)
    }
}

impl Timer {
    pub fn new(resolution: Duration) -> Self {
        let now = Instant::now();
        Timer {
            busy_since: now,
            resolution,
            origin: now,
        }
    }

    /// Called after each piece of work: past [`MAX_BUSY`] without a sleep, rests.
    pub fn worked(&mut self) {
        if self.busy_since.elapsed() > MAX_BUSY {
            std::thread::sleep(REST);
            self.busy_since = Instant::now();
        }
    }

    /// Sleeps until `deadline`, rounded up to the resolution (or until
    /// `cancel` unparks the thread).
    pub fn sleep_until(&mut self, deadline: Instant, cancel: &CancellationToken) {
        let deadline = if self.resolution.is_zero() {
            deadline
        } else {
            let step = self.resolution.as_nanos();
            let since = deadline.saturating_duration_since(self.origin).as_nanos();
            let steps = since.div_ceil(step);
            self.origin + Duration::from_nanos((steps * step) as u64)
        };
        loop {
            let now = Instant::now();
            if now >= deadline || cancel.is_cancelled() {
                break;
            }
            // Parked, a cancel wakes the thread at once (see `spawn`).
            std::thread::park_timeout(deadline - now);
        }
        self.busy_since = Instant::now();
    }
}

/// Runs `work` on a new clock thread inside the current tokio runtime's
/// context (so it can spawn tasks); a cancel of `cancel` unparks it. The
/// result comes back through the returned receiver.
pub fn spawn<T: Send + 'static>(
    cancel: CancellationToken,
    resolution: Duration,
    work: impl FnOnce(ClockMode, &mut Timer) -> T + Send + 'static,
) -> tokio::sync::oneshot::Receiver<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let handle = tokio::runtime::Handle::current();
    let thread = std::thread::Builder::new()
        .name("loadgen-clock".into())
        .spawn(move || {
            let _runtime = handle.enter();
            let mode = become_clock();
            let mut timer = Timer::new(resolution);
            let _ = tx.send(work(mode, &mut timer));
        })
        .expect("the clock thread starts");
    let unpark = thread.thread().clone();
    tokio::spawn(async move {
        cancel.cancelled().await;
        unpark.unpark();
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timer_wakes_at_or_after_its_deadline() {
        let mut t = Timer::default();
        let cancel = CancellationToken::new();
        for _ in 0..20 {
            let deadline = Instant::now() + Duration::from_micros(300);
            t.sleep_until(deadline, &cancel);
            assert!(Instant::now() >= deadline);
        }
        cancel.cancel();
        let far = Instant::now() + Duration::from_secs(3600);
        t.sleep_until(far, &cancel); // returns at once: cancelled
    }

    #[test]
    fn a_coarse_clock_wakes_on_its_grid() {
        let mut t = Timer::new(Duration::from_millis(2));
        let cancel = CancellationToken::new();
        let deadline = Instant::now() + Duration::from_micros(100);
        t.sleep_until(deadline, &cancel);
        let since = t.origin.elapsed();
        assert!(since >= Duration::from_millis(2), "{since:?}");
    }
}
