//! History reads: the HTTP side of the load, `GET
//! /v1/channels/{channel}/messages?limit=50`, at a phase's `history_rate`.
//!
//! The scheduler ([`crate::schedule`]) draws the arrivals (Poisson, like the
//! sends) and the reader: a random online user, one of its channels (one of
//! its groups as often as sends go to groups, `group_share`, a dm with a friend
//! otherwise) and one of its device tokens. Half the reads
//! ask for the newest page; the other half are *cold* pages, `before=` a random
//! id below the newest one this reader has seen in that channel (a channel it
//! has not read yet gets its newest page, which teaches it the head). What the
//! server does with one read never delays the next: each read is its own task,
//! and its latency runs from the *scheduled* time to the last byte of the page,
//! parsed.
//!
//! Bounded: at most [`MAX_IN_FLIGHT`] reads wait on the server at once, on the
//! provisioning HTTP client's connection pool; an arrival past that is counted
//! (`history_skipped`) and not issued, rather than queued without bound. Every
//! read ends as a page (`history_reads`) or an error counted by code
//! (`history_` + the server's error code, or `history_http`/`history_timeout`
//! for a transport failure, `history_unfinished` for one the end of the run cut
//! short).

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use reference_server::protocol::{ErrorBody, HistoryResponse};
use tokio::sync::Semaphore;

use crate::engine::recorder::{inc, Metric};
use crate::engine::sim::{lock, Sim};

/// Reads waiting on the server at once; past it an arrival is skipped and counted.
pub const MAX_IN_FLIGHT: usize = 64;
/// Messages per page: the size the app shows, and the criterion benchmarks' page.
pub const PAGE: u32 = 50;

/// Where history is read: the target's HTTP API, through an existing client.
#[derive(Clone)]
pub struct Endpoint {
    pub client: reqwest::Client,
    /// `http://HOST:PORT`, no trailing slash.
    pub base: String,
}

/// One read the scheduler drew.
pub struct Read {
    /// When the open-model schedule wanted it.
    pub sched: Instant,
    pub channel: String,
    pub token: String,
    /// Ask for an older page (`before=`), when the channel's head is known.
    pub cold: bool,
    /// A random number that picks the `before=` id.
    pub pick: u64,
}

/// Issues history reads as their own tasks, at most [`MAX_IN_FLIGHT`] at once.
pub struct Reader {
    sim: Arc<Sim>,
    endpoint: Endpoint,
    permits: Arc<Semaphore>,
    /// Newest message id seen per channel (from newest-page reads).
    heads: Arc<Mutex<HashMap<String, u64>>>,
}

impl Reader {
    pub fn new(sim: Arc<Sim>, endpoint: Endpoint) -> Self {
        Reader {
            sim,
            endpoint,
            permits: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            heads: Arc::default(),
        }
    }

    /// Starts one read, or counts it skipped when [`MAX_IN_FLIGHT`] are waiting.
    pub fn issue(&self, read: Read) {
        let rec = &self.sim.rec;
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            inc(&rec.counters.history_skipped);
            return;
        };
        // `before` is exclusive: 2..=head returns at least one message.
        let before = match lock(&self.heads).get(&read.channel) {
            Some(&head) if read.cold && head >= 2 => Some(2 + read.pick % (head - 1)),
            _ => None,
        };
        let mut url = format!(
            "{}/v1/channels/{}/messages?limit={PAGE}",
            self.endpoint.base, read.channel
        );
        if let Some(b) = before {
            url.push_str(&format!("&before={b}"));
        }
        let (sim, client, heads) = (
            self.sim.clone(),
            self.endpoint.client.clone(),
            self.heads.clone(),
        );
        self.sim.tasks.spawn(async move {
            let _permit = permit;
            let fetch = fetch(&client, &url, &read.token);
            let result = tokio::select! {
                r = fetch => r,
                _ = sim.stop_all.cancelled() => Err("unfinished".to_string()),
            };
            let rec = &sim.rec;
            match result {
                Ok(page) => {
                    rec.record(
                        Metric::HISTORY,
                        rec.clock
                            .now_us()
                            .saturating_sub(rec.clock.unix_us(read.sched)),
                    );
                    inc(&rec.counters.history_reads);
                    rec.counters
                        .history_messages
                        .fetch_add(page.messages.len() as u64, Relaxed);
                    if before.is_none() {
                        if let Some(newest) = page.messages.iter().map(|m| m.id).max() {
                            let mut h = lock(&heads);
                            let e = h.entry(read.channel).or_insert(0);
                            *e = (*e).max(newest);
                        }
                    }
                }
                Err(code) => rec.error(&format!("history_{code}")),
            }
        });
    }
}

/// One GET, read to the end and parsed; the error code on failure.
async fn fetch(
    client: &reqwest::Client,
    url: &str,
    token: &str,
) -> Result<HistoryResponse, String> {
    let transport = |e: reqwest::Error| {
        if e.is_timeout() {
            "timeout".to_string()
        } else {
            "http".to_string()
        }
    };
    let resp = client
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .map_err(transport)?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(transport)?;
    if !status.is_success() {
        return Err(match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(e) => e.error.as_str().to_string(),
            Err(_) => format!("status_{}", status.as_u16()),
        });
    }
    serde_json::from_slice(&body).map_err(|_| "bad_page".to_string())
}
