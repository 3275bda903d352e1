//! Mutual TLS for every gRPC hop: loading PEM files, re-reading them when they change, and
//! creating a local CA on first start.
//!
//! Every Sluice process presents a certificate and checks its peer's against one CA bundle.
//! When no certificates are configured, `sluice up` calls [`ensure_local_ca`] to create a CA
//! and a node certificate (valid for `localhost` and `127.0.0.1`, for both server and client
//! use) in the data directory, so mTLS is on by default rather than an afterthought.
//!
//! Certificates rotate without a restart: [`TlsMaterial::spawn_reloader`] re-reads the files
//! when they change (checked every [`RELOAD_INTERVAL`], at once on [`reload_now`], which the
//! binary calls on `SIGHUP`). Listeners take the configuration current at each handshake
//! (`incoming.rs`) and clients at each new connection (`connector.rs`); connections already
//! open keep theirs. A set that does not load (a certificate and a key that do not belong
//! together, half written) is refused and the previous one stays in force, retried until it
//! loads. The CA file is a bundle: during a CA rotation it holds the old CA and the new one.

pub mod authority;
mod connector;
mod incoming;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use rcgen::{CertifiedIssuer, KeyPair};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::error::SluiceError;

pub use incoming::{TlsIncoming, TlsListener};

/// Where the three PEM files of a node live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPaths {
    /// The CA certificates that peers must be signed by (one or more, PEM).
    pub ca_cert: PathBuf,
    /// This node's certificate chain.
    pub cert: PathBuf,
    /// This node's private key.
    pub key: PathBuf,
}

/// How often the certificate files are checked for a change.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// Wakes every reloader at once (`SIGHUP`).
static RELOAD_NOW: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Asks every [`TlsMaterial`] of this process to re-read its files now.
pub fn reload_now() {
    RELOAD_NOW.notify_waiters();
}

/// The certificates of one node, as last loaded from their files.
#[derive(Clone)]
pub struct TlsMaterial {
    shared: Arc<Shared>,
}

struct Shared {
    paths: TlsPaths,
    server_name: String,
    current: RwLock<Arc<Loaded>>,
    /// The files' modification times and lengths when `current` was read.
    stamp: Mutex<Option<Stamp>>,
}

type Stamp = [(SystemTime, u64); 3];

/// One loaded set: the PEM texts and the rustls configurations built from them.
struct Loaded {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    /// For HTTP listeners: the node's certificate, no client certificate asked (HTTP clients
    /// authenticate with tokens), HTTP/1.1.
    https: Arc<rustls::ServerConfig>,
    /// For gRPC listeners that take any client (OTLP exporters authenticate with tokens):
    /// no client certificate asked, HTTP/2.
    grpc_open: Arc<rustls::ServerConfig>,
    /// For push-only TCP protocols (syslog over TLS): a client certificate from the CA taken
    /// when offered (it names the sender), none required; no session tickets (see
    /// [`TlsMaterial::rustls_push`]).
    push: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("TlsMaterial")
            .field("server_name", &self.shared.server_name)
            .finish_non_exhaustive()
    }
}

/// How often internal gRPC connections are pinged, and how long a ping may go unanswered
/// before the connection is given up; see [`TlsMaterial::channel`].
pub const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(5);

fn stamp_of(paths: &TlsPaths) -> Option<Stamp> {
    let one = |path: &Path| {
        let metadata = std::fs::metadata(path).ok()?;
        Some((metadata.modified().ok()?, metadata.len()))
    };
    Some([one(&paths.ca_cert)?, one(&paths.cert)?, one(&paths.key)?])
}

fn read(path: &Path) -> Result<String, SluiceError> {
    std::fs::read_to_string(path).map_err(|error| {
        SluiceError::invalid(format!(
            "failed to read tls file {}: {error}",
            path.display()
        ))
    })
}

/// The rustls configurations of a set of PEM texts: a server that requires a client
/// certificate from one of the CAs, a client that trusts servers of them, both presenting the
/// node's certificate, both offering HTTP/2.
fn build(ca_pem: String, cert_pem: String, key_pem: String) -> Result<Loaded, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let certificate = certificate.map_err(|error| format!("the CA file: {error}"))?;
        roots
            .add(certificate)
            .map_err(|error| format!("the CA file: {error}"))?;
    }
    if roots.is_empty() {
        return Err("the CA file holds no certificate".to_owned());
    }
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("the certificate file: {error}"))?;
    if chain.is_empty() {
        return Err("the certificate file holds no certificate".to_owned());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|error| format!("the key file: {error}"))?;
    let roots = Arc::new(roots);
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::clone(&roots),
        Arc::clone(&provider),
    )
    .build()
    .map_err(|error| format!("the CA file: {error}"))?;
    let mut server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|error| format!("the certificate and its key: {error}"))?;
    server.alpn_protocols = vec![b"h2".to_vec()];
    let mut client = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?
        .with_root_certificates(Arc::clone(&roots))
        .with_client_auth_cert(chain.clone(), key.clone_key())
        .map_err(|error| format!("the certificate and its key: {error}"))?;
    client.alpn_protocols = vec![b"h2".to_vec()];
    let mut https = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|error| format!("the certificate and its key: {error}"))?;
    https.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut grpc_open = https.clone();
    grpc_open.alpn_protocols = vec![b"h2".to_vec()];
    let optional = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::clone(&roots),
        Arc::clone(&provider),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|error| format!("the CA file: {error}"))?;
    let mut push = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?
        .with_client_cert_verifier(optional)
        .with_single_cert(chain, key)
        .map_err(|error| format!("the certificate and its key: {error}"))?;
    // Syslog senders never read. A TLS 1.3 session ticket sent after the handshake would sit
    // unread in the sender's socket, and closing a socket with unread data sends a reset,
    // which throws away what the sender wrote last before this side read it.
    push.send_tls13_tickets = 0;
    Ok(Loaded {
        ca_pem,
        cert_pem,
        key_pem,
        server: Arc::new(server),
        client: Arc::new(client),
        https: Arc::new(https),
        grpc_open: Arc::new(grpc_open),
        push: Arc::new(push),
    })
}

impl TlsMaterial {
    /// Reads the three PEM files; `server_name` is the name clients expect in servers'
    /// certificates.
    pub fn load(paths: &TlsPaths, server_name: &str) -> Result<TlsMaterial, SluiceError> {
        let stamp = stamp_of(paths);
        let loaded = build(read(&paths.ca_cert)?, read(&paths.cert)?, read(&paths.key)?).map_err(
            |error| {
                SluiceError::invalid(format!(
                    "invalid tls files ({}, {}, {}): {error}",
                    paths.ca_cert.display(),
                    paths.cert.display(),
                    paths.key.display()
                ))
            },
        )?;
        Ok(TlsMaterial {
            shared: Arc::new(Shared {
                paths: paths.clone(),
                server_name: server_name.to_owned(),
                current: RwLock::new(Arc::new(loaded)),
                stamp: Mutex::new(stamp),
            }),
        })
    }

    fn current(&self) -> Arc<Loaded> {
        Arc::clone(
            &self
                .shared
                .current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Re-reads the files if they changed since they were last loaded; `Ok(true)` when a new
    /// set is in force. A set that does not load leaves the previous one in force and is
    /// tried again on the next call.
    pub fn reload(&self) -> Result<bool, SluiceError> {
        let paths = &self.shared.paths;
        let stamp = stamp_of(paths);
        let mut last = self
            .shared
            .stamp
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if stamp.is_some() && stamp == *last {
            return Ok(false);
        }
        let loaded = build(read(&paths.ca_cert)?, read(&paths.cert)?, read(&paths.key)?)
            .map_err(SluiceError::invalid)?;
        *self
            .shared
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(loaded);
        *last = stamp;
        Ok(true)
    }

    /// Re-reads the files whenever they change, for as long as this material (or a clone of
    /// it) is in use, counting into `telemetry` (`sluice_tls_reloads_total{result}`: `loaded`,
    /// `refused`). Needs a Tokio runtime.
    pub fn spawn_reloader(&self, telemetry: &crate::telemetry::Telemetry) {
        let reloads = telemetry.register(
            "sluice_tls_reloads",
            "Changes of the certificate files taken up (result: loaded) or refused because the set did not load (result: refused; the previous set stays in force)",
            Family::<Vec<(String, String)>, Counter>::default(),
        );
        let count = move |result: &str| {
            reloads
                .get_or_create(&vec![("result".to_owned(), result.to_owned())])
                .inc();
        };
        let weak: Weak<Shared> = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            let mut complaint: Option<String> = None;
            loop {
                let wake = RELOAD_NOW.notified();
                tokio::select! {
                    () = tokio::time::sleep(RELOAD_INTERVAL) => {}
                    () = wake => {}
                }
                let Some(shared) = weak.upgrade() else {
                    return;
                };
                let material = TlsMaterial { shared };
                let paths = &material.shared.paths;
                match material.reload() {
                    Ok(true) => {
                        count("loaded");
                        complaint = None;
                        tracing::info!(cert = %paths.cert.display(), ca = %paths.ca_cert.display(), "tls certificates reloaded: new connections use them");
                    }
                    Ok(false) => {}
                    Err(error) => {
                        // Once per distinct problem: a file pair mid-rotation is retried each
                        // interval and loads as soon as it is whole.
                        let message = error.message().to_owned();
                        if complaint.as_deref() != Some(message.as_str()) {
                            count("refused");
                            tracing::warn!(%error, "tls certificates changed but do not load; the previous ones stay in force");
                            complaint = Some(message);
                        }
                    }
                }
            }
        });
    }

    /// The server configuration in force now (a client certificate from the CA required).
    pub fn rustls_server(&self) -> Arc<rustls::ServerConfig> {
        Arc::clone(&self.current().server)
    }

    /// The open gRPC server configuration in force now (no client certificate asked).
    pub fn rustls_grpc_open(&self) -> Arc<rustls::ServerConfig> {
        Arc::clone(&self.current().grpc_open)
    }

    /// The server configuration in force now for push-only TCP protocols (syslog): a client
    /// certificate from the CA taken when offered, none required, no session tickets.
    pub fn rustls_push(&self) -> Arc<rustls::ServerConfig> {
        Arc::clone(&self.current().push)
    }

    /// The HTTPS server configuration in force now (no client certificate asked).
    pub fn rustls_https(&self) -> Arc<rustls::ServerConfig> {
        Arc::clone(&self.current().https)
    }

    /// An HTTPS listener over `listener`, each handshake with the certificate in force when
    /// the connection arrived.
    pub fn https_listener(
        &self,
        listener: tokio::net::TcpListener,
    ) -> std::io::Result<TlsListener> {
        TlsListener::new(listener, self.clone())
    }

    /// The client configuration in force now.
    pub fn rustls_client(&self) -> Arc<rustls::ClientConfig> {
        Arc::clone(&self.current().client)
    }

    /// The name clients expect in servers' certificates.
    pub fn server_name(&self) -> &str {
        &self.shared.server_name
    }

    /// The connections `listener` accepts, each through a TLS handshake with the
    /// configuration in force when it arrived, for a gRPC server (Nagle's algorithm off).
    pub fn incoming(&self, listener: tokio::net::TcpListener) -> TlsIncoming {
        TlsIncoming::new(listener, self.clone())
    }

    /// Like [`TlsMaterial::incoming`], asking no client certificate (for gRPC servers whose
    /// clients authenticate otherwise: OTLP exporters).
    pub fn incoming_open(&self, listener: tokio::net::TcpListener) -> TlsIncoming {
        TlsIncoming::open(listener, self.clone())
    }

    /// Server side, as tonic configures it: the certificates as they are now, never re-read.
    /// For servers outside Sluice's own (tests).
    pub fn server_config(&self) -> ServerTlsConfig {
        let current = self.current();
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&current.cert_pem, &current.key_pem))
            .client_ca_root(Certificate::from_pem(&current.ca_pem))
            .client_auth_optional(false)
    }

    /// Client side, as tonic configures it: the certificates as they are now, never re-read.
    /// For one-shot clients (the `sluice` commands, the benchmark's load driver).
    pub fn client_config(&self) -> ClientTlsConfig {
        let current = self.current();
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&current.ca_pem))
            .identity(Identity::from_pem(&current.cert_pem, &current.key_pem))
            .domain_name(self.shared.server_name.clone())
    }

    /// A lazily connecting gRPC channel to `address` (`host:port`) over mutual TLS, each new
    /// connection with the certificates in force when it is made, with a `connect_timeout`.
    /// `setting` names the configuration key the address came from, for the error.
    ///
    /// The connection is pinged every [`KEEPALIVE`] and given up when a ping goes unanswered
    /// for as long: a peer behind a partition sends nothing back, not even a reset, and
    /// without pings every request on the connection would wait out its own deadline (an
    /// agent kept sending half its batches to a partitioned doppler for 30 s each).
    pub fn channel(
        &self,
        address: &str,
        setting: &str,
        connect_timeout: std::time::Duration,
    ) -> Result<tonic::transport::Channel, SluiceError> {
        let connector = connector::TlsConnector::new(self.clone(), setting)?;
        // The scheme is `http`: TLS is the connector's, so tonic adds none of its own.
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .map_err(|error| {
                SluiceError::invalid(format!("{setting}: invalid address {address:?}: {error}"))
            })?
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEPALIVE)
            .keep_alive_timeout(KEEPALIVE)
            .keep_alive_while_idle(true);
        Ok(endpoint.connect_with_connector_lazy(connector))
    }

    /// This node's certificate chain and private key, PEM encoded, as they are now.
    pub fn identity_pem(&self) -> (String, String) {
        let current = self.current();
        (current.cert_pem.clone(), current.key_pem.clone())
    }

    /// The CA certificates, PEM encoded, as they are now.
    pub fn ca_pem(&self) -> String {
        self.current().ca_pem.clone()
    }
}

/// The DER of the subject of the certificate `der`, if it parses.
pub fn subject_der(der: &[u8]) -> Option<Vec<u8>> {
    x509_parser::parse_x509_certificate(der)
        .ok()
        .map(|(_, certificate)| certificate.tbs_certificate.subject.as_raw().to_vec())
}

/// The (first) common name of the subject of the certificate `der`, if it has one.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der).ok()?;
    let name = certificate
        .tbs_certificate
        .subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_owned();
    Some(name)
}

/// A client configuration for HTTPS to Sluice's listeners: trusts the CAs of `ca_pem`, presents
/// no certificate (the `sluice` commands authenticate with tokens).
pub fn https_client(ca_pem: &str) -> Result<rustls::ClientConfig, SluiceError> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let certificate =
            certificate.map_err(|error| SluiceError::invalid(format!("the CA file: {error}")))?;
        roots
            .add(certificate)
            .map_err(|error| SluiceError::invalid(format!("the CA file: {error}")))?;
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|error| SluiceError::internal(error.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

/// Returns the certificate paths under `dir`, creating a CA and a node certificate there first
/// if none exist. Existing files are never overwritten; a half-written set is an error.
pub fn ensure_local_ca(dir: &Path) -> Result<TlsPaths, SluiceError> {
    let paths = TlsPaths {
        ca_cert: dir.join("ca.pem"),
        cert: dir.join("node.pem"),
        key: dir.join("node-key.pem"),
    };
    let present = [&paths.ca_cert, &paths.cert, &paths.key]
        .iter()
        .filter(|path| path.exists())
        .count();
    match present {
        3 => return Ok(paths),
        0 => {}
        _ => {
            return Err(SluiceError::invalid(format!(
                "incomplete certificate set in {}: expected ca.pem, node.pem and node-key.pem; remove the directory to regenerate",
                dir.display()
            )));
        }
    }
    let generated = generate_local_ca().map_err(|error| {
        SluiceError::internal(format!("failed to generate certificates: {error}"))
    })?;
    // Written into a staging directory and renamed into place, so processes starting at the
    // same time on one data directory end up with one CA: the first rename wins and the
    // others use its set.
    let parent = dir.parent().unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(parent).map_err(|error| {
        SluiceError::internal(format!("failed to create {}: {error}", parent.display()))
    })?;
    let staging = parent.join(format!(".tls-staging-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(|error| {
        SluiceError::internal(format!("failed to create {}: {error}", staging.display()))
    })?;
    write_private(&staging.join("ca-key.pem"), &generated.ca_key_pem)?;
    write_private(&staging.join("node-key.pem"), &generated.node_key_pem)?;
    write_private(&staging.join("node.pem"), &generated.node_cert_pem)?;
    write_private(&staging.join("ca.pem"), &generated.ca_cert_pem)?;
    match std::fs::rename(&staging, dir) {
        Ok(()) => Ok(paths),
        Err(_) if paths.ca_cert.exists() => {
            let _ = std::fs::remove_dir_all(&staging);
            Ok(paths)
        }
        Err(error) => {
            let _ = std::fs::remove_dir_all(&staging);
            Err(SluiceError::internal(format!(
                "failed to create the certificates in {}: {error}",
                dir.display()
            )))
        }
    }
}

/// PEM texts of a freshly generated CA and node certificate.
pub struct GeneratedCertificates {
    /// CA certificate.
    pub ca_cert_pem: String,
    /// CA private key (kept so an operator can sign more node certificates).
    pub ca_key_pem: String,
    /// Node certificate, for `localhost` and `127.0.0.1`, server and client use.
    pub node_cert_pem: String,
    /// Node private key.
    pub node_key_pem: String,
}

/// Generates a CA and one node certificate signed by it.
pub fn generate_local_ca() -> Result<GeneratedCertificates, rcgen::Error> {
    let ca_params = authority::ca_params("Sluice local CA")?;
    let ca_key = KeyPair::generate()?;
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key)?;

    let node_params = authority::node_params(
        "sluice node",
        &["localhost".to_owned()],
        &[std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)],
    )?;
    let node_key = KeyPair::generate()?;
    let node_cert = node_params.signed_by(&node_key, &ca)?;
    Ok(GeneratedCertificates {
        ca_cert_pem: ca.pem(),
        ca_key_pem,
        node_cert_pem: node_cert.pem(),
        node_key_pem: node_key.serialize_pem(),
    })
}

/// Writes a file readable by its owner only, atomically (temporary file, then rename).
pub(crate) fn write_private(path: &Path, contents: &str) -> Result<(), SluiceError> {
    use std::os::unix::fs::OpenOptionsExt;
    let temporary = path.with_extension("tmp");
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)?;
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    result.map_err(|error| {
        SluiceError::internal(format!("failed to write {}: {error}", path.display()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_ca_is_created_once_and_then_reused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let tls_dir = dir.path().join("tls");
        let paths = ensure_local_ca(&tls_dir).expect("generate");
        let first = std::fs::read_to_string(&paths.ca_cert).expect("ca");
        assert!(first.contains("BEGIN CERTIFICATE"));
        let again = ensure_local_ca(&tls_dir).expect("reuse");
        assert_eq!(again, paths);
        assert_eq!(std::fs::read_to_string(&paths.ca_cert).expect("ca"), first);
        TlsMaterial::load(&paths, "localhost").expect("load");
    }

    #[test]
    fn an_incomplete_certificate_set_is_an_error_not_a_silent_regeneration() {
        let dir = tempfile::tempdir().expect("temp dir");
        let paths = ensure_local_ca(dir.path()).expect("generate");
        std::fs::remove_file(&paths.key).expect("remove key");
        let error = ensure_local_ca(dir.path()).expect_err("incomplete");
        assert!(
            error.message().contains("incomplete certificate set"),
            "{error}"
        );
    }
}
