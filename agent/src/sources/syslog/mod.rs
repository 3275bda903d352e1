//! Syslog (RFC 5424 and RFC 3164) over TCP, TLS and UDP on one port, as `logger`, rsyslog's
//! `omfwd` and syslog-ng send it. The mapping onto envelopes is documented in [`parse`].

pub mod parse;
mod source;
#[cfg(test)]
mod tests;

pub use source::SyslogSource;
