//! The reference server's one integration-test binary. Each module is one area:

/// Shared helpers: a real server on port 0, typed HTTP and WebSocket clients.
mod support;

/// Storage conformance: every backend (memory, embedded, redis, postgres) against
/// the same properties (ids, dedupe, inbox, history, groups, accounts, tokens...).
mod conformance;
