//! One error type for the harness, with named context (`{context}: {source}`).

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{context}: {source}")]
    Kube {
        context: String,
        #[source]
        source: kube::Error,
    },
    /// A bounded wait ran out; `detail` says what was seen last.
    #[error("{what}: not within {after:?}; {detail}")]
    Timeout {
        what: String,
        after: Duration,
        detail: String,
    },
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `.ctx("doing what")` on io and kube results.
pub trait Context<T> {
    fn ctx(self, context: impl std::fmt::Display) -> Result<T>;
}

impl<T> Context<T> for std::io::Result<T> {
    fn ctx(self, context: impl std::fmt::Display) -> Result<T> {
        self.map_err(|source| Error::Io {
            context: context.to_string(),
            source,
        })
    }
}

impl<T> Context<T> for kube::Result<T> {
    fn ctx(self, context: impl std::fmt::Display) -> Result<T> {
        self.map_err(|source| Error::Kube {
            context: context.to_string(),
            source,
        })
    }
}

impl Error {
    pub fn other(message: impl std::fmt::Display) -> Self {
        Error::Other(message.to_string())
    }
}
