//! The reference server's one integration-test binary. Each module is one area:

/// Shared helpers: a real server on port 0, typed HTTP and WebSocket clients.
mod support;
/// Headless Chromium over WebDriver; the browser tests' skip rule and flags.
mod webdriver;

/// Bounded outbound queues: slow consumers closed with 1008, nothing lost.
mod backpressure;
/// Bad input: error frames, text limits, frame limit (1009).
mod bad_input;
/// WebSocket chat: multi-device 1:1, no echo, idempotency, ordering, sync, groups.
mod chat;
/// HTTP API: accounts, tokens, discovery, friends, groups, history, presence, metrics.
mod http_api;
/// The binary's life cycle: listening line, SIGTERM, flags.
mod lifecycle;
/// Abuse limits: logins/signups per address and username, hashing slots, per-user sends.
mod limits;
/// Presence by heartbeats, pushed to friends.
mod presence;
/// Bulk provisioning: off by default, the operator's token, bounded batches.
mod provision;
/// Push notifications for offline members.
mod push;
/// Bounded replies: big inboxes sync in batches; a client that never reads is closed.
mod replies;
/// TLS: https:// and wss:// with --tls-cert/--tls-key, chat end to end.
mod tls;
/// The web chat page in headless Chromium: two users, a dropped connection, two devices.
mod web_chat;

/// The write path: U+0000 refused, overloaded at once, resends after ambiguous failures.
mod write_path;

/// Storage conformance: every backend (memory, embedded, redis, postgres) against
/// the same properties (ids, dedupe, inbox, history, groups, accounts, tokens...).
mod conformance;
/// Durability: acked messages survive `kill -9` of the server (embedded, redis, postgres).
mod durability;

/// The cluster: node processes over one Redis (delivery, order, presence, push,
/// logout, discovery, SIGTERM, kill -9 failover, PostgreSQL storage).
mod cluster;
