//! The syslog listeners: TCP (each connection framed by octet counting or newlines, told
//! apart per message), TLS (a TCP connection whose first byte opens a TLS handshake; RFC 5425)
//! and UDP (one message per datagram), all on the same port.
//!
//! TLS presents the agent's node certificate (the one its gRPC hops use, signed by the
//! configured CA: `<data_dir>/tls/ca.pem` by default; re-read when it changes) and takes a
//! client certificate from that CA when one is offered, requiring none: a sender whose
//! certificate `agent.tenants_by_certificate` names sends that tenant's lines.
//!
//! Syslog has no acknowledgements, so messages are forwarded without waiting for the
//! doppler; when the agent's pending limit is reached, reading a TCP connection waits, which
//! pushes back on the sender. A refused message is counted and skipped, the connection goes on;
//! only a frame whose length cannot be read ends the connection (nothing after it can be
//! framed), and a client that goes away mid-message loses only that unfinished message.

use std::sync::Arc;

use crate::config::SyslogSourceConfig;
use sluice_common::SluiceError;
use sluice_common::shutdown::Shutdown;
use sluice_common::tls::TlsMaterial;
use sluice_proto::v2::Envelope;
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use super::parse::{self, Discard, Frame};
use crate::forwarder::{Forwarder, Tenancy, Ticket};
use crate::metrics::AgentMetrics;

const SOURCE: &str = "syslog";

struct Shared {
    forwarder: Arc<Forwarder>,
    tls: TlsMaterial,
    /// Senders' tenants by their client certificate's common name (TLS connections only).
    by_certificate: std::collections::BTreeMap<String, String>,
    metrics: AgentMetrics,
    max_message_bytes: usize,
    default_source_id: String,
}

/// The syslog source.
pub struct SyslogSource {
    config: SyslogSourceConfig,
    shared: Arc<Shared>,
}

impl SyslogSource {
    /// A source feeding `forwarder`.
    pub fn new(
        config: SyslogSourceConfig,
        forwarder: Arc<Forwarder>,
        tls: &TlsMaterial,
        tenants_by_certificate: std::collections::BTreeMap<String, String>,
        metrics: AgentMetrics,
    ) -> Result<SyslogSource, SluiceError> {
        let shared = Arc::new(Shared {
            forwarder,
            tls: tls.clone(),
            by_certificate: tenants_by_certificate,
            metrics,
            max_message_bytes: config.max_message_bytes,
            default_source_id: config.default_source_id.clone(),
        });
        Ok(SyslogSource { config, shared })
    }

    /// Serves TCP and UDP until `shutdown` fires.
    pub async fn serve(self, shutdown: Shutdown) -> Result<(), SluiceError> {
        let listen = self.config.listen;
        let tcp = sluice_common::listen(listen, "syslog source (tcp)").await?;
        let udp = bind_udp(listen).map_err(|error| {
            SluiceError::unavailable(format!(
                "failed to listen on {listen} for the syslog source (udp): {error}"
            ))
        })?;
        info!(listen = %listen, "syslog source (udp) listening");
        let tcp_task = tokio::spawn(serve_tcp(tcp, Arc::clone(&self.shared), shutdown.clone()));
        let udp_task = tokio::spawn(serve_udp(udp, Arc::clone(&self.shared), shutdown));
        let (tcp_result, udp_result) = tokio::join!(tcp_task, udp_task);
        for result in [tcp_result, udp_result] {
            result.map_err(|error| {
                SluiceError::internal(format!("syslog listener failed: {error}"))
            })?;
        }
        Ok(())
    }
}

async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>, mut shutdown: Shutdown) {
    loop {
        tokio::select! {
            () = shutdown.wait() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let shared = Arc::clone(&shared);
                    let connection_shutdown = shutdown.clone();
                    tokio::spawn(async move {
                        if let Err(error) = serve_connection(stream, &shared, connection_shutdown).await {
                            debug!(peer = %peer, error = %error, "syslog connection ended");
                        }
                    });
                }
                Err(error) => {
                    warn!(error = %error, "failed to accept a syslog connection");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// A TLS record starts with content type 22 (handshake); a syslog frame with a digit or `<`.
const TLS_HANDSHAKE: u8 = 0x16;

async fn serve_connection(
    stream: TcpStream,
    shared: &Shared,
    shutdown: Shutdown,
) -> Result<(), String> {
    let mut first = [0_u8; 1];
    let peeked = stream
        .peek(&mut first)
        .await
        .map_err(|error| error.to_string())?;
    if peeked == 1 && first[0] == TLS_HANDSHAKE {
        let acceptor = TlsAcceptor::from(shared.tls.rustls_push());
        let stream = match acceptor.accept(stream).await {
            Ok(stream) => stream,
            Err(error) => {
                shared.metrics.source_refused(SOURCE, "tls_handshake");
                return Err(format!("tls handshake failed: {error}"));
            }
        };
        // A sender whose certificate `agent.tenants_by_certificate` names sends that tenant's
        // lines; any other, the default tenant's.
        let tenancy = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| sluice_common::tls::common_name(leaf))
            .and_then(|name| shared.by_certificate.get(&name))
            .map_or_else(Tenancy::default_tenant, |tenant| {
                Tenancy::Fixed(Arc::from(tenant.as_str()))
            });
        read_connection(stream, shared, &tenancy, shutdown).await
    } else {
        read_connection(stream, shared, &Tenancy::default_tenant(), shutdown).await
    }
}

async fn read_connection<S: AsyncRead + Unpin>(
    mut stream: S,
    shared: &Shared,
    tenancy: &Tenancy,
    mut shutdown: Shutdown,
) -> Result<(), String> {
    let mut buffer: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0_u8; 64 * 1024];
    let mut discard = Discard::Nothing;
    loop {
        let read = tokio::select! {
            () = shutdown.wait() => return Ok(()),
            read = stream.read(&mut chunk) => read.map_err(|error| error.to_string())?,
        };
        if read == 0 {
            if !buffer.is_empty() && discard == Discard::Nothing {
                // The last message of a newline-framed stream may lack its newline.
                let last = std::mem::take(&mut buffer);
                if !last.first().is_some_and(u8::is_ascii_digit) {
                    submit(shared, vec![last.as_slice()], tenancy).await;
                } else {
                    shared.metrics.source_refused(SOURCE, "incomplete");
                }
            }
            return Ok(());
        }
        let mut fresh = &chunk[..read];
        // Throw away the rest of a message already refused as too large.
        match discard {
            Discard::Nothing => {}
            Discard::Bytes(left) => {
                let dropped = left.min(fresh.len());
                fresh = &fresh[dropped..];
                discard = if left > dropped {
                    Discard::Bytes(left - dropped)
                } else {
                    Discard::Nothing
                };
            }
            Discard::ToNewline => match fresh.iter().position(|byte| *byte == b'\n') {
                Some(newline) => {
                    fresh = &fresh[newline + 1..];
                    discard = Discard::Nothing;
                }
                None => fresh = &[],
            },
        }
        buffer.extend_from_slice(fresh);
        let mut used = 0;
        let mut messages = Vec::new();
        while discard == Discard::Nothing {
            match parse::next_frame(&buffer[used..], shared.max_message_bytes) {
                Ok(None) => break,
                Ok(Some((Frame::Message(message), length))) => {
                    messages.push(message);
                    used += length;
                }
                Ok(Some((Frame::TooLarge { then }, length))) => {
                    shared.metrics.source_refused(SOURCE, "too_large");
                    used += length;
                    discard = then;
                }
                Err(parse::FramingError(reason)) => {
                    shared.metrics.source_refused(SOURCE, "bad_framing");
                    submit(shared, messages, tenancy).await;
                    return Err(reason);
                }
            }
        }
        submit(shared, messages, tenancy).await;
        buffer.drain(..used);
    }
}

/// The UDP receive buffer asked for. A burst larger than the buffer is dropped by the kernel;
/// [`count_kernel_drops`] counts those datagrams. Linux caps the size at `net.core.rmem_max`.
const UDP_RECEIVE_BUFFER_BYTES: usize = 8 * 1024 * 1024;

fn bind_udp(listen: std::net::SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(listen),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    if let Err(error) = socket.set_recv_buffer_size(UDP_RECEIVE_BUFFER_BYTES) {
        warn!(error = %error, "could not enlarge the syslog udp receive buffer");
    }
    socket.set_nonblocking(true)?;
    socket.bind(&listen.into())?;
    UdpSocket::from_std(socket.into())
}

/// The datagrams the kernel dropped at the socket with inode `inode` so far (the `drops`
/// column of `/proc/net/udp` and `udp6`), if Linux says.
fn kernel_drops(inode: u64) -> Option<u64> {
    ["/proc/net/udp", "/proc/net/udp6"]
        .iter()
        .find_map(|table| {
            let text = std::fs::read_to_string(table).ok()?;
            text.lines().skip(1).find_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
                (fields.get(9)?.parse::<u64>().ok()? == inode)
                    .then(|| fields.get(12)?.parse().ok())
                    .flatten()
            })
        })
}

/// The inode of socket `socket`, which names it in `/proc/net/udp`.
fn socket_inode(socket: &UdpSocket) -> Option<u64> {
    use std::os::fd::AsRawFd as _;
    let link = std::fs::read_link(format!("/proc/self/fd/{}", socket.as_raw_fd())).ok()?;
    link.to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Every second, counts the datagrams the kernel dropped because the socket's buffer was full
/// in `sluice_agent_source_records_rejected_total{source="syslog",reason="udp_buffer_full"}`:
/// syslog over UDP has no acknowledgement and no backpressure, so that count is how a loss is
/// seen.
async fn count_kernel_drops(inode: u64, shared: Arc<Shared>, mut shutdown: Shutdown) {
    let mut counted = kernel_drops(inode).unwrap_or(0);
    let mut ticker = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            () = shutdown.wait() => return,
            _ = ticker.tick() => {}
        }
        if let Some(drops) = kernel_drops(inode)
            && drops > counted
        {
            shared
                .metrics
                .source_refused_many(SOURCE, "udp_buffer_full", drops - counted);
            counted = drops;
        }
    }
}

async fn serve_udp(socket: UdpSocket, shared: Arc<Shared>, mut shutdown: Shutdown) {
    if let Some(inode) = socket_inode(&socket) {
        tokio::spawn(count_kernel_drops(
            inode,
            Arc::clone(&shared),
            shutdown.clone(),
        ));
    }
    // One byte more than the limit tells a datagram over it from one exactly at it.
    let size = shared.max_message_bytes.saturating_add(1).min(65_536);
    let mut datagram = vec![0_u8; size];
    loop {
        let received = tokio::select! {
            () = shutdown.wait() => return,
            received = socket.recv_from(&mut datagram) => received,
        };
        // Then everything already queued, so a burst is parsed and forwarded in one go and the
        // socket's buffer (where the kernel drops what does not fit) empties quickly.
        let mut messages: Vec<Vec<u8>> = Vec::new();
        let mut next = received;
        loop {
            match next {
                Ok((length, _peer)) if length > shared.max_message_bytes => {
                    shared.metrics.source_refused(SOURCE, "too_large");
                }
                Ok((length, _peer)) => messages.push(datagram[..length].to_vec()),
                Err(error) => debug!(error = %error, "failed to receive a syslog datagram"),
            }
            if messages.len() >= 1_024 {
                break;
            }
            next = match socket.try_recv_from(&mut datagram) {
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                other => other,
            };
        }
        submit(
            &shared,
            messages.iter().map(Vec::as_slice).collect(),
            &Tenancy::default_tenant(),
        )
        .await;
    }
}

/// Parses and forwards messages; refused ones are counted.
async fn submit(shared: &Shared, messages: Vec<&[u8]>, tenancy: &Tenancy) {
    if messages.is_empty() {
        return;
    }
    let now = sluice_common::time::now_nanos();
    let mut envelopes: Vec<Envelope> = Vec::with_capacity(messages.len());
    for message in messages {
        match parse::parse_message(message, &shared.default_source_id, now) {
            Ok(envelope) => envelopes.push(envelope),
            Err(refused) => {
                debug!(reason = %refused.reason, "refused a syslog message");
                shared.metrics.source_refused(SOURCE, refused.metric);
            }
        }
    }
    if envelopes.is_empty() {
        return;
    }
    let count = envelopes.len() as u64;
    let (ticket, _done) = Ticket::with_tenancy(SOURCE, tenancy.clone());
    // Waiting holds the sender's connection back (TCP backpressure); only shutdown fails.
    match shared.forwarder.submit_waiting(envelopes, &ticket).await {
        Ok(()) => shared.metrics.source_accepted(SOURCE, count),
        Err(status) => {
            shared
                .metrics
                .source_refused_many(SOURCE, "shutting_down", count);
            warn!(error = %status.message(), "syslog messages not forwarded");
        }
    }
}
