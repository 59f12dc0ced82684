//! Why admission refuses a call, and when it could come back.

use tokio::time::Instant;

/// Why a call may not go upstream; each maps to one error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A window is full (reject mode) or the projected start is past `max_wait`.
    QuotaExhausted { retry_at: Instant },
    /// As `QuotaExhausted`, but what holds the call is the pause Dastra
    /// ordered with its 429, not the quota.
    UpstreamThrottled { retry_at: Instant },
    /// `max_queue` calls already wait.
    QueueFull { retry_at: Instant },
    /// The proxy is draining and this call could not go in time.
    ShuttingDown,
    /// The shared store is unreachable and `store.on_error = "reject"`.
    StoreUnavailable,
    /// Passthrough already tracks `credential.max_keys` credentials, all busy.
    TooManyKeys { retry_at: Instant },
    /// The client's own window (`[[clients.limits]]`) is full.
    ClientQuotaExhausted { retry_at: Instant },
}

impl Refusal {
    /// When a call refused so could come back: the refusal answers it
    /// itself (as governor's `NotUntil` does), so `Retry-After` is written
    /// from one place for every kind. `None`: no instant would help
    /// (draining, the store unreachable).
    pub fn retry_at(&self) -> Option<Instant> {
        match *self {
            Refusal::QuotaExhausted { retry_at }
            | Refusal::UpstreamThrottled { retry_at }
            | Refusal::QueueFull { retry_at }
            | Refusal::TooManyKeys { retry_at }
            | Refusal::ClientQuotaExhausted { retry_at } => Some(retry_at),
            Refusal::ShuttingDown | Refusal::StoreUnavailable => None,
        }
    }
}
