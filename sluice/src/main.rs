//! `sluice`: every role of Sluice in one binary, and the clients that talk to it.
//!
//! - `sluice up` runs agent, doppler, indexer, retention and the query API in one process on
//!   the embedded WAL bus, creating a local CA on first start so mutual TLS is on by default.
//! - `sluice agent|doppler|indexer|retention|query-api --config FILE` run one role.
//! - `sluice emit|tail|search|sql` talk to a running Sluice.

mod archive;
mod certs;
mod client;
mod config;
mod output;
mod patterns;
mod server;
mod tail;
mod tokens;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// mimalloc rather than glibc's malloc: the pipeline allocates per envelope (decoded batches,
/// documents, Arrow rows), and glibc's allocator was a fifth of the CPU of `sluice up`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Sluice: log and metrics aggregation. Agents → dopplers → bus → search index and Parquet archive.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about, long_about = None)]
struct Cli {
    /// Log filter, as in RUST_LOG (e.g. `info`, `sluice_indexer=debug`); RUST_LOG wins if set.
    #[arg(long, global = true, default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every role in one process on the embedded bus.
    Up(ServerArgs),
    /// Run the agent alone (Loggregator ingress, forwarding to dopplers).
    Agent(ServerArgs),
    /// Run a doppler alone (fan-in, bus, live egress).
    Doppler(ServerArgs),
    /// Run an indexer alone (needs a bus shared between processes).
    Indexer(ServerArgs),
    /// Run retention alone (needs a bus shared between processes).
    Retention(ServerArgs),
    /// Run the query API alone (reads the index and archive directories).
    QueryApi(ServerArgs),
    /// Send log lines through an agent: lines from stdin, or `--count` generated ones.
    Emit(EmitArgs),
    /// Follow live envelopes.
    Tail(TailArgs),
    /// Full-text search, newest first.
    Search(SearchArgs),
    /// The patterns of the lines a query matches, largest first; with `--compare`, what is
    /// new, what rose and what fell against the window before.
    Patterns(PatternsArgs),
    /// SQL over the archive.
    Sql(SqlArgs),
    /// What the archive holds, from its catalog.
    Archive(ArchiveArgs),
    /// The loss audit: what each agent's batches became, and every counted refusal or drop.
    Audit(AuditArgs),
    /// API tokens: create, list, revoke (`[query_api.auth]`).
    Tokens(tokens::TokensArgs),
    /// The local CA's certificates: issue, rotate, rotate the CA (no restart needed).
    Certs(certs::CertsArgs),
}

/// Options shared by the server roles; flags override the config file.
#[derive(Debug, Args)]
struct ServerArgs {
    /// Configuration file (see config/sluice.example.toml); defaults apply without one.
    #[arg(long)]
    config: Option<PathBuf>,
    /// State directory (overrides `data_dir`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Agent ingress address (overrides `agent.listen`).
    #[arg(long)]
    agent_listen: Option<SocketAddr>,
    /// Doppler address (overrides `doppler.listen`, and where the agent and tail connect).
    #[arg(long)]
    doppler_listen: Option<SocketAddr>,
    /// Query API address (overrides `query_api.listen`).
    #[arg(long)]
    http_listen: Option<SocketAddr>,
    /// Elasticsearch `_bulk` source address (overrides `agent.elasticsearch.listen`).
    #[arg(long)]
    elasticsearch_listen: Option<SocketAddr>,
    /// Syslog source address, TCP and UDP (overrides `agent.syslog.listen`).
    #[arg(long)]
    syslog_listen: Option<SocketAddr>,
    /// OTLP/gRPC source address (overrides `agent.otlp.grpc_listen`).
    #[arg(long)]
    otlp_grpc_listen: Option<SocketAddr>,
    /// OTLP/HTTP source address (overrides `agent.otlp.http_listen`).
    #[arg(long)]
    otlp_http_listen: Option<SocketAddr>,
    /// Start no agent source but the Loggregator ingress (overrides every
    /// `agent.<source>.enabled`).
    #[arg(long)]
    no_sources: bool,
    /// Do not sample host metrics (overrides `agent.host_metrics.enabled`).
    #[arg(long)]
    no_host_metrics: bool,
    /// Retention flush interval, e.g. `2s` (overrides `retention.flush_interval`).
    #[arg(long)]
    retention_flush_interval: Option<String>,
    /// Indexer and retention only: consume the embedded WAL in `bus.wal_dir` that a stopped
    /// process (`sluice up` or `sluice doppler`) left there. Nothing else may have it open.
    #[arg(long)]
    replay_wal: bool,
}

/// How client commands print answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OutputFormat {
    /// Aligned columns for people.
    Table,
    /// JSON for programs.
    Json,
}

/// Where a client finds Sluice and its credentials.
#[derive(Debug, Args)]
struct ClientArgs {
    /// Query API base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    api: String,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    output: OutputFormat,
    #[command(flatten)]
    credentials: Credentials,
}

impl ClientArgs {
    /// An HTTP client that sends the token with every request.
    fn http(&self) -> anyhow::Result<reqwest::Client> {
        self.credentials.http()
    }
}

/// The token a client sends.
#[derive(Debug, Args)]
struct Credentials {
    /// API token; else `$SLUICE_TOKEN`; else the admin token `sluice up` keeps in
    /// `<data-dir>/auth/admin.token`, if there is one.
    #[arg(long)]
    token: Option<String>,
    /// Data directory of the `sluice up` to use the admin token and (for `https://`) the CA of.
    #[arg(long, default_value = "./sluice-data")]
    data_dir: PathBuf,
}

impl Credentials {
    /// The token to send, if any.
    fn token(&self) -> anyhow::Result<Option<String>> {
        if let Some(token) = &self.token {
            return Ok(Some(token.clone()));
        }
        if let Ok(token) = std::env::var("SLUICE_TOKEN")
            && !token.trim().is_empty()
        {
            return Ok(Some(token.trim().to_owned()));
        }
        let path = tokens::admin_token_path(&self.data_dir);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text.trim().to_owned())),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(anyhow::anyhow!(
                "failed to read {}: {error}",
                path.display()
            )),
        }
    }

    /// An HTTP client that sends the token with every request.
    fn http(&self) -> anyhow::Result<reqwest::Client> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = self.token()? {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| anyhow::anyhow!("the token holds characters a header cannot"))?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let mut builder = reqwest::Client::builder().default_headers(headers);
        // `https://` to a Sluice query API: trust the data directory's CA, as every Sluice
        // process does.
        let ca = self.data_dir.join("tls").join("ca.pem");
        if let Ok(ca_pem) = std::fs::read_to_string(&ca) {
            builder = builder.use_preconfigured_tls(sluice_common::tls::https_client(&ca_pem)?);
        }
        Ok(builder.build()?)
    }
}

#[derive(Debug, Args)]
struct EmitArgs {
    /// source_id of every envelope.
    #[arg(long)]
    source_id: String,
    /// instance_id of every envelope.
    #[arg(long, default_value = "0")]
    instance_id: String,
    /// Send this many generated lines instead of reading stdin.
    #[arg(long)]
    count: Option<u64>,
    /// Envelopes per request.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// With `--count`: spread the lines' timestamps evenly over this long before now
    /// (`7d`, `12h`), oldest first, as a week of history would be; without, each line is
    /// stamped when sent.
    #[arg(long)]
    spread: Option<String>,
    /// Agent ingress address.
    #[arg(long, default_value = "127.0.0.1:3458")]
    agent: String,
    /// Directory holding `tls/ca.pem`, `tls/node.pem`, `tls/node-key.pem` (as `sluice up` makes).
    #[arg(long, default_value = "./sluice-data")]
    data_dir: PathBuf,
    /// Output format of the summary.
    #[arg(long, value_enum, default_value = "table")]
    output: OutputFormat,
}

#[derive(Debug, Args)]
struct TailArgs {
    /// Only these sources (repeatable); all when absent.
    #[arg(long)]
    source_id: Vec<String>,
    /// Only these instances (repeatable).
    #[arg(long)]
    instance_id: Vec<String>,
    /// Only these envelope types (log, counter, gauge, timer, event; repeatable).
    #[arg(long = "type", value_name = "TYPE")]
    types: Vec<String>,
    /// Only logs of this type (OUT or ERR).
    #[arg(long)]
    log_type: Option<String>,
    /// Only envelopes with this tag (NAME=VALUE; repeatable, each must hold).
    #[arg(long, value_name = "NAME=VALUE")]
    tag: Vec<String>,
    /// Only lines matching this query (the search language: terms, phrases, NOT, fields).
    #[arg(long)]
    query: Option<String>,
    /// Start with the matching lines of this long ago (`10m`, `2h`) or since this time
    /// (RFC 3339), then go on live.
    #[arg(long, conflicts_with_all = ["tail", "cursor"])]
    since: Option<String>,
    /// Start with the last N matching lines, then go on live.
    #[arg(long, value_name = "N", conflicts_with = "cursor")]
    tail: Option<usize>,
    /// Resume exactly where an earlier tail stopped (the cursor it printed when it ended).
    #[arg(long)]
    cursor: Option<String>,
    /// Stop after this many envelopes.
    #[arg(long)]
    count: Option<u64>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Args)]
struct SearchArgs {
    /// Query (Tantivy syntax; terms are ANDed; `*` matches all).
    query: String,
    /// Start of the range (RFC 3339, or seconds/ms/ns since the epoch).
    #[arg(long)]
    start: Option<String>,
    /// End of the range, exclusive.
    #[arg(long)]
    end: Option<String>,
    /// Most hits.
    #[arg(long, default_value_t = 100)]
    limit: usize,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Args)]
struct PatternsArgs {
    /// Query (the search syntax; `*` matches all).
    query: String,
    /// How far back the range starts from its end (`15m`, `1h`, `2d`); default an hour.
    #[arg(long, conflicts_with = "start")]
    since: Option<String>,
    /// Start of the range (RFC 3339, or seconds/ms/ns since the epoch).
    #[arg(long)]
    start: Option<String>,
    /// End of the range, exclusive; default now.
    #[arg(long)]
    end: Option<String>,
    /// Step of the sparkline counts (default: the range in 60 steps).
    #[arg(long)]
    step: Option<String>,
    /// Compare with the window of this length just before the range (`1h`).
    #[arg(long)]
    compare: Option<String>,
    /// The factor a rate must change by to count as risen or fallen.
    #[arg(long, default_value_t = 2.0)]
    factor: f64,
    /// Most patterns.
    #[arg(long, default_value_t = 30)]
    limit: usize,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Args)]
struct AuditArgs {
    /// Only these sources (repeatable; all when absent).
    #[arg(long)]
    source_id: Vec<String>,
    /// Start of the range (RFC 3339, or seconds/ms/ns since the epoch); default an hour ago.
    #[arg(long)]
    start: Option<String>,
    /// End of the range, exclusive; default now.
    #[arg(long)]
    end: Option<String>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Args)]
struct SqlArgs {
    /// The query (read-only).
    query: String,
    /// Query API base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    api: String,
    /// Output format: aligned columns, the JSON answer, CSV with a header, or a JSON object
    /// per row (both streamed as they arrive).
    #[arg(long, value_enum, default_value = "table")]
    output: SqlOutput,
    #[command(flatten)]
    credentials: Credentials,
}

/// How `sluice sql` prints its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SqlOutput {
    /// Aligned columns for people.
    Table,
    /// The JSON answer.
    Json,
    /// CSV with a header line.
    Csv,
    /// One JSON object per row.
    Ndjson,
}

#[derive(Debug, Args)]
struct ArchiveArgs {
    #[command(subcommand)]
    command: ArchiveCommand,
}

#[derive(Debug, Subcommand)]
enum ArchiveCommand {
    /// Per table: partitions, files, rows, bytes and the time range.
    Stats(ClientArgs),
    /// Compaction: with `--now`, merge every hour's small files at once and show the progress;
    /// without, show how the latest round went.
    Compact {
        /// Compact everything now instead of waiting for the schedule.
        #[arg(long)]
        now: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Apply the `[[retention.expiry]]` policies now and print what left the archive; with
    /// `--dry-run`, print what would leave and change nothing.
    Expire {
        /// Report only.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Per hour partition: files, rows and bytes.
    Ls {
        /// One table only (logs, counters, gauges, timers, events, pattern_counts).
        #[arg(long)]
        table: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cli.log))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        // A log line that cannot be written (stderr on a full disk) is dropped. Left on, the
        // subscriber reports the failure with eprintln!, which panics when stderr fails too,
        // in whichever task or thread was logging (found with the data directory and the log
        // on one full disk: the agent ingress's connections died).
        .log_internal_errors(false)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: failed to start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Up(args) => server::up(args).await,
            Command::Agent(args) => server::role(server::Role::Agent, args).await,
            Command::Doppler(args) => server::role(server::Role::Doppler, args).await,
            Command::Indexer(args) => server::role(server::Role::Indexer, args).await,
            Command::Retention(args) => server::role(server::Role::Retention, args).await,
            Command::QueryApi(args) => server::role(server::Role::QueryApi, args).await,
            Command::Emit(args) => client::emit(args).await,
            Command::Tail(args) => tail::tail(args).await,
            Command::Search(args) => client::search(args).await,
            Command::Patterns(args) => patterns::patterns(args).await,
            Command::Sql(args) => client::sql(args).await,
            Command::Archive(args) => archive::archive(args).await,
            Command::Audit(args) => client::audit(args).await,
            Command::Tokens(args) => tokens::tokens(args),
            Command::Certs(args) => certs::certs(args),
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // The reader of stdout went away (`sluice search … | head`): done, as `ls | head` is.
        Err(error)
            if error.chain().any(|cause| {
                cause
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|error| error.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            std::process::ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
