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
pub mod failpoint;
pub mod glob;
pub mod shutdown;
pub mod telemetry;
pub mod tenancy;
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

/// The connections `listener` accepts, for a gRPC server, with Nagle's algorithm off.
///
/// Tonic turns it off only for the listeners it binds itself. Left on, a small write after
/// another (an answer's trailers after its headers, the next live envelope of a tail) waits
/// for the peer's delayed acknowledgement, up to 40 ms on Linux: that was most of the live
/// tail's p99 (120 ms at 10,000 envelopes/s, against a p50 of 7 ms).
pub fn grpc_incoming(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// `listener` for an HTTP server, every accepted connection with Nagle's algorithm off (see
/// [`grpc_incoming`]: axum leaves it on too, and an SSE stream writes one small event after
/// another).
pub fn http_nodelay(
    listener: tokio::net::TcpListener,
) -> axum::serve::TapIo<tokio::net::TcpListener, fn(&mut tokio::net::TcpStream)> {
    use axum::serve::ListenerExt as _;
    fn no_delay(stream: &mut tokio::net::TcpStream) {
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "could not turn Nagle's algorithm off on a connection");
        }
    }
    listener.tap_io(no_delay as fn(&mut tokio::net::TcpStream))
}

/// Serves `router` (with each request's peer address, `ConnectInfo<SocketAddr>`) on
/// `listener` until `shutdown` completes: over HTTPS with `tls`'s certificate when given (the
/// one in force at each handshake), plain HTTP otherwise; Nagle's algorithm off either way.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    tls: Option<&tls::TlsMaterial>,
    router: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
    match tls {
        None => {
            axum::serve(http_nodelay(listener), service)
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some(tls) => {
            use axum::serve::ListenerExt as _;
            // Through `tap_io` (doing nothing), for which axum gives `ConnectInfo` the peer's
            // address.
            fn untouched(_: &mut tokio_rustls::server::TlsStream<tokio::net::TcpStream>) {}
            let listener = tls.https_listener(listener)?.tap_io(
                untouched as fn(&mut tokio_rustls::server::TlsStream<tokio::net::TcpStream>),
            );
            axum::serve(listener, service)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}
