//! The agent's sources, each fed by the real client shippers use, pointed at a running
//! `sluice up`: every record must be found by search and by SQL with its mapped fields, and
//! bad records must be refused one by one, counted in `/metrics`.
#![allow(clippy::unwrap_used)]

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use sluice_tests::Sluice;

/// The value of `name{labels}` in the Prometheus text at `/metrics` (0 when absent).
async fn metric(sluice: &Sluice, name: &str, labels: &str) -> u64 {
    let text = sluice.metrics_text().await;
    text.lines()
        .filter(|line| line.starts_with(name) && line.contains(labels))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Records `source` turned into envelopes (`sluice_agent_source_records_total`).
async fn accepted(sluice: &Sluice, source: &str) -> u64 {
    metric(
        sluice,
        "sluice_agent_source_records_total",
        &format!("source=\"{source}\""),
    )
    .await
}

/// Records refused with the given labels (`sluice_agent_source_records_rejected_total`).
async fn rejected(sluice: &Sluice, labels: &str) -> u64 {
    metric(sluice, "sluice_agent_source_records_rejected_total", labels).await
}

async fn wait_sql(sluice: &Sluice, query: &str, expected: u64) {
    let query = query.to_owned();
    sluice
        .wait_for(&query, expected, Duration::from_secs(60), || {
            sluice.sql_number(&query)
        })
        .await;
}

async fn wait_search(sluice: &Sluice, query: &str, expected: u64) {
    sluice
        .wait_for(
            &format!("search {query}"),
            expected,
            Duration::from_secs(60),
            || sluice.search_total(query),
        )
        .await;
}

/// Runs `tests/python/<name>` with the clients' Python and `args`, and returns the JSON it
/// printed (failing with its output if it failed).
async fn run_python(python: String, name: &str, args: Vec<String>) -> Value {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(name);
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "{name} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// A new token of `data_dir` with `rights`, made with `sluice tokens create`.
fn token(data_dir: &std::path::Path, rights: &str) -> String {
    sluice_tests::sluice_command(
        &["tokens", "create", "--name", rights, "--rights", rights],
        Some(data_dir),
    )
}

/// With `require_token` and TLS, the clients send a token the ways they document credentials
/// (`api_key`, `basic_auth`, `bearer_auth`, opensearch-py's `http_auth`) over HTTPS verified
/// with the data directory's CA (`ca_certs`) and every document arrives; no credential, a
/// wrong one or a read-only token is refused (401, 403) and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_clients_send_tokens_the_ways_they_document() {
    let python = sluice_tests::test_python("SLUICE_TEST_CLIENTS_PYTHON", "clients");
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let sluice = Sluice::start_with_config(
        &data_dir,
        "[agent.elasticsearch]\nrequire_token = true\ntls = true\n",
    )
    .await;
    let (ingest, read_only) = (token(&data_dir, "ingest"), token(&data_dir, "read"));
    let address = sluice.elasticsearch.clone();
    let ca = data_dir.join("tls/ca.pem").display().to_string();
    let report = run_python(python, "es_auth.py", vec![address, ingest, read_only, ca]).await;
    let delivered = serde_json::json!({"ok": 100, "errors": 0});
    for way in ["apikey", "basic", "bearer", "opensearch"] {
        assert_eq!(report[way], delivered, "{way}: {report}");
    }
    assert_eq!(report["anonymous"], "401", "{report}");
    assert_eq!(report["wrong"], "401", "{report}");
    assert_eq!(report["read_only"], "403", "{report}");
    wait_search(&sluice, "secured", 400).await;
    assert!(
        rejected(
            &sluice,
            "source=\"elasticsearch\",reason=\"unauthenticated\""
        )
        .await
            >= 2
    );
    assert!(rejected(&sluice, "source=\"elasticsearch\",reason=\"forbidden\"").await >= 1);
}

/// The Python `elasticsearch` client (`helpers.bulk`, gzip bodies, its product check) and
/// `opensearch-py` (`create` actions) deliver every document; one undatable document fails
/// alone with a per-item error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_and_opensearch_clients_deliver_every_document() {
    let python = sluice_tests::test_python("SLUICE_TEST_CLIENTS_PYTHON", "clients");
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data")).await;
    let address = sluice.elasticsearch.clone();
    let report = run_python(python, "es_clients.py", vec![address, "1000".to_owned()]).await;
    assert_eq!(report["info"], "8.17.0", "{report}");
    assert_eq!(report["es_ok"], 1000, "{report}");
    assert_eq!(
        report["es_errors"],
        serde_json::json!(["mapper_parsing_exception"]),
        "{report}"
    );
    assert_eq!(report["os_ok"], 1000, "{report}");
    assert_eq!(report["os_errors"], 0, "{report}");

    // The clients had their answers only once everything was durable; now it is found.
    wait_search(&sluice, "esline AND checkout", 1000).await;
    wait_search(&sluice, "osline", 1000).await;
    wait_sql(
        &sluice,
        "SELECT count(*) FROM logs WHERE source_id = 'shop' AND tags['service.name'] = 'checkout' \
         AND tags['index'] = 'shop' AND timestamp = '2026-11-27T08:00:00Z'",
        1000,
    )
    .await;
    wait_sql(
        &sluice,
        "SELECT count(*) FROM logs WHERE source_id = 'shop' AND log_type = 'ERR'",
        100,
    )
    .await;
    wait_sql(
        &sluice,
        "SELECT count(DISTINCT tags['sku']) FROM logs WHERE source_id = 'inventory' \
         AND message LIKE 'osline n% restocked' AND timestamp >= '2026-11-27T08:00:00Z'",
        1000,
    )
    .await;
    assert_eq!(
        sluice
            .sql_number("SELECT count(*) FROM logs WHERE message = 'esline bad'")
            .await,
        0
    );
    assert_eq!(accepted(&sluice, "elasticsearch").await, 2000);
    assert_eq!(rejected(&sluice, "reason=\"bad_timestamp\"").await, 1);
}

/// Raw HTTP as a shipper might send it: errors shaped like Elasticsearch's, malformed action
/// lines refusing the whole request, per-item errors, size caps on bodies and gzip bombs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_requests_are_answered_like_elasticsearch() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data")).await;
    let base = format!("http://{}", sluice.elasticsearch);
    let client = reqwest::Client::new();

    let root = client.get(&base).send().await.unwrap();
    assert_eq!(
        root.headers()
            .get("x-elastic-product")
            .and_then(|v| v.to_str().ok()),
        Some("Elasticsearch")
    );
    let root: Value = root.json().await.unwrap();
    assert_eq!(root["tagline"], "You Know, for Search");

    let body = "{\"index\":{\"_type\":\"_doc\"}}\n{\"message\":\"rawline one\"}\n\
                {\"delete\":{\"_id\":\"1\"}}\n\
                {\"index\":{}}\n[\"not\",\"an\",\"object\"]\n\
                {\"create\":{}}\n{\"log\":\"rawline two\",\"kubernetes\":{\"pod\":\"p-1\"}}\n";
    let response = client
        .put(format!("{base}/raw/_bulk"))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["errors"], true);
    let statuses: Vec<(String, u64)> = answer["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            let (action, body) = item.as_object().unwrap().iter().next().unwrap();
            (action.clone(), body["status"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(
        statuses,
        [
            ("index".to_owned(), 201),
            ("delete".to_owned(), 400),
            ("index".to_owned(), 400),
            ("create".to_owned(), 201)
        ]
    );
    wait_sql(
        &sluice,
        "SELECT count(*) FROM logs WHERE source_id = 'raw' AND message LIKE 'rawline %' \
         AND (tags['kubernetes.pod'] = 'p-1' OR message = 'rawline one')",
        2,
    )
    .await;

    // A malformed action line refuses the request, with Elasticsearch's error shape.
    let response = client
        .post(format!("{base}/_bulk"))
        .body("{\"index\":{\"_index\":\"raw\"}}\n{\"message\":\"rawline never\"}\n{oops}\n{}\n")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["status"], 400);
    assert!(
        error["error"]["reason"]
            .as_str()
            .unwrap()
            .starts_with("line 3: malformed action/metadata line"),
        "{error}"
    );

    // Wrong method, unknown path.
    let response = client.get(format!("{base}/_bulk")).send().await.unwrap();
    assert_eq!(response.status(), 405);
    let response = client
        .get(format!("{base}/raw/_search"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);

    // Over the body cap (100 MiB by default), and a gzip body inflating past it.
    let big = vec![b' '; 100 * 1024 * 1024 + 1];
    let response = client
        .post(format!("{base}/raw/_bulk"))
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    for _ in 0..101 {
        encoder.write_all(&vec![b'\n'; 1024 * 1024]).unwrap();
    }
    let bomb = encoder.finish().unwrap();
    assert!(bomb.len() < 1024 * 1024, "{} bytes", bomb.len());
    let response = client
        .post(format!("{base}/raw/_bulk"))
        .header("content-encoding", "gzip")
        .body(bomb)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let response = client
        .post(format!("{base}/raw/_bulk"))
        .header("content-encoding", "gzip")
        .body("not gzip at all")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    // Nothing of the refused requests arrived; the server is still there.
    assert_eq!(
        sluice
            .sql_number("SELECT count(*) FROM logs WHERE message = 'rawline never'")
            .await,
        0
    );
    assert_eq!(client.head(&base).send().await.unwrap().status(), 200);
    assert_eq!(
        rejected(&sluice, "source=\"elasticsearch\",reason=\"too_large\"").await,
        2
    );
}

/// Runs `logger` (util-linux) with `args`, the lines of `input` on its standard input (one
/// message each).
fn logger(args: &[&str], input: &str) {
    let mut child = Command::new("logger")
        .args(args)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("logger (util-linux) is needed: {error}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "logger {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `logger` over TCP with octet counting (RFC 5424 with structured data) and with newline
/// framing (RFC 3164), and over UDP: every message found by search and SQL with its fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logger_delivers_over_tcp_and_udp_in_both_formats() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data")).await;
    let (host, port) = sluice.syslog.split_once(':').unwrap();
    let lines = |token: &str| {
        (0..300)
            .map(|n| format!("{token} n{n} payment accepted\n"))
            .collect::<String>()
    };
    let common = ["--server", host, "--port", port];
    let with = |extra: &[&'static str]| {
        let mut args: Vec<&str> = common.to_vec();
        args.extend_from_slice(extra);
        args
    };
    logger(
        &with(&[
            "--tcp",
            "--octet-count",
            "--rfc5424",
            "-t",
            "billing",
            "-p",
            "local3.err",
            "--msgid",
            "PAY",
            "--sd-id",
            "order@32473",
            "--sd-param",
            "id=\"17\"",
        ]),
        &lines("tcpframed"),
    );
    logger(
        &with(&["--tcp", "--rfc3164", "-t", "cron", "-p", "cron.info"]),
        &lines("tcpline"),
    );
    logger(
        &with(&["--udp", "--rfc5424", "-t", "udpapp", "--id=4242"]),
        &lines("udpline"),
    );

    wait_search(&sluice, "tcpframed", 300).await;
    wait_search(&sluice, "tcpline", 300).await;
    // UDP may drop datagrams on a loaded machine; on loopback with this volume it does not.
    wait_search(&sluice, "udpline", 300).await;
    wait_sql(
        &sluice,
        "SELECT count(*) FROM logs WHERE source_id = 'billing' AND log_type = 'ERR' \
         AND tags['severity'] = 'err' AND tags['facility'] = 'local3' AND tags['msgid'] = 'PAY' \
         AND tags['order@32473.id'] = '17' AND message LIKE 'tcpframed n% payment accepted'",
        300,
    )
    .await;
    wait_sql(
        &sluice,
        "SELECT count(*) FROM logs WHERE source_id = 'cron' AND log_type = 'OUT' \
         AND tags['facility'] = 'cron' AND tags['host'] IS NOT NULL \
         AND message LIKE 'tcpline n%'",
        300,
    )
    .await;
    wait_sql(
        &sluice,
        "SELECT count(*) FROM logs WHERE source_id = 'udpapp' AND instance_id = '4242' \
         AND message LIKE 'udpline n%'",
        300,
    )
    .await;
    assert_eq!(accepted(&sluice, "syslog").await, 900);
}

/// Bad syslog input over one TCP connection: refused message by message (counted), the
/// connection and the good messages around them kept; an oversized message skipped whole; a
/// client that goes away mid-message loses only that message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_syslog_messages_are_refused_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data")).await;
    let mut stream = std::net::TcpStream::connect(&sluice.syslog).unwrap();
    let oversized = format!("<13>1 - - big - - - {}\n", "x".repeat(70_000));
    let input = format!(
        "<13>1 - - app - - - badline-keep one\n\
         <999>1 - - app - - - bad priority\n\
         <13>1 2026-13-45T99:00:00Z h app - - - bad date\n\
         {oversized}\
         <13>1 - - app - - [sd x=unquoted] bad structured data\n\
         20 <13>1 - - app - - - \
         <13>1 - - app - - - badline-keep two\n\
         <13>1 - - app - - - badline-cut"
    );
    stream.write_all(input.as_bytes()).unwrap();
    drop(stream);
    wait_search(&sluice, "badline-keep", 2).await;
    // The last message had no newline before the client left: still taken whole.
    wait_search(&sluice, "badline-cut", 1).await;
    for reason in [
        "bad_priority",
        "bad_timestamp",
        "too_large",
        "bad_structured_data",
    ] {
        assert_eq!(
            rejected(&sluice, &format!("reason=\"{reason}\"")).await,
            1,
            "{reason}"
        );
    }
}

/// rsyslog (Debian's 8.2302, unpacked by `scripts/services start clients`) as a relay in
/// front of Sluice, configured as the README says: `omfwd` over TCP with octet counting in RFC
/// 5424, and `omelasticsearch` in bulk mode for the messages that say so. `logger` feeds
/// rsyslog's own TCP input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsyslog_forwards_with_omfwd_and_omelasticsearch() {
    let root = std::path::PathBuf::from(std::env::var("SLUICE_TEST_RSYSLOG_ROOT").unwrap_or_else(|_| {
        panic!("SLUICE_TEST_RSYSLOG_ROOT is not set: unpack rsyslog with `scripts/services start clients` and load its variables with `eval \"$(scripts/services env)\"` (scripts/test does both)")
    }));
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data")).await;
    let (_, syslog_port) = sluice.syslog.split_once(':').unwrap();
    let (_, es_port) = sluice.elasticsearch.split_once(':').unwrap();
    let input_port = sluice_tests::free_port();
    let work = dir.path().join("rsyslog");
    std::fs::create_dir_all(&work).unwrap();
    let config = format!(
        r#"global(workDirectory="{work}")
module(load="imtcp")
input(type="imtcp" address="127.0.0.1" port="{input_port}")
module(load="omelasticsearch")
template(name="sluice-json" type="list" option.jsonf="on") {{
  property(outname="@timestamp" name="timereported" dateFormat="rfc3339" format="jsonf")
  property(outname="host" name="hostname" format="jsonf")
  property(outname="app" name="app-name" format="jsonf")
  property(outname="message" name="msg" format="jsonf")
}}
if $msg contains "viabulk" then {{
  action(type="omelasticsearch" server="127.0.0.1" serverport="{es_port}"
         searchIndex="relayed" template="sluice-json" bulkmode="on"
         errorFile="{work}/es-errors.json")
}} else {{
  action(type="omfwd" target="127.0.0.1" port="{syslog_port}" protocol="tcp"
         TCP_Framing="octet-counted" template="RSYSLOG_SyslogProtocol23Format")
}}
"#,
        work = work.display()
    );
    let config_path = work.join("rsyslog.conf");
    std::fs::write(&config_path, config).unwrap();
    let libraries = root.join("usr/lib/x86_64-linux-gnu");
    let log = std::fs::File::create(work.join("rsyslogd.log")).unwrap();
    let _rsyslogd = Relay {
        log: work.join("rsyslogd.log"),
        child: Command::new(root.join("usr/sbin/rsyslogd"))
            .arg("-n")
            .arg("-f")
            .arg(&config_path)
            .arg("-i")
            .arg(work.join("rsyslogd.pid"))
            .arg("-M")
            .arg(libraries.join("rsyslog"))
            .env("LD_LIBRARY_PATH", &libraries)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    };
    sluice_tests::wait_listening(&format!("127.0.0.1:{input_port}"), Duration::from_secs(30)).await;
    let port = input_port.to_string();
    let lines = |token: &str| {
        (0..200)
            .map(|n| format!("{token} n{n} relayed\n"))
            .collect::<String>()
    };
    for (tag, token) in [("relayfwd", "viaomfwd"), ("relaybulk", "viabulk")] {
        logger(
            &[
                "--server",
                "127.0.0.1",
                "--port",
                &port,
                "--tcp",
                "--octet-count",
                "--rfc5424",
                "-t",
                tag,
            ],
            &lines(token),
        );
    }
    wait_search(&sluice, "viaomfwd", 200).await;
    wait_search(&sluice, "viabulk", 200).await;
    wait_sql(
        &sluice,
        "SELECT count(*) FROM logs WHERE source_id = 'relayfwd' AND tags['app_name'] = 'relayfwd' \
             AND tags['host'] IS NOT NULL AND message LIKE 'viaomfwd n% relayed'",
        200,
    )
    .await;
    wait_sql(
        &sluice,
        "SELECT count(*) FROM logs WHERE source_id = 'relayed' AND tags['app'] = 'relaybulk' \
             AND message LIKE 'viabulk n% relayed'",
        200,
    )
    .await;
}

/// rsyslogd, stopped when the test ends; its log is printed if the test failed.
struct Relay {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- rsyslogd log ---\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

/// Syslog over TLS (RFC 5425) on the same port: a TLS client (Python's `ssl`, verifying the
/// agent's certificate against the CA `sluice up` made) sends octet-counted RFC 5424 messages;
/// a client that does not trust the CA fails its handshake and sends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_over_tls_on_the_same_port() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data")).await;
    let (host, port) = sluice.syslog.split_once(':').unwrap();
    let ca = sluice.data_dir.join("tls/ca.pem");
    let script = r#"
import socket, ssl, sys
host, port, ca, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
context = ssl.create_default_context(cafile=ca)
with socket.create_connection((host, port)) as raw:
    with context.wrap_socket(raw, server_hostname="localhost") as tls:
        for n in range(count):
            message = f"<14>1 - tlshost tlsapp - - - tlsline n{n} over tls".encode()
            tls.sendall(b"%d %s" % (len(message), message))
# Not trusting the CA: the handshake fails, nothing is sent.
try:
    with socket.create_connection((host, port)) as raw:
        with ssl.create_default_context().wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"<14>1 - h a - - - untrusted")
    print("untrusted handshake succeeded")
    sys.exit(1)
except ssl.SSLError:
    pass
"#;
    let output = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(host)
        .arg(port)
        .arg(&ca)
        .arg("250")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    wait_search(&sluice, "tlsline", 250).await;
    wait_sql(
        &sluice,
        "SELECT count(*) FROM logs WHERE source_id = 'tlsapp' AND tags['host'] = 'tlshost' \
         AND message LIKE 'tlsline n% over tls'",
        250,
    )
    .await;
    assert_eq!(sluice.search_total("untrusted").await, 0);
    assert_eq!(rejected(&sluice, "reason=\"tls_handshake\"").await, 1);
}

/// Host metrics every 500 ms: CPU, memory and per-device gauges of this machine, found by SQL
/// in the `gauges` table with their units and tags.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_metrics_arrive_as_gauges() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start_with_config(
        &dir.path().join("data"),
        "[agent.host_metrics]\ninterval = \"500ms\"\nsource_id = \"thishost\"\n",
    )
    .await;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let host = host.trim();
    for (name, unit) in [
        ("cpu.idle", "percent"),
        ("memory.total", "bytes"),
        ("load.1m", ""),
    ] {
        let query = format!(
            "SELECT count(*) > 0 FROM gauges WHERE source_id = 'thishost' AND name = '{name}' \
             AND unit = '{unit}' AND instance_id = '{host}' AND tags['host'] = '{host}'"
        );
        sluice
            .wait_for(&query, 1, Duration::from_secs(60), || async {
                let (status, body) = sluice.sql(&query).await;
                assert_eq!(status, 200, "{body}");
                body["rows"][0]
                    .as_object()
                    .and_then(|row| row.values().next())
                    .and_then(Value::as_bool)
                    .map_or(0, u64::from)
            })
            .await;
    }
    let total = sluice
        .sql_number(
            "SELECT CAST(max(value) AS BIGINT) FROM gauges WHERE source_id = 'thishost' \
             AND name = 'memory.total'",
        )
        .await;
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let expected_kb: u64 = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap();
    assert_eq!(total, expected_kb * 1024);
    let busy = sluice
        .sql_number(
            "SELECT count(*) FROM gauges WHERE source_id = 'thishost' \
             AND name = 'cpu.idle' AND value BETWEEN 0 AND 100",
        )
        .await;
    assert!(busy >= 1);
}

/// A Prometheus exporter made with the reference Python client (`prometheus_client`) scraped
/// every 500 ms: its counter (per label set), gauge and histogram series arrive in the
/// `counters` and `gauges` tables with their labels as tags and the target as `instance`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prometheus_exporter_is_scraped_into_counters_and_gauges() {
    let python = sluice_tests::test_python("SLUICE_TEST_CLIENTS_PYTHON", "clients");
    let port = sluice_tests::free_port();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/exporter.py");
    let _exporter = Relay {
        log: std::env::temp_dir().join(format!("sluice-exporter-{port}.log")),
        child: Command::new(python)
            .arg(script)
            .arg(port.to_string())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    };
    sluice_tests::wait_listening(&format!("127.0.0.1:{port}"), Duration::from_secs(30)).await;
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start_with_config(
        &dir.path().join("data"),
        &format!(
            "[agent.prometheus]\ninterval = \"500ms\"\n\n[[agent.prometheus.targets]]\n\
             url = \"http://127.0.0.1:{port}/metrics\"\nsource_id = \"shop-exporter\"\n"
        ),
    )
    .await;
    wait_sql(
        &sluice,
        &format!(
            "SELECT max(total) FROM counters WHERE source_id = 'shop-exporter' \
             AND name = 'orders_total' AND tags['shop'] = 'a' \
             AND tags['instance'] = '127.0.0.1:{port}'"
        ),
        7,
    )
    .await;
    wait_sql(
        &sluice,
        "SELECT max(total) FROM counters WHERE source_id = 'shop-exporter' \
         AND name = 'orders_total' AND tags['shop'] = 'b'",
        2,
    )
    .await;
    wait_sql(
        &sluice,
        "SELECT CAST(max(value) * 10 AS BIGINT) FROM gauges \
         WHERE source_id = 'shop-exporter' AND name = 'queue_depth'",
        425,
    )
    .await;
    wait_sql(
        &sluice,
        "SELECT CAST(max(value) AS BIGINT) FROM gauges WHERE source_id = 'shop-exporter' \
         AND name = 'latency_seconds_bucket' AND tags['le'] = '1.0'",
        2,
    )
    .await;
    wait_sql(
        &sluice,
        "SELECT CAST(max(value) AS BIGINT) FROM gauges WHERE source_id = 'shop-exporter' \
         AND name = 'latency_seconds_count'",
        3,
    )
    .await;
    // The exporter's _created series are not measurements.
    assert_eq!(
        sluice
            .sql_number(
                "SELECT count(*) FROM gauges WHERE source_id = 'shop-exporter' \
                 AND name LIKE '%_created'"
            )
            .await,
        0
    );
}

/// Appends `lines` (each followed by a newline) to `path`.
fn append(path: &std::path::Path, lines: &[String]) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    for line in lines {
        writeln!(file, "{line}").unwrap();
    }
}

fn numbered(token: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|n| format!("{token} n{n} line")).collect()
}

/// Followed files: lines written before and after rotation by rename and by copytruncate, a
/// new file matching the glob, a multiline stack trace, a line over the limit, and a restart
/// of `sluice up` in the middle: every line exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followed_files_survive_rotation_and_restarts_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let app = logs.join("app.log");
    append(&app, &numbered("tailline", 0..100));
    let mut sluice = Sluice::start_with_config(
        &dir.path().join("data"),
        &format!(
            "[[agent.files]]\npaths = [\"{}/*.log\"]\nsource_id = \"tailed\"\n\
             multiline_start = '^(tailline|trace|long)'\nmax_line_bytes = 1024\n\
             start_at = \"beginning\"\n",
            logs.display()
        ),
    )
    .await;
    wait_search(&sluice, "tailline", 100).await;

    // A stack trace (one record) and a line four times the limit (four parts).
    append(
        &app,
        &[
            "trace boom".to_owned(),
            "  at first()".to_owned(),
            "  at second()".to_owned(),
            format!("long {}", "x".repeat(4_091)),
        ],
    );
    append(&app, &numbered("tailline", 100..200));
    // Rotation by rename, then a new app.log.
    std::fs::rename(&app, logs.join("app.log.1")).unwrap();
    append(&app, &numbered("tailline", 200..300));
    wait_search(&sluice, "tailline", 300).await;

    // Restart: nothing is read twice; lines written while it is down are read once.
    sluice.kill_hard();
    append(&app, &numbered("tailline", 300..400));
    append(&logs.join("other.log"), &numbered("tailline", 400..450));
    sluice.restart().await;
    wait_search(&sluice, "tailline", 450).await;

    // copytruncate: the content is copied away, the file emptied and written again.
    std::fs::copy(&app, logs.join("app.log.2")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&app)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    append(&app, &numbered("tailline", 450..500));
    wait_search(&sluice, "tailline", 500).await;

    wait_sql(
        &sluice,
        "SELECT count(DISTINCT message) FROM logs WHERE source_id = 'tailed' \
         AND message LIKE 'tailline n% line'",
        500,
    )
    .await;
    wait_sql(
        &sluice,
        "SELECT count(*) FROM logs WHERE source_id = 'tailed' AND message LIKE 'tailline n% line'",
        500,
    )
    .await;
    wait_sql(
        &sluice,
        "SELECT count(*) FROM logs WHERE source_id = 'tailed' \
         AND message = 'trace boom\n  at first()\n  at second()'",
        1,
    )
    .await;
    wait_sql(
        &sluice,
        "SELECT count(*) FROM logs WHERE source_id = 'tailed' AND tags['split'] LIKE '%/4' \
         AND tags['file'] LIKE '%/app.log'",
        4,
    )
    .await;
}

/// With `require_token` and TLS, the OpenTelemetry SDK's exporters carry the token in their
/// `headers` setting over gRPC and HTTP, verifying the server with the data directory's CA, and
/// every line arrives; exports without it are refused and
/// counted, and none of their lines is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opentelemetry_exporters_send_a_bearer_token_in_their_headers() {
    let python = sluice_tests::test_python("SLUICE_TEST_CLIENTS_PYTHON", "clients");
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let sluice = Sluice::start_with_config(
        &data_dir,
        "[agent.otlp]\nrequire_token = true\ntls = true\n",
    )
    .await;
    let ingest = token(&data_dir, "ingest");
    let (grpc, http) = (sluice.otlp_grpc.clone(), sluice.otlp_http.clone());
    let ca = data_dir.join("tls/ca.pem").display().to_string();
    let report = run_python(
        python,
        "otel_auth.py",
        vec![grpc, http, ingest, "200".to_owned(), ca],
    )
    .await;
    for name in ["otlpauthgrpc", "otlpauthhttp"] {
        assert_eq!(report[name], true, "{name}: {report}");
    }
    for transport in ["grpc", "http"] {
        wait_search(&sluice, &format!("otlpauth{transport}"), 200).await;
    }
    // The refused exports went first: had they been kept, they would be found by now.
    for transport in ["grpc", "http"] {
        assert_eq!(
            sluice.search_total(&format!("otlpanon{transport}")).await,
            0
        );
    }
    assert!(rejected(&sluice, "source=\"otlp\",reason=\"unauthenticated\"").await >= 2);
}

/// The OpenTelemetry Python SDK exports logs and metrics over OTLP/gRPC and OTLP/HTTP: every
/// log found by search and SQL with its resource, attributes and severity; the counter, the
/// up-down counter and the histogram in the `counters` and `gauges` tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_opentelemetry_sdk_exports_logs_and_metrics_over_grpc_and_http() {
    let python = sluice_tests::test_python("SLUICE_TEST_CLIENTS_PYTHON", "clients");
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data")).await;
    let (grpc, http) = (sluice.otlp_grpc.clone(), sluice.otlp_http.clone());
    let report = run_python(python, "otel_export.py", vec![grpc, http, "500".to_owned()]).await;
    for key in [
        "grpc_logs_flushed",
        "http_logs_flushed",
        "grpc_metrics_flushed",
        "http_metrics_flushed",
    ] {
        assert_eq!(report[key], true, "{key}: {report}");
    }
    for transport in ["grpc", "http"] {
        wait_search(&sluice, &format!("otlpline{transport}"), 500).await;
        wait_sql(
            &sluice,
            &format!(
                "SELECT count(*) FROM logs WHERE source_id = 'otel-{transport}' \
                 AND instance_id = 'pod-7' AND tags['deployment.environment'] = 'test' \
                 AND tags['order'] IS NOT NULL AND message LIKE 'otlpline{transport} n% payment %'"
            ),
            500,
        )
        .await;
        wait_sql(
            &sluice,
            &format!(
                "SELECT count(*) FROM logs WHERE source_id = 'otel-{transport}' \
                 AND log_type = 'ERR' AND tags['severity'] = 'ERROR'"
            ),
            50,
        )
        .await;
        wait_sql(
            &sluice,
            &format!(
                "SELECT max(total) FROM counters WHERE source_id = 'otel-{transport}' \
                 AND name = 'orders' AND tags['shop'] = 'a'"
            ),
            7,
        )
        .await;
        wait_sql(
            &sluice,
            &format!(
                "SELECT CAST(-min(value) AS BIGINT) FROM gauges \
                 WHERE source_id = 'otel-{transport}' AND name = 'queue'"
            ),
            3,
        )
        .await;
        wait_sql(
            &sluice,
            &format!(
                "SELECT CAST(max(value) AS BIGINT) FROM gauges WHERE source_id = 'otel-{transport}' \
                 AND name = 'latency.count' AND tags['route'] = '/pay' AND unit = 'ms'"
            ),
            4,
        )
        .await;
        wait_sql(
            &sluice,
            &format!(
                "SELECT CAST(max(value) AS BIGINT) FROM gauges WHERE source_id = 'otel-{transport}' \
                 AND name = 'latency.max'"
            ),
            300,
        )
        .await;
    }
    // A body that is not protobuf, and JSON (not served), are refused with a reason.
    let client = reqwest::Client::new();
    let response = client
        .post(format!("http://{}/v1/logs", sluice.otlp_http))
        .header("content-type", "application/x-protobuf")
        .body(vec![0xff_u8; 7])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let response = client
        .post(format!("http://{}/v1/logs", sluice.otlp_http))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
}

/// Syslog over UDP has no acknowledgement and no backpressure: a burst larger than the
/// socket's buffer is dropped by the kernel. Those drops are counted
/// (`reason="udp_buffer_full"`), so every datagram sent is either stored or counted lost.
/// (Before, the kernel's drops were visible only in `/proc/net/udp`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_syslog_datagrams_the_kernel_drops_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data")).await;
    let target = sluice.syslog.clone();
    let sent: u64 = 300_000;
    tokio::task::spawn_blocking(move || {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for index in 0..sent {
            let line = format!("<14>1 - host udpburst - - - udpburst line n{index}");
            socket.send_to(line.as_bytes(), &target).unwrap();
        }
    })
    .await
    .unwrap();
    let query = "SELECT count(*) AS n FROM logs WHERE source_id = 'udpburst'".to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let (stored, dropped) = loop {
        let stored = sluice.sql_number(&query).await;
        let dropped = rejected(&sluice, "reason=\"udp_buffer_full\"").await;
        if stored + dropped >= sent || std::time::Instant::now() > deadline {
            break (stored, dropped);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!(
        "udp burst: {sent} sent, {stored} stored, {dropped} dropped by the kernel and counted"
    );
    assert_eq!(
        stored + dropped,
        sent,
        "datagrams neither stored nor counted"
    );
    assert!(
        dropped > 0,
        "a burst of {sent} datagrams overflowed no buffer: the test shows nothing"
    );
}
