//! The formats an SQL answer streams in, chosen by `format=` or the `Accept` header:
//!
//! | format | media type | body |
//! |---|---|---|
//! | `json` (default) | `application/json` | `{"columns": [...], "rows": [{…}, …], "truncated": …, "took_ms": …}`, null values omitted; an error after rows were sent ends it as `"error": "…"` |
//! | `ndjson` | `application/x-ndjson` | one JSON object per row; an error after rows ends it with a line `{"error": "…"}` |
//! | `csv` | `text/csv` | a header line, then one line per row |
//! | `arrow` | `application/vnd.apache.arrow.stream` | an Arrow IPC stream |
//!
//! Every answer carries `x-sluice-row-limit` (the limit it is cut at); `json` says whether it
//! was cut in `truncated`.

use std::time::Duration;

use bytes::Bytes;
use datafusion::arrow::csv::WriterBuilder;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::arrow::json::LineDelimitedWriter;
use datafusion::arrow::record_batch::RecordBatch;
use sluice_common::SluiceError;

/// A format of answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON document.
    Json,
    /// A JSON object per line.
    Ndjson,
    /// Comma-separated values with a header.
    Csv,
    /// An Arrow IPC stream.
    Arrow,
}

impl Format {
    /// The format `format=` names, else the first the `Accept` header names that is known,
    /// else JSON.
    pub fn choose(parameter: Option<&str>, accept: Option<&str>) -> Result<Format, SluiceError> {
        if let Some(name) = parameter {
            return match name {
                "json" => Ok(Format::Json),
                "ndjson" | "jsonl" => Ok(Format::Ndjson),
                "csv" => Ok(Format::Csv),
                "arrow" => Ok(Format::Arrow),
                other => Err(SluiceError::invalid(format!(
                    "unknown format {other:?}; expected json, ndjson, csv or arrow"
                ))),
            };
        }
        for media in accept.unwrap_or_default().split(',') {
            let media = media.split(';').next().unwrap_or_default().trim();
            match media {
                "application/json" | "*/*" => return Ok(Format::Json),
                "application/x-ndjson" | "application/jsonl" => return Ok(Format::Ndjson),
                "text/csv" => return Ok(Format::Csv),
                "application/vnd.apache.arrow.stream" => return Ok(Format::Arrow),
                _ => {}
            }
        }
        Ok(Format::Json)
    }

    /// Its media type.
    pub fn media_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Ndjson => "application/x-ndjson",
            Format::Csv => "text/csv; charset=utf-8",
            Format::Arrow => "application/vnd.apache.arrow.stream",
        }
    }
}

fn encoding(error: impl std::fmt::Display) -> SluiceError {
    SluiceError::internal(format!("failed to encode the answer: {error}"))
}

/// Turns batches into chunks of one format.
pub enum Encoder {
    /// JSON: the columns, then rows; whether any row was written yet.
    Json { columns: String, any: bool },
    /// NDJSON.
    Ndjson,
    /// CSV: the header line.
    Csv { header: String },
    /// Arrow IPC: the writer, over a buffer drained after each batch.
    Arrow(Box<Option<StreamWriter<Vec<u8>>>>),
}

/// `text` as a CSV field.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

impl Encoder {
    /// An encoder of `format` for rows of `schema`.
    pub fn new(format: Format, schema: &SchemaRef) -> Encoder {
        match format {
            Format::Json => {
                let columns: Vec<serde_json::Value> = schema
                    .fields()
                    .iter()
                    .map(|field| {
                        serde_json::json!({"name": field.name(), "type": field.data_type().to_string()})
                    })
                    .collect();
                Encoder::Json {
                    columns: serde_json::Value::Array(columns).to_string(),
                    any: false,
                }
            }
            Format::Ndjson => Encoder::Ndjson,
            Format::Csv => Encoder::Csv {
                header: schema
                    .fields()
                    .iter()
                    .map(|field| csv_field(field.name()))
                    .collect::<Vec<_>>()
                    .join(",")
                    + "\n",
            },
            Format::Arrow => {
                Encoder::Arrow(Box::new(StreamWriter::try_new(Vec::new(), schema).ok()))
            }
        }
    }

    /// What goes before the first row.
    pub fn start(&mut self) -> Bytes {
        match self {
            Encoder::Json { columns, .. } => {
                Bytes::from(format!("{{\"columns\":{columns},\"rows\":["))
            }
            Encoder::Ndjson => Bytes::new(),
            Encoder::Csv { header } => Bytes::from(header.clone()),
            Encoder::Arrow(writer) => match writer.as_mut() {
                Some(writer) => Bytes::from(std::mem::take(writer.get_mut())),
                None => Bytes::new(),
            },
        }
    }

    /// The rows of `batch`.
    pub fn batch(&mut self, batch: &RecordBatch) -> Result<Bytes, SluiceError> {
        match self {
            Encoder::Json { any, .. } => {
                let lines = ndjson(batch)?;
                let mut out = Vec::with_capacity(lines.len() + 1);
                for line in lines
                    .split(|byte| *byte == b'\n')
                    .filter(|line| !line.is_empty())
                {
                    if *any {
                        out.push(b',');
                    }
                    out.extend_from_slice(line);
                    *any = true;
                }
                Ok(Bytes::from(out))
            }
            Encoder::Ndjson => Ok(Bytes::from(ndjson(batch)?)),
            Encoder::Csv { .. } => {
                let mut writer = WriterBuilder::new().with_header(false).build(Vec::new());
                writer.write(batch).map_err(encoding)?;
                Ok(Bytes::from(writer.into_inner()))
            }
            Encoder::Arrow(writer) => {
                let writer = writer
                    .as_mut()
                    .as_mut()
                    .ok_or_else(|| encoding("the Arrow writer did not start"))?;
                writer.write(batch).map_err(encoding)?;
                Ok(Bytes::from(std::mem::take(writer.get_mut())))
            }
        }
    }

    /// What ends a whole answer.
    pub fn finish(
        &mut self,
        truncated: bool,
        took: Duration,
        _error: Option<&SluiceError>,
    ) -> Bytes {
        match self {
            Encoder::Json { .. } => Bytes::from(format!(
                "],\"truncated\":{truncated},\"took_ms\":{}}}",
                took.as_millis()
            )),
            Encoder::Ndjson | Encoder::Csv { .. } => Bytes::new(),
            Encoder::Arrow(writer) => match writer.as_mut().as_mut() {
                Some(writer) => {
                    let _ = writer.finish();
                    Bytes::from(std::mem::take(writer.get_mut()))
                }
                None => Bytes::new(),
            },
        }
    }

    /// What ends an answer cut by `error` after rows were sent, where the format can say so;
    /// `None` where it cannot (the stream is then broken off).
    pub fn finish_with_error(&mut self, error: &SluiceError, took: Duration) -> Option<Bytes> {
        let message = serde_json::Value::String(error.message().to_owned()).to_string();
        match self {
            Encoder::Json { .. } => Some(Bytes::from(format!(
                "],\"truncated\":false,\"took_ms\":{},\"error\":{message}}}",
                took.as_millis()
            ))),
            Encoder::Ndjson => Some(Bytes::from(format!("{{\"error\":{message}}}\n"))),
            Encoder::Csv { .. } | Encoder::Arrow(_) => None,
        }
    }
}

/// `batch` as JSON lines (null values omitted).
fn ndjson(batch: &RecordBatch) -> Result<Vec<u8>, SluiceError> {
    let mut writer = LineDelimitedWriter::new(Vec::new());
    writer.write(batch).map_err(encoding)?;
    writer.finish().map_err(encoding)?;
    Ok(writer.into_inner())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    #[test]
    fn the_format_comes_from_the_parameter_then_the_accept_header() {
        assert_eq!(
            Format::choose(Some("csv"), Some("application/json")).unwrap(),
            Format::Csv
        );
        assert_eq!(
            Format::choose(None, Some("text/html, application/x-ndjson;q=0.9")).unwrap(),
            Format::Ndjson
        );
        assert_eq!(Format::choose(None, None).unwrap(), Format::Json);
        assert!(Format::choose(Some("xml"), None).is_err());
    }

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, true),
            Field::new("n", DataType::Int64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec![Some("a,b"), None])),
                Arc::new(Int64Array::from(vec![1, 2])),
            ],
        )
        .unwrap()
    }

    fn whole(format: Format, batches: usize) -> Vec<u8> {
        let batch = batch();
        let mut encoder = Encoder::new(format, &batch.schema());
        let mut out = encoder.start().to_vec();
        for _ in 0..batches {
            out.extend_from_slice(&encoder.batch(&batch).unwrap());
        }
        out.extend_from_slice(&encoder.finish(false, Duration::from_millis(3), None));
        out
    }

    #[test]
    fn every_format_encodes_rows_whole() {
        let json: serde_json::Value = serde_json::from_slice(&whole(Format::Json, 2)).unwrap();
        assert_eq!(json["rows"].as_array().unwrap().len(), 4);
        assert_eq!(json["rows"][0], serde_json::json!({"name": "a,b", "n": 1}));
        assert_eq!(json["rows"][1], serde_json::json!({"n": 2}));
        assert_eq!(json["columns"][1]["name"], "n");
        let empty: serde_json::Value = serde_json::from_slice(&whole(Format::Json, 0)).unwrap();
        assert_eq!(empty["rows"], serde_json::json!([]));

        let lines = String::from_utf8(whole(Format::Ndjson, 1)).unwrap();
        assert_eq!(lines, "{\"name\":\"a,b\",\"n\":1}\n{\"n\":2}\n");
        let csv = String::from_utf8(whole(Format::Csv, 1)).unwrap();
        assert_eq!(csv, "name,n\n\"a,b\",1\n,2\n");

        let arrow = whole(Format::Arrow, 2);
        let reader = datafusion::arrow::ipc::reader::StreamReader::try_new(
            std::io::Cursor::new(arrow),
            None,
        )
        .unwrap();
        let rows: usize = reader.map(|batch| batch.unwrap().num_rows()).sum();
        assert_eq!(rows, 4);
    }
}
