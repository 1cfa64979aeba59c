//! The Redis backend's Lua scripts, and running them: one at a time, or many in
//! one pipeline (one round trip per Redis node involved).
//!
//! Scripts go by SHA (`EVALSHA`). They are loaded into every node at open; a node
//! that forgot them (it restarted) answers `NOSCRIPT`, and then every script is
//! loaded again and the call retried once. Every script here is idempotent or
//! runs before anything was written, so a retried pipeline is safe.
//!
//! The three accept scripts share `dedupe.lua` (the dedupe window's helpers),
//! prepended to each at compile time: Redis has no script includes.

use fred::prelude::*;
use fred::types::scripts::Script;
use fred::types::{ClusterHash, CustomCommand};

use super::backend;
use crate::store::StoreResult;

/// The scripts, each documented in its own file under `store/redis/`.
pub(crate) struct Scripts {
    pub(crate) accept_single: Script,
    pub(crate) accept_channel: Script,
    pub(crate) accept_member: Script,
    pub(crate) accept_finalize: Script,
    pub(crate) history: Script,
    pub(crate) inbox: Script,
    pub(crate) create_group: Script,
    pub(crate) add_member: Script,
    pub(crate) members: Script,
    pub(crate) set_active: Script,
}

/// An accept script: `dedupe.lua`, then the script itself.
macro_rules! accept_script {
    ($file:literal) => {
        Script::from_lua(concat!(include_str!("dedupe.lua"), include_str!($file)))
    };
}

/// One script call: the script, its keys (one slot), its arguments.
pub(crate) struct Call<'a> {
    pub(crate) script: &'a Script,
    pub(crate) keys: Vec<String>,
    pub(crate) args: Vec<Value>,
}

/// `EVALSHA` as a raw command, routed by its first key (argument 2: after the SHA
/// and the key count). fred's pipelines have no `evalsha` of their own.
fn evalsha() -> CustomCommand {
    CustomCommand::new_static("EVALSHA", ClusterHash::Offset(2), false)
}

impl Call<'_> {
    /// `sha numkeys key... arg...`
    fn argv(&self) -> Vec<Value> {
        let mut argv = Vec::with_capacity(2 + self.keys.len() + self.args.len());
        argv.push(Value::from(self.script.sha1().clone()));
        argv.push(Value::from(self.keys.len() as i64));
        argv.extend(self.keys.iter().map(|k| Value::from(k.as_str())));
        argv.extend(self.args.iter().cloned());
        argv
    }
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Scripts {
            accept_single: accept_script!("accept_single.lua"),
            accept_channel: accept_script!("accept_channel.lua"),
            accept_member: accept_script!("accept_member.lua"),
            accept_finalize: Script::from_lua(include_str!("accept_finalize.lua")),
            history: Script::from_lua(include_str!("history.lua")),
            inbox: Script::from_lua(include_str!("inbox.lua")),
            create_group: Script::from_lua(include_str!("create_group.lua")),
            add_member: Script::from_lua(include_str!("add_member.lua")),
            members: Script::from_lua(include_str!("members.lua")),
            set_active: Script::from_lua(include_str!("set_active.lua")),
        }
    }

    fn all(&self) -> [&Script; 10] {
        [
            &self.accept_single,
            &self.accept_channel,
            &self.accept_member,
            &self.accept_finalize,
            &self.history,
            &self.inbox,
            &self.create_group,
            &self.add_member,
            &self.members,
            &self.set_active,
        ]
    }

    /// `SCRIPT LOAD` of every script on every node.
    pub(crate) async fn load(&self, client: &Client) -> StoreResult<()> {
        for script in self.all() {
            script.load(client).await.map_err(backend)?;
        }
        Ok(())
    }

    /// Runs one script.
    pub(crate) async fn run(&self, client: &Client, call: Call<'_>) -> StoreResult<Value> {
        let mut replies = self.run_many(client, vec![call]).await?;
        Ok(replies.pop().unwrap_or(Value::Null))
    }

    /// Runs several scripts in one pipeline; the replies in the order of the calls.
    pub(crate) async fn run_many(
        &self,
        client: &Client,
        calls: Vec<Call<'_>>,
    ) -> StoreResult<Vec<Value>> {
        eval_many(client, calls, &self.all()).await.map_err(backend)
    }
}

/// Runs several scripts in one pipeline (one round trip per node involved); the
/// replies in the order of the calls. A `NOSCRIPT` answer (the node restarted)
/// loads every script of `known` into every node and retries once; any other
/// error fails the whole lot.
pub(crate) async fn eval_many(
    client: &Client,
    calls: Vec<Call<'_>>,
    known: &[&Script],
) -> Result<Vec<Value>, Error> {
    if calls.is_empty() {
        return Ok(Vec::new());
    }
    let mut reloaded = false;
    loop {
        let pipe = client.pipeline();
        for call in &calls {
            let _: () = pipe.custom(evalsha(), call.argv()).await?;
        }
        let results: Vec<Result<Value, Error>> = pipe.try_all().await;
        let noscript = results
            .iter()
            .any(|r| matches!(r, Err(e) if e.details().starts_with("NOSCRIPT")));
        if noscript && !reloaded {
            for script in known {
                script.load(client).await?;
            }
            reloaded = true;
            continue;
        }
        return results.into_iter().collect();
    }
}
