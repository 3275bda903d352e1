//! `loggregator.v2.Ingress` over gRPC with mutual TLS.
//!
//! Every method validates the whole message before accepting any of it (an envelope over the
//! size limit, or one with no message, fails the request with `INVALID_ARGUMENT` naming the
//! envelope), stamps envelopes without a timestamp with the arrival time, and answers only
//! once everything it accepted is durable on the bus.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::AgentConfig;
use futures::StreamExt;
use sluice_common::envelope::validate_envelope;
use sluice_common::shutdown::Shutdown;
use sluice_common::tls::TlsMaterial;
use sluice_common::{ErrorKind, SluiceError};
use sluice_proto::v2::ingress_server::{Ingress, IngressServer};
use sluice_proto::v2::{
    BatchSenderResponse, Envelope, EnvelopeBatch, IngressResponse, SendResponse,
};
use tonic::{Request, Response, Status, Streaming};

use crate::forwarder::{Forwarder, Tenancy, Ticket};
use crate::metrics::AgentMetrics;

const SOURCE: &str = "loggregator";

/// The Loggregator ingress service.
#[derive(Clone)]
pub struct LoggregatorIngress {
    forwarder: Arc<Forwarder>,
    max_envelope_bytes: usize,
    /// Whose envelopes these are when the sender's certificate is not mapped.
    tenancy: Tenancy,
    /// Senders' tenants by their certificate's common name.
    by_certificate: Arc<std::collections::BTreeMap<String, Tenancy>>,
    metrics: AgentMetrics,
}

impl LoggregatorIngress {
    /// An ingress feeding `forwarder`.
    pub fn new(
        forwarder: Arc<Forwarder>,
        config: &AgentConfig,
        metrics: AgentMetrics,
    ) -> LoggregatorIngress {
        LoggregatorIngress {
            forwarder,
            max_envelope_bytes: config.max_envelope_bytes,
            tenancy: config
                .tenant_tag
                .as_deref()
                .map_or_else(Tenancy::default_tenant, |tag| {
                    Tenancy::FromTag(Arc::from(tag))
                }),
            by_certificate: Arc::new(
                config
                    .tenants_by_certificate
                    .iter()
                    .map(|(name, tenant)| {
                        (name.clone(), Tenancy::Fixed(Arc::from(tenant.as_str())))
                    })
                    .collect(),
            ),
            metrics,
        }
    }

    /// Serves on `listen` until `shutdown` fires.
    pub async fn serve(
        self,
        listen: SocketAddr,
        tls: &TlsMaterial,
        max_message_bytes: usize,
        mut shutdown: Shutdown,
    ) -> Result<(), SluiceError> {
        let listener = sluice_common::listen(listen, "loggregator ingress").await?;
        // Refused before the message is read when the agent is full: decoding a request only
        // to refuse it is what a flood costs, and what starved the requests that could be taken.
        let (forwarder, metrics) = (Arc::clone(&self.forwarder), self.metrics.clone());
        let full = move |request: Request<()>| {
            if forwarder.is_full() {
                metrics.request_refused(SOURCE, "agent_full");
                return Err(Status::resource_exhausted(
                    "the agent is full: its pending limits are reached and requests already wait for room up to agent.max_waiting_bytes: retry later",
                ));
            }
            Ok(request)
        };
        let service = tonic::service::interceptor::InterceptedService::new(
            IngressServer::new(self)
                .max_decoding_message_size(max_message_bytes)
                .max_encoding_message_size(max_message_bytes),
            full,
        );
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(
                tls.incoming(listener),
                async move { shutdown.wait().await },
            )
            .await
            .map_err(|error| SluiceError::internal(format!("agent ingress failed: {error}")))
    }

    /// Validates every envelope of one message; on success stamps missing timestamps.
    fn admit(&self, envelopes: &mut [Envelope]) -> Result<(), Status> {
        match admit_envelopes(
            envelopes,
            self.max_envelope_bytes,
            sluice_common::time::now_nanos(),
        ) {
            Ok(()) => {
                self.metrics
                    .envelopes_received
                    .inc_by(envelopes.len() as u64);
                Ok(())
            }
            Err(error) => {
                let reason = if error.kind() == ErrorKind::TooLarge {
                    "too_large"
                } else {
                    "invalid"
                };
                self.metrics.rejected(reason, envelopes.len() as u64);
                Err(error.into())
            }
        }
    }

    /// The tenant of a request: its certificate's, when `agent.tenants_by_certificate` names
    /// it, otherwise the ingress's.
    fn tenancy_of<T>(&self, request: &Request<T>) -> Tenancy {
        if !self.by_certificate.is_empty()
            && let Some(name) = request.peer_certs().and_then(|chain| {
                chain
                    .first()
                    .and_then(|leaf| sluice_common::tls::common_name(leaf))
            })
            && let Some(tenancy) = self.by_certificate.get(&name)
        {
            return tenancy.clone();
        }
        self.tenancy.clone()
    }

    async fn accept(&self, mut envelopes: Vec<Envelope>, ticket: &Ticket) -> Result<(), Status> {
        self.admit(&mut envelopes)?;
        self.forwarder.submit(envelopes, ticket).await
    }
}

/// Checks every envelope of one message against the limits and, only if all pass, stamps
/// those without a timestamp with `now`. All or nothing: a refused message leaves no trace.
pub(super) fn admit_envelopes(
    envelopes: &mut [Envelope],
    max_envelope_bytes: usize,
    now: i64,
) -> Result<(), SluiceError> {
    for (index, envelope) in envelopes.iter().enumerate() {
        validate_envelope(envelope, index, max_envelope_bytes)?;
    }
    for envelope in envelopes.iter_mut() {
        if envelope.timestamp == 0 {
            envelope.timestamp = now;
        }
    }
    Ok(())
}

async fn completed(
    receiver: tokio::sync::oneshot::Receiver<Result<(), Status>>,
) -> Result<(), Status> {
    receiver.await.unwrap_or_else(|_| {
        Err(Status::unavailable(
            "agent stopped before the envelopes were acknowledged",
        ))
    })
}

#[tonic::async_trait]
impl Ingress for LoggregatorIngress {
    async fn sender(
        &self,
        request: Request<Streaming<Envelope>>,
    ) -> Result<Response<IngressResponse>, Status> {
        let (ticket, done) = Ticket::with_tenancy(SOURCE, self.tenancy_of(&request));
        let mut stream = request.into_inner();
        // Envelopes accepted before a bad one stay accepted: they are forwarded either way,
        // and the error tells the client where the stream went wrong.
        let mut outcome = Ok(());
        while let Some(message) = stream.next().await {
            match message {
                Ok(envelope) => {
                    if let Err(status) = self.accept(vec![envelope], &ticket).await {
                        outcome = Err(status);
                        break;
                    }
                }
                Err(status) => {
                    outcome = Err(status);
                    break;
                }
            }
        }
        drop(ticket);
        let delivered = completed(done).await;
        outcome
            .and(delivered)
            .map(|()| Response::new(IngressResponse {}))
    }

    async fn batch_sender(
        &self,
        request: Request<Streaming<EnvelopeBatch>>,
    ) -> Result<Response<BatchSenderResponse>, Status> {
        let (ticket, done) = Ticket::with_tenancy(SOURCE, self.tenancy_of(&request));
        let mut stream = request.into_inner();
        let mut outcome = Ok(());
        while let Some(message) = stream.next().await {
            match message {
                Ok(batch) => {
                    if let Err(status) = self.accept(batch.batch, &ticket).await {
                        outcome = Err(status);
                        break;
                    }
                }
                Err(status) => {
                    outcome = Err(status);
                    break;
                }
            }
        }
        drop(ticket);
        let delivered = completed(done).await;
        outcome
            .and(delivered)
            .map(|()| Response::new(BatchSenderResponse {}))
    }

    async fn send(
        &self,
        request: Request<EnvelopeBatch>,
    ) -> Result<Response<SendResponse>, Status> {
        let (ticket, done) = Ticket::with_tenancy(SOURCE, self.tenancy_of(&request));
        self.accept(request.into_inner().batch, &ticket).await?;
        drop(ticket);
        completed(done).await?;
        Ok(Response::new(SendResponse {}))
    }
}
