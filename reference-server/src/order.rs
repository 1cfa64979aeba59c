//! Per-channel order without holding a lock across a commit.
//!
//! A [`Stripe`] (one of the chat service's fixed set; a channel hashes to one)
//! hands out tickets in the order its lock is taken. A send takes the lock only
//! to submit its accept to the store (which fixes the message's id in
//! submission order) and take a ticket; it waits for its commit without the
//! lock, then for its [`Turn`]: every earlier ticket of the stripe done. Fanning
//! out during the turn keeps a channel's frames in id order on every device,
//! while many sends of one busy channel wait for the same group commit.
//!
//! A turn ends when its [`Turn`] guard is dropped, whatever happened to the send
//! (a storage error, a cancelled task), so one failed send never stops its
//! stripe: a ticket dropped before its turn came hands it on from a small task.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// One stripe: the ticket counter (behind the async lock) and the ticket now served.
#[derive(Default)]
pub struct Stripe {
    next: tokio::sync::Mutex<u64>,
    serving: AtomicU64,
    turn_ended: Notify,
}

/// A place in a stripe's order, not yet reached. [`Ticket::wait`] gives the turn.
pub struct Ticket {
    stripe: Arc<Stripe>,
    number: u64,
    /// False once [`Ticket::wait`] has handed its duty over to a [`Turn`].
    pending: bool,
}

/// The turn of one ticket: held while fanning out, ended on drop.
pub struct Turn {
    stripe: Arc<Stripe>,
    number: u64,
}

impl Stripe {
    /// Runs `start` under the stripe's lock and takes the next ticket with it:
    /// what `start` submits is ordered as the tickets are. An error takes no ticket.
    pub async fn submit<T, E, F, Fut>(self: &Arc<Self>, start: F) -> Result<(T, Ticket), E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut next = self.next.lock().await;
        let started = start().await?;
        let ticket = Ticket {
            stripe: self.clone(),
            number: *next,
            pending: true,
        };
        *next += 1;
        Ok((started, ticket))
    }

    fn end_turn(&self, number: u64) {
        self.serving.store(number + 1, Ordering::Release);
        self.turn_ended.notify_waiters();
    }

    async fn wait_for(&self, number: u64) {
        loop {
            let ended = self.turn_ended.notified();
            tokio::pin!(ended);
            // Registered before the check, so an end between the two is not missed.
            ended.as_mut().enable();
            if self.serving.load(Ordering::Acquire) == number {
                return;
            }
            ended.await;
        }
    }
}

impl Ticket {
    /// Waits until every earlier ticket of the stripe has ended its turn.
    pub async fn wait(mut self) -> Turn {
        self.stripe.wait_for(self.number).await;
        self.pending = false;
        Turn {
            stripe: self.stripe.clone(),
            number: self.number,
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.pending {
            return;
        }
        // Dropped before its turn (the send's task was cancelled): the later
        // tickets must not wait for it forever.
        let (stripe, number) = (self.stripe.clone(), self.number);
        if stripe.serving.load(Ordering::Acquire) == number {
            stripe.end_turn(number);
        } else if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                stripe.wait_for(number).await;
                stripe.end_turn(number);
            });
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.stripe.end_turn(self.number);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn ticket(stripe: &Arc<Stripe>) -> Ticket {
        stripe.submit(|| async { Ok::<_, ()>(()) }).await.unwrap().1
    }

    #[tokio::test]
    async fn turns_come_in_ticket_order_whatever_the_order_of_waiting() {
        let stripe = Arc::new(Stripe::default());
        let (a, b, c) = (
            ticket(&stripe).await,
            ticket(&stripe).await,
            ticket(&stripe).await,
        );
        let order = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (name, t) in [("c", c), ("b", b)] {
            let order = order.clone();
            tasks.push(tokio::spawn(async move {
                let _turn = t.wait().await;
                order.lock().push(name);
            }));
        }
        tokio::task::yield_now().await;
        assert!(
            order.lock().is_empty(),
            "nobody goes before the first ticket"
        );
        drop(a.wait().await);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock(), ["b", "c"]);
    }

    #[tokio::test]
    async fn a_ticket_dropped_before_its_turn_does_not_stop_the_stripe() {
        let stripe = Arc::new(Stripe::default());
        let first = ticket(&stripe).await;
        let second = ticket(&stripe).await;
        let third = ticket(&stripe).await;
        drop(second);
        drop(first.wait().await);
        tokio::time::timeout(std::time::Duration::from_secs(5), third.wait())
            .await
            .expect("the third ticket gets its turn");
    }

    #[tokio::test]
    async fn a_failed_submit_takes_no_ticket() {
        let stripe = Arc::new(Stripe::default());
        let failed = stripe.submit(|| async { Err::<(), _>("no") }).await;
        assert!(failed.is_err());
        let t = ticket(&stripe).await;
        tokio::time::timeout(std::time::Duration::from_secs(5), t.wait())
            .await
            .expect("the first ticket taken is served first");
    }
}
