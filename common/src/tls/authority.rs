//! The local CA's certificates and their rotation (`sluice certs`), in the directory
//! [`super::ensure_local_ca`] creates: `ca.pem` (the CAs trusted, the signing one first),
//! `ca-key.pem` (the signing CA's key), `node.pem` and `node-key.pem`.
//!
//! A node certificate is rotated in place (`sluice certs rotate`): a new key and certificate
//! from the signing CA; every process re-reads them within [`super::RELOAD_INTERVAL`] and new
//! connections present them. A CA is rotated in three steps, as Cloud Foundry does, each
//! taken once every process trusts what the step before put in place:
//!
//! 1. `add`: a new CA is made; `ca.pem` trusts both (the old one still signs).
//! 2. `switch`: the new CA signs: the node certificate is re-issued by it.
//! 3. `drop`: `ca.pem` trusts the new CA only.
//!
//! No step leaves a process presenting a certificate its peers do not trust, so no
//! connection fails along the way.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

use super::write_private;
use crate::error::SluiceError;

/// The parameters of a CA named `name`.
pub(super) fn ca_params(name: &str) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

/// The parameters of a node certificate for `dns` names and `ips`, for server and client use.
pub(super) fn node_params(
    name: &str,
    dns: &[String],
    ips: &[IpAddr],
) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(dns.to_vec())?;
    params
        .subject_alt_names
        .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    Ok(params)
}

/// Where a CA rotation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaStage {
    /// One CA, trusted and signing.
    Steady,
    /// A new CA is trusted beside the old one, which still signs (after `add`).
    Added,
    /// The new CA signs; the old one is still trusted (after `switch`).
    Switched,
}

/// The files of one local CA directory.
#[derive(Debug, Clone)]
pub struct LocalCa {
    dir: PathBuf,
}

fn failed(what: &str, error: impl std::fmt::Display) -> SluiceError {
    SluiceError::internal(format!("{what}: {error}"))
}

fn read(path: &Path) -> Result<String, SluiceError> {
    std::fs::read_to_string(path).map_err(|error| {
        SluiceError::invalid(format!(
            "failed to read {}: {error} (is this the directory `sluice up` made, <data_dir>/tls?)",
            path.display()
        ))
    })
}

/// The PEM blocks of the certificates in `pem`, each re-encoded.
fn certificates(pem: &str) -> Result<Vec<String>, SluiceError> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|certificate| {
            let certificate = certificate.map_err(|error| failed("a CA certificate", error))?;
            Ok(pem_block(&certificate))
        })
        .collect()
}

fn pem_block(certificate: &CertificateDer<'_>) -> String {
    use base64::Engine as _;
    let text = base64::engine::general_purpose::STANDARD.encode(certificate.as_ref());
    let mut armoured = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in text.as_bytes().chunks(64) {
        armoured.push_str(&String::from_utf8_lossy(line));
        armoured.push('\n');
    }
    armoured.push_str("-----END CERTIFICATE-----\n");
    armoured
}

impl LocalCa {
    /// The CA of `dir` (`<data_dir>/tls`).
    pub fn at(dir: &Path) -> LocalCa {
        LocalCa {
            dir: dir.to_path_buf(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Where the rotation stands.
    pub fn stage(&self) -> Result<CaStage, SluiceError> {
        let trusted = certificates(&read(&self.path("ca.pem"))?)?;
        Ok(
            match (trusted.len(), self.path("ca-next-key.pem").exists()) {
                (1, _) => CaStage::Steady,
                (_, true) => CaStage::Added,
                _ => CaStage::Switched,
            },
        )
    }

    /// The signing CA: the first certificate of `ca.pem`, with `ca-key.pem`.
    fn signer(&self) -> Result<Issuer<'static, KeyPair>, SluiceError> {
        let trusted = certificates(&read(&self.path("ca.pem"))?)?;
        let first = trusted
            .first()
            .ok_or_else(|| SluiceError::invalid("ca.pem holds no certificate"))?;
        let key = KeyPair::from_pem(&read(&self.path("ca-key.pem"))?)
            .map_err(|error| failed("ca-key.pem", error))?;
        Issuer::from_ca_cert_pem(first, key).map_err(|error| failed("ca.pem", error))
    }

    /// A node certificate and key signed by the signing CA.
    pub fn issue(
        &self,
        name: &str,
        dns: &[String],
        ips: &[IpAddr],
    ) -> Result<(String, String), SluiceError> {
        let signer = self.signer()?;
        let params = node_params(name, dns, ips).map_err(|error| failed("certificate", error))?;
        let key = KeyPair::generate().map_err(|error| failed("key", error))?;
        let certificate = params
            .signed_by(&key, &signer)
            .map_err(|error| failed("certificate", error))?;
        Ok((certificate.pem(), key.serialize_pem()))
    }

    /// Replaces this directory's node certificate and key with new ones from the signing CA
    /// (for `localhost` and `127.0.0.1`, as the first ones). The key is written first: a
    /// process that reads the new key with the old certificate refuses the pair and reads
    /// again.
    pub fn rotate_node(&self) -> Result<(), SluiceError> {
        let (certificate, key) = self.issue(
            "sluice node",
            &["localhost".to_owned()],
            &[IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)],
        )?;
        write_private(&self.path("node-key.pem"), &key)?;
        write_private(&self.path("node.pem"), &certificate)
    }

    /// Step 1 of a CA rotation: a new CA, trusted beside the old one.
    pub fn add_ca(&self) -> Result<(), SluiceError> {
        if self.stage()? != CaStage::Steady {
            return Err(SluiceError::invalid(
                "a CA rotation is already under way: run `sluice certs rotate-ca switch` or `drop`",
            ));
        }
        let name = format!(
            "Sluice local CA {}",
            crate::time::format_rfc3339_nanos(crate::time::now_nanos())
        );
        let params = ca_params(&name).map_err(|error| failed("CA", error))?;
        let key = KeyPair::generate().map_err(|error| failed("CA key", error))?;
        let key_pem = key.serialize_pem();
        let ca = CertifiedIssuer::self_signed(params, key).map_err(|error| failed("CA", error))?;
        write_private(&self.path("ca-next-key.pem"), &key_pem)?;
        let old = read(&self.path("ca.pem"))?;
        write_private(&self.path("ca.pem"), &format!("{}{}", old, ca.pem()))
    }

    /// Step 2: the new CA signs, and the node certificate is re-issued by it.
    pub fn switch_ca(&self) -> Result<(), SluiceError> {
        if self.stage()? != CaStage::Added {
            return Err(SluiceError::invalid(
                "no new CA to switch to: run `sluice certs rotate-ca add` first",
            ));
        }
        let trusted = certificates(&read(&self.path("ca.pem"))?)?;
        let (old, new) = (&trusted[0], &trusted[trusted.len() - 1]);
        // The new CA first (it signs from now on), the old one still trusted.
        write_private(&self.path("ca.pem"), &format!("{new}{old}"))?;
        let next_key = read(&self.path("ca-next-key.pem"))?;
        std::fs::rename(self.path("ca-key.pem"), self.path("ca-old-key.pem"))
            .map_err(|error| failed("ca-key.pem", error))?;
        write_private(&self.path("ca-key.pem"), &next_key)?;
        std::fs::remove_file(self.path("ca-next-key.pem"))
            .map_err(|error| failed("ca-next-key.pem", error))?;
        self.rotate_node()
    }

    /// Step 3: only the new CA is trusted.
    pub fn drop_ca(&self) -> Result<(), SluiceError> {
        if self.stage()? != CaStage::Switched {
            return Err(SluiceError::invalid(
                "no old CA to drop: a rotation goes add, switch, drop",
            ));
        }
        let trusted = certificates(&read(&self.path("ca.pem"))?)?;
        write_private(&self.path("ca.pem"), &trusted[0])?;
        match std::fs::remove_file(self.path("ca-old-key.pem")) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(failed("ca-old-key.pem", error)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::tls::{TlsMaterial, ensure_local_ca};

    /// Whether a client of `client` completes a handshake with a server of `server`.
    async fn handshake(server: &TlsMaterial, client: &TlsMaterial) -> bool {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(server.rustls_server());
        let served = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            acceptor.accept(stream).await.is_ok()
        });
        let stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let connected = tokio_rustls::TlsConnector::from(client.rustls_client())
            .connect(
                rustls::pki_types::ServerName::try_from("localhost").unwrap(),
                stream,
            )
            .await;
        let accepted = served.await.unwrap();
        // TLS 1.3: the client may finish before the server has checked its certificate.
        connected.is_ok() && accepted
    }

    /// Each step of a CA rotation leaves every pair of processes (one that has re-read the
    /// files, one that has not yet) able to connect both ways, and the certificates re-read
    /// are the new ones.
    #[tokio::test]
    async fn every_step_of_a_rotation_keeps_old_and_new_talking() {
        let dir = tempfile::tempdir().unwrap();
        let tls_dir = dir.path().join("tls");
        let paths = ensure_local_ca(&tls_dir).unwrap();
        let ca = LocalCa::at(&tls_dir);
        assert_eq!(ca.stage().unwrap(), CaStage::Steady);
        let mut before = TlsMaterial::load(&paths, "localhost").unwrap();
        type Step = fn(&LocalCa) -> Result<(), SluiceError>;
        let steps: [(&str, Step, CaStage); 4] = [
            ("rotate", LocalCa::rotate_node, CaStage::Steady),
            ("add", LocalCa::add_ca, CaStage::Added),
            ("switch", LocalCa::switch_ca, CaStage::Switched),
            ("drop", LocalCa::drop_ca, CaStage::Steady),
        ];
        for (name, step, stage) in steps {
            let old_cert = std::fs::read_to_string(&paths.cert).unwrap();
            step(&ca).unwrap();
            assert_eq!(ca.stage().unwrap(), stage, "{name}");
            let after = TlsMaterial::load(&paths, "localhost").unwrap();
            assert!(
                handshake(&before, &after).await,
                "{name}: old server, new client"
            );
            assert!(
                handshake(&after, &before).await,
                "{name}: new server, old client"
            );
            assert!(handshake(&after, &after).await, "{name}: new with new");
            // The old material re-reads the files and is then the new.
            assert!(before.reload().unwrap(), "{name}: a change is seen");
            assert!(!before.reload().unwrap(), "{name}: once");
            if matches!(name, "rotate" | "switch") {
                assert_ne!(std::fs::read_to_string(&paths.cert).unwrap(), old_cert);
                assert_eq!(before.identity_pem().0, after.identity_pem().0, "{name}");
            }
            before = after;
        }
        // Steps out of order are refused, naming the next one.
        assert!(ca.switch_ca().unwrap_err().message().contains("add"));
        assert!(
            ca.drop_ca()
                .unwrap_err()
                .message()
                .contains("add, switch, drop")
        );
    }

    /// A key that does not belong to the certificate (a rotation half written) is refused and
    /// the previous set stays in force; once whole, it loads.
    #[tokio::test]
    async fn a_half_written_pair_is_refused_and_the_old_one_kept() {
        let dir = tempfile::tempdir().unwrap();
        let tls_dir = dir.path().join("tls");
        let paths = ensure_local_ca(&tls_dir).unwrap();
        let material = TlsMaterial::load(&paths, "localhost").unwrap();
        let (certificate, key) = LocalCa::at(&tls_dir)
            .issue("other", &["localhost".to_owned()], &[])
            .unwrap();
        let before = material.identity_pem();
        std::fs::write(&paths.key, &key).unwrap();
        assert!(material.reload().is_err());
        assert_eq!(material.identity_pem(), before);
        assert!(handshake(&material, &material).await);
        std::fs::write(&paths.cert, &certificate).unwrap();
        assert!(material.reload().unwrap());
        assert_eq!(material.identity_pem().0, certificate);
    }
}
