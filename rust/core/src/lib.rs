//! adclick's hot path, free of Python: everything a click needs between the HTTP handler and the 302.
pub mod error;

pub use error::CoreError;
