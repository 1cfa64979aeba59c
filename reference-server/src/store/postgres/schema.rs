//! The PostgreSQL backend's schema, as versioned migrations applied at open.

use super::backend;
use crate::store::{StoreError, StoreResult};

/// Versioned migrations; append, never edit one that has shipped.
const MIGRATIONS: &[&str] = &[include_str!("001_init.sql")];

/// Applies the migrations not yet recorded, one transaction each, under an
/// advisory lock so that concurrent servers do not race.
pub(super) async fn migrate(client: &mut deadpool_postgres::Object) -> StoreResult<()> {
    let txn = client.transaction().await.map_err(backend)?;
    txn.batch_execute(
        "SELECT pg_advisory_xact_lock(7316001);
         CREATE TABLE IF NOT EXISTS schema_migrations (version INT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )
    .await
    .map_err(backend)?;
    let row = txn
        .query_one(
            "SELECT coalesce(max(version), 0) FROM schema_migrations",
            &[],
        )
        .await
        .map_err(backend)?;
    let have: i32 = row.get(0);
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(have as usize) {
        let version = i as i32 + 1;
        txn.batch_execute(sql).await.map_err(backend)?;
        txn.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[&version],
        )
        .await
        .map_err(backend)?;
        tracing::info!(version, "postgres migration applied");
    }
    txn.commit().await.map_err(backend)
}

/// Splits our own `schema=` query parameter off a PostgreSQL URL.
pub(super) fn split_schema(url: &str) -> StoreResult<(String, Option<String>)> {
    let (base, schema) = crate::store::take_query_param(url, "schema");
    if let Some(s) = &schema {
        // It becomes an identifier in `CREATE SCHEMA` and `search_path`: keep it plain.
        let plain = !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !plain {
            return Err(StoreError::Backend(format!(
                "postgres: schema {s:?} must be [a-z0-9_]+"
            )));
        }
    }
    Ok((base, schema))
}
