//! Read-only SQL over the archive with DataFusion.
//!
//! Each query gets a fresh session (so files written since the last query are seen) with the
//! archive's tables registered. DDL, DML (`INSERT`, `COPY`, …) and statements (`SET`, …) are
//! refused at planning time with a 400.

use std::time::Instant;

use datafusion::arrow::json::ArrayWriter;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::prelude::{SQLOptions, SessionContext};
use futures::StreamExt;
use serde::Serialize;
use sluice_common::{ErrorKind, SluiceError};
use sluice_retention::store::Archive;

/// One column of an answer.
#[derive(Debug, Serialize)]
pub struct Column {
    /// Column name.
    pub name: String,
    /// Arrow type, as text.
    pub r#type: String,
}

/// The answer to a query.
#[derive(Debug, Serialize)]
pub struct SqlResponse {
    /// Columns in order.
    pub columns: Vec<Column>,
    /// Rows as JSON objects keyed by column name (null values are omitted).
    pub rows: Vec<serde_json::Map<String, serde_json::Value>>,
    /// Whether the answer was cut at the row limit.
    pub truncated: bool,
    /// Milliseconds spent.
    pub took_ms: u64,
}

fn classify(error: DataFusionError) -> SluiceError {
    let message = error.to_string();
    match error.find_root() {
        DataFusionError::SQL(..)
        | DataFusionError::Plan(_)
        | DataFusionError::SchemaError(..)
        | DataFusionError::NotImplemented(_) => SluiceError::invalid(message),
        DataFusionError::Execution(text)
            if text.contains("not supported") || text.contains("not allowed") =>
        {
            SluiceError::invalid(message)
        }
        _ => SluiceError::new(ErrorKind::Internal, message),
    }
}

/// Runs `query` against `archive`, returning at most `max_rows` rows.
pub async fn run_query(
    archive: &Archive,
    query: &str,
    max_rows: usize,
) -> Result<SqlResponse, SluiceError> {
    let started = Instant::now();
    if query.trim().is_empty() {
        return Err(SluiceError::invalid("empty query"));
    }
    let context = SessionContext::new();
    sluice_retention::catalog::register_tables(&context, archive)?;
    let options = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    // Anything that fails before execution (syntax, unknown columns, DDL or DML refused by
    // the options above) is the query's fault.
    let frame = context
        .sql_with_options(query, options)
        .await
        .map_err(|error| SluiceError::invalid(error.to_string()))?;
    let schema = frame.schema().as_arrow().clone();
    let columns = schema
        .fields()
        .iter()
        .map(|field| Column {
            name: field.name().clone(),
            r#type: field.data_type().to_string(),
        })
        .collect();
    let mut stream: SendableRecordBatchStream = frame.execute_stream().await.map_err(classify)?;
    let mut batches: Vec<RecordBatch> = Vec::new();
    let mut rows = 0;
    let mut truncated = false;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(classify)?;
        if rows + batch.num_rows() > max_rows {
            batches.push(batch.slice(0, max_rows - rows));
            truncated = true;
            break;
        }
        rows += batch.num_rows();
        batches.push(batch);
    }
    let mut writer = ArrayWriter::new(Vec::new());
    let references: Vec<&RecordBatch> = batches.iter().collect();
    writer
        .write_batches(&references)
        .map_err(|error| SluiceError::internal(format!("failed to encode the answer: {error}")))?;
    writer
        .finish()
        .map_err(|error| SluiceError::internal(format!("failed to encode the answer: {error}")))?;
    let bytes = writer.into_inner();
    let rows: Vec<serde_json::Map<String, serde_json::Value>> = if bytes.is_empty() {
        Vec::new()
    } else {
        serde_json::from_slice(&bytes).map_err(|error| {
            SluiceError::internal(format!("failed to encode the answer: {error}"))
        })?
    };
    Ok(SqlResponse {
        columns,
        rows,
        truncated,
        took_ms: started.elapsed().as_millis() as u64,
    })
}
