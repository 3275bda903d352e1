//! A doppler for the agent's own tests: serves `DopplerIngress` over mutual TLS on loopback,
//! refuses the first batches it is told to, holds batches with a line `hold` until released,
//! and keeps the lines of the rest.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use sluice_common::tls::{TlsMaterial, TlsPaths};
use sluice_proto::v1::doppler_ingress_server::{DopplerIngress, DopplerIngressServer};
use sluice_proto::v1::{AgentBatch, AgentBatchAck};
use sluice_proto::v2::envelope;

/// A running test doppler.
pub struct TestDoppler {
    /// Its `host:port`.
    pub address: std::net::SocketAddr,
    /// TLS material signed by the same CA, for the agent side.
    pub tls: TlsMaterial,
    /// What it has kept.
    pub state: Arc<DopplerState>,
    _dir: tempfile::TempDir,
}

/// What the test doppler refuses and keeps.
pub struct DopplerState {
    refuse: AtomicU32,
    /// The log lines of the batches it acknowledged, in order.
    pub lines: Mutex<Vec<String>>,
    /// Whether batches with a line `hold` may be answered.
    released: tokio::sync::watch::Sender<bool>,
    /// Batches received (answered or not).
    pub received: AtomicU32,
}

impl TestDoppler {
    /// Starts a doppler that refuses the first `refuse` batches as invalid.
    pub async fn start(refuse: u32) -> TestDoppler {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().expect("temp dir");
        let certificates = sluice_common::tls::generate_local_ca().expect("certificates");
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write");
            path
        };
        let paths = TlsPaths {
            ca_cert: write("ca.pem", &certificates.ca_cert_pem),
            cert: write("node.pem", &certificates.node_cert_pem),
            key: write("node-key.pem", &certificates.node_key_pem),
        };
        let tls = TlsMaterial::load(&paths, "localhost").expect("tls");
        let state = Arc::new(DopplerState {
            refuse: AtomicU32::new(refuse),
            lines: Mutex::new(Vec::new()),
            released: tokio::sync::watch::Sender::new(false),
            received: AtomicU32::new(0),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(
            tonic::transport::Server::builder()
                .tls_config(tls.server_config())
                .expect("tls")
                .add_service(DopplerIngressServer::from_arc(Arc::clone(&state)))
                .serve_with_incoming(sluice_common::grpc_incoming(listener)),
        );
        TestDoppler {
            address,
            tls,
            state,
            _dir: dir,
        }
    }

    /// Answers the batches held (and every later one with a line `hold`) from now on.
    pub fn release(&self) {
        self.state.released.send_replace(true);
    }

    /// Lines acknowledged so far.
    pub fn line_count(&self) -> usize {
        self.state.lines.lock().expect("lock").len()
    }
}

#[tonic::async_trait]
impl DopplerIngress for DopplerState {
    async fn push(
        &self,
        request: tonic::Request<AgentBatch>,
    ) -> Result<tonic::Response<AgentBatchAck>, tonic::Status> {
        let batch = request.into_inner();
        self.received.fetch_add(1, Ordering::SeqCst);
        let held = batch.envelopes.iter().any(|envelope| {
            matches!(&envelope.message, Some(envelope::Message::Log(log)) if log.payload == b"hold")
        });
        if held {
            let mut released = self.released.subscribe();
            let _ = released.wait_for(|released| *released).await;
        }
        let refused = self
            .refuse
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(1)
            })
            .is_ok();
        if refused {
            return Err(tonic::Status::invalid_argument("refused by this test"));
        }
        let mut lines = self.lines.lock().expect("lock");
        for envelope in &batch.envelopes {
            if let Some(envelope::Message::Log(log)) = &envelope.message {
                lines.push(String::from_utf8_lossy(&log.payload).into_owned());
            }
        }
        Ok(tonic::Response::new(AgentBatchAck {
            sequence: batch.sequence,
        }))
    }
}
