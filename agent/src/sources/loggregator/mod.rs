//! The Loggregator v2 gRPC ingress (`loggregator.v2.Ingress`), with mutual TLS.

mod source;
#[cfg(test)]
mod tests;

pub use source::LoggregatorIngress;
