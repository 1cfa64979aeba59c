//! Push notifications for members with no connected device.
//!
//! With `--push-webhook URL`, each notification is POSTed there as JSON by a
//! background worker: a bounded queue in front (a full queue drops the
//! notification and counts it, so chat delivery never waits on the push
//! gateway), a few requests in flight, and retries with exponential backoff on
//! errors and 5xx answers. Without a webhook, notifications are only counted in
//! `/metrics` (`chatscale_push_notifications_total`).

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::protocol::{MessageId, UserId};

/// What the push gateway receives.
#[derive(Debug, Clone, Serialize)]
pub struct Notification {
    pub user_id: UserId,
    pub channel: String,
    pub id: MessageId,
    pub from: UserId,
    pub preview: String,
}

/// Characters of the message text a notification carries.
pub const PREVIEW_CHARS: usize = 100;
const QUEUE: usize = 10_000;
const IN_FLIGHT: usize = 16;
const ATTEMPTS: u32 = 5;

pub struct PushGateway {
    tx: Option<mpsc::Sender<Notification>>,
    metrics: Arc<Metrics>,
}

impl PushGateway {
    /// Starts the webhook worker (if `webhook` is set) on the current runtime.
    pub fn start(
        webhook: Option<String>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Self {
        let tx = webhook.map(|url| {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(worker(url, rx, metrics.clone(), shutdown));
            tx
        });
        PushGateway { tx, metrics }
    }

    pub fn notify(&self, n: Notification) {
        Metrics::inc(&self.metrics.push_notifications);
        if let Some(tx) = &self.tx {
            if tx.try_send(n).is_err() {
                Metrics::inc(&self.metrics.push_dropped);
                tracing::warn!("push queue full: notification dropped");
            }
        }
    }
}

/// The first `PREVIEW_CHARS` characters of a text.
pub fn preview(text: &str) -> String {
    text.chars().take(PREVIEW_CHARS).collect()
}

async fn worker(
    url: String,
    mut rx: mpsc::Receiver<Notification>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_default();
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        let n = tokio::select! {
            _ = shutdown.cancelled() => return,
            n = rx.recv() => match n { Some(n) => n, None => return },
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (client, url, metrics) = (client.clone(), url.clone(), metrics.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let mut backoff = Duration::from_millis(50);
            for attempt in 1..=ATTEMPTS {
                match client.post(&url).json(&n).send().await {
                    Ok(r) if r.status().is_success() => {
                        Metrics::inc(&metrics.push_delivered);
                        return;
                    }
                    // A 4xx will not get better by retrying.
                    Ok(r) if r.status().is_client_error() => {
                        tracing::warn!(status = %r.status(), "push webhook refused a notification");
                        break;
                    }
                    Ok(r) => tracing::debug!(attempt, status = %r.status(), "push webhook failed"),
                    Err(e) => tracing::debug!(attempt, cause = %e, "push webhook failed"),
                }
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            Metrics::inc(&metrics.push_failed);
        });
    }
}
