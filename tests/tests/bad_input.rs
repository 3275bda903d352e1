//! Bad input gets a clear status, never a crash, and nothing already accepted is lost.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use sluice_common::tls::{TlsMaterial, TlsPaths};
use sluice_proto::v2::ingress_client::IngressClient;
use sluice_proto::v2::{EgressBatchRequest, SendResponse};
use sluice_tests::{Sluice, log_envelope, send};
use tonic::transport::{Certificate, ClientTlsConfig};

/// A message that looks like an `EnvelopeBatch` on the wire (field 1, length-delimited) but
/// whose envelope bytes are garbage.
#[derive(Clone, PartialEq, prost::Message)]
struct Garbage {
    #[prost(bytes = "vec", tag = "1")]
    batch: Vec<u8>,
}

/// Connects with `tls` and sends one line; any failure on the way is the answer.
async fn try_send(
    sluice: &Sluice,
    tls: ClientTlsConfig,
    line: &str,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let channel = Sluice::channel(&sluice.agent, tls).await?;
    IngressClient::new(channel)
        .send(sluice_proto::v2::EnvelopeBatch {
            batch: vec![log_envelope("intruder", line)],
        })
        .await?;
    Ok(())
}

async fn accepted_so_far(sluice: &Sluice, expected: u64) {
    sluice
        .wait_for("accepted lines", expected, Duration::from_secs(30), || {
            sluice.search_total("keepme")
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_oversized_and_invalid_utf8_input() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data")).await;
    let mut client = sluice.ingress().await;
    send(
        &mut client,
        (0..10)
            .map(|index| log_envelope("bad", format!("keepme {index}")))
            .collect(),
    )
    .await
    .unwrap();

    // Malformed protobuf: INVALID_ARGUMENT, the connection stays usable.
    let channel = Sluice::channel(&sluice.agent, sluice.client_tls())
        .await
        .unwrap();
    let mut raw = tonic::client::Grpc::new(channel);
    raw.ready().await.unwrap();
    let garbage = Garbage {
        batch: vec![0xff, 0xff, 0xff, 0xff, 0x0f, 0x08],
    };
    let codec: tonic_prost::ProstCodec<Garbage, SendResponse> = tonic_prost::ProstCodec::default();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/loggregator.v2.Ingress/Send");
    let status = raw
        .unary(tonic::Request::new(garbage), path, codec)
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("malformed protobuf"),
        "{}",
        status.message()
    );

    // An envelope over 1 MiB: the request is refused, naming the envelope and the limit.
    let mut oversized = vec![log_envelope("bad", "keepme-not small")];
    oversized.push(log_envelope("bad", vec![b'x'; 1024 * 1024 + 1]));
    let status = send(&mut client, oversized).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("envelope 1 is"),
        "{}",
        status.message()
    );
    assert!(status.message().contains("1048576"), "{}", status.message());

    // An envelope without a message.
    let status = send(&mut client, vec![sluice_proto::v2::Envelope::default()])
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    // Invalid UTF-8 in a payload: kept, decoded lossily, flagged.
    send(
        &mut client,
        vec![log_envelope(
            "bad",
            b"keepme utf8check \xff\xfe end".to_vec(),
        )],
    )
    .await
    .unwrap();
    accepted_so_far(&sluice, 11).await;
    let (_, body) = sluice.search("utf8check", 10).await;
    let hit = &body["hits"][0];
    assert_eq!(hit["invalid_utf8"], true);
    assert_eq!(hit["message"], "keepme utf8check \u{fffd}\u{fffd} end");
    sluice
        .wait_for("flagged in sql", 1, Duration::from_secs(30), || {
            sluice.sql_number("SELECT count(*) FROM logs WHERE invalid_utf8")
        })
        .await;

    // Nothing accepted before the bad requests went missing, and the refused ones left nothing.
    assert_eq!(sluice.search_total("keepme").await, 11);
    assert_eq!(sluice.search_total("small").await, 0);
    let metrics = sluice.metrics_text().await;
    assert!(
        metrics.contains("sluice_agent_envelopes_rejected_total{reason=\"too_large\"} 2"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_a_certificate_from_our_ca_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data")).await;
    let ours = TlsMaterial::load(&sluice.tls_paths(), "localhost").unwrap();

    // No client certificate at all.
    let anonymous = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ours.ca_pem()))
        .domain_name("localhost");
    assert!(
        try_send(&sluice, anonymous, "no certificate")
            .await
            .is_err(),
        "a client without a certificate was let in"
    );

    // A certificate from another CA.
    let other_dir = tempfile::tempdir().unwrap();
    let other = sluice_common::tls::ensure_local_ca(other_dir.path()).unwrap();
    let stranger = TlsMaterial::load(
        &TlsPaths {
            ca_cert: sluice.tls_paths().ca_cert,
            cert: other.cert,
            key: other.key,
        },
        "localhost",
    )
    .unwrap();
    assert!(
        try_send(&sluice, stranger.client_config(), "wrong ca")
            .await
            .is_err(),
        "a client with another CA's certificate was let in"
    );

    // The doppler refuses strangers too.
    if let Ok(channel) = Sluice::channel(&sluice.doppler, stranger.client_config()).await {
        let answer = sluice_proto::v2::egress_client::EgressClient::new(channel)
            .batched_receiver(EgressBatchRequest {
                selectors: vec![sluice_proto::v2::Selector::default()],
                ..Default::default()
            })
            .await;
        assert!(answer.is_err(), "the doppler let a stranger subscribe");
    }
    assert_eq!(
        sluice
            .search_total("intruder OR certificate OR wrong")
            .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_that_writes_and_bad_queries_are_refused_with_400() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data")).await;
    for statement in [
        "CREATE TABLE stolen AS SELECT * FROM logs",
        "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '/tmp'",
        "INSERT INTO logs SELECT * FROM logs",
        "COPY logs TO '/tmp/sluice-copy.parquet'",
        "DROP TABLE logs",
        "SET datafusion.execution.batch_size = 1",
        "SELEC nonsense",
        "SELECT no_such_column FROM logs",
    ] {
        let (status, body) = sluice.sql(statement).await;
        assert_eq!(status, 400, "{statement}: {body}");
        assert!(
            !body["error"].as_str().unwrap().is_empty(),
            "{statement}: {body}"
        );
    }
    let (status, _) = sluice.sql("SELECT count(*) FROM logs").await;
    assert_eq!(status, 200);
    // Text sqlparser alone parses for minutes (found by fuzzing) is refused within the parse
    // budget, and the server answers the next query as before.
    let slow = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/regressions/sql/slow-parse-121-bytes.sql"),
    )
    .unwrap();
    let padded = format!("{slow}{}", " ".repeat(200_000));
    for text in [slow.as_str(), padded.as_str()] {
        let (status, body) = sluice.sql(text).await;
        assert_eq!(status, 400, "{body}");
        assert!(
            body["error"].as_str().unwrap().contains("too complex"),
            "{body}"
        );
    }
    let (status, body) = sluice.sql(&"SELECT 1 ".repeat(40_000)).await;
    assert_eq!(status, 413, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("query_api.max_sql_bytes"),
        "{body}"
    );
    let (status, _) = sluice.sql("SELECT count(*) FROM logs").await;
    assert_eq!(status, 200);
    let (status, body) = sluice.search("message:(unclosed", 10).await;
    assert_eq!(status, 400, "{body}");
    // Nesting that overflowed the parser's stack (and took the process with it) is refused,
    // and the server answers the next search.
    let deep = format!("{}a{}", "(".repeat(10_000), ")".repeat(10_000));
    let (status, body) = sluice.search(&deep, 10).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = sluice.search("*", 10).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = sluice.search("*", 1_000_000).await;
    assert_eq!(status, 400, "{body}");
    let response = reqwest::Client::new()
        .get(format!("{}/api/v1/search", sluice.api))
        .query(&[("query", "*"), ("start", "last tuesday")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    // A date histogram needs an interval of at least a millisecond, in a known unit.
    for interval in ["0s", "1us", "fortnightly", "-5m"] {
        let response = reqwest::Client::new()
            .get(format!("{}/api/v1/search", sluice.api))
            .query(&[("query", "*"), ("histogram", interval)])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 400, "histogram={interval}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(
            body["error"].as_str().unwrap().contains("histogram"),
            "histogram={interval}: {body}"
        );
    }
}
