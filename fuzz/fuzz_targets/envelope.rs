//! Loggregator v2 `EnvelopeBatch` messages from any bytes: decoding and the agent's envelope
//! check never panic; an envelope the check accepts carries a message within the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use sluice_common::envelope::validate_envelope;
use sluice_proto::v2::EnvelopeBatch;

fuzz_target!(|data: &[u8]| {
    if let Ok(batch) = EnvelopeBatch::decode(data) {
        for (index, envelope) in batch.batch.iter().enumerate() {
            if validate_envelope(envelope, index, 4_096).is_ok() {
                assert!(envelope.message.is_some());
                assert!(envelope.encoded_len() <= 4_096);
            }
            let _ = sluice_common::envelope::merged_tags(envelope);
            let _ = sluice_common::envelope::kind_name(envelope);
        }
    }
});
