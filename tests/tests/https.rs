//! The HTTP listeners over TLS (`tls = true` on the query API, `_bulk` and OTLP) with the
//! certificates `sluice up` makes: clients that trust the data directory's CA are served,
//! over HTTPS and gRPC with TLS; a client that does not trust it, or speaks plain HTTP, is
//! not; the `sluice` commands use the data directory's CA with no extra flag. And a plaintext
//! listener beyond loopback is refused at start, naming the keys.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use prost::Message as _;
use sluice_proto::opentelemetry::proto::collector::logs::v1::logs_service_client::LogsServiceClient;
use sluice_tests::{Sluice, free_port, otlp_log_request, sluice_binary, sluice_command};

#[test]
fn a_plaintext_listener_beyond_loopback_is_refused_at_start_naming_the_keys() {
    for (section, key) in [
        ("query_api", "listen"),
        ("agent.elasticsearch", "listen"),
        ("agent.otlp", "http_listen"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("sluice.toml");
        std::fs::write(
            &config,
            format!("[{section}]\n{key} = \"0.0.0.0:{}\"\n", free_port()),
        )
        .unwrap();
        let output = std::process::Command::new(sluice_binary())
            .args(["up", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .output()
            .unwrap();
        let complaint = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{section}: started");
        for named in [
            format!("{section}.{key}"),
            format!("{section}.tls"),
            format!("{section}.allow_plaintext"),
        ] {
            assert!(complaint.contains(&named), "{named}: {complaint}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_listeners_serve_tls_with_the_local_ca_to_clients_that_trust_it() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let sluice = Sluice::start_with_config(
        &data_dir,
        "[query_api]\ntls = true\n\n[agent.elasticsearch]\ntls = true\n\n[agent.otlp]\ntls = true\n",
    )
    .await;
    assert!(sluice.api.starts_with("https://"), "{}", sluice.api);
    let trusting = sluice.http_client();
    let ca = std::fs::read_to_string(data_dir.join("tls/ca.pem")).unwrap();

    // A client without the CA, and one speaking plain HTTP, get nothing.
    let stranger = reqwest::Client::new();
    for url in [
        format!("{}/healthz", sluice.api),
        format!("https://{}/", sluice.elasticsearch),
        format!("https://{}/v1/logs", sluice.otlp_http),
    ] {
        assert!(stranger.get(&url).send().await.is_err(), "{url}");
        let plain = url.replacen("https://", "http://", 1);
        let answered = stranger
            .get(&plain)
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        assert!(
            answered.is_err() || !answered.unwrap().status().is_success(),
            "{plain}"
        );
    }

    // `_bulk` over HTTPS.
    let bulk: String = (0..30)
        .map(|n| format!("{{\"index\":{{}}}}\n{{\"message\":\"over https {n}\"}}\n"))
        .collect();
    let response = trusting
        .post(format!("https://{}/secure-app/_bulk", sluice.elasticsearch))
        .header("content-type", "application/x-ndjson")
        .body(bulk)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    // OTLP/HTTP over HTTPS.
    let response = trusting
        .post(format!("https://{}/v1/logs", sluice.otlp_http))
        .header("content-type", "application/x-protobuf")
        .body(otlp_log_request("secure-otlp", "over https otlp").encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    // OTLP/gRPC over TLS, the exporter trusting the CA and presenting no certificate.
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{}", sluice.otlp_grpc))
        .unwrap()
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(&ca))
                .domain_name("localhost"),
        )
        .unwrap()
        .connect()
        .await
        .unwrap();
    LogsServiceClient::new(channel)
        .export(otlp_log_request("secure-grpc", "over https grpc"))
        .await
        .unwrap();

    // The query API over HTTPS, and the `sluice` commands with no extra flag.
    sluice
        .wait_for("indexed", 32, Duration::from_secs(30), || async {
            let body: serde_json::Value = trusting
                .get(format!("{}/api/v1/search", sluice.api))
                .query(&[("query", "over https")])
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            body["total"].as_u64().unwrap_or(0)
        })
        .await;
    let found = sluice_command(
        &[
            "search",
            "\"over https\"",
            "--api",
            &sluice.api,
            "--output",
            "json",
        ],
        Some(&data_dir),
    );
    assert!(found.contains("over https grpc"), "{found}");
}
