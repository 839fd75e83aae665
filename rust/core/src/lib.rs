//! adclick's hot path, free of Python: everything a click needs between the HTTP handler and the 302.
pub mod cache;
pub mod clickid;
pub mod error;
pub mod event;
pub mod link;
pub mod replica;
pub mod targeting;
pub mod template;
/// A real redis-server for tests, here and in the crates built on this one (feature `test-support`).
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
pub mod tracker;
pub mod ua;

pub use error::CoreError;
