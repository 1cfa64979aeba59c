//! Connecting to Redis, one server or a Redis Cluster (fred picks the mode from
//! the URL: `redis://` or `redis-cluster://`), the way both the storage and the
//! cluster module do: fail fast at start, reconnect by themselves later, and never
//! let a command wait forever.

use std::time::Duration;

use fred::prelude::*;

use super::backend;
use crate::store::StoreError;

/// The longest a command waits (for its answer, or for Redis to come back).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects a pool to `redis://...` or `redis-cluster://...` (without our own
/// query parameters), failing fast when nothing answers: the storage and the
/// cluster module both start this way.
pub(crate) async fn connect(url: &str, size: usize) -> Result<Pool, String> {
    let config = Config::from_url(url).map_err(|e| e.to_string())?;
    let pool = Builder::from_config(config)
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(5);
        })
        // A command never waits forever: while Redis is away commands queue for a
        // reconnect, and past this the caller gets a backend error (a send is
        // answered `internal`, never acked).
        .with_performance_config(|p| {
            p.default_command_timeout = COMMAND_TIMEOUT;
        })
        // A dropped connection is re-opened (the first one still fails fast, so a
        // wrong URL or a Redis that is down is reported at start-up).
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
        .build_pool(size)
        .map_err(|e| e.to_string())?;
    pool.init()
        .await
        .map_err(|e| crate::store::unreachable(url, &e))?;
    Ok(pool)
}

/// What an acked write survives on this Redis, in words, from `CONFIG GET`.
pub(super) async fn durability(pool: &Pool) -> String {
    let setting = |name: &'static str| async move {
        let pair: Vec<String> = pool.config_get(name).await.map_err(backend)?;
        Ok::<_, StoreError>(pair.get(1).cloned().unwrap_or_else(|| "?".into()))
    };
    match (setting("appendonly").await, setting("appendfsync").await) {
        (Ok(aof), Ok(fsync)) => {
            let meaning = match (aof.as_str(), fsync.as_str()) {
                ("yes", "always") => "process crash and power loss (AOF fsynced before the reply)",
                ("yes", "everysec") => "process crash; power loss may lose the last second",
                ("yes", _) => "process crash; power loss leaves it to the OS",
                _ => "only what the server's RDB snapshots caught",
            };
            format!("redis appendonly={aof} appendfsync={fsync}: {meaning}")
        }
        (Err(e), _) | (_, Err(e)) => format!("redis: unknown (CONFIG GET failed: {e})"),
    }
}
