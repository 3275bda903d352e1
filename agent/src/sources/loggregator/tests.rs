//! Tests of the Loggregator ingress live in the end-to-end suite (`tests/`), which drives it
//! with a real gRPC client over mutual TLS; unit tests here cover admission.

use super::source::LoggregatorIngress;

