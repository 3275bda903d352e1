//! Bus records (`AgentBatch`) from any bytes, as a consumer reads them: decoding never panics,
//! the indexer's document mapping of what decodes never panics, and a decoded batch encodes
//! back to something that decodes to the same batch.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use sluice_indexer::schema::{Fields, Origin};
use sluice_proto::v1::AgentBatch;

fuzz_target!(|data: &[u8]| {
    let Ok(batch) = AgentBatch::decode(data) else {
        return;
    };
    let again = AgentBatch::decode(batch.encode_to_vec().as_slice()).expect("re-encoded batch");
    assert_eq!(again, batch);
    let fields = Fields::new();
    let batch_envelopes = u32::try_from(batch.envelopes.len()).unwrap_or(u32::MAX);
    for (index, envelope) in batch.envelopes.iter().enumerate() {
        let origin = Origin {
            agent_id: &batch.agent_id,
            sequence: batch.sequence,
            partition: 0,
            offset: 0,
            index: u32::try_from(index).unwrap_or(u32::MAX),
            batch_envelopes,
            // What the doppler said of the envelope's pattern, however the record has it.
            pattern_id: batch.pattern_of(index),
        };
        let _ = fields.document(envelope, origin);
        let _ = sluice_common::time::Hour::of_nanos(envelope.timestamp).partition_name();
    }
});
