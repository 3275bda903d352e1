//! Mutual TLS for every gRPC hop: loading PEM files, and creating a local CA on first start.
//!
//! Every Sluice process presents a certificate and checks its peer's against one CA. When no
//! certificates are configured, `sluice up` calls [`ensure_local_ca`] to create a CA and a node
//! certificate (valid for `localhost` and `127.0.0.1`, for both server and client use) in the
//! data directory, so mTLS is on by default rather than an afterthought.

use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::error::SluiceError;

/// Where the three PEM files of a node live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPaths {
    /// The CA certificate that peers must be signed by.
    pub ca_cert: PathBuf,
    /// This node's certificate chain.
    pub cert: PathBuf,
    /// This node's private key.
    pub key: PathBuf,
}

/// The certificates of one node, loaded in memory.
#[derive(Clone)]
pub struct TlsMaterial {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
    server_name: String,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("TlsMaterial")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// How often internal gRPC connections are pinged, and how long a ping may go unanswered
/// before the connection is given up; see [`TlsMaterial::endpoint`].
pub const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(5);

impl TlsMaterial {
    /// Reads the three PEM files; `server_name` is the name clients expect in servers' certificates.
    pub fn load(paths: &TlsPaths, server_name: &str) -> Result<TlsMaterial, SluiceError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|error| {
                SluiceError::invalid(format!(
                    "failed to read tls file {}: {error}",
                    path.display()
                ))
            })
        };
        Ok(TlsMaterial {
            ca_pem: read(&paths.ca_cert)?,
            cert_pem: read(&paths.cert)?,
            key_pem: read(&paths.key)?,
            server_name: server_name.to_owned(),
        })
    }

    /// Server side: present our certificate and require a client certificate from our CA.
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
            .client_auth_optional(false)
    }

    /// Client side: present our certificate and trust only servers from our CA.
    pub fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .domain_name(self.server_name.clone())
    }

    /// A lazily connecting gRPC endpoint for `address` (`host:port`) over mutual TLS, with a
    /// `connect_timeout`. `setting` names the configuration key the address came from, for
    /// the error.
    ///
    /// The connection is pinged every [`KEEPALIVE`] and given up when a ping goes unanswered
    /// for as long: a peer behind a partition sends nothing back, not even a reset, and
    /// without pings every request on the connection would wait out its own deadline (an
    /// agent kept sending half its batches to a partitioned doppler for 30 s each).
    pub fn endpoint(
        &self,
        address: &str,
        setting: &str,
        connect_timeout: std::time::Duration,
    ) -> Result<tonic::transport::Endpoint, SluiceError> {
        tonic::transport::Endpoint::from_shared(format!("https://{address}"))
            .map_err(|error| {
                SluiceError::invalid(format!("{setting}: invalid address {address:?}: {error}"))
            })?
            .tls_config(self.client_config())
            .map_err(|error| {
                SluiceError::invalid(format!(
                    "invalid tls configuration: {error}: {}",
                    std::error::Error::source(&error)
                        .map(ToString::to_string)
                        .unwrap_or_default()
                ))
            })
            .map(|endpoint| {
                endpoint
                    .connect_timeout(connect_timeout)
                    .http2_keep_alive_interval(KEEPALIVE)
                    .keep_alive_timeout(KEEPALIVE)
                    .keep_alive_while_idle(true)
            })
    }

    /// This node's certificate chain and private key, PEM encoded, for servers that are not
    /// gRPC (the syslog source's TLS).
    pub fn identity_pem(&self) -> (&str, &str) {
        (&self.cert_pem, &self.key_pem)
    }

    /// The CA certificate, PEM encoded.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }
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
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Sluice local CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate()?;
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key)?;

    let mut node_params = CertificateParams::new(vec!["localhost".to_owned()])?;
    node_params
        .subject_alt_names
        .push(SanType::IpAddress(std::net::IpAddr::V4(
            std::net::Ipv4Addr::LOCALHOST,
        )));
    node_params
        .distinguished_name
        .push(DnType::CommonName, "sluice node");
    node_params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    node_params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
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
fn write_private(path: &Path, contents: &str) -> Result<(), SluiceError> {
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
