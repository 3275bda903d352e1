//! `sluice.v1.DopplerIngress`: agents push numbered batches; each is appended to the bus and
//! acknowledged only once durable.
//!
//! The agent id a batch is stored under is bound to the certificate its agent authenticated
//! with: the doppler prefixes the id the agent claims with a digest of that certificate. So
//! a holder of one certificate cannot pass its batches off as another's (which would make
//! consumers drop the real ones as duplicates), while an agent retrying a batch on another
//! doppler, with the same certificate, still gets the same stored id.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use sluice_bus::Bus;
use sluice_common::{ErrorKind, SluiceError};
use sluice_proto::v1::doppler_ingress_server::DopplerIngress;
use sluice_proto::v1::{AgentBatch, AgentBatchAck};
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status};
use tracing::warn;

use crate::egress::Hub;
use crate::metrics::DopplerMetrics;
use crate::patterns::Patterns;

/// The agent-facing service of a doppler.
pub struct DopplerIngressService {
    bus: Arc<dyn Bus>,
    hub: Arc<Hub>,
    metrics: DopplerMetrics,
    /// Room for batches waiting for the bus, in KiB.
    pending: Arc<Semaphore>,
    pending_kib: u32,
    pending_wait: Duration,
    patterns: Option<Arc<Patterns>>,
    max_batch_envelopes: usize,
}

impl DopplerIngressService {
    /// A service appending to `bus` and publishing to `hub`, with at most `max_pending_bytes`
    /// of batches waiting for the bus and `pending_wait` to wait for room.
    pub fn new(
        bus: Arc<dyn Bus>,
        hub: Arc<Hub>,
        metrics: DopplerMetrics,
        max_pending_bytes: usize,
        pending_wait: Duration,
    ) -> DopplerIngressService {
        let pending_kib =
            u32::try_from(max_pending_bytes.div_ceil(1024).max(1)).unwrap_or(u32::MAX);
        DopplerIngressService {
            bus,
            hub,
            metrics,
            pending: Arc::new(Semaphore::new(pending_kib as usize)),
            pending_kib,
            pending_wait,
            patterns: None,
            max_batch_envelopes: usize::MAX,
        }
    }

    /// Mines the pattern of every log line into its batch ([`Patterns::annotate`]), and
    /// refuses batches of more than `max_batch_envelopes` (which bounds what that adds).
    pub fn with_patterns(
        mut self,
        patterns: Arc<Patterns>,
        max_batch_envelopes: usize,
    ) -> DopplerIngressService {
        self.patterns = Some(patterns);
        self.max_batch_envelopes = max_batch_envelopes;
        self
    }
}

/// Batches with at least this many envelopes are mined on a blocking thread (a few
/// milliseconds of work), smaller ones where they arrive (well under one).
const MINE_INLINE_BELOW: usize = 2_000;

/// The agent id a batch is stored under: `<first 16 bytes of the SHA-256 of the subject of
/// the sender's certificate, hex>/<the id the agent claimed>`, or `unauthenticated/<id>` for a
/// sender without a certificate. The subject, not the whole certificate: a rotated
/// certificate names the same sender, whose batches must keep one id (deduplication and the
/// loss audit go by it).
pub fn bound_agent_id(peer_certificate_der: Option<&[u8]>, claimed: &str) -> String {
    match peer_certificate_der {
        Some(der) => {
            let subject = sluice_common::tls::subject_der(der).unwrap_or_else(|| der.to_vec());
            let digest = ring::digest::digest(&ring::digest::SHA256, &subject);
            let mut bound = String::with_capacity(33 + claimed.len());
            for byte in &digest.as_ref()[..16] {
                bound.push_str(&format!("{byte:02x}"));
            }
            bound.push('/');
            bound.push_str(claimed);
            bound
        }
        None => format!("unauthenticated/{claimed}"),
    }
}

/// Checks what the agent should already have checked: an agent that is not ours may be wrong.
fn validate(batch: &AgentBatch) -> Result<(), Status> {
    if batch.agent_id.is_empty() {
        return Err(Status::invalid_argument("batch has no agent_id"));
    }
    if batch.sequence == 0 {
        return Err(Status::invalid_argument(
            "batch sequence numbers start at 1",
        ));
    }
    if batch.envelopes.is_empty() {
        return Err(Status::invalid_argument("batch holds no envelopes"));
    }
    if let Some(index) = batch
        .envelopes
        .iter()
        .position(|envelope| envelope.message.is_none())
    {
        return Err(Status::invalid_argument(format!(
            "envelope {index} carries no message"
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl DopplerIngress for DopplerIngressService {
    async fn push(&self, request: Request<AgentBatch>) -> Result<Response<AgentBatchAck>, Status> {
        let peer = request
            .peer_certs()
            .and_then(|chain| chain.first().map(|leaf| leaf.as_ref().to_vec()));
        let mut batch = request.into_inner();
        if let Err(status) = validate(&batch) {
            self.metrics.rejected("invalid");
            return Err(status);
        }
        if batch.envelopes.len() > self.max_batch_envelopes {
            self.metrics.rejected("too_many_envelopes");
            return Err(Status::invalid_argument(format!(
                "batch holds {} envelopes; this doppler takes at most {} (doppler.max_batch_envelopes)",
                batch.envelopes.len(),
                self.max_batch_envelopes
            )));
        }
        batch.agent_id = bound_agent_id(peer.as_deref(), &batch.agent_id);
        if let Some(patterns) = &self.patterns {
            if batch.envelopes.len() < MINE_INLINE_BELOW {
                patterns.annotate(&mut batch);
            } else {
                let patterns = Arc::clone(patterns);
                batch = tokio::task::spawn_blocking(move || {
                    patterns.annotate(&mut batch);
                    batch
                })
                .await
                .map_err(|error| Status::internal(format!("pattern mining failed: {error}")))?;
            }
        } else {
            batch.patterns = None;
        }
        let key = batch
            .envelopes
            .first()
            .map(|envelope| envelope.source_id.as_str())
            .unwrap_or_default();
        let payload = Bytes::from(batch.encode_to_vec());
        // Bounded memory while the bus is slow or away: a batch waits for room, then is refused
        // for its agent to retry (here or on another doppler) instead of piling up.
        let kib = u32::try_from(payload.len().div_ceil(1024).max(1))
            .unwrap_or(u32::MAX)
            .min(self.pending_kib);
        let Ok(Ok(_room)) = tokio::time::timeout(
            self.pending_wait,
            Arc::clone(&self.pending).acquire_many_owned(kib),
        )
        .await
        else {
            self.metrics.batches_shed.inc();
            return Err(Status::resource_exhausted(format!(
                "doppler has {} KiB of batches waiting for the bus; retry later or on another doppler",
                self.pending_kib
            )));
        };
        self.metrics.pending_bytes.inc_by(payload.len() as i64);
        let appended = self.bus.append(key, payload.clone()).await;
        self.metrics.pending_bytes.dec_by(payload.len() as i64);
        if let Err(error) = appended {
            // The bus's own kind decides what the agent does: a record the bus can never take
            // is refused for good (the agent gives it up, counted, and tells its clients); a
            // bus that is away is retried.
            let error = SluiceError::from(error);
            if error.kind().is_retryable() {
                self.metrics.append_failures.inc();
            } else {
                self.metrics.rejected(match error.kind() {
                    ErrorKind::TooLarge => "too_large",
                    _ => "invalid",
                });
            }
            warn!(agent_id = %batch.agent_id, sequence = batch.sequence, bytes = payload.len(), error = %error, "failed to append batch to the bus");
            return Err(error.into());
        }
        self.metrics.batches_appended.inc();
        self.metrics
            .envelopes_appended
            .inc_by(batch.envelopes.len() as u64);
        let sequence = batch.sequence;
        self.hub.publish(&batch.envelopes);
        Ok(Response::new(AgentBatchAck { sequence }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_bus::{BusError, Consumer};
    use sluice_common::telemetry::Telemetry;
    use sluice_proto::v2::{Envelope, Log, envelope};

    /// A bus for these tests: it keeps what is appended, and while `stalled` each append
    /// first waits until released (a broker that is away).
    #[derive(Default)]
    struct TestBus {
        stalled: Option<tokio::sync::Notify>,
        appended: std::sync::Mutex<Vec<Bytes>>,
    }

    #[async_trait::async_trait]
    impl Bus for TestBus {
        async fn append(&self, _key: &str, payload: Bytes) -> Result<(), BusError> {
            if let Some(stalled) = &self.stalled {
                stalled.notified().await;
            }
            self.appended.lock().expect("lock").push(payload);
            Ok(())
        }
        async fn subscribe(
            &self,
            _group: &str,
            _member: &str,
            _sharing: sluice_bus::Sharing,
        ) -> Result<Box<dyn Consumer>, BusError> {
            Err(BusError::Invalid("not in this test".into()))
        }
        fn kind(&self) -> &'static str {
            "test"
        }
    }

    /// Regression: any certificate from the CA could claim any agent id, so a holder of one
    /// could make the consumers drop another agent's real batch as a duplicate. Two agents
    /// with certificates of different subjects claiming the same id and sequence are stored
    /// under different ids; the same agent sending the same batch twice (a retry) keeps its
    /// id, and so does the agent once its certificate is rotated (same subject, new key).
    #[tokio::test]
    async fn regression_agent_ids_are_bound_to_the_sender_certificate() {
        use sluice_common::tls::authority::LocalCa;
        use sluice_proto::v1::doppler_ingress_client::DopplerIngressClient;
        use sluice_proto::v1::doppler_ingress_server::DopplerIngressServer;
        use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().expect("temp dir");
        let paths = sluice_common::tls::ensure_local_ca(&dir.path().join("tls")).expect("ca");
        let ca = LocalCa::at(&dir.path().join("tls"));
        let read = |path: &std::path::Path| std::fs::read_to_string(path).expect("pem");
        let ca_pem = read(&paths.ca_cert);
        let genuine_pair = (read(&paths.cert), read(&paths.key));
        let impostor_pair = ca
            .issue("impostor", &["localhost".to_owned()], &[])
            .expect("impostor");
        ca.rotate_node().expect("rotate");
        let rotated_pair = (read(&paths.cert), read(&paths.key));
        assert_ne!(rotated_pair, genuine_pair);
        let telemetry = Telemetry::new();
        let metrics = DopplerMetrics::register(&telemetry);
        let bus = Arc::new(TestBus::default());
        let service = DopplerIngressService::new(
            Arc::clone(&bus) as Arc<dyn Bus>,
            Arc::new(Hub::new(4, metrics.clone())),
            metrics,
            1 << 20,
            Duration::from_secs(1),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let server_tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(&genuine_pair.0, &genuine_pair.1))
            .client_ca_root(Certificate::from_pem(&ca_pem));
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .tls_config(server_tls)
                .expect("tls")
                .add_service(DopplerIngressServer::new(service))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let client = |(cert, key): &(String, String)| {
            let tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&ca_pem))
                .identity(Identity::from_pem(cert, key))
                .domain_name("localhost");
            let endpoint = tonic::transport::Endpoint::from_shared(format!("https://{address}"))
                .expect("endpoint")
                .tls_config(tls)
                .expect("tls");
            DopplerIngressClient::new(endpoint.connect_lazy())
        };
        let mut genuine = client(&genuine_pair);
        let mut impostor = client(&impostor_pair);
        let mut rotated = client(&rotated_pair);
        genuine.push(batch(7)).await.expect("genuine batch");
        impostor.push(batch(7)).await.expect("impostor batch");
        genuine.push(batch(7)).await.expect("genuine retry");
        rotated.push(batch(8)).await.expect("after rotation");
        let stored: Vec<String> = bus
            .appended
            .lock()
            .expect("lock")
            .iter()
            .map(|payload| {
                AgentBatch::decode(payload.as_ref())
                    .expect("batch")
                    .agent_id
            })
            .collect();
        assert_eq!(stored.len(), 4);
        assert_ne!(stored[0], stored[1], "{stored:?}");
        assert_eq!(stored[0], stored[2], "{stored:?}");
        assert_eq!(stored[0], stored[3], "{stored:?}");
        for id in &stored {
            assert!(id.ends_with("/agent") && id.len() == 32 + 1 + 5, "{id}");
        }
        server.abort();
    }

    fn batch(sequence: u64) -> AgentBatch {
        AgentBatch {
            agent_id: "agent".into(),
            sequence,
            envelopes: vec![Envelope {
                message: Some(envelope::Message::Log(Log {
                    payload: vec![b'x'; 1_500],
                    r#type: 0,
                })),
                ..Default::default()
            }],
            patterns: None,
        }
    }

    /// While the bus is away, batches wait within `max_pending_bytes`; past it one is refused
    /// with RESOURCE_EXHAUSTED (which agents retry) and counted, and memory stays bounded.
    #[tokio::test]
    async fn batches_past_the_pending_limit_are_refused_and_counted_while_the_bus_is_away() {
        let telemetry = Telemetry::new();
        let metrics = DopplerMetrics::register(&telemetry);
        let bus = Arc::new(TestBus {
            stalled: Some(tokio::sync::Notify::new()),
            ..TestBus::default()
        });
        let hub = Arc::new(Hub::new(4, metrics.clone()));
        let service = Arc::new(DopplerIngressService::new(
            Arc::clone(&bus) as Arc<dyn Bus>,
            hub,
            metrics,
            4 * 1024,
            Duration::from_millis(100),
        ));
        // Two batches of 2 KiB fill the 4 KiB of room and wait for the bus.
        let waiting: Vec<_> = (1..=2)
            .map(|sequence| {
                let service = Arc::clone(&service);
                tokio::spawn(async move { service.push(Request::new(batch(sequence))).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let refused = service
            .push(Request::new(batch(3)))
            .await
            .expect_err("no room");
        assert_eq!(
            refused.code(),
            tonic::Code::ResourceExhausted,
            "{refused:?}"
        );
        let text = telemetry.encode();
        assert!(
            text.contains("sluice_doppler_batches_shed_total 1"),
            "{text}"
        );
        // What waits is the batch as stored, under its bound agent id.
        let mut stored = batch(1);
        stored.agent_id = bound_agent_id(None, &stored.agent_id);
        let waiting_bytes = 2 * stored.encoded_len();
        assert!(
            text.contains(&format!("sluice_doppler_pending_bytes {waiting_bytes}\n")),
            "{text}"
        );
        // The bus comes back: the waiting batches are acknowledged.
        if let Some(stalled) = &bus.stalled {
            stalled.notify_waiters();
        }
        for handle in waiting {
            handle.await.expect("join").expect("acknowledged");
        }
    }
}
