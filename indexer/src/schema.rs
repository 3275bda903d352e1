//! The document schema and the envelope-to-document mapping.
//!
//! | field | type | from |
//! |---|---|---|
//! | `timestamp` | i64, indexed, fast, stored | envelope timestamp (ns) |
//! | `source_id`, `instance_id` | raw string, stored | envelope |
//! | `log_type` | raw string, stored | `OUT` / `ERR` for logs, `EVENT` for events |
//! | `message` | text, stored | log payload (lossy UTF-8) or `title: body` of an event |
//! | `invalid_utf8` | bool, indexed, stored | whether the payload had invalid UTF-8 |
//! | `tags` | JSON object, raw tokens, stored | tags and deprecated tags (`tags.app:web`) |
//! | `agent_id`, `sequence` | raw string / u64, indexed, stored | the batch the envelope came in |
//! | `bus_partition`, `bus_offset` | u64, indexed, fast | the bus record the envelope came in |
//! | `bus_index` | u64, indexed, fast | the envelope's position in its batch (with the two above, its identity: live tails resume by it) |
//! | `pattern_id` | raw string, stored, fast | the log line's pattern, as its doppler mined it (16 hex digits) |
//! | `tenant` | raw string, indexed | the record's tenant (`sluice_common::tenancy`): every read of a scoped reader adds it to the query (`scope.rs`); hours indexed before it existed hold the default tenant's records only |
//!
//! Only log and event envelopes are indexed; counters, gauges and timers go to the archive.

use std::collections::BTreeMap;

use sluice_common::envelope::{decode_payload, merged_tags};
use sluice_proto::v2::{Envelope, envelope, log};
use tantivy::TantivyDocument;
use tantivy::schema::{
    FAST, Field, INDEXED, IndexRecordOption, JsonObjectOptions, OwnedValue, STORED, STRING, Schema,
    TEXT, TextFieldIndexing,
};

/// The schema and its fields.
#[derive(Clone)]
pub struct Fields {
    /// The Tantivy schema.
    pub schema: Schema,
    /// `timestamp`.
    pub timestamp: Field,
    /// `source_id`.
    pub source_id: Field,
    /// `instance_id`.
    pub instance_id: Field,
    /// `log_type`.
    pub log_type: Field,
    /// `message`.
    pub message: Field,
    /// `invalid_utf8`.
    pub invalid_utf8: Field,
    /// `tags`.
    pub tags: Field,
    /// `agent_id`.
    pub agent_id: Field,
    /// `sequence`.
    pub sequence: Field,
    /// `bus_partition`.
    pub bus_partition: Field,
    /// `bus_offset`.
    pub bus_offset: Field,
    /// `bus_index`.
    pub bus_index: Field,
    /// `bus_batch_envelopes`: how many envelopes the document's bus record held in all, so
    /// that a tail which lost the record can tell how many of them the index cannot give back
    /// (metrics are not indexed).
    pub bus_batch_envelopes: Field,
    /// `pattern_id`.
    pub pattern_id: Field,
    /// `tenant`.
    pub tenant: Field,
}

/// Where a document came from on the bus.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// The batch's agent.
    pub agent_id: &'a str,
    /// The batch's sequence number.
    pub sequence: u64,
    /// The bus partition of the record.
    pub partition: u32,
    /// The record's offset.
    pub offset: u64,
    /// The envelope's position in the batch.
    pub index: u32,
    /// How many envelopes the batch holds.
    pub batch_envelopes: u32,
    /// The envelope's pattern, if its doppler gave it one.
    pub pattern_id: Option<u64>,
}

impl Fields {
    /// Builds the schema.
    pub fn new() -> Fields {
        let mut builder = Schema::builder();
        let timestamp = builder.add_i64_field("timestamp", INDEXED | FAST | STORED);
        let source_id = builder.add_text_field("source_id", STRING | STORED | FAST);
        let instance_id = builder.add_text_field("instance_id", STRING | STORED);
        let log_type = builder.add_text_field("log_type", STRING | STORED);
        let message = builder.add_text_field("message", TEXT | STORED);
        let invalid_utf8 = builder.add_bool_field("invalid_utf8", INDEXED | STORED);
        let tags_options = JsonObjectOptions::default()
            .set_stored()
            .set_indexing_options(
                TextFieldIndexing::default()
                    .set_tokenizer("raw")
                    .set_index_option(IndexRecordOption::Basic),
            );
        let tags = builder.add_json_field("tags", tags_options);
        let agent_id = builder.add_text_field("agent_id", STRING | STORED);
        let sequence = builder.add_u64_field("sequence", INDEXED | STORED);
        let bus_partition = builder.add_u64_field("bus_partition", INDEXED | FAST);
        let bus_offset = builder.add_u64_field("bus_offset", INDEXED | FAST);
        let bus_index = builder.add_u64_field("bus_index", INDEXED | FAST);
        let bus_batch_envelopes = builder.add_u64_field("bus_batch_envelopes", FAST);
        let pattern_id = builder.add_text_field("pattern_id", STRING | STORED | FAST);
        let tenant = builder.add_text_field("tenant", STRING);
        Fields {
            schema: builder.build(),
            timestamp,
            source_id,
            instance_id,
            log_type,
            message,
            invalid_utf8,
            tags,
            agent_id,
            sequence,
            bus_partition,
            bus_offset,
            bus_index,
            bus_batch_envelopes,
            pattern_id,
            tenant,
        }
    }

    /// The document for `envelope`, or `None` for envelopes that are not indexed (metrics).
    pub fn document(&self, envelope: &Envelope, origin: Origin<'_>) -> Option<TantivyDocument> {
        let (log_type, message, invalid_utf8) = match &envelope.message {
            Some(envelope::Message::Log(log)) => {
                let (text, invalid) = decode_payload(&log.payload);
                let log_type = if log.r#type == log::Type::Err as i32 {
                    "ERR"
                } else {
                    "OUT"
                };
                (log_type, text.into_owned(), invalid)
            }
            Some(envelope::Message::Event(event)) => {
                ("EVENT", format!("{}: {}", event.title, event.body), false)
            }
            _ => return None,
        };
        let mut document = TantivyDocument::new();
        document.add_i64(self.timestamp, envelope.timestamp);
        document.add_text(self.source_id, &envelope.source_id);
        document.add_text(self.instance_id, &envelope.instance_id);
        document.add_text(self.tenant, sluice_common::tenancy::tenant_of(envelope));
        document.add_text(self.log_type, log_type);
        document.add_text(self.message, message);
        document.add_bool(self.invalid_utf8, invalid_utf8);
        let tags: BTreeMap<String, OwnedValue> = merged_tags(envelope)
            .into_iter()
            .map(|(key, value)| (key, OwnedValue::Str(value)))
            .collect();
        document.add_object(self.tags, tags);
        document.add_text(self.agent_id, origin.agent_id);
        document.add_u64(self.sequence, origin.sequence);
        document.add_u64(self.bus_partition, u64::from(origin.partition));
        document.add_u64(self.bus_offset, origin.offset);
        document.add_u64(self.bus_index, u64::from(origin.index));
        document.add_u64(self.bus_batch_envelopes, u64::from(origin.batch_envelopes));
        if let Some(id) = origin.pattern_id {
            document.add_text(self.pattern_id, sluice_patterns::format_id(id));
        }
        Some(document)
    }
}

impl Default for Fields {
    fn default() -> Fields {
        Fields::new()
    }
}
