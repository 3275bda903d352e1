//! OTLP export requests (logs and metrics) from any bytes: decoding never panics, and the
//! mapping of whatever decodes never panics and keeps only envelopes with a message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use sluice_agent::sources::otlp::mapping::{Mapping, logs, metrics};
use sluice_proto::opentelemetry::proto::collector::logs::v1::ExportLogsServiceRequest;
use sluice_proto::opentelemetry::proto::collector::metrics::v1::ExportMetricsServiceRequest;

fuzz_target!(|data: &[u8]| {
    let mapping = Mapping {
        source_id_attribute: "service.name".to_owned(),
        quantiles: vec![0.5, 0.9, 0.99],
    };
    let now = 1_795_768_200_000_000_000;
    if let Ok(request) = ExportLogsServiceRequest::decode(data) {
        for envelope in logs(&request, &mapping, now).envelopes {
            assert!(envelope.message.is_some());
        }
    }
    if let Ok(request) = ExportMetricsServiceRequest::decode(data) {
        for envelope in metrics(&request, &mapping, now).envelopes {
            assert!(envelope.message.is_some());
        }
    }
});
