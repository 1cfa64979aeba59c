//! The reference server's one integration-test binary. Each module is one area:

/// Shared helpers: a real server on port 0, typed HTTP and WebSocket clients.
mod support;
