//! Shared foundations of every Sluice role.
//!
//! # Layout
//!
//! - [`config`]: the one configuration file format, its defaults and validation.
//! - [`envelope`]: helpers over Loggregator envelopes (kinds, payload decoding, time partitions).
//! - [`error`]: the error taxonomy, mapped once to gRPC codes and HTTP statuses.
//! - [`shutdown`]: the signal every long-running task watches.
//! - [`telemetry`]: the Prometheus registry every component registers its metrics in.
//! - [`time`]: calendar arithmetic for hour partitions, without a date library.
//! - [`tls`]: loading certificates and creating a local CA so mTLS is on by default.
#![deny(missing_docs)]

pub mod config;
pub mod envelope;
pub mod error;
pub mod shutdown;
pub mod telemetry;
pub mod time;
pub mod tls;

pub use error::{ErrorKind, SluiceError};

/// Binds a TCP listener for `what` (a role's service, for the log and the error), logging
/// `"<what> listening"` once it is bound.
pub async fn listen(
    address: std::net::SocketAddr,
    what: &str,
) -> Result<tokio::net::TcpListener, SluiceError> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|error| {
            SluiceError::unavailable(format!(
                "failed to listen on {address} for the {what}: {error}"
            ))
        })?;
    tracing::info!(listen = %address, "{what} listening");
    Ok(listener)
}
