//! How `POST /api/v1/sql` runs a query: on DataFusion's own runtime (so a heavy query never
//! stalls the API's threads), at most `query_api.sql.max_concurrent` at once (more get 429),
//! each with a memory pool of `query_api.sql.memory_bytes` (operators that can spill do, to
//! the temporary directory; a query that needs more fails with 413), a deadline of
//! `query_api.sql.timeout` (503 when it passes before the first rows, an error at the end of
//! the stream after), and cancelled as soon as the client goes away. Answers stream in the
//! format asked for (see [`super::format`]), cut at `query_api.max_sql_rows`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use datafusion::sql::parser::Statement;
use futures::StreamExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use sluice_common::telemetry::Telemetry;
use sluice_common::tenancy::Scope;
use sluice_common::{ErrorKind, SluiceError};
use sluice_retention::store::Archive;
use sqlparser::ast::Statement as SqlStatement;
use tokio::sync::{Semaphore, mpsc};

use super::format::{Encoder, Format};
use super::{classify, parse};

/// Limits on SQL queries.
#[derive(Debug, Clone, Copy)]
pub struct EngineLimits {
    /// Longest text, in bytes.
    pub max_bytes: usize,
    /// Rows in an answer before it is cut.
    pub max_rows: usize,
    /// Longest a query may run.
    pub timeout: Duration,
    /// Memory one query may hold before it spills or fails.
    pub memory_bytes: usize,
    /// Queries running at once.
    pub max_concurrent: usize,
    /// Threads of DataFusion's runtime.
    pub threads: usize,
}

/// A runtime that is shut down without blocking when the engine goes (dropping a Tokio
/// runtime inside another one would panic).
struct OwnRuntime(Option<tokio::runtime::Runtime>);

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// The SQL engine's counters.
#[derive(Clone)]
struct EngineMetrics {
    running: Gauge,
    /// Queries that ended other than by answering in full, by reason.
    stopped: Family<Vec<(String, String)>, Counter>,
}

impl EngineMetrics {
    fn stopped(&self, reason: &'static str) {
        self.stopped
            .get_or_create(&vec![("reason".to_owned(), reason.to_owned())])
            .inc();
    }
}

/// Runs SQL queries within [`EngineLimits`].
#[derive(Clone)]
pub struct SqlEngine {
    runtime: Arc<OwnRuntime>,
    permits: Arc<Semaphore>,
    limits: EngineLimits,
    metrics: EngineMetrics,
}

/// A streamed answer: its format and the chunks of its body.
pub struct Answer {
    /// The format of the body.
    pub format: Format,
    /// Chunks of the body, in order; an error ends it.
    pub body: mpsc::Receiver<Result<Bytes, std::io::Error>>,
    /// The row limit the answer is cut at.
    pub max_rows: usize,
}

impl SqlEngine {
    /// Starts DataFusion's runtime.
    pub fn new(limits: EngineLimits, telemetry: &Telemetry) -> Result<SqlEngine, SluiceError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(limits.threads)
            .thread_name("sluice-sql")
            .enable_all()
            .build()
            .map_err(|error| {
                SluiceError::internal(format!("failed to start the SQL runtime: {error}"))
            })?;
        Ok(SqlEngine {
            runtime: Arc::new(OwnRuntime(Some(runtime))),
            permits: Arc::new(Semaphore::new(limits.max_concurrent)),
            limits,
            metrics: EngineMetrics {
                running: telemetry.register(
                    "sluice_query_sql_running",
                    "SQL queries running now",
                    Gauge::default(),
                ),
                stopped: telemetry.register(
                    "sluice_query_sql_stopped",
                    "SQL queries that did not run to the end, by reason: timeout, memory, disconnected, busy, failed",
                    Family::default(),
                ),
            },
        })
    }

    /// The limits.
    pub fn limits(&self) -> EngineLimits {
        self.limits
    }

    /// Plans `query` and starts it; returns once its first chunk is ready (or it failed, with
    /// the error's status), then streams the rest.
    pub async fn start(
        &self,
        archive: &Archive,
        query: String,
        format: Format,
        scope: Option<Scope>,
    ) -> Result<Answer, SluiceError> {
        let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
            self.metrics.stopped("busy");
            return Err(SluiceError::new(
                ErrorKind::ResourceExhausted,
                format!(
                    "{} SQL queries are running, the most query_api.sql.max_concurrent allows; retry shortly",
                    self.limits.max_concurrent
                ),
            ));
        };
        let Some(runtime) = self.runtime.0.as_ref() else {
            return Err(SluiceError::unavailable("the SQL runtime has stopped"));
        };
        let (sender, mut receiver) = mpsc::channel(8);
        let limits = self.limits;
        let metrics = self.metrics.clone();
        let archive = archive.clone();
        let (first_sender, first) = tokio::sync::oneshot::channel();
        runtime.spawn(async move {
            let _permit = permit;
            metrics.running.inc();
            let outcome = execute(
                archive,
                (query, scope),
                format,
                limits,
                sender,
                first_sender,
            )
            .await;
            metrics.running.dec();
            if let Err(reason) = outcome {
                metrics.stopped(reason);
            }
        });
        // The first chunk, or the error that came before it, decides the status.
        match first.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(error),
            Err(_) => {
                return Err(SluiceError::internal(
                    "the SQL task ended without an answer",
                ));
            }
        }
        // Nothing is lost: the first chunk waits in the channel.
        let _ = &mut receiver;
        Ok(Answer {
            format,
            body: receiver,
            max_rows: limits.max_rows,
        })
    }
}

/// What stopped a query early, for the metric.
type Stopped = &'static str;

fn timed_out(limits: &EngineLimits) -> SluiceError {
    SluiceError::unavailable(format!(
        "the query ran past query_api.sql.timeout ({:?}) and was cancelled",
        limits.timeout
    ))
}

fn out_of_memory(limits: &EngineLimits, error: &DataFusionError) -> SluiceError {
    SluiceError::new(
        ErrorKind::TooLarge,
        format!(
            "the query needs more memory than query_api.sql.memory_bytes ({} bytes) allows, even spilling to disk: {error}",
            limits.memory_bytes
        ),
    )
}

/// Plans and runs `query`, sending encoded chunks; reports the first chunk (or the error
/// before it) on `first`.
async fn execute(
    archive: Archive,
    (query, scope): (String, Option<Scope>),
    format: Format,
    limits: EngineLimits,
    sender: mpsc::Sender<Result<Bytes, std::io::Error>>,
    first: tokio::sync::oneshot::Sender<Result<(), SluiceError>>,
) -> Result<(), Stopped> {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + limits.timeout;
    let mut first = Some(first);
    let fail = |first: &mut Option<tokio::sync::oneshot::Sender<Result<(), SluiceError>>>,
                error: SluiceError| {
        if let Some(first) = first.take() {
            let _ = first.send(Err(error));
        }
    };
    let planned = tokio::time::timeout_at(
        deadline,
        plan(
            &archive,
            &query,
            limits.max_bytes,
            Some(limits.memory_bytes),
            scope.as_ref(),
        ),
    )
    .await;
    let (mut stream, schema) = match planned {
        Ok(Ok(planned)) => planned,
        Ok(Err(error)) => {
            fail(&mut first, error);
            return Err("failed");
        }
        Err(_) => {
            fail(&mut first, timed_out(&limits));
            return Err("timeout");
        }
    };
    let mut encoder = Encoder::new(format, &schema);
    let mut rows = 0_usize;
    let mut pending: Vec<Bytes> = vec![encoder.start()];
    let mut truncated = false;
    let end: Result<(), (SluiceError, Stopped)> = loop {
        let next = tokio::select! {
            next = tokio::time::timeout_at(deadline, stream.next()) => next,
            () = sender.closed() => break Err((SluiceError::invalid("the client went away"), "disconnected")),
        };
        let batch = match next {
            Err(_) => break Err((timed_out(&limits), "timeout")),
            Ok(None) => break Ok(()),
            Ok(Some(Err(error))) => {
                let stopped = if matches!(error.find_root(), DataFusionError::ResourcesExhausted(_))
                {
                    (out_of_memory(&limits, &error), "memory")
                } else {
                    (classify(error), "failed")
                };
                break Err(stopped);
            }
            Ok(Some(Ok(batch))) => batch,
        };
        let room = limits.max_rows - rows;
        let batch = if batch.num_rows() > room {
            truncated = true;
            batch.slice(0, room)
        } else {
            batch
        };
        rows += batch.num_rows();
        match encoder.batch(&batch) {
            Ok(chunk) => pending.push(chunk),
            Err(error) => break Err((error, "failed")),
        }
        if let Some(first) = first.take() {
            let _ = first.send(Ok(()));
        }
        for chunk in pending.drain(..) {
            if sender.send(Ok(chunk)).await.is_err() {
                return Err("disconnected");
            }
        }
        if truncated {
            break Ok(());
        }
    };
    match end {
        Ok(()) => {
            pending.push(encoder.finish(truncated, started.elapsed(), None));
            if let Some(first) = first.take() {
                let _ = first.send(Ok(()));
            }
            for chunk in pending {
                if sender.send(Ok(chunk)).await.is_err() {
                    return Err("disconnected");
                }
            }
            Ok(())
        }
        Err((error, stopped)) => {
            if first.is_some() {
                // Nothing sent yet: the error is the answer, with its status.
                fail(&mut first, error);
            } else if let Some(tail) = encoder.finish_with_error(&error, started.elapsed()) {
                let _ = sender.send(Ok(tail)).await;
            } else {
                let _ = sender
                    .send(Err(std::io::Error::other(error.message().to_owned())))
                    .await;
            }
            Err(stopped)
        }
    }
}

/// A started query: its stream of batches and their schema.
/// Whether `statement` is an `EXPLAIN` of any form.
fn explains(statement: &Statement) -> bool {
    match statement {
        Statement::Explain(_) => true,
        Statement::Statement(inner) => matches!(
            **inner,
            SqlStatement::Explain { .. } | SqlStatement::ExplainTable { .. }
        ),
        _ => false,
    }
}

type Started = (
    SendableRecordBatchStream,
    datafusion::arrow::datatypes::SchemaRef,
);

/// Parses `query` (at most `max_bytes` long), plans it and starts it in a fresh session over
/// the archive's latest snapshot, with a memory pool of `memory_bytes` when given. Anything
/// that fails before execution (unknown tables or columns, DDL or DML) is the query's fault.
///
/// A `scope` gives the session views of the tables that hold only its records
/// (`sluice_retention::catalog::sql::register_tables`); the session has no
/// `information_schema`, no URL tables and no DDL, so the views are all it can name.
pub(super) async fn plan(
    archive: &Archive,
    query: &str,
    max_bytes: usize,
    memory_bytes: Option<usize>,
    scope: Option<&Scope>,
) -> Result<Started, SluiceError> {
    let mut runtime = RuntimeEnvBuilder::new();
    if let Some(memory_bytes) = memory_bytes {
        runtime = runtime.with_memory_limit(memory_bytes, 1.0);
    }
    let runtime = runtime
        .build_arc()
        .map_err(|error| SluiceError::internal(format!("failed to set up SQL: {error}")))?;
    let context = SessionContext::new_with_config_rt(SessionConfig::new(), runtime);
    sluice_retention::catalog::sql::register_tables(&context, archive, scope).await?;
    let state = context.state();
    let recursion_limit = state.config().options().sql_parser.recursion_limit.get();
    let statement = parse(query, max_bytes, recursion_limit)?;
    if scope.is_some() && explains(&statement) {
        return Err(SluiceError::new(
            ErrorKind::PermissionDenied,
            "EXPLAIN shows the plan beneath a tenant's views (the files and row counts of every tenant); it takes an administrator of the default tenant",
        ));
    }
    let options = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    let plan = state
        .statement_to_plan(statement)
        .await
        .map_err(|error| SluiceError::invalid(error.to_string()))?;
    options
        .verify_plan(&plan)
        .map_err(|error| SluiceError::invalid(error.to_string()))?;
    let frame = context
        .execute_logical_plan(plan)
        .await
        .map_err(|error| SluiceError::invalid(error.to_string()))?;
    let schema = Arc::new(frame.schema().as_arrow().clone());
    let stream = frame.execute_stream().await.map_err(classify)?;
    Ok((stream, schema))
}
