//! The backends the conformance suite runs on, each in a fresh namespace: a new
//! in-memory store, a new embedded database in a temp dir, a random Redis key
//! prefix (on one Redis, and on a Redis Cluster), a random PostgreSQL schema;
//! removed again after the property.

use std::future::Future;
use std::sync::Arc;

use reference_server::store::{self, Store};

/// Where a fresh store lives, kept until the property is done, then removed.
enum Namespace {
    None,
    Dir(#[allow(dead_code)] tempfile::TempDir),
    Redis(Arc<store::redis::RedisStore>),
    Postgres(Arc<store::postgres::PostgresStore>),
}

fn unique(tag: &str) -> String {
    format!("t{}_{tag}_{:x}", std::process::id(), rand::random::<u64>())
}

/// The URL of a service from the environment, or `None` (test skipped) when it is
/// not set and services are not required.
pub fn service_url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CHATSCALE_REQUIRE_SERVICES").as_deref() == Ok("1") => {
            panic!("{var} is not set but CHATSCALE_REQUIRE_SERVICES=1 (source .ci/services.sh)")
        }
        _ => {
            eprintln!("skipped: set {var} (or `source .ci/services.sh`) to run this test");
            None
        }
    }
}

/// A fresh, empty store of the named backend and its URL, or `None` if its
/// service is not set up.
async fn fresh(backend: &str, tag: &str) -> Option<(Arc<dyn Store>, Namespace, String)> {
    Some(match backend {
        "memory" => (
            store::open("memory").await.expect("memory"),
            Namespace::None,
            "memory".to_string(),
        ),
        "embedded" => {
            let dir = tempfile::tempdir().expect("temp dir");
            let url = format!("embedded:{}", dir.path().display());
            (
                store::open(&url).await.expect("open embedded"),
                Namespace::Dir(dir),
                url,
            )
        }
        "redis" => {
            let url = format!(
                "{}?prefix={}",
                service_url("CHATSCALE_REDIS_URL")?,
                unique(tag)
            );
            let s = Arc::new(
                store::redis::RedisStore::open(&url)
                    .await
                    .unwrap_or_else(|e| panic!("redis at {url} unreachable: {e}")),
            );
            (s.clone() as Arc<dyn Store>, Namespace::Redis(s), url)
        }
        "redis_cluster" => {
            let base = service_url("CHATSCALE_REDIS_CLUSTER_URL")?;
            let sep = if base.contains('?') { '&' } else { '?' };
            let url = format!("{base}{sep}prefix={}", unique(tag));
            let s = Arc::new(
                store::redis::RedisStore::open(&url)
                    .await
                    .unwrap_or_else(|e| panic!("redis cluster at {base} unreachable: {e}")),
            );
            (s.clone() as Arc<dyn Store>, Namespace::Redis(s), url)
        }
        "postgres" => {
            let base = service_url("CHATSCALE_POSTGRES_URL")?;
            let schema = unique(tag).to_lowercase();
            let sep = if base.contains('?') { '&' } else { '?' };
            let url = format!("{base}{sep}schema={schema}");
            let s = Arc::new(
                store::postgres::PostgresStore::open(&url)
                    .await
                    .unwrap_or_else(|e| panic!("postgres at {base} unreachable: {e}")),
            );
            (s.clone() as Arc<dyn Store>, Namespace::Postgres(s), url)
        }
        other => panic!("unknown backend {other}"),
    })
}

impl Namespace {
    async fn remove(self) {
        match self {
            Namespace::None | Namespace::Dir(_) => {}
            Namespace::Redis(s) => s.clear().await.expect("clear redis prefix"),
            Namespace::Postgres(s) => s.drop_schema().await.expect("drop schema"),
        }
    }
}

/// Runs one property on a fresh store of `backend`.
pub(super) async fn run<F, Fut>(backend: &str, tag: &str, property: F)
where
    F: FnOnce(Arc<dyn Store>) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some((store, ns, _)) = fresh(backend, tag).await else {
        return;
    };
    // The clustered Redis is the same backend as the single one.
    assert_eq!(store.kind(), backend.trim_end_matches("_cluster"));
    assert!(!store.durability().is_empty());
    property(store.clone()).await;
    store.flush().await.expect("flush");
    drop(store);
    ns.remove().await;
}

/// Runs a property on two stores opened on the same namespace, as two server
/// nodes sharing one Redis or PostgreSQL would.
pub(super) async fn run_two_nodes<F, Fut>(backend: &str, tag: &str, property: F)
where
    F: FnOnce(Arc<dyn Store>, Arc<dyn Store>) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some((first, ns, url)) = fresh(backend, tag).await else {
        return;
    };
    let second = store::open(&url)
        .await
        .expect("a second node on the same store");
    property(first.clone(), second.clone()).await;
    drop((first, second));
    ns.remove().await;
}

/// Runs a property on a fresh Redis store (`redis` or `redis_cluster`) with a
/// plain client on the same Redis and the store's key prefix, for properties of
/// the keys themselves.
pub(super) async fn run_redis<F, Fut>(backend: &str, tag: &str, property: F)
where
    F: FnOnce(Arc<dyn Store>, fred::clients::Client, String) -> Fut,
    Fut: Future<Output = ()>,
{
    use fred::interfaces::ClientLike;
    let Some((store, ns, url)) = fresh(backend, tag).await else {
        return;
    };
    let (base, prefix) = url.rsplit_once("prefix=").expect("a prefixed url");
    let config = fred::types::config::Config::from_url(base.trim_end_matches(['?', '&']))
        .expect("redis url");
    let client = fred::clients::Client::new(config, None, None, None);
    client.init().await.expect("connect to redis");
    property(store.clone(), client.clone(), prefix.to_string()).await;
    client.quit().await.expect("quit");
    drop(store);
    ns.remove().await;
}

#[tokio::test]
async fn open_rejects_bad_urls() {
    assert!(matches!(
        store::open("mysql://x").await,
        Err(store::OpenError::Unknown(_))
    ));
    assert!(matches!(
        store::open("embedded:").await,
        Err(store::OpenError::Failed { .. })
    ));
}

#[tokio::test]
async fn embedded_keeps_data_across_reopen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("embedded:{}", dir.path().display());
    {
        let s = store::open(&url).await.expect("open");
        let u = super::users(&*s, 2).await;
        s.accept(super::msg("dm:1:2", &u, u[0], "a"))
            .await
            .expect("accept");
        s.set_last_active(u[0], 9).await.expect("presence");
        s.flush().await.expect("flush");
    }
    // The writer thread lets go of the file once the last handle is gone.
    let mut tries = 0;
    let s = loop {
        match store::open(&url).await {
            Ok(s) => break s,
            Err(e) if tries > 100 => panic!("reopen failed: {e}"),
            Err(_) => tries += 1,
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(
        s.history("dm:1:2", None, None, 10)
            .await
            .expect("history")
            .len(),
        1
    );
    assert_eq!(s.inbox_head(1).await.expect("head"), 1);
    assert_eq!(
        s.users(&[1]).await.expect("users")[0].last_active_at,
        Some(9)
    );
}
