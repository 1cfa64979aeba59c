//! The chatscale reference chat server, as a library: the binary in `main.rs`,
//! the integration tests and the load generator's embedded mode all start it
//! through [`server::Server`].
//!
//! Map of the modules:
//! - [`protocol`]: wire types, error codes and limits (shared with `loadgen`).
//! - [`config`]: the command line (`Opts`) resolved into a validated [`config::Config`].
//! - [`store`]: the storage trait and its backends.
pub mod config;
pub mod protocol;
pub mod store;
