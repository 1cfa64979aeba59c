//! The cluster's connection to Redis: a small pool for commands and scripts, the
//! names of every cluster key and pub/sub channel under one namespace, and the
//! cluster's Lua scripts.
//!
//! The namespace is the `?prefix=` of the `--cluster` URL (`cs` by default). Keys
//! carry hash tags like the storage's (`{reg}` for the registry, `{u:ID}` per user,
//! `{n:INSTANCE}` per node instance), so every script's keys share a slot and the
//! same code runs on one Redis or a Redis Cluster. Pub/sub channels ignore the
//! Redis database number, so the prefix is in their names too: two clusters (or
//! two tests) on one Redis never hear each other.

use fred::prelude::*;
use fred::types::scripts::Script;

use crate::protocol::UserId;
use crate::store::redis::scripts::{eval_many, Call};

/// Connections to the commands Redis of the cluster.
const POOL_SIZE: usize = 4;

/// Why joining the cluster failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot join the cluster: {0}")]
    Connect(String),
    #[error("cluster redis: {0}")]
    Redis(String),
    #[error("{0}")]
    Store(String),
}

pub(crate) fn redis_err(e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Redis(e.to_string())
}

/// The cluster's scripts, each documented in its own file under `cluster/`.
struct Scripts {
    register: Script,
    deregister: Script,
    reaped: Script,
    user_state: Script,
    node_users: Script,
}

pub struct Link {
    pub(crate) pool: Pool,
    /// The URL without our `?prefix=`, for the subscriber's own connection.
    pub(crate) url: String,
    prefix: String,
    scripts: Scripts,
}

/// The cluster's scripts, by name.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Lua {
    Register,
    Deregister,
    Reaped,
    UserState,
    NodeUsers,
}

impl Link {
    /// Connects to `redis://...` or `redis-cluster://...` (with an optional
    /// `?prefix=`); fails fast with a plain message when Redis does not answer.
    pub async fn connect(url: &str) -> Result<Link, ClusterError> {
        let (base, prefix) = crate::store::take_query_param(url, "prefix");
        let prefix = prefix.unwrap_or_else(|| "cs".to_string());
        if prefix.contains(['{', '}']) {
            return Err(ClusterError::Connect(
                "--cluster ?prefix= must not contain braces".into(),
            ));
        }
        let pool = crate::store::redis::connect(&base, POOL_SIZE)
            .await
            .map_err(ClusterError::Connect)?;
        let link = Link {
            pool,
            url: base,
            prefix,
            scripts: Scripts {
                register: Script::from_lua(include_str!("register.lua")),
                deregister: Script::from_lua(include_str!("deregister.lua")),
                reaped: Script::from_lua(include_str!("reaped.lua")),
                user_state: Script::from_lua(include_str!("user_state.lua")),
                node_users: Script::from_lua(include_str!("node_users.lua")),
            },
        };
        for s in link.all() {
            s.load(link.client()).await.map_err(redis_err)?;
        }
        Ok(link)
    }

    fn all(&self) -> [&Script; 5] {
        [
            &self.scripts.register,
            &self.scripts.deregister,
            &self.scripts.reaped,
            &self.scripts.user_state,
            &self.scripts.node_users,
        ]
    }

    fn script(&self, lua: Lua) -> &Script {
        match lua {
            Lua::Register => &self.scripts.register,
            Lua::Deregister => &self.scripts.deregister,
            Lua::Reaped => &self.scripts.reaped,
            Lua::UserState => &self.scripts.user_state,
            Lua::NodeUsers => &self.scripts.node_users,
        }
    }

    pub(crate) fn client(&self) -> &Client {
        self.pool.next()
    }

    /// Runs scripts in one pipeline (one round trip per Redis node involved).
    pub(crate) async fn run_many(
        &self,
        calls: Vec<(Lua, Vec<String>, Vec<Value>)>,
    ) -> Result<Vec<Value>, ClusterError> {
        let calls = calls
            .into_iter()
            .map(|(lua, keys, args)| Call {
                script: self.script(lua),
                keys,
                args,
            })
            .collect();
        eval_many(self.client(), calls, &self.all())
            .await
            .map_err(redis_err)
    }

    pub(crate) async fn run(
        &self,
        lua: Lua,
        keys: Vec<String>,
        args: Vec<Value>,
    ) -> Result<Value, ClusterError> {
        let mut replies = self.run_many(vec![(lua, keys, args)]).await?;
        Ok(replies.pop().unwrap_or(Value::Null))
    }

    /// The registry's keys: live nodes (zset instance -> expiry), their
    /// descriptions (hash), nodes to reap (zset instance -> due time), and when
    /// each of those was last seen (hash).
    pub(crate) fn registry_keys(&self) -> Vec<String> {
        ["nodes", "info", "reap", "seen"]
            .iter()
            .map(|part| format!("{}:cl:{{reg}}:{part}", self.prefix))
            .collect()
    }

    /// A user's cluster state (hash): `l:INSTANCE` (connected there), `o:INSTANCE`
    /// (online there, since when), `n` (instances online), `v` (presence epoch).
    pub(crate) fn user_key(&self, user: UserId) -> String {
        format!("{}:cl:{{u:{user}}}", self.prefix)
    }

    /// The users a node instance holds state for (set), for reaping it.
    pub(crate) fn node_users_key(&self, instance: &str) -> String {
        format!("{}:cl:{{n:{instance}}}:users", self.prefix)
    }

    /// The pub/sub channel a node instance listens on.
    pub(crate) fn node_channel(&self, instance: &str) -> String {
        format!("{}:cl:to:{instance}", self.prefix)
    }
}
