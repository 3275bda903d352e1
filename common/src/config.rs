//! What every role's configuration section shares: the `[tls]` section, durations as written
//! in TOML, and the checks each section's validation uses.
//!
//! Each role owns its section (`sluice_agent::config`, `sluice_doppler::config`,
//! `sluice_bus::config`, `sluice_indexer::config`, `sluice_retention::config`,
//! `sluice_query_api::config`): what serde reads (`Raw…Config`, unknown keys rejected, every
//! field documented, every default a named function) and what validation makes of it, or an
//! error naming the field. The `sluice` binary composes the sections into one file and checks
//! the limits that cross them. Nothing invalid is silently fixed.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::error::SluiceError;

/// `[tls]`: where the certificates are. Leave all three unset to use (and on first start create)
/// a local CA in `<data_dir>/tls`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTlsConfig {
    /// PEM file of the CA that signs every node certificate.
    pub ca_cert: Option<PathBuf>,
    /// PEM file of this node's certificate.
    pub cert: Option<PathBuf>,
    /// PEM file of this node's private key.
    pub key: Option<PathBuf>,
    /// Name clients expect in servers' certificates.
    #[serde(default = "default_server_name")]
    pub server_name: String,
}

fn default_server_name() -> String {
    "localhost".to_owned()
}

crate::default_from_empty_table!(RawTlsConfig);

/// A section as an empty TOML table gives it: every field at its default. What each
/// section's `Default` returns, so a missing section and an empty one are the same.
pub fn from_empty_table<T: DeserializeOwned>() -> T {
    toml::from_str("").expect("an empty section is valid")
}

/// Implements `Default` for configuration sections: each is what [`from_empty_table`] makes of
/// an empty table.
#[macro_export]
macro_rules! default_from_empty_table {
    ($($name:ty),* $(,)?) => {$(
        impl Default for $name {
            fn default() -> $name {
                $crate::config::from_empty_table()
            }
        }
    )*};
}

/// Refuses a zero `value` for `field`.
pub fn positive(field: &str, value: usize) -> Result<(), SluiceError> {
    if value == 0 {
        return Err(SluiceError::invalid(format!(
            "{field}: must be greater than zero"
        )));
    }
    Ok(())
}

/// Parses durations such as `250ms`, `1s`, `5m`, `2h` (a positive integer and a unit).
pub fn parse_duration(field: &str, text: &str) -> Result<Duration, SluiceError> {
    let text = text.trim();
    let split = text
        .find(|character: char| !character.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let invalid = || {
        SluiceError::invalid(format!(
            "{field}: invalid duration {text:?}; expected e.g. 250ms, 1s, 5m, 2h, 7d"
        ))
    };
    let number: u64 = number.parse().map_err(|_| invalid())?;
    let duration = match unit.trim() {
        "ms" => Duration::from_millis(number),
        "s" => Duration::from_secs(number),
        "m" => Duration::from_secs(number.checked_mul(60).ok_or_else(invalid)?),
        "h" => Duration::from_secs(number.checked_mul(3_600).ok_or_else(invalid)?),
        "d" => Duration::from_secs(number.checked_mul(86_400).ok_or_else(invalid)?),
        _ => return Err(invalid()),
    };
    if duration.is_zero() {
        return Err(SluiceError::invalid(format!(
            "{field}: must be greater than zero"
        )));
    }
    Ok(duration)
}

/// Checks a listener that serves without TLS: allowed on a loopback address, and elsewhere
/// only when `<section>.allow_plaintext` says so. `listen_key` names the address's key.
pub fn check_plaintext(
    section: &str,
    listen_key: &str,
    listen: std::net::SocketAddr,
    tls: bool,
    allow_plaintext: bool,
) -> Result<(), SluiceError> {
    if tls || allow_plaintext || listen.ip().is_loopback() {
        return Ok(());
    }
    Err(SluiceError::invalid(format!(
        "{section}.{listen_key} = {listen} is beyond loopback and {section}.tls is off: set \
         {section}.tls = true (the certificates of [tls], or the local CA `sluice up` makes), or \
         {section}.allow_plaintext = true if plaintext on that network is meant"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(
            parse_duration("x", "250ms").expect("ms"),
            Duration::from_millis(250)
        );
        assert_eq!(
            parse_duration("x", "2h").expect("h"),
            Duration::from_secs(7_200)
        );
        assert!(parse_duration("x", "0s").is_err());
        assert!(parse_duration("x", "1.5s").is_err());
        assert!(parse_duration("x", "s").is_err());
    }
}
