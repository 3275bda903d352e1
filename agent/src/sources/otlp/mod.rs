//! OpenTelemetry's OTLP: logs and metrics over gRPC (127.0.0.1:4317) and HTTP/protobuf
//! (127.0.0.1:4318), as the OpenTelemetry SDKs and Collector export them. The mapping is
//! documented in [`mapping`].

pub mod config;
pub mod mapping;
mod source;
#[cfg(test)]
mod tests;

pub use source::{Inflate, OtlpSource, inflate_capped};
