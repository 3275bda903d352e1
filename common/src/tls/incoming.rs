//! The TLS connections of a listener: accepted in one task, each handshake in its own (a
//! client that stalls mid-handshake holds up nobody else), with the server configuration in
//! force when the connection arrived. [`TlsIncoming`] feeds a gRPC server (client
//! certificates required), [`TlsListener`] an HTTP one (axum; no client certificate asked).

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;

use super::TlsMaterial;

/// Longest a client may take over its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections whose handshake is done, waiting for the server to take them.
const READY: usize = 64;

/// A stream of the handshaken connections of one listener (ends when the server drops it).
pub struct TlsIncoming {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl TlsIncoming {
    pub(super) fn new(listener: TcpListener, tls: TlsMaterial) -> TlsIncoming {
        TlsIncoming {
            ready: spawn_acceptor(listener, move || tls.rustls_server()),
        }
    }

    pub(super) fn open(listener: TcpListener, tls: TlsMaterial) -> TlsIncoming {
        TlsIncoming {
            ready: spawn_acceptor(listener, move || tls.rustls_grpc_open()),
        }
    }
}

/// An HTTPS listener for axum: the handshaken connections of one TCP listener.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    pub(super) fn new(listener: TcpListener, tls: TlsMaterial) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        Ok(TlsListener {
            ready: spawn_acceptor(listener, move || tls.rustls_https()),
            local,
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accepting task ends only with its listener, which this holds: never.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Accepts on `listener` until the receiver is dropped, handshaking each connection with the
/// configuration `config` gives at its arrival.
fn spawn_acceptor(
    listener: TcpListener,
    config: impl Fn() -> std::sync::Arc<rustls::ServerConfig> + Send + 'static,
) -> mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)> {
    let (sender, ready) = mpsc::channel(READY);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = sender.closed() => return,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::warn!(%error, "failed to accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%error, "could not turn Nagle's algorithm off on a connection");
            }
            let acceptor = tokio_rustls::TlsAcceptor::from(config());
            let sender = sender.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let _ = sender.send((stream, peer)).await;
                    }
                    Ok(Err(error)) => {
                        tracing::debug!(%peer, %error, "tls handshake refused");
                    }
                    Err(_) => tracing::debug!(%peer, "tls handshake timed out"),
                }
            });
        }
    });
    ready
}

impl tokio_stream::Stream for TlsIncoming {
    type Item = Result<TlsStream<TcpStream>, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.ready
            .poll_recv(context)
            .map(|accepted| accepted.map(|(stream, _)| Ok(stream)))
    }
}
