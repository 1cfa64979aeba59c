//! Storage backends side by side: the same operations against memory, embedded
//! (redb, fsync per group-commit batch), and Redis / PostgreSQL when
//! `CHATSCALE_REDIS_URL` / `CHATSCALE_POSTGRES_URL` are set (`source .ci/services.sh`).
//!
//! Each backend's group is named `storage/KIND (DURABILITY MODE)`, so a figure is
//! never read without the durability it was bought with. The operations:
//! - `accept_one`: one message into a dm, awaited (one commit, one fsync when durable);
//! - `accept_64_concurrent`: 64 senders at once, each into its own dm (what group
//!   commit is for; throughput is in messages);
//! - `hot_channel_64/lock_across_commit` and `hot_channel_64/ordered_submit`: 64
//!   senders at once into ONE channel, kept in order as the chat service must:
//!   the first holds a channel lock across each accept (how `send` worked
//!   before), the second holds it only to submit and orders the rest by ticket
//!   (`order::Stripe`, how `send` works now), so the channel's messages can
//!   share a group commit;
//! - `history_hot`: the newest page (50) of the channel being written to;
//! - `history_cold`: a page (50) deep in a 2,000-message channel nobody touches;
//! - `inbox_sync`: 100 inbox entries after a cursor;
//! - `dedupe_hit`: a resend of an already accepted `client_msg_id`.
//!
//! Run: `cargo bench -p chatscale-benches --bench storage` (results in docs/storage.md).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use reference_server::protocol::UserId;
use reference_server::store::{self, NewMessage, Store};
use tokio::runtime::Runtime;
use tokio::task::JoinSet;

const SENDERS: usize = 64;
const COLD_MESSAGES: u64 = 2_000;

/// A store under test, its namespace, and what the benches need from its data.
struct Fixture {
    store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
    redis: Option<Arc<store::redis::RedisStore>>,
    postgres: Option<Arc<store::postgres::PostgresStore>>,
    users: Vec<UserId>,
}

fn namespace() -> String {
    format!("bench_{}", std::process::id())
}

async fn open(kind: &str) -> Option<Fixture> {
    let (store, dir, redis, postgres): (Arc<dyn Store>, _, _, _) = match kind {
        "memory" => (store::open("memory").await.ok()?, None, None, None),
        "embedded" => {
            let dir = tempfile::tempdir().ok()?;
            let s = store::open(&format!("embedded:{}", dir.path().display()))
                .await
                .ok()?;
            (s, Some(dir), None, None)
        }
        "redis" => {
            let url = std::env::var("CHATSCALE_REDIS_URL").ok()?;
            let s = store::redis::RedisStore::open(&format!("{url}?prefix={}", namespace()))
                .await
                .expect("redis from CHATSCALE_REDIS_URL");
            let s = Arc::new(s);
            s.clear().await.expect("clear");
            (s.clone() as Arc<dyn Store>, None, Some(s), None)
        }
        "postgres" => {
            let url = std::env::var("CHATSCALE_POSTGRES_URL").ok()?;
            let s = store::postgres::PostgresStore::open(&format!("{url}?schema={}", namespace()))
                .await
                .expect("postgres from CHATSCALE_POSTGRES_URL");
            let s = Arc::new(s);
            (s.clone() as Arc<dyn Store>, None, None, Some(s))
        }
        _ => return None,
    };
    let mut users = Vec::with_capacity(SENDERS + 1);
    for i in 0..=SENDERS {
        users.push(
            store
                .create_user(&format!("bench{i}"), "x")
                .await
                .expect("user"),
        );
    }
    let fixture = Fixture {
        store,
        _dir: dir,
        redis,
        postgres,
        users,
    };
    // The cold channel and a full inbox for user 0, written before any timing.
    let cold = cold_channel(&fixture.users);
    let mut set = JoinSet::new();
    for chunk in 0..(COLD_MESSAGES / 100) {
        let (s, members, cold) = (
            fixture.store.clone(),
            fixture.users[..2].to_vec(),
            cold.clone(),
        );
        set.spawn(async move {
            for i in 0..100 {
                let cmid = format!("cold-{chunk}-{i}");
                s.accept(new_message(&cold, &members, &cmid))
                    .await
                    .expect("fill");
            }
        });
    }
    while let Some(done) = set.join_next().await {
        done.expect("fill task");
    }
    Some(fixture)
}

fn cold_channel(users: &[UserId]) -> String {
    format!("dm:{}:{}", users[0], users[1])
}

fn new_message<'a>(channel: &'a str, members: &'a [UserId], cmid: &'a str) -> NewMessage<'a> {
    NewMessage {
        channel,
        members,
        from: members[0],
        from_device: 1,
        client_msg_id: cmid,
        text: "a benchmark message of about sixty bytes, like a chat line.",
        ts: 1_700_000_000_000,
    }
}

/// One sender's message into the hot channel, owned so a task can take it.
struct HotMessage {
    channel: String,
    members: [UserId; 2],
    cmid: String,
}

impl HotMessage {
    fn message(&self) -> NewMessage<'_> {
        new_message(&self.channel, &self.members, &self.cmid)
    }
}

/// Runs `SENDERS` tasks at once, each sending one message into `hot` with `send`.
async fn hot_senders<F, Fut>(
    fx: &Fixture,
    hot: &str,
    members: [UserId; 2],
    counter: &AtomicU64,
    send: F,
) where
    F: Fn(Arc<dyn Store>, HotMessage) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut set = JoinSet::new();
    for _ in 0..SENDERS {
        let msg = HotMessage {
            channel: hot.to_string(),
            members,
            cmid: format!("hot-{}", counter.fetch_add(1, Ordering::Relaxed)),
        };
        set.spawn(send(fx.store.clone(), msg));
    }
    while let Some(done) = set.join_next().await {
        done.expect("accept task");
    }
}

/// The durability mode in a few words: what `durability()` says before its colon.
fn mode(store: &dyn Store) -> String {
    let d = store.durability();
    d.split(':').next().unwrap_or(&d).trim().to_string()
}

fn bench_backend(c: &mut Criterion, rt: &Runtime, kind: &str) {
    let Some(fx) = rt.block_on(open(kind)) else {
        println!(
            "storage/{kind}: skipped (set CHATSCALE_{}_URL)",
            kind.to_uppercase()
        );
        return;
    };
    println!("storage/{kind}: durability: {}", fx.store.durability());
    let mut group = c.benchmark_group(format!("storage/{kind} ({})", mode(&*fx.store)));
    group.sample_size(20).warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(4));
    let counter = Arc::new(AtomicU64::new(0));
    let hot = format!("dm:{}:{}", fx.users[0], fx.users[2]);
    let hot_members = [fx.users[0], fx.users[2]];

    group.throughput(Throughput::Elements(1));
    group.bench_function("accept_one", |b| {
        b.to_async(rt).iter(|| async {
            let cmid = format!("one-{}", counter.fetch_add(1, Ordering::Relaxed));
            fx.store
                .accept(new_message(&hot, &hot_members, &cmid))
                .await
                .expect("accept");
        })
    });

    group.throughput(Throughput::Elements(SENDERS as u64));
    group.bench_function("accept_64_concurrent", |b| {
        b.to_async(rt).iter(|| async {
            let mut set = JoinSet::new();
            for i in 0..SENDERS {
                let (s, counter) = (fx.store.clone(), counter.clone());
                let members = [fx.users[i + 1], fx.users[0]];
                set.spawn(async move {
                    let channel = format!("dm:{}:{}", members[1], members[0]);
                    let cmid = format!("many-{}", counter.fetch_add(1, Ordering::Relaxed));
                    s.accept(new_message(&channel, &members, &cmid))
                        .await
                        .expect("accept");
                });
            }
            while let Some(done) = set.join_next().await {
                done.expect("accept task");
            }
        })
    });

    // One hot channel: every sender writes to the same dm, in order.
    let old_lock = Arc::new(tokio::sync::Mutex::new(()));
    group.bench_function("hot_channel_64/lock_across_commit", |b| {
        b.to_async(rt).iter(|| {
            hot_senders(&fx, &hot, hot_members, &counter, |s, msg| {
                let lock = old_lock.clone();
                async move {
                    let _order = lock.lock().await;
                    s.accept(msg.message()).await.expect("accept");
                }
            })
        })
    });
    let stripe = Arc::new(reference_server::order::Stripe::default());
    group.bench_function("hot_channel_64/ordered_submit", |b| {
        b.to_async(rt).iter(|| {
            hot_senders(&fx, &hot, hot_members, &counter, |s, msg| {
                let stripe = stripe.clone();
                async move {
                    let (committed, ticket) = stripe
                        .submit(|| s.submit_accept(msg.message()))
                        .await
                        .expect("submit");
                    let accepted = committed.await;
                    let _turn = ticket.wait().await;
                    accepted.expect("accept");
                }
            })
        })
    });

    group.throughput(Throughput::Elements(50));
    group.bench_function("history_hot", |b| {
        b.to_async(rt).iter(|| async {
            let page = fx
                .store
                .history(&hot, None, None, 50)
                .await
                .expect("history");
            assert_eq!(page.len(), 50);
        })
    });
    let cold = cold_channel(&fx.users);
    group.bench_function("history_cold", |b| {
        b.to_async(rt).iter(|| async {
            let page = fx
                .store
                .history(&cold, None, Some(101), 50)
                .await
                .expect("history");
            assert_eq!(page.len(), 50);
        })
    });

    group.throughput(Throughput::Elements(100));
    group.bench_function("inbox_sync", |b| {
        b.to_async(rt).iter(|| async {
            let page = fx
                .store
                .inbox_after(fx.users[1], 500, 100)
                .await
                .expect("inbox");
            assert_eq!(page.len(), 100);
        })
    });

    group.throughput(Throughput::Elements(1));
    group.bench_function("dedupe_hit", |b| {
        b.to_async(rt).iter(|| async {
            let a = fx
                .store
                .accept(new_message(&hot, &hot_members, "one-0"))
                .await
                .expect("dup");
            assert!(a.duplicate);
        })
    });
    group.finish();

    rt.block_on(async {
        if let Some(r) = &fx.redis {
            r.clear().await.expect("clear redis namespace");
        }
        if let Some(p) = &fx.postgres {
            p.drop_schema().await.expect("drop postgres schema");
        }
    });
}

fn storage(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    for kind in ["memory", "embedded", "redis", "postgres"] {
        bench_backend(c, &rt, kind);
    }
}

criterion_group!(benches, storage);
criterion_main!(benches);
