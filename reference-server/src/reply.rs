//! Bounded replies: a `sync_batch` or a history page filled up to a byte budget.
//!
//! A message may be 100,000 characters, up to ~600 kB once JSON-escaped, so a
//! page of 100 of them is tens of megabytes: more than the WebSocket write
//! limit, and on every reconnect the same oversized answer would kill the
//! connection again (an inbox that can never be synced). So a page stops at
//! [`REPLY_BUDGET_BYTES`] of encoded messages, always holds at least one, and
//! says `more: true` when it stopped before the end; the client pages on from
//! its last entry (`since` = last `seq` for sync, `after` = last id or
//! `before` = first id for history).
//!
//! Storage is read in chunks sized from the messages seen so far, so a page of
//! large messages never reads hundreds of them into memory at once, and a page of
//! small ones still costs one or two reads.

use std::future::Future;

use crate::protocol::Message;
use crate::store::StoreResult;

pub use crate::protocol::REPLY_BUDGET_BYTES;

/// The first read of a page asks for at most this many entries.
const FIRST_CHUNK: usize = 32;

/// Which way a page runs through its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// From the cursor upwards (sync, history with `after`): chunks come ascending.
    Up,
    /// From the cursor downwards (history's newest page, `before`): chunks come
    /// ascending, and the page takes them from their top.
    Down,
}

/// A page of encoded messages, ascending, and whether more remain past it.
#[derive(Debug, Default)]
pub struct Page {
    pub items: Vec<String>,
    pub more: bool,
}

impl Page {
    /// `{"type":"sync_batch","req":N,"messages":[...],"more":B}`: the same bytes as
    /// serializing [`crate::protocol::ServerFrame::SyncBatch`], without encoding
    /// each message twice.
    pub fn sync_batch_json(&self, req: Option<i64>) -> String {
        let mut out = String::with_capacity(self.bytes() + 64);
        out.push_str(r#"{"type":"sync_batch","#);
        if let Some(r) = req {
            out.push_str(&format!(r#""req":{r},"#));
        }
        self.push_messages(&mut out);
        out
    }

    /// `{"messages":[...],"more":B}`: a history page.
    pub fn history_json(&self) -> String {
        let mut out = String::with_capacity(self.bytes() + 32);
        out.push('{');
        self.push_messages(&mut out);
        out
    }

    fn bytes(&self) -> usize {
        self.items.iter().map(|s| s.len() + 1).sum()
    }

    fn push_messages(&self, out: &mut String) {
        out.push_str(r#""messages":["#);
        for (i, item) in self.items.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(item);
        }
        out.push_str(r#"],"more":"#);
        out.push_str(if self.more { "true" } else { "false" });
        out.push('}');
    }
}

/// Encodes a message for a page: its JSON and its key (`seq` or `id`).
pub fn encode(m: &Message, key: u64) -> (u64, String) {
    (
        key,
        serde_json::to_string(m).expect("messages always serialize"),
    )
}

/// Fills a page of at most `limit` entries and about `budget` bytes (at least one
/// entry, whatever its size). `fetch(cursor, n)` reads up to `n` entries past the
/// cursor (`None`: the caller's own starting point) in ascending key order, each
/// encoded with [`encode`].
pub async fn fill<F, Fut>(
    limit: usize,
    budget: usize,
    order: Order,
    mut fetch: F,
) -> StoreResult<Page>
where
    F: FnMut(Option<u64>, usize) -> Fut,
    Fut: Future<Output = StoreResult<Vec<(u64, String)>>>,
{
    let limit = limit.max(1);
    let mut page = Page::default();
    let mut used = 0usize;
    let mut cursor = None;
    let mut ask = (limit + 1).min(FIRST_CHUNK);
    loop {
        let chunk = fetch(cursor, ask).await?;
        let exhausted = chunk.len() < ask;
        let next_cursor = match order {
            Order::Up => chunk.last().map(|(k, _)| *k),
            Order::Down => chunk.first().map(|(k, _)| *k),
        };
        let entries: Box<dyn Iterator<Item = (u64, String)>> = match order {
            Order::Up => Box::new(chunk.into_iter()),
            Order::Down => Box::new(chunk.into_iter().rev()),
        };
        for (_, item) in entries {
            let full = page.items.len() >= limit
                || (!page.items.is_empty() && used + item.len() + 1 > budget);
            if full {
                page.more = true;
                break;
            }
            used += item.len() + 1;
            page.items.push(item);
        }
        if page.more || exhausted || next_cursor.is_none() {
            break;
        }
        cursor = next_cursor;
        // Size the next read from what the page has seen: as many entries as the
        // rest of the budget holds at the average size so far, plus one to see
        // whether the page ends there.
        let average = (used / page.items.len().max(1)).max(1);
        let room = budget.saturating_sub(used) / average + 1;
        ask = room.min(limit - page.items.len() + 1).max(1);
    }
    if order == Order::Down {
        page.items.reverse();
    }
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Chunk = std::future::Ready<StoreResult<Vec<(u64, String)>>>;

    /// A source of `n` entries with keys 1..=n, each `size` bytes.
    fn source(n: u64, size: usize) -> impl FnMut(Option<u64>, usize) -> Chunk {
        move |cursor, ask| {
            let start = cursor.unwrap_or(0);
            let out = (start + 1..=n)
                .take(ask)
                .map(|k| (k, "x".repeat(size)))
                .collect();
            std::future::ready(Ok(out))
        }
    }

    fn block_on<T>(f: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn small_entries_fill_to_the_limit_and_say_whether_more_remain() {
        let page = block_on(fill(100, 1 << 20, Order::Up, source(150, 10))).unwrap();
        assert_eq!((page.items.len(), page.more), (100, true));
        let page = block_on(fill(100, 1 << 20, Order::Up, source(100, 10))).unwrap();
        assert_eq!((page.items.len(), page.more), (100, false));
        let page = block_on(fill(100, 1 << 20, Order::Up, source(0, 10))).unwrap();
        assert_eq!((page.items.len(), page.more), (0, false));
    }

    #[test]
    fn large_entries_stop_at_the_budget_but_one_always_fits() {
        let page = block_on(fill(100, 1000, Order::Up, source(10, 300))).unwrap();
        assert_eq!((page.items.len(), page.more), (3, true));
        let page = block_on(fill(100, 1000, Order::Up, source(10, 5000))).unwrap();
        assert_eq!((page.items.len(), page.more), (1, true));
        let page = block_on(fill(100, 1000, Order::Up, source(1, 5000))).unwrap();
        assert_eq!((page.items.len(), page.more), (1, false));
    }

    #[test]
    fn pages_serialize_as_the_frames_they_stand_for() {
        let page = Page {
            items: vec![r#"{"a":1}"#.into(), r#"{"b":2}"#.into()],
            more: true,
        };
        assert_eq!(
            page.sync_batch_json(Some(4)),
            r#"{"type":"sync_batch","req":4,"messages":[{"a":1},{"b":2}],"more":true}"#
        );
        assert_eq!(
            Page::default().history_json(),
            r#"{"messages":[],"more":false}"#
        );
    }
}
