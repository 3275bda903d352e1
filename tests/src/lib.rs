//! The end-to-end harness: starts the real `sluice` binary on free loopback ports in a
//! temporary directory and talks to it over its real protocols (Loggregator gRPC with mutual
//! TLS, HTTP).
//!
//! The binary must be built first; `scripts/test` does that (`cargo build -p sluice`). Set
//! `SLUICE_BIN` to test another build.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;
use sluice_common::tls::{TlsMaterial, TlsPaths};
use sluice_proto::v2::ingress_client::IngressClient;
use sluice_proto::v2::{Envelope, EnvelopeBatch, Log, envelope};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

pub mod netns;
pub mod sse;

/// A memory figure of process `pid` from `/proc/<pid>/status` (`VmRSS`, `VmHWM`, …), in
/// bytes; 0 when the process is gone.
pub fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| {
            value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kib| kib * 1024)
}

/// Where the `sluice` binary is.
pub fn sluice_binary() -> PathBuf {
    if let Ok(path) = std::env::var("SLUICE_BIN") {
        return PathBuf::from(path);
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/sluice");
    assert!(
        path.exists(),
        "the sluice binary is missing at {}: build it with `cargo build -p sluice` (scripts/test does this), or set SLUICE_BIN",
        path.display()
    );
    path
}

/// A free TCP port on 127.0.0.1 (free when asked; the OS does not hand it out again at once).
pub fn free_port() -> u16 {
    // Tests of one binary run in parallel and bind their ports later: never hand out one port
    // twice, or two servers race for it.
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return port;
        }
    }
}

/// A running `sluice up`.
pub struct Sluice {
    child: Option<Child>,
    /// The data directory.
    pub data_dir: PathBuf,
    /// Agent ingress address.
    pub agent: String,
    /// Doppler address.
    pub doppler: String,
    /// Query API base URL.
    pub api: String,
    ports: (u16, u16, u16),
    /// The Elasticsearch `_bulk` source's address.
    pub elasticsearch: String,
    /// The syslog source's address (TCP and UDP).
    pub syslog: String,
    source_ports: (u16, u16, u16, u16),
    /// The OTLP/gRPC source's address.
    pub otlp_grpc: String,
    /// The OTLP/HTTP source's address.
    pub otlp_http: String,
    log_path: PathBuf,
    config: Option<PathBuf>,
}

impl Sluice {
    /// Starts `sluice up` in `data_dir` on fresh ports and waits until it answers.
    pub async fn start(data_dir: &Path) -> Sluice {
        Sluice::start_on(data_dir, (free_port(), free_port(), free_port())).await
    }

    /// Starts `sluice up` on the given (agent, doppler, http) ports.
    pub async fn start_on(data_dir: &Path, ports: (u16, u16, u16)) -> Sluice {
        Sluice::start_with(data_dir, ports, None, None, &[]).await
    }

    /// Starts `sluice up` with a configuration file (flags still set the directory and ports).
    pub async fn start_with_config(data_dir: &Path, config: &str) -> Sluice {
        Sluice::start_with_config_env(data_dir, config, &[]).await
    }

    /// [`Sluice::start_with_config`] with extra environment variables (`SLUICE_FAILPOINTS`,
    /// say).
    pub async fn start_with_config_env(
        data_dir: &Path,
        config: &str,
        env: &[(&str, &str)],
    ) -> Sluice {
        let path = data_dir.with_extension("toml");
        std::fs::write(&path, config).unwrap();
        Sluice::start_with(
            data_dir,
            (free_port(), free_port(), free_port()),
            Some(path),
            None,
            env,
        )
        .await
    }

    /// Waits up to `timeout` for the process to end by itself (a failpoint's abort), and
    /// returns whether it did.
    pub async fn wait_exited(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            match self.child.as_mut().map(Child::try_wait) {
                None | Some(Ok(Some(_))) => {
                    self.child = None;
                    return true;
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        false
    }

    async fn start_with(
        data_dir: &Path,
        ports: (u16, u16, u16),
        config: Option<PathBuf>,
        source_ports: Option<(u16, u16, u16, u16)>,
        env: &[(&str, &str)],
    ) -> Sluice {
        let source_ports =
            source_ports.unwrap_or_else(|| (free_port(), free_port(), free_port(), free_port()));
        let log_path = data_dir.with_extension(format!("log-{}", ports.0));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut command = Command::new(sluice_binary());
        command.arg("up");
        if let Some(config) = &config {
            command.arg("--config").arg(config);
        }
        // Host gauges would land among the tests' own metrics; a test that wants them says so
        // in its configuration.
        let wants_host_metrics = config.as_ref().is_some_and(|path| {
            std::fs::read_to_string(path).is_ok_and(|text| text.contains("[agent.host_metrics]"))
        });
        if !wants_host_metrics {
            command.arg("--no-host-metrics");
        }
        let child = command
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--agent-listen")
            .arg(format!("127.0.0.1:{}", ports.0))
            .arg("--doppler-listen")
            .arg(format!("127.0.0.1:{}", ports.1))
            .arg("--http-listen")
            .arg(format!("127.0.0.1:{}", ports.2))
            .arg("--elasticsearch-listen")
            .arg(format!("127.0.0.1:{}", source_ports.0))
            .arg("--syslog-listen")
            .arg(format!("127.0.0.1:{}", source_ports.1))
            .arg("--otlp-grpc-listen")
            .arg(format!("127.0.0.1:{}", source_ports.2))
            .arg("--otlp-http-listen")
            .arg(format!("127.0.0.1:{}", source_ports.3))
            .arg("--retention-flush-interval")
            .arg("1s")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        // `[query_api] tls = true` in the configuration: the API is `https://`.
        let https = config.as_ref().is_some_and(|path| {
            std::fs::read_to_string(path)
                .is_ok_and(|text| section_sets(&text, "query_api", "tls = true"))
        });
        let mut sluice = Sluice {
            child: Some(child),
            data_dir: data_dir.to_path_buf(),
            agent: format!("127.0.0.1:{}", ports.0),
            doppler: format!("127.0.0.1:{}", ports.1),
            api: format!(
                "{}://127.0.0.1:{}",
                if https { "https" } else { "http" },
                ports.2
            ),
            ports,
            elasticsearch: format!("127.0.0.1:{}", source_ports.0),
            syslog: format!("127.0.0.1:{}", source_ports.1),
            otlp_grpc: format!("127.0.0.1:{}", source_ports.2),
            otlp_http: format!("127.0.0.1:{}", source_ports.3),
            source_ports,
            log_path,
            config,
        };
        sluice.wait_ready().await;
        sluice
    }

    /// An HTTP client that trusts the data directory's CA (for `https://` listeners), as the
    /// `sluice` commands do.
    pub fn http_client(&self) -> reqwest::Client {
        let mut builder = reqwest::Client::builder();
        if let Ok(ca) = std::fs::read_to_string(self.data_dir.join("tls").join("ca.pem")) {
            builder = builder.use_preconfigured_tls(sluice_common::tls::https_client(&ca).unwrap());
        }
        builder.build().unwrap()
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let healthy = self
                .http_client()
                .get(format!("{}/healthz", self.api))
                .send()
                .await
                .is_ok_and(|response| response.status().is_success());
            let agent_up = tokio::net::TcpStream::connect(&self.agent).await.is_ok();
            if healthy && agent_up {
                return;
            }
            // A process that exited (say, refusing its configuration) will not become ready.
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                // Unless a failpoint it was started with stopped it, as asked.
                if self.log().contains("reached: aborting") {
                    return;
                }
                panic!(
                    "sluice exited ({status}) before it was ready; its log:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "sluice did not become ready; its log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A handle on a Sluice started some other way (no process of its own to kill).
    pub fn attach(data_dir: &Path, agent: &str, api: &str) -> Sluice {
        Sluice {
            child: None,
            data_dir: data_dir.to_path_buf(),
            agent: agent.to_owned(),
            doppler: String::new(),
            api: api.to_owned(),
            ports: (0, 0, 0),
            elasticsearch: String::new(),
            syslog: String::new(),
            source_ports: (0, 0, 0, 0),
            otlp_grpc: String::new(),
            otlp_http: String::new(),
            log_path: data_dir.with_extension("attached.log"),
            config: None,
        }
    }

    /// Another handle on this Sluice, for a task of the test to talk to it (it does not stop
    /// the process when dropped).
    pub fn attach_clone(&self) -> Sluice {
        let mut handle = Sluice::attach(&self.data_dir, &self.agent, &self.api);
        handle.log_path = self.log_path.clone();
        handle
    }

    /// The process's resident memory now, in bytes (from `/proc`).
    pub fn rss_bytes(&self) -> u64 {
        self.status_bytes("VmRSS")
    }

    /// The process's resident anonymous memory now, in bytes (`RssAnon`): its heap and
    /// stacks, without the file pages it maps (the index's segments, which the kernel may
    /// drop at any time and which count in `VmRSS`).
    pub fn anon_rss_bytes(&self) -> u64 {
        self.status_bytes("RssAnon")
    }

    /// The most resident memory the process has had, in bytes (`VmHWM`).
    pub fn peak_rss_bytes(&self) -> u64 {
        self.status_bytes("VmHWM")
    }

    fn status_bytes(&self, field: &str) -> u64 {
        let pid = self
            .child
            .as_ref()
            .map(Child::id)
            .expect("a process of its own");
        proc_status_bytes(pid, field)
    }

    /// What the process wrote to stderr.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Kills the process with SIGKILL, as a crash would.
    pub fn kill_hard(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// `kill -TERM`, then waits for the orderly shutdown ([`Sluice::restart`] starts it again).
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            terminate(child, "sluice up");
        }
    }

    /// Restarts on the same data directory and ports (killing the process first if it runs).
    pub async fn restart(&mut self) {
        self.kill_hard();
        let restarted = Sluice::start_with(
            &self.data_dir,
            self.ports,
            self.config.clone(),
            Some(self.source_ports),
            &[],
        )
        .await;
        *self = restarted;
    }

    /// The node certificates `sluice up` created.
    pub fn tls_paths(&self) -> TlsPaths {
        let dir = self.data_dir.join("tls");
        TlsPaths {
            ca_cert: dir.join("ca.pem"),
            cert: dir.join("node.pem"),
            key: dir.join("node-key.pem"),
        }
    }

    /// This node's certificates, as a client presents them.
    pub fn client_tls(&self) -> ClientTlsConfig {
        TlsMaterial::load(&self.tls_paths(), "localhost")
            .unwrap()
            .client_config()
    }

    /// A channel to `address` with the given TLS settings.
    pub async fn channel(
        address: &str,
        tls: ClientTlsConfig,
    ) -> Result<Channel, tonic::transport::Error> {
        Endpoint::from_shared(format!("https://{address}"))
            .unwrap()
            .tls_config(tls)?
            .connect()
            .await
    }

    /// A Loggregator ingress client with this node's certificate.
    pub async fn ingress(&self) -> IngressClient<Channel> {
        let channel = Sluice::channel(&self.agent, self.client_tls())
            .await
            .unwrap();
        IngressClient::new(channel).max_encoding_message_size(64 * 1024 * 1024)
    }

    /// `GET /api/v1/search`; returns the status and the JSON body.
    pub async fn search(&self, query: &str, limit: usize) -> (u16, Value) {
        let response = reqwest::Client::new()
            .get(format!("{}/api/v1/search", self.api))
            .query(&[("query", query), ("limit", &limit.to_string())])
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    /// `GET /api/v1/search` with `histogram=<interval>` (limit 1); returns the JSON body.
    pub async fn search_histogram(&self, query: &str, interval: &str) -> Value {
        reqwest::Client::new()
            .get(format!("{}/api/v1/search", self.api))
            .query(&[("query", query), ("histogram", interval), ("limit", "1")])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// `POST /api/v1/sql`; returns the status and the JSON body.
    pub async fn sql(&self, query: &str) -> (u16, Value) {
        let response = reqwest::Client::new()
            .post(format!("{}/api/v1/sql", self.api))
            .json(&serde_json::json!({ "query": query }))
            // A deadline, so a query the server cannot finish fails the test instead of
            // hanging it.
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    /// A single number answered by `query` (its first column of its first row).
    pub async fn sql_number(&self, query: &str) -> u64 {
        let (status, body) = self.sql(query).await;
        assert_eq!(status, 200, "{query}: {body}");
        let row = &body["rows"][0];
        let column = body["columns"][0]["name"]
            .as_str()
            .unwrap_or_else(|| panic!("{query}: no column in {body}"));
        row[column].as_u64().unwrap_or(0)
    }

    /// Waits until `probe` returns `expected`, then returns; fails with the last value seen.
    pub async fn wait_for<F, Fut>(&self, what: &str, expected: u64, timeout: Duration, mut probe: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = u64>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            let value = probe().await;
            if value == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: expected {expected}, still {value} after {timeout:?}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The Prometheus text the query API serves at `/metrics`.
    pub async fn metrics_text(&self) -> String {
        reqwest::get(format!("{}/metrics", self.api))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The total count of a search.
    pub async fn search_total(&self, query: &str) -> u64 {
        let (status, body) = self.search(query, 1).await;
        assert_eq!(status, 200, "{body}");
        body["total"].as_u64().unwrap()
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        self.kill_hard();
        // A failing test shows what the server said, so CI logs explain the failure.
        if std::thread::panicking() {
            eprintln!(
                "--- sluice log ({}) ---\n{}",
                self.log_path.display(),
                self.log()
            );
        }
    }
}

/// The value of the first sample of `name` (with its labels, e.g. `x_total{reason="a"}`) in
/// Prometheus text, or 0 when absent.
pub fn metric_sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// A log envelope with `message` from `source_id`, stamped now.
pub fn log_envelope(source_id: &str, message: impl Into<Vec<u8>>) -> Envelope {
    Envelope {
        timestamp: sluice_common::time::now_nanos(),
        source_id: source_id.to_owned(),
        instance_id: "0".to_owned(),
        message: Some(envelope::Message::Log(Log {
            payload: message.into(),
            r#type: 0,
        })),
        ..Default::default()
    }
}

/// Sends one batch with `Send`.
pub async fn send(
    client: &mut IngressClient<Channel>,
    envelopes: Vec<Envelope>,
) -> Result<(), tonic::Status> {
    client
        .send(EnvelopeBatch { batch: envelopes })
        .await
        .map(|_| ())
}

/// Subscribes to `/api/v1/tail` and returns a receiver of the JSON envelopes it streams.
pub async fn tail(api: &str, source_id: &str) -> tokio::sync::mpsc::UnboundedReceiver<Value> {
    tail_with(api, &[("source_id", source_id)]).await
}

/// Subscribes to `/api/v1/tail` with these query parameters (selectors); the receiver gets
/// the envelopes.
pub async fn tail_with(
    api: &str,
    params: &[(&str, &str)],
) -> tokio::sync::mpsc::UnboundedReceiver<Value> {
    events(&format!("{api}/api/v1/tail"), params, None).await
}

/// Subscribes to a server-sent event stream at `url` (a tail, `/v2/read`) with these query
/// parameters, as the holder of `token` when given; the receiver gets each unnamed event's
/// JSON data.
pub async fn events(
    url: &str,
    params: &[(&str, &str)],
    token: Option<&str>,
) -> tokio::sync::mpsc::UnboundedReceiver<Value> {
    let mut request = reqwest::Client::new().get(url).query(params);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200, "{url} {params:?}");
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = response.bytes_stream();
        let mut buffer = String::new();
        while let Some(Ok(chunk)) = stream.next().await {
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let event: String = buffer.drain(..end + 2).collect();
                // Envelopes only: named events (open, heartbeat, dropped, close) are not.
                if event.lines().any(|line| line.starts_with("event:")) {
                    continue;
                }
                for line in event.lines() {
                    if let Some(data) = line.strip_prefix("data:")
                        && let Ok(value) = serde_json::from_str::<Value>(data.trim_start())
                        && sender.send(value).is_err()
                    {
                        return;
                    }
                }
            }
        }
    });
    receiver
}

/// Whether `[section]` of the TOML `text` holds the line `line`.
fn section_sets(text: &str, section: &str, line: &str) -> bool {
    let mut inside = false;
    for row in text.lines().map(str::trim) {
        if row.starts_with('[') {
            inside = row == format!("[{section}]");
        } else if inside && row == line {
            return true;
        }
    }
    false
}

/// An OTLP export of one log line `text` from service `service`.
pub fn otlp_log_request(
    service: &str,
    text: &str,
) -> sluice_proto::opentelemetry::proto::collector::logs::v1::ExportLogsServiceRequest {
    use sluice_proto::opentelemetry::proto::collector::logs::v1::ExportLogsServiceRequest;
    use sluice_proto::opentelemetry::proto::common::v1::{AnyValue, KeyValue, any_value};
    use sluice_proto::opentelemetry::proto::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use sluice_proto::opentelemetry::proto::resource::v1::Resource;
    let string = |text: &str| AnyValue {
        value: Some(any_value::Value::StringValue(text.to_owned())),
    };
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".to_owned(),
                    value: Some(string(service)),
                }],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: vec![LogRecord {
                    body: Some(string(text)),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// Runs `sluice ARGUMENTS` (with `--data-dir DATA_DIR` when given, and no `$SLUICE_TOKEN`),
/// which must succeed; returns what it printed, trimmed.
pub fn sluice_command(arguments: &[&str], data_dir: Option<&Path>) -> String {
    let mut command = Command::new(sluice_binary());
    command.args(arguments).env_remove("SLUICE_TOKEN");
    if let Some(data_dir) = data_dir {
        command.arg("--data-dir").arg(data_dir);
    }
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "sluice {arguments:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// The body of `GET url` as the holder of `token`.
pub async fn text_as(url: &str, token: &str) -> String {
    reqwest::Client::new()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The S3 server `scripts/services start s3` runs: `(endpoint, bucket, key id, secret)`.
pub fn s3_server() -> (String, String, String, String) {
    let read = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!("{name} is not set: start the S3 test server with `scripts/services start s3` and load its variables with `eval \"$(scripts/services env)\"` (scripts/test does both)")
        })
    };
    (
        read("SLUICE_TEST_S3_ENDPOINT"),
        read("SLUICE_TEST_S3_BUCKET"),
        read("SLUICE_TEST_S3_ACCESS_KEY_ID"),
        read("SLUICE_TEST_S3_SECRET_ACCESS_KEY"),
    )
}

/// The Kafka-protocol broker `scripts/services start kafka` runs: its bootstrap address.
pub fn kafka_brokers() -> String {
    std::env::var("SLUICE_TEST_KAFKA_BROKERS").unwrap_or_else(|_| {
        panic!("SLUICE_TEST_KAFKA_BROKERS is not set: start the broker with `scripts/services start kafka` and load its variables with `eval \"$(scripts/services env)\"` (scripts/test does both)")
    })
}

/// The Python interpreter `scripts/services start <service>` installed, named by the
/// environment variable `variable`; fails saying how to get it.
pub fn test_python(variable: &str, service: &str) -> String {
    std::env::var(variable).unwrap_or_else(|_| {
        panic!("{variable} is not set: create it with `scripts/services start {service}` and load its variables with `eval \"$(scripts/services env)\"` (scripts/test does both)")
    })
}

/// One role (`agent`, `doppler`, `indexer`, `retention`, `query-api`) as its own process.
pub struct RoleProcess {
    child: Option<Child>,
    role: String,
    config: PathBuf,
    log_path: PathBuf,
    netns: Option<String>,
}

impl RoleProcess {
    /// Starts `sluice <role> --config <config>`, logging to `<config>.<role>.log`.
    pub fn start(role: &str, config: &Path) -> RoleProcess {
        RoleProcess::launch(role, config, None)
    }

    /// Starts it inside the network namespace `netns` (`ip netns exec`, which leaves the
    /// process's id the role's own).
    pub fn start_in(netns: &str, role: &str, config: &Path) -> RoleProcess {
        RoleProcess::launch(role, config, Some(netns.to_owned()))
    }

    fn launch(role: &str, config: &Path, netns: Option<String>) -> RoleProcess {
        let log_path = config.with_extension(format!("{role}.log"));
        let mut process = RoleProcess {
            child: None,
            role: role.to_owned(),
            config: config.to_path_buf(),
            log_path,
            netns,
        };
        process.spawn();
        process
    }

    /// The process's id, while it runs.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("running")
    }

    fn spawn(&mut self) {
        // Append, so the log of a restarted process keeps its earlier life.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap();
        let mut command = match &self.netns {
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns]).arg(sluice_binary());
                command
            }
            None => Command::new(sluice_binary()),
        };
        let child = command
            .arg(&self.role)
            .arg("--config")
            .arg(&self.config)
            .env(
                "RUST_LOG",
                std::env::var("SLUICE_TEST_LOG").unwrap_or_else(|_| "info".to_owned()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// `kill -9`.
    pub fn kill_hard(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `kill -TERM`, then waits up to 60 s for the process to finish its orderly shutdown.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            terminate(child, &self.role);
        }
    }

    /// Starts the process again after [`RoleProcess::kill_hard`] or [`RoleProcess::stop`].
    pub fn restart(&mut self) {
        self.kill_hard();
        self.spawn();
    }

    /// What the process wrote to stderr.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

/// `kill -TERM`, then waits up to 60 s for `child` to finish its orderly shutdown.
fn terminate(mut child: Child, what: &str) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("{what} did not stop within 60 s of SIGTERM");
}

impl Drop for RoleProcess {
    fn drop(&mut self) {
        self.kill_hard();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!(
                "--- {} (last lines) ---\n{}",
                self.log_path.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

/// A test server of the test's own (a Kafka-protocol broker or an S3 server) on a fixed
/// loopback port, which the test can stop and start again to make it unreachable for a while.
pub struct PrivateServer {
    program: PathBuf,
    args: Vec<String>,
    dir: PathBuf,
    /// `host:port` (`127.0.0.1` unless started in a network namespace).
    pub address: String,
    netns: Option<String>,
    child: Option<Child>,
}

fn binary_from_env(name: &str) -> PathBuf {
    let path = std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: install and start the test servers with `scripts/services start s3 kafka` and load their variables with `eval \"$(scripts/services env)\"` (scripts/test does both)")
    });
    PathBuf::from(path)
}

impl PrivateServer {
    /// A tansu broker on SQLite storage in `dir`.
    pub async fn kafka(dir: &Path) -> PrivateServer {
        PrivateServer::kafka_at(dir, None, "127.0.0.1").await
    }

    /// A tansu broker listening on `ip`, inside the network namespace `netns` if given.
    pub async fn kafka_at(dir: &Path, netns: Option<&str>, ip: &str) -> PrivateServer {
        let port = free_port();
        let url = format!("tcp://{ip}:{port}");
        let args = [
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
            "--storage-engine",
            "sqlite://tansu.db",
            "--silent",
        ]
        .map(str::to_owned)
        .to_vec();
        PrivateServer::launch(
            binary_from_env("SLUICE_TEST_TANSU_BIN"),
            args,
            dir,
            netns,
            format!("{ip}:{port}"),
        )
        .await
    }

    /// An s3s-fs server over `dir` with one bucket, `sluice-test`; credentials as in
    /// [`s3_server`].
    pub async fn s3(dir: &Path) -> PrivateServer {
        PrivateServer::s3_at(dir, None, "127.0.0.1").await
    }

    /// An s3s-fs server listening on `ip`, inside the network namespace `netns` if given.
    pub async fn s3_at(dir: &Path, netns: Option<&str>, ip: &str) -> PrivateServer {
        std::fs::create_dir_all(dir.join("sluice-test")).unwrap();
        let port = free_port();
        let args = vec![
            "--host".to_owned(),
            ip.to_owned(),
            "--port".to_owned(),
            port.to_string(),
            "--access-key".to_owned(),
            "sluice-test-key".to_owned(),
            "--secret-key".to_owned(),
            "sluice-test-secret".to_owned(),
            dir.display().to_string(),
        ];
        PrivateServer::launch(
            binary_from_env("SLUICE_TEST_S3S_FS_BIN"),
            args,
            dir,
            netns,
            format!("{ip}:{port}"),
        )
        .await
    }

    async fn launch(
        program: PathBuf,
        args: Vec<String>,
        dir: &Path,
        netns: Option<&str>,
        address: String,
    ) -> PrivateServer {
        std::fs::create_dir_all(dir).unwrap();
        let mut server = PrivateServer {
            program,
            args,
            dir: dir.to_path_buf(),
            address,
            netns: netns.map(str::to_owned),
            child: None,
        };
        server.start().await;
        server
    }

    /// Stops the server (`kill -9`): clients see connections refused.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and storage, and waits until it listens.
    pub async fn start(&mut self) {
        self.stop();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .unwrap();
        let mut command = match &self.netns {
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns]).arg(&self.program);
                command
            }
            None => Command::new(&self.program),
        };
        let child = command
            .args(&self.args)
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| panic!("failed to start {}: {error}", self.program.display()));
        self.child = Some(child);
        wait_listening(&self.address, Duration::from_secs(60)).await;
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until `address` accepts TCP connections.
pub async fn wait_listening(address: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while tokio::net::TcpStream::connect(address).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing listens on {address} after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
