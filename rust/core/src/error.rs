//! The one error type of the core; the Python binding maps each variant to its own exception class.
use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CoreError {
    /// A ClickID that is malformed, forged, or signed with an unknown key.
    #[error("invalid click id: {0}")]
    InvalidClickId(&'static str),
    /// A link config that cannot be decoded or would be unsafe to serve.
    #[error("invalid link config: {0}")]
    InvalidLink(String),
    /// A destination URL template that is malformed or unsafe.
    #[error("invalid url template: {0}")]
    InvalidTemplate(String),
    /// Settings given to the core that cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Redis could not be reached or answered with an error.
    #[error("redis unavailable: {0}")]
    Redis(String),
    /// An SQS message body that is not a valid `c1:` pack of click events.
    #[error("invalid message body: {0}")]
    InvalidMessage(String),
    /// The operating system could not supply random bytes.
    #[error("os randomness unavailable: {0}")]
    Entropy(String),
}
