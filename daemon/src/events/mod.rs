//! The event hub: interest sets, fan-out, the batched writer and the cross-instance listener.
//! (Being built; this is the interface the rest of the daemon uses.)

use sqlx::PgPool;

use crate::{auth::Auth, metrics::Metrics, settings::EventSettings};

#[derive(Clone)]
pub struct Hub {}

impl Hub {
    /// Starts the writer and the listener on `pool`.
    pub async fn start(
        _pool: PgPool,
        _auth: Auth,
        _settings: EventSettings,
        _metrics: Metrics,
    ) -> anyhow::Result<Self> {
        Ok(Self {})
    }

    /// A hub that is never started (for printing the spec without a database).
    pub fn offline() -> Self {
        Self {}
    }

    /// Stops accepting messages, flushes the writer, closes sockets with 1001.
    pub async fn shutdown(&self) {}
}
