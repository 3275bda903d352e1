//! The archive's tables and the buffers that turn envelopes into Arrow record batches.
//!
//! Every table has `timestamp` (ns, UTC), `source_id`, `instance_id`, `tags` (a map of text to
//! text: tags and deprecated tags), and the `agent_id` and `sequence` of the batch the envelope
//! came in; then its own columns:
//!
//! | table | own columns | one row per |
//! |---|---|---|
//! | `logs` | `log_type` (`OUT`/`ERR`), `message` (lossy UTF-8), `invalid_utf8`, `pattern_id` (16 hex digits, null when the line has none) | log envelope |
//! | `counters` | `name`, `delta`, `total` | counter envelope |
//! | `gauges` | `name`, `value`, `unit` | metric in a gauge envelope |
//! | `timers` | `name`, `start`, `stop` (timestamps), `duration_ns` | timer envelope |
//! | `events` | `title`, `body` | event envelope |
//!
//! `pattern_counts` is the exception: one row per pattern, hour and flush (`pattern_id`,
//! `source_id`, `template` (null when the flush did not see it described), `merged_into` (the
//! pattern it became when it generalised), `first_seen`, `last_seen`, `count`); the SQL view
//! `patterns` sums it up per pattern.
//!
//! The hive partition columns `date` and `hour` come from the file paths.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayBuilder, ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, MapBuilder,
    StringBuilder, TimestampNanosecondBuilder, UInt64Builder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;
use sluice_common::envelope::{decode_payload, merged_tags};
use sluice_proto::v2::{Envelope, envelope, log};

/// The archive's tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// Log lines.
    Logs,
    /// Counter envelopes.
    Counters,
    /// Gauge metrics.
    Gauges,
    /// Timer envelopes.
    Timers,
    /// Event envelopes.
    Events,
    /// Lines per pattern, hour and flush.
    PatternCounts,
}

impl Table {
    /// Every table.
    pub const ALL: [Table; 6] = [
        Table::Logs,
        Table::Counters,
        Table::Gauges,
        Table::Timers,
        Table::Events,
        Table::PatternCounts,
    ];

    /// The table's name in SQL and in the archive's paths.
    pub fn name(self) -> &'static str {
        match self {
            Table::Logs => "logs",
            Table::Counters => "counters",
            Table::Gauges => "gauges",
            Table::Timers => "timers",
            Table::Events => "events",
            Table::PatternCounts => "pattern_counts",
        }
    }

    /// The table's Arrow schema (without the partition columns).
    pub fn schema(self) -> SchemaRef {
        if self == Table::PatternCounts {
            return Arc::new(Schema::new(vec![
                Field::new("pattern_id", DataType::Utf8, false),
                Field::new("source_id", DataType::Utf8, false),
                Field::new("template", DataType::Utf8, true),
                Field::new("merged_into", DataType::Utf8, true),
                Field::new("first_seen", timestamp_type(), false),
                Field::new("last_seen", timestamp_type(), false),
                Field::new("count", DataType::UInt64, false),
            ]));
        }
        let mut fields = vec![
            Field::new("timestamp", timestamp_type(), false),
            Field::new("source_id", DataType::Utf8, false),
            Field::new("instance_id", DataType::Utf8, false),
        ];
        let own: Vec<Field> = match self {
            Table::Logs => vec![
                Field::new("log_type", DataType::Utf8, false),
                Field::new("message", DataType::Utf8, false),
                Field::new("invalid_utf8", DataType::Boolean, false),
                Field::new("pattern_id", DataType::Utf8, true),
            ],
            Table::Counters => vec![
                Field::new("name", DataType::Utf8, false),
                Field::new("delta", DataType::UInt64, false),
                Field::new("total", DataType::UInt64, false),
            ],
            Table::Gauges => vec![
                Field::new("name", DataType::Utf8, false),
                Field::new("value", DataType::Float64, false),
                Field::new("unit", DataType::Utf8, false),
            ],
            Table::Timers => vec![
                Field::new("name", DataType::Utf8, false),
                Field::new("start", timestamp_type(), false),
                Field::new("stop", timestamp_type(), false),
                Field::new("duration_ns", DataType::Int64, false),
            ],
            Table::Events => vec![
                Field::new("title", DataType::Utf8, false),
                Field::new("body", DataType::Utf8, false),
            ],
            Table::PatternCounts => Vec::new(),
        };
        fields.extend(own);
        fields.push(Field::new("tags", tags_type(), false));
        fields.push(Field::new("agent_id", DataType::Utf8, false));
        fields.push(Field::new("sequence", DataType::UInt64, false));
        Arc::new(Schema::new(fields))
    }
}

fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()))
}

fn new_tags_builder() -> MapBuilder<StringBuilder, StringBuilder> {
    MapBuilder::new(None, StringBuilder::new(), StringBuilder::new())
}

/// The Arrow type the tags builder produces (the schema must match it exactly).
fn tags_type() -> DataType {
    let mut builder = new_tags_builder();
    let array = builder.finish();
    datafusion::arrow::array::Array::data_type(&array).clone()
}

/// One column under construction.
enum Column {
    Timestamp(TimestampNanosecondBuilder),
    Text(StringBuilder),
    Unsigned(UInt64Builder),
    Signed(Int64Builder),
    Float(Float64Builder),
    Boolean(BooleanBuilder),
    Tags(Box<MapBuilder<StringBuilder, StringBuilder>>),
}

/// One value of a row, in schema order.
pub enum Cell<'a> {
    /// A timestamp in ns.
    Timestamp(i64),
    /// Text.
    Text(&'a str),
    /// Text or null.
    MaybeText(Option<&'a str>),
    /// An unsigned integer.
    Unsigned(u64),
    /// A signed integer.
    Signed(i64),
    /// A float.
    Float(f64),
    /// A boolean.
    Boolean(bool),
    /// The tags map.
    Tags(&'a BTreeMap<String, String>),
}

/// Rows of one table waiting to become a record batch.
pub struct TableBuffer {
    table: Table,
    schema: SchemaRef,
    columns: Vec<Column>,
    rows: usize,
}

impl TableBuffer {
    /// An empty buffer for `table`.
    pub fn new(table: Table) -> TableBuffer {
        let schema = table.schema();
        let columns = schema
            .fields()
            .iter()
            .map(|field| match field.data_type() {
                DataType::Timestamp(_, _) => {
                    Column::Timestamp(TimestampNanosecondBuilder::new().with_timezone("UTC"))
                }
                DataType::Utf8 => Column::Text(StringBuilder::new()),
                DataType::UInt64 => Column::Unsigned(UInt64Builder::new()),
                DataType::Int64 => Column::Signed(Int64Builder::new()),
                DataType::Float64 => Column::Float(Float64Builder::new()),
                DataType::Boolean => Column::Boolean(BooleanBuilder::new()),
                _ => Column::Tags(Box::new(new_tags_builder())),
            })
            .collect();
        TableBuffer {
            table,
            schema,
            columns,
            rows: 0,
        }
    }

    /// Rows buffered.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The table this buffer fills.
    pub fn table(&self) -> Table {
        self.table
    }

    /// Appends one row; `cells` must follow the schema's order and types.
    pub fn push(&mut self, cells: &[Cell<'_>]) -> Result<(), ArrowError> {
        if cells.len() != self.columns.len() {
            return Err(ArrowError::InvalidArgumentError(format!(
                "row for {} has {} cells, expected {}",
                self.table.name(),
                cells.len(),
                self.columns.len()
            )));
        }
        for (column, cell) in self.columns.iter_mut().zip(cells) {
            match (column, cell) {
                (Column::Timestamp(builder), Cell::Timestamp(value)) => {
                    builder.append_value(*value)
                }
                (Column::Text(builder), Cell::Text(value)) => builder.append_value(value),
                (Column::Text(builder), Cell::MaybeText(value)) => builder.append_option(*value),
                (Column::Unsigned(builder), Cell::Unsigned(value)) => builder.append_value(*value),
                (Column::Signed(builder), Cell::Signed(value)) => builder.append_value(*value),
                (Column::Float(builder), Cell::Float(value)) => builder.append_value(*value),
                (Column::Boolean(builder), Cell::Boolean(value)) => builder.append_value(*value),
                (Column::Tags(builder), Cell::Tags(tags)) => {
                    for (key, value) in tags.iter() {
                        builder.keys().append_value(key);
                        builder.values().append_value(value);
                    }
                    builder.append(true)?;
                }
                _ => {
                    return Err(ArrowError::InvalidArgumentError(format!(
                        "row for {} does not match its schema",
                        self.table.name()
                    )));
                }
            }
        }
        self.rows += 1;
        Ok(())
    }

    /// Takes the buffered rows as a record batch, leaving the buffer empty.
    pub fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        let arrays: Vec<ArrayRef> = self
            .columns
            .iter_mut()
            .map(|column| match column {
                Column::Timestamp(builder) => Arc::new(builder.finish()) as ArrayRef,
                Column::Text(builder) => Arc::new(builder.finish()),
                Column::Unsigned(builder) => Arc::new(builder.finish()),
                Column::Signed(builder) => Arc::new(builder.finish()),
                Column::Float(builder) => Arc::new(builder.finish()),
                Column::Boolean(builder) => Arc::new(builder.finish()),
                Column::Tags(builder) => ArrayBuilder::finish(builder.as_mut()),
            })
            .collect();
        self.rows = 0;
        RecordBatch::try_new(Arc::clone(&self.schema), arrays)
    }
}

/// Chooses the buffer each table's rows go to.
pub trait BufferSet {
    /// The buffer for `table`'s rows.
    fn buffer(&mut self, table: Table) -> &mut TableBuffer;
}

impl BufferSet for BTreeMap<Table, TableBuffer> {
    fn buffer(&mut self, table: Table) -> &mut TableBuffer {
        self.entry(table).or_insert_with(|| TableBuffer::new(table))
    }
}

/// Pushes the rows `envelope` becomes into `buffers`.
pub fn push_envelope(
    envelope: &Envelope,
    agent_id: &str,
    sequence: u64,
    pattern_id: Option<&str>,
    buffers: &mut impl BufferSet,
) -> Result<(), ArrowError> {
    let tags = merged_tags(envelope);
    let timestamp = envelope.timestamp;
    match &envelope.message {
        Some(envelope::Message::Log(log)) => {
            let (message, invalid) = decode_payload(&log.payload);
            let log_type = if log.r#type == log::Type::Err as i32 {
                "ERR"
            } else {
                "OUT"
            };
            buffers.buffer(Table::Logs).push(&[
                Cell::Timestamp(timestamp),
                Cell::Text(&envelope.source_id),
                Cell::Text(&envelope.instance_id),
                Cell::Text(log_type),
                Cell::Text(&message),
                Cell::Boolean(invalid),
                Cell::MaybeText(pattern_id),
                Cell::Tags(&tags),
                Cell::Text(agent_id),
                Cell::Unsigned(sequence),
            ])
        }
        Some(envelope::Message::Counter(counter)) => buffers.buffer(Table::Counters).push(&[
            Cell::Timestamp(timestamp),
            Cell::Text(&envelope.source_id),
            Cell::Text(&envelope.instance_id),
            Cell::Text(&counter.name),
            Cell::Unsigned(counter.delta),
            Cell::Unsigned(counter.total),
            Cell::Tags(&tags),
            Cell::Text(agent_id),
            Cell::Unsigned(sequence),
        ]),
        Some(envelope::Message::Gauge(gauge)) => {
            let buffer = buffers.buffer(Table::Gauges);
            let mut names: Vec<&String> = gauge.metrics.keys().collect();
            names.sort();
            for name in names {
                let metric = &gauge.metrics[name];
                buffer.push(&[
                    Cell::Timestamp(timestamp),
                    Cell::Text(&envelope.source_id),
                    Cell::Text(&envelope.instance_id),
                    Cell::Text(name),
                    Cell::Float(metric.value),
                    Cell::Text(&metric.unit),
                    Cell::Tags(&tags),
                    Cell::Text(agent_id),
                    Cell::Unsigned(sequence),
                ])?;
            }
            Ok(())
        }
        Some(envelope::Message::Timer(timer)) => buffers.buffer(Table::Timers).push(&[
            Cell::Timestamp(timestamp),
            Cell::Text(&envelope.source_id),
            Cell::Text(&envelope.instance_id),
            Cell::Text(&timer.name),
            Cell::Timestamp(timer.start),
            Cell::Timestamp(timer.stop),
            Cell::Signed(timer.stop.saturating_sub(timer.start)),
            Cell::Tags(&tags),
            Cell::Text(agent_id),
            Cell::Unsigned(sequence),
        ]),
        Some(envelope::Message::Event(event)) => buffers.buffer(Table::Events).push(&[
            Cell::Timestamp(timestamp),
            Cell::Text(&envelope.source_id),
            Cell::Text(&envelope.instance_id),
            Cell::Text(&event.title),
            Cell::Text(&event.body),
            Cell::Tags(&tags),
            Cell::Text(agent_id),
            Cell::Unsigned(sequence),
        ]),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::v2::{Gauge, GaugeValue, Log, Timer};

    #[test]
    fn every_kind_of_envelope_lands_in_its_table_with_a_valid_batch() {
        let mut buffers: BTreeMap<Table, TableBuffer> = Table::ALL
            .iter()
            .map(|table| (*table, TableBuffer::new(*table)))
            .collect();
        let mut log_envelope = Envelope {
            timestamp: 5,
            source_id: "app".into(),
            message: Some(envelope::Message::Log(Log {
                payload: b"bad \xff".to_vec(),
                r#type: 1,
            })),
            ..Default::default()
        };
        log_envelope.tags.insert("job".into(), "web".into());
        let gauge = Envelope {
            message: Some(envelope::Message::Gauge(Gauge {
                metrics: [
                    (
                        "cpu".to_owned(),
                        GaugeValue {
                            unit: "%".into(),
                            value: 1.5,
                        },
                    ),
                    (
                        "mem".to_owned(),
                        GaugeValue {
                            unit: "B".into(),
                            value: 2.0,
                        },
                    ),
                ]
                .into_iter()
                .collect(),
            })),
            ..Default::default()
        };
        let timer = Envelope {
            message: Some(envelope::Message::Timer(Timer {
                name: "http".into(),
                start: 10,
                stop: 35,
            })),
            ..Default::default()
        };
        for envelope in [&log_envelope, &gauge, &timer] {
            push_envelope(envelope, "agent", 1, None, &mut buffers).expect("push");
        }
        let logs = buffers
            .get_mut(&Table::Logs)
            .expect("logs")
            .finish()
            .expect("batch");
        assert_eq!(logs.num_rows(), 1);
        assert_eq!(logs.schema(), Table::Logs.schema());
        assert_eq!(buffers[&Table::Gauges].rows(), 2);
        let timers = buffers
            .get_mut(&Table::Timers)
            .expect("timers")
            .finish()
            .expect("batch");
        let duration = timers.column_by_name("duration_ns").and_then(|column| {
            column
                .as_any()
                .downcast_ref::<datafusion::arrow::array::Int64Array>()
                .map(|array| array.value(0))
        });
        assert_eq!(duration, Some(25));
    }
}
