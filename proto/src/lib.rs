//! Wire types for Sluice: the Loggregator v2 envelope and its ingress and egress services
//! (wire-compatible with Cloud Foundry's loggregator-api field numbers), plus Sluice's own
//! agent-to-doppler service whose `AgentBatch` message is also the record format on the bus.
//!
//! Everything here is generated from the files under `proto/` by `build.rs` with protox, so no
//! system `protoc` is needed. The generated gRPC code uses [`codec::StrictCodec`], which answers
//! a malformed message with `INVALID_ARGUMENT` instead of tonic's default `INTERNAL`.
#![deny(missing_docs)]

pub mod codec;

/// Loggregator v2 messages and services.
pub mod loggregator {
    /// Version 2 of the Loggregator API.
    #[allow(missing_docs, clippy::all)]
    pub mod v2 {
        tonic::include_proto!("loggregator.v2");
    }
}

/// Sluice's own services.
pub mod sluice {
    /// Version 1 of the Sluice internal API.
    #[allow(missing_docs, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("sluice.v1");
    }
}

/// OpenTelemetry's OTLP logs and metrics (the subset the agent's OTLP source receives).
#[allow(missing_docs, clippy::all)]
pub mod opentelemetry {
    pub mod proto {
        pub mod common {
            pub mod v1 {
                tonic::include_proto!("opentelemetry.proto.common.v1");
            }
        }
        pub mod resource {
            pub mod v1 {
                tonic::include_proto!("opentelemetry.proto.resource.v1");
            }
        }
        pub mod logs {
            pub mod v1 {
                tonic::include_proto!("opentelemetry.proto.logs.v1");
            }
        }
        pub mod metrics {
            pub mod v1 {
                tonic::include_proto!("opentelemetry.proto.metrics.v1");
            }
        }
        pub mod collector {
            pub mod logs {
                pub mod v1 {
                    tonic::include_proto!("opentelemetry.proto.collector.logs.v1");
                }
            }
            pub mod metrics {
                pub mod v1 {
                    tonic::include_proto!("opentelemetry.proto.collector.metrics.v1");
                }
            }
        }
    }
}

pub use loggregator::v2;
pub use sluice::v1;

impl v1::BatchPatterns {
    /// The pattern id of the batch's envelope at `index`, if it has one.
    pub fn of(&self, index: usize) -> Option<u64> {
        let position = *self.of_envelope.get(index)?;
        let position = usize::try_from(position).ok()?.checked_sub(1)?;
        self.ids.get(position).copied()
    }
}

impl v1::AgentBatch {
    /// The pattern id the doppler gave the envelope at `index`, if any.
    pub fn pattern_of(&self, index: usize) -> Option<u64> {
        self.patterns.as_ref()?.of(index)
    }
}
