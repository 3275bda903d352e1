//! The gRPC clients' connector: TCP, then a TLS handshake with the client configuration in
//! force at that moment, so a reconnection after a rotation presents the new certificate and
//! trusts the new CA bundle.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::TlsMaterial;
use crate::error::SluiceError;

/// Connects to a `http://host:port` URI over TLS (tonic's own TLS is not used).
#[derive(Clone)]
pub(super) struct TlsConnector {
    tls: TlsMaterial,
    server_name: ServerName<'static>,
}

impl TlsConnector {
    pub(super) fn new(tls: TlsMaterial, setting: &str) -> Result<TlsConnector, SluiceError> {
        let server_name = ServerName::try_from(tls.server_name().to_owned()).map_err(|error| {
            SluiceError::invalid(format!(
                "{setting}: the tls server name {:?} is not a DNS name or address: {error}",
                tls.server_name()
            ))
        })?;
        Ok(TlsConnector { tls, server_name })
    }
}

type Connecting =
    Pin<Box<dyn Future<Output = Result<TokioIo<TlsStream<TcpStream>>, std::io::Error>> + Send>>;

impl tower_service::Service<tonic::codegen::http::Uri> for TlsConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: tonic::codegen::http::Uri) -> Self::Future {
        let config = self.tls.rustls_client();
        let server_name = self.server_name.clone();
        Box::pin(async move {
            let host = uri.host().ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "the address has no host")
            })?;
            let port = uri.port_u16().unwrap_or(443);
            let stream = TcpStream::connect(format!("{host}:{port}")).await?;
            stream.set_nodelay(true)?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(server_name, stream)
                .await?;
            Ok(TokioIo::new(stream))
        })
    }
}
