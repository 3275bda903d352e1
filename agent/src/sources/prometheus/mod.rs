//! Scraping Prometheus text endpoints (exporters, `/metrics` of services) into counters and
//! gauges. The mapping is documented in [`exposition`].

pub mod exposition;
mod source;
#[cfg(test)]
mod tests;

pub use source::PrometheusSource;
