//! Two tenants ingesting through one agent (`_bulk` with each tenant's ingest token, on the same
//! source names; Loggregator gRPC and syslog over TLS with a client certificate mapped to a
//! tenant) and the default
//! tenant beside them (Loggregator gRPC), then reads by one
//! tenant's token that try to reach the other's records through every route: search syntax,
//! histograms, patterns, the live tail and its history, the Loggregator egress shapes, and SQL
//! (unions, joins, subqueries, `information_schema`, file paths, `EXPLAIN`, comments, quoting).
//! None of them finds a record of another tenant, each tenant's counts are exact, and a sender
//! cannot claim a tenant by writing the reserved tag itself.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_tests::{Sluice, events, log_envelope, metric_sample, send, sluice_command};

/// Lines of each sender: acme's on `shared-app` and `web-a`, globex's on `shared-app` (the same
/// source name as acme's), the default tenant's on `shared-app` too.
const ACME_SHARED: u64 = 160;
const ACME_WEB: u64 = 80;
/// acme's lines over the Loggregator ingress, from a sender whose certificate maps to acme.
const ACME_CERT: u64 = 30;
/// acme's lines over syslog with TLS, from a sender presenting that certificate.
const ACME_SYSLOG: u64 = 20;
const ACME: u64 = ACME_SHARED + ACME_WEB + ACME_CERT + ACME_SYSLOG;
const GLOBEX: u64 = 150;
const DEFAULT: u64 = 50;

/// What marks another tenant's record in any answer: their lines' words.
const FOREIGN: [&str; 2] = ["globex", "default-line"];

fn token(data_dir: &Path, name: &str, tenant: &str, rights: &str, sources: &[&str]) -> String {
    let mut arguments = vec![
        "tokens", "create", "--name", name, "--tenant", tenant, "--rights", rights,
    ];
    for source in sources {
        arguments.extend(["--source", source]);
    }
    sluice_command(&arguments, Some(data_dir))
}

/// `count` log lines of `source_id` (`<prefix> line <n> secret`), each claiming `tenant` in the
/// reserved tag.
fn claiming(
    source_id: &str,
    prefix: &str,
    count: u64,
    tenant: &str,
) -> Vec<sluice_proto::v2::Envelope> {
    (0..count)
        .map(|n| {
            let mut envelope = log_envelope(source_id, format!("{prefix} line {n} secret"));
            envelope
                .tags
                .insert("sluice.tenant".to_owned(), tenant.to_owned());
            envelope
        })
        .collect()
}

/// `_bulk` of `lines` documents to `index` as the holder of `token`; each document also writes
/// the reserved tenant tag, claiming acme.
async fn bulk(address: &str, token: &str, index: &str, tenant: &str, lines: u64) {
    let mut body = String::new();
    for n in 0..lines {
        body.push_str("{\"index\":{}}\n");
        body.push_str(
            &serde_json::json!({
                "message": format!("{tenant} line {n} secret"),
                "sluice": {"tenant": "acme"},
            })
            .to_string(),
        );
        body.push('\n');
    }
    let response = reqwest::Client::new()
        .post(format!("http://{address}/{index}/_bulk"))
        .bearer_auth(token)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["errors"], false, "{answer}");
}

async fn get(url: &str, token: &str, params: &[(&str, &str)]) -> (u16, String) {
    let response = reqwest::Client::new()
        .get(url)
        .query(params)
        .bearer_auth(token)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    (
        response.status().as_u16(),
        response.text().await.unwrap_or_default(),
    )
}

async fn search(api: &str, token: &str, query: &str) -> (u16, Value) {
    let (status, body) = get(
        &format!("{api}/api/v1/search"),
        token,
        &[("query", query), ("limit", "1000"), ("histogram", "1h")],
    )
    .await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

async fn sql(api: &str, token: &str, query: &str) -> (u16, String) {
    let response = reqwest::Client::new()
        .post(format!("{api}/api/v1/sql"))
        .bearer_auth(token)
        .json(&serde_json::json!({ "query": query }))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    (
        response.status().as_u16(),
        response.text().await.unwrap_or_default(),
    )
}

async fn sql_count(api: &str, token: &str, query: &str) -> u64 {
    let (status, body) = sql(api, token, query).await;
    assert_eq!(status, 200, "{query}: {body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    body["rows"][0]["n"].as_u64().unwrap()
}

fn assert_no_foreign(what: &str, text: &str) {
    for word in FOREIGN {
        assert!(
            !text.contains(word),
            "{what} answered another tenant's record ({word}): {text}"
        );
    }
}

/// The envelopes of an SSE stream until one whose payload holds `last`, or the deadline.
async fn payloads_until(
    receiver: &mut tokio::sync::mpsc::UnboundedReceiver<Value>,
    last: &str,
) -> Vec<String> {
    use base64::Engine as _;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let Ok(Some(event)) = tokio::time::timeout(Duration::from_secs(1), receiver.recv()).await
        else {
            continue;
        };
        // A tail's events are envelopes; `/v2/read`'s are batches of them.
        let envelopes = match event["batch"].as_array() {
            Some(batch) => batch.clone(),
            None => vec![event],
        };
        for envelope in envelopes {
            let text = match envelope["log"]["payload"].as_str() {
                Some(payload) => String::from_utf8_lossy(
                    &base64::engine::general_purpose::STANDARD
                        .decode(payload)
                        .unwrap_or_else(|_| payload.as_bytes().to_vec()),
                )
                .into_owned(),
                None => envelope.to_string(),
            };
            let done = text.contains(last);
            seen.push(text);
            if done {
                return seen;
            }
        }
    }
    panic!("{last:?} never arrived; saw {} envelopes", seen.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_read_of_one_tenant_reaches_another_tenants_records() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let sluice = Sluice::start_with_config(
        &data_dir,
        "[query_api.auth]\nenabled = true\n\n[agent.elasticsearch]\nrequire_token = true\n\n\
         [retention]\nflush_interval = \"1s\"\n\n\
         [agent.tenants_by_certificate]\n\"acme-agent\" = \"acme\"\n",
    )
    .await;
    let api = sluice.api.clone();
    let admin = std::fs::read_to_string(data_dir.join("auth/admin.token"))
        .unwrap()
        .trim()
        .to_owned();
    let acme_ingest = token(&data_dir, "acme-ingest", "acme", "ingest", &[]);
    let globex_ingest = token(&data_dir, "globex-ingest", "globex", "ingest", &[]);
    let acme = token(&data_dir, "acme-reader", "acme", "read", &[]);
    let globex = token(&data_dir, "globex-reader", "globex", "read", &[]);
    let acme_web = token(&data_dir, "acme-web", "acme", "read", &["web-*"]);

    // Both tenants through the one agent, on the same source name; globex's documents (and
    // the default tenant's envelopes) also write the reserved tag, claiming another tenant.
    let es = sluice.elasticsearch.clone();
    bulk(&es, &acme_ingest, "shared-app", "acme", ACME_SHARED).await;
    bulk(&es, &acme_ingest, "web-a", "acme-web", ACME_WEB).await;
    bulk(&es, &globex_ingest, "shared-app", "globex", GLOBEX).await;
    let mut client = sluice.ingress().await;
    send(
        &mut client,
        claiming("shared-app", "default-line", DEFAULT, "globex"),
    )
    .await
    .unwrap();
    // A platform sender whose certificate (from the local CA, named acme-agent) the agent maps
    // to acme: its envelopes are acme's, whatever their tags say.
    let issued = dir.path().join("issued");
    sluice_command(
        &[
            "certs",
            "issue",
            "--name",
            "acme-agent",
            "--dns",
            "localhost",
            "--out",
            issued.to_str().unwrap(),
        ],
        Some(&data_dir),
    );
    let read = |name: &str| std::fs::read_to_string(issued.join(name)).unwrap();
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{}", sluice.agent))
        .unwrap()
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(read("ca.pem")))
                .identity(tonic::transport::Identity::from_pem(
                    read("acme-agent.pem"),
                    read("acme-agent-key.pem"),
                ))
                .domain_name("localhost"),
        )
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut acme_agent = sluice_proto::v2::ingress_client::IngressClient::new(channel);
    send(
        &mut acme_agent,
        claiming("shared-app", "acme-cert", ACME_CERT, "globex"),
    )
    .await
    .unwrap();
    // The same certificate over syslog with TLS: acme's lines too.
    {
        use rustls::pki_types::pem::PemObject as _;
        use tokio::io::AsyncWriteExt as _;
        let roots = {
            let mut roots = rustls::RootCertStore::empty();
            for certificate in
                rustls::pki_types::CertificateDer::pem_slice_iter(read("ca.pem").as_bytes())
            {
                roots.add(certificate.unwrap()).unwrap();
            }
            roots
        };
        let chain =
            rustls::pki_types::CertificateDer::pem_slice_iter(read("acme-agent.pem").as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
        let key =
            rustls::pki_types::PrivateKeyDer::from_pem_slice(read("acme-agent-key.pem").as_bytes())
                .unwrap();
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
        let stream = tokio::net::TcpStream::connect(&sluice.syslog)
            .await
            .unwrap();
        let mut stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect(
                rustls::pki_types::ServerName::try_from("localhost").unwrap(),
                stream,
            )
            .await
            .unwrap();
        for n in 0..ACME_SYSLOG {
            let line = format!("<14>1 - host shared-app - - - acme-syslog line {n} secret\n");
            stream.write_all(line.as_bytes()).await.unwrap();
        }
        stream.shutdown().await.unwrap();
    }
    let all = ACME + GLOBEX + DEFAULT;
    sluice
        .wait_for("indexed", all, Duration::from_secs(30), || async {
            search(&api, &admin, "secret").await.1["total"]
                .as_u64()
                .unwrap_or(0)
        })
        .await;
    sluice
        .wait_for("archived", all, Duration::from_secs(30), || async {
            let (status, body) = sql(&api, &admin, "SELECT count(*) AS n FROM logs").await;
            if status != 200 {
                return 0;
            }
            serde_json::from_str::<Value>(&body).unwrap()["rows"][0]["n"]
                .as_u64()
                .unwrap_or(0)
        })
        .await;

    // Each tenant's counts are exact, whoever claimed what in the reserved tag.
    let total = |token: &str, query: &str| {
        let (api, token, query) = (api.clone(), token.to_owned(), query.to_owned());
        async move {
            let (status, body) = search(&api, &token, &query).await;
            assert_eq!(status, 200, "{query}: {body}");
            body["total"].as_u64().unwrap()
        }
    };
    assert_eq!(total(&acme, "*").await, ACME);
    assert_eq!(total(&globex, "*").await, GLOBEX);
    assert_eq!(total(&acme_web, "*").await, ACME_WEB);
    assert_eq!(total(&admin, "tenant:default").await, DEFAULT);
    let count = "SELECT count(*) AS n FROM logs";
    assert_eq!(sql_count(&api, &acme, count).await, ACME);
    assert_eq!(sql_count(&api, &globex, count).await, GLOBEX);
    assert_eq!(sql_count(&api, &acme_web, count).await, ACME_WEB);

    // Search syntax: fields, the tenant's own field and tag, boolean tricks.
    let mut refused = 0;
    let mut searches = 0;
    for query in [
        "*",
        "secret",
        "globex",
        "tenant:globex",
        "tenant:default",
        "tags.sluice.tenant:globex",
        "source_id:shared-app",
        "globex OR acme OR default",
        "NOT acme",
        "* NOT tenant:acme",
        "(secret) OR (tenant:globex)",
        "message:globex",
        "source_id:\"shared-app\" AND NOT tenant:acme",
    ] {
        let (status, body) = search(&api, &acme, query).await;
        searches += 1;
        if status != 200 {
            refused += 1;
            continue;
        }
        assert_no_foreign(&format!("search {query:?}"), &body.to_string());
        let histogram: u64 = body["histogram"]
            .as_array()
            .unwrap()
            .iter()
            .map(|bucket| bucket["count"].as_u64().unwrap())
            .sum();
        assert_eq!(histogram, body["total"].as_u64().unwrap(), "{query}");
        assert!(body["total"].as_u64().unwrap() <= ACME, "{query}: {body}");
    }

    // Patterns: counts and examples of the tenant's lines only.
    let (status, body) = get(
        &format!("{api}/api/v1/patterns"),
        &acme,
        &[("query", "*"), ("since", "1h")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_no_foreign("patterns", &body);
    let patterns: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(patterns["total"].as_u64(), Some(ACME), "{patterns}");

    // SQL: whatever the text, the tables are the tenant's views and nothing else is there.
    let archive_dir = data_dir.join("archive");
    let file_query = format!("SELECT * FROM '{}/logs/'", archive_dir.display());
    let external = format!(
        "CREATE EXTERNAL TABLE raw STORED AS PARQUET LOCATION '{}/logs/'",
        archive_dir.display()
    );
    let mut sql_tries = 0;
    let mut sql_refused = 0;
    for query in [
        "SELECT message FROM logs WHERE tags['sluice.tenant'] = 'globex'",
        "SELECT message FROM logs WHERE 1 = 1 OR tags['sluice.tenant'] <> 'acme'",
        "SELECT message FROM logs UNION ALL SELECT message FROM datafusion.public.logs",
        "SELECT message FROM (SELECT * FROM logs) AS t WHERE message LIKE '%globex%'",
        "SELECT a.message FROM logs a JOIN logs b ON a.source_id = b.source_id LIMIT 1000",
        "SELECT message FROM logs WHERE source_id IN (SELECT source_id FROM logs)",
        "WITH x AS (SELECT * FROM logs) SELECT message FROM x",
        "SELECT message FROM \"logs\" WHERE message = 'x' OR 'a' = 'a'",
        "SELECT message FROM logs /* */ WHERE message LIKE '%' -- ' OR tags['sluice.tenant'] = 'globex'",
        "SELECT table_name FROM information_schema.tables",
        "SELECT * FROM information_schema.columns",
        "SHOW TABLES",
        "SELECT * FROM pattern_counts",
        "SELECT * FROM patterns",
        "EXPLAIN SELECT * FROM logs",
        "EXPLAIN ANALYZE SELECT count(*) FROM logs",
        &file_query,
        &external,
        "SELECT * FROM generate_series(1, 3)",
        "SELECT count(*) AS n FROM gauges",
    ] {
        let (status, body) = sql(&api, &acme, query).await;
        sql_tries += 1;
        if status != 200 {
            sql_refused += 1;
            assert!((400..500).contains(&status), "{query}: {status} {body}");
        }
        assert_no_foreign(&format!("SQL {query:?}"), &body);
    }
    let (status, _) = sql(&api, &acme, "EXPLAIN SELECT * FROM logs").await;
    assert_eq!(status, 403, "EXPLAIN is an administrator's");

    // Log Cache's read of the shared source name: the tenant's envelopes of it only; a source
    // outside a narrowed token's patterns reads as empty.
    let (status, body) = get(
        &format!("{api}/api/v1/read/shared-app"),
        &acme,
        &[("limit", "1000")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_no_foreign("Log Cache read", &body);
    let log_cache: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        log_cache["envelopes"]["batch"].as_array().unwrap().len() as u64,
        ACME_SHARED + ACME_CERT + ACME_SYSLOG
    );
    let (status, body) = get(&format!("{api}/api/v1/read/shared-app"), &acme_web, &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["envelopes"]["batch"]
            .as_array()
            .map_or(0, Vec::len),
        0,
        "{body}"
    );

    // The operator's routes cover every tenant: refused to a tenant's token, counted.
    for route in ["/metrics", "/api/v1/audit", "/api/v1/archive/stats"] {
        let (status, body) = get(&format!("{api}{route}"), &acme, &[]).await;
        assert_eq!(status, 403, "{route}: {body}");
    }

    // The tail, history first (every acme line) then live; and `/v2/read` live. Another
    // tenant's lines sent meanwhile on the same source never show.
    let mut tail = events(
        &format!("{api}/api/v1/tail"),
        &[("tail", "1000")],
        Some(&acme),
    )
    .await;
    let history =
        payloads_until(&mut tail, &format!("acme-web line {} secret", ACME_WEB - 1)).await;
    assert_no_foreign("tail history", &history.join("\n"));
    let mut egress = events(
        &format!("{api}/v2/read"),
        &[("source_id", "shared-app"), ("log", "")],
        Some(&acme),
    )
    .await;
    // The egress stream is live only: wait until it is subscribed (an acme line reaches it).
    let mut probe = 0;
    loop {
        bulk(&es, &acme_ingest, "shared-app", "acme-probe", 1).await;
        probe += 1;
        if tokio::time::timeout(Duration::from_secs(2), egress.recv())
            .await
            .is_ok_and(|event| event.is_some())
        {
            break;
        }
        assert!(probe < 15, "/v2/read never delivered");
    }
    bulk(&es, &globex_ingest, "shared-app", "globex-live", 20).await;
    let mut forged_live = log_envelope("shared-app", "default-line live");
    forged_live
        .tags
        .insert("sluice.tenant".to_owned(), "acme".to_owned());
    send(&mut client, vec![forged_live]).await.unwrap();
    bulk(&es, &acme_ingest, "shared-app", "acme-live", 1).await;
    let live = payloads_until(&mut tail, "acme-live line 0").await;
    assert_no_foreign("live tail", &live.join("\n"));
    let egressed = payloads_until(&mut egress, "acme-live line 0").await;
    assert_no_foreign("/v2/read", &egressed.join("\n"));

    // Refusals of scope are counted.
    let metrics = sluice_tests::text_as(&format!("{api}/metrics"), &admin).await;
    let scope_refusals = metric_sample(
        &metrics,
        "sluice_query_auth_refused_total{reason=\"scope\"}",
    );
    assert!(scope_refusals >= 3.0, "{metrics}");
    eprintln!(
        "tenants: acme {ACME} ({ACME_CERT} over gRPC and {ACME_SYSLOG} over syslog by client certificate), globex {GLOBEX}, default {DEFAULT} lines; {searches} searches \
         ({refused} refused), {sql_tries} SQL texts ({sql_refused} refused), patterns, Log \
         Cache, tail history and live, /v2/read: 0 records of another tenant; \
         {scope_refusals} operator routes refused"
    );
}
