//! adclick's hot path, free of Python: everything a click needs between the HTTP handler and the 302.
pub mod cache;
pub mod clickid;
pub mod error;
pub mod event;
pub mod link;
pub mod targeting;
pub mod template;
#[cfg(test)]
mod testing;
pub mod tracker;
pub mod ua;

pub use error::CoreError;
