//! Storage errors, sorted by what the caller should do about them.

use std::time::Duration;

/// A storage backend failed. Every variant is the backend's fault, never the
/// client's: the edge answers them with 503, never with a wrong redirect.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The call did not finish within its budget.
    #[error("{backend} did not answer within {timeout:?}")]
    Timeout {
        backend: &'static str,
        timeout: Duration,
    },
    /// The backend could not be reached or refused the call.
    #[error("{backend} is unavailable: {message}")]
    Unavailable {
        backend: &'static str,
        message: String,
    },
    /// The backend answered, but what was asked for is held by another
    /// transaction that has not finished: retry shortly. Not a failure of
    /// the backend (breakers do not count it).
    #[error("{backend}: {message}")]
    Busy {
        backend: &'static str,
        message: String,
    },
    /// The backend's circuit breaker is open: it failed repeatedly and is
    /// not being called until a probe finds it back ([`crate::breaker`]).
    #[error("{backend} is failing; its circuit breaker is open")]
    CircuitOpen { backend: &'static str },
    /// The backend holds a value this version cannot read.
    #[error("{backend} returned a corrupt value: {message}")]
    Corrupt {
        backend: &'static str,
        message: String,
    },
}

impl StoreError {
    pub fn unavailable(backend: &'static str, err: impl std::fmt::Display) -> Self {
        StoreError::Unavailable {
            backend,
            message: err.to_string(),
        }
    }

    pub fn corrupt(backend: &'static str, err: impl std::fmt::Display) -> Self {
        StoreError::Corrupt {
            backend,
            message: err.to_string(),
        }
    }

    /// A short, fixed label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Timeout { .. } => "timeout",
            StoreError::Unavailable { .. } => "unavailable",
            StoreError::Corrupt { .. } => "corrupt",
            StoreError::CircuitOpen { .. } => "circuit_open",
            StoreError::Busy { .. } => "busy",
        }
    }
}

/// Runs `fut` with a deadline, mapping the elapsed case to [`StoreError::Timeout`].
pub async fn with_timeout<T>(
    backend: &'static str,
    timeout: Duration,
    fut: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(res) => res,
        Err(_) => Err(StoreError::Timeout { backend, timeout }),
    }
}
