//! Certificates rotated while lines stream through agent → doppler → bus, without a restart:
//! the node certificate, then the CA in Cloud Foundry's three steps (trust old and new, switch
//! the leaf certificates, drop the old CA). Every request succeeds, every line arrives, each
//! listener serves the new certificate to a new TLS client once its files changed, and after
//! the last step a client still holding the old CA's certificate is refused.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use sluice_common::tls::TlsMaterial;
use sluice_proto::v2::EnvelopeBatch;
use sluice_proto::v2::ingress_client::IngressClient;
use sluice_tests::{Sluice, log_envelope, metric_sample, sluice_command};

const LINES: u64 = 50_000;
const PER_REQUEST: u64 = 100;
/// A sender opens a new connection (with the certificates it has re-read) this often.
const REQUESTS_PER_CONNECTION: u64 = 20;

/// The certificate `address` serves to a new TLS client holding `tls`, or the handshake's
/// error.
async fn served(address: &str, tls: &TlsMaterial) -> Result<Vec<u8>, String> {
    let stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(tls.rustls_client());
    let mut stream = connector
        .connect(ServerName::try_from("localhost").unwrap(), stream)
        .await
        .map_err(|error| error.to_string())?;
    // TLS 1.3: the server checks the client's certificate after the client is done; a
    // refusal arrives as an alert on the first read.
    use tokio::io::AsyncReadExt as _;
    let mut byte = [0_u8; 1];
    if let Ok(Err(error)) =
        tokio::time::timeout(Duration::from_millis(300), stream.read(&mut byte)).await
    {
        return Err(error.to_string());
    }
    let (_, session) = stream.get_ref();
    Ok(session.peer_certificates().unwrap()[0].as_ref().to_vec())
}

fn leaf_der(path: &std::path::Path) -> Vec<u8> {
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .as_ref()
        .to_vec()
}

fn certs(data_dir: &std::path::Path, arguments: &[&str]) {
    let arguments: Vec<&str> = std::iter::once("certs")
        .chain(arguments.iter().copied())
        .collect();
    sluice_command(&arguments, Some(data_dir));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_and_the_ca_rotate_under_load_with_no_failed_request_and_no_lost_line() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let sluice = Sluice::start(&data_dir).await;
    let paths = sluice.tls_paths();
    let before = TlsMaterial::load(&paths, "localhost").unwrap();
    let client_tls = TlsMaterial::load(&paths, "localhost").unwrap();

    // The sender: 50,000 lines, 100 a request, a new connection every 20 requests with the
    // certificates re-read from the files (as a client of the data directory would).
    let (sent, mut progress) = tokio::sync::watch::channel(0_u64);
    let sender = {
        let (agent, tls) = (sluice.agent.clone(), client_tls.clone());
        tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut client = None;
            for request in 0..LINES / PER_REQUEST {
                if request % REQUESTS_PER_CONNECTION == 0 {
                    tls.reload().unwrap();
                    let channel = tls.channel(&agent, "test", Duration::from_secs(5)).unwrap();
                    client = Some(IngressClient::new(channel));
                }
                let batch = (0..PER_REQUEST)
                    .map(|n| {
                        log_envelope(
                            "rotation",
                            format!("rotation line {}", request * PER_REQUEST + n),
                        )
                    })
                    .collect();
                if let Err(status) = client.as_mut().unwrap().send(EnvelopeBatch { batch }).await {
                    failures.push(format!("request {request}: {status}"));
                }
                sent.send_modify(|sent| *sent += PER_REQUEST);
            }
            failures
        })
    };
    let reloads = || async {
        metric_sample(
            &sluice.metrics_text().await,
            "sluice_tls_reloads_total{result=\"loaded\"}",
        ) as u64
    };
    let mut served_changes = Vec::new();
    for (step, (arguments, after_lines)) in [
        (vec!["rotate"], 5_000),
        (vec!["rotate-ca", "add"], 15_000),
        (vec!["rotate-ca", "switch"], 25_000),
        (vec!["rotate-ca", "drop"], 35_000),
    ]
    .into_iter()
    .enumerate()
    {
        progress
            .wait_for(|sent| *sent >= after_lines)
            .await
            .unwrap();
        let leaf_before = served(&sluice.agent, &client_tls).await.unwrap();
        certs(&data_dir, &arguments);
        let changed = Instant::now();
        // `sluice up` re-reads its files once per change, within a second.
        sluice
            .wait_for(
                &format!("{arguments:?} taken up"),
                step as u64 + 1,
                Duration::from_secs(10),
                reloads,
            )
            .await;
        client_tls.reload().unwrap();
        // A new TLS client is served the node certificate now on disk, by the agent's
        // ingress and by the doppler.
        let leaf = leaf_der(&paths.cert);
        for address in [&sluice.agent, &sluice.doppler] {
            assert_eq!(
                served(address, &client_tls).await.unwrap(),
                leaf,
                "{arguments:?}: {address} serves the certificate on disk"
            );
        }
        let changed_leaf = leaf != leaf_before;
        assert_eq!(
            changed_leaf,
            matches!(arguments[..], ["rotate"] | ["rotate-ca", "switch"]),
            "{arguments:?}"
        );
        served_changes.push(format!(
            "{}: taken up in {} ms{}",
            arguments.join(" "),
            changed.elapsed().as_millis(),
            if changed_leaf {
                ", new leaf served"
            } else {
                ""
            }
        ));
    }
    // After the old CA is dropped, a client still presenting the first certificate (of the
    // old CA, trusting only it) is refused.
    assert!(served(&sluice.doppler, &before).await.is_err());
    let failures = sender.await.unwrap();
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    sluice
        .wait_for("every line indexed", LINES, Duration::from_secs(60), || {
            sluice.search_total("source_id:rotation")
        })
        .await;
    eprintln!(
        "rotation: {LINES} lines in {} requests, 0 failed, 0 lost; {}",
        LINES / PER_REQUEST,
        served_changes.join("; ")
    );
}
