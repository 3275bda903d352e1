//! Host metrics: CPU, load, memory, network and disk of the machine the agent runs on, read
//! from Linux's `/proc` every interval and forwarded as gauges. The names are documented in
//! [`procfs`].

pub mod procfs;
mod source;
#[cfg(test)]
mod tests;

pub use source::HostMetricsSource;
