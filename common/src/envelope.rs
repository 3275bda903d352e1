//! Helpers over Loggregator envelopes shared by every role.

use std::borrow::Cow;
use std::collections::BTreeMap;

use sluice_proto::v2::{Envelope, envelope, value};

use crate::error::{ErrorKind, SluiceError};

/// The kind of message an envelope carries, as a short lowercase name.
pub fn kind_name(envelope: &Envelope) -> &'static str {
    match &envelope.message {
        Some(envelope::Message::Log(_)) => "log",
        Some(envelope::Message::Counter(_)) => "counter",
        Some(envelope::Message::Gauge(_)) => "gauge",
        Some(envelope::Message::Timer(_)) => "timer",
        Some(envelope::Message::Event(_)) => "event",
        None => "none",
    }
}

/// Decodes a log payload as UTF-8. Invalid sequences become U+FFFD and the second value is
/// `true`, so the line is kept and flagged instead of dropped.
pub fn decode_payload(payload: &[u8]) -> (Cow<'_, str>, bool) {
    match std::str::from_utf8(payload) {
        Ok(text) => (Cow::Borrowed(text), false),
        Err(_) => (String::from_utf8_lossy(payload), true),
    }
}

/// The envelope's tags with its deprecated tags folded in (as text); on a clash the
/// non-deprecated tag wins, as in Loggregator's `use_preferred_tags`.
pub fn merged_tags(envelope: &Envelope) -> BTreeMap<String, String> {
    let mut merged: BTreeMap<String, String> = envelope
        .deprecated_tags
        .iter()
        .map(|(key, value)| {
            let text = match &value.data {
                Some(value::Data::Text(text)) => text.clone(),
                Some(value::Data::Integer(integer)) => integer.to_string(),
                Some(value::Data::Decimal(decimal)) => decimal.to_string(),
                None => String::new(),
            };
            (key.clone(), text)
        })
        .collect();
    for (key, value) in &envelope.tags {
        merged.insert(key.clone(), value.clone());
    }
    merged
}

/// Checks one envelope against the ingress limits; `index` is its position in the request,
/// used in the error message.
pub fn validate_envelope(
    envelope: &Envelope,
    index: usize,
    max_bytes: usize,
) -> Result<(), SluiceError> {
    let size = prost::Message::encoded_len(envelope);
    if size > max_bytes {
        return Err(SluiceError::new(
            ErrorKind::TooLarge,
            format!("envelope {index} is {size} bytes, over the limit of {max_bytes} bytes"),
        ));
    }
    if envelope.message.is_none() {
        return Err(SluiceError::invalid(format!(
            "envelope {index} carries no message (one of log, counter, gauge, timer, event is required)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::v2::{Log, Value};

    fn log_envelope(payload: &[u8]) -> Envelope {
        Envelope {
            source_id: "app".into(),
            message: Some(envelope::Message::Log(Log {
                payload: payload.to_vec(),
                r#type: 0,
            })),
            ..Default::default()
        }
    }

    #[test]
    fn invalid_utf8_is_kept_lossily_and_flagged() {
        let (text, invalid) = decode_payload(b"ok \xff\xfe end");
        assert!(invalid);
        assert_eq!(text, "ok \u{fffd}\u{fffd} end");
        let (text, invalid) = decode_payload("grüße".as_bytes());
        assert!(!invalid);
        assert_eq!(text, "grüße");
    }

    #[test]
    fn preferred_tags_win_over_deprecated_ones() {
        let mut envelope = log_envelope(b"x");
        envelope.deprecated_tags.insert(
            "job".into(),
            Value {
                data: Some(value::Data::Text("old".into())),
            },
        );
        envelope.deprecated_tags.insert(
            "index".into(),
            Value {
                data: Some(value::Data::Integer(3)),
            },
        );
        envelope.tags.insert("job".into(), "new".into());
        let tags = merged_tags(&envelope);
        assert_eq!(tags.get("job").map(String::as_str), Some("new"));
        assert_eq!(tags.get("index").map(String::as_str), Some("3"));
    }

    #[test]
    fn oversized_and_empty_envelopes_are_rejected_with_their_index() {
        let big = log_envelope(&vec![b'a'; 2_000]);
        let error = validate_envelope(&big, 7, 1_000).expect_err("over the limit");
        assert_eq!(error.kind(), ErrorKind::TooLarge);
        assert!(error.message().starts_with("envelope 7 is"), "{error}");
        let empty = Envelope::default();
        assert_eq!(
            validate_envelope(&empty, 0, 1_000)
                .expect_err("no message")
                .kind(),
            ErrorKind::InvalidArgument
        );
        assert!(validate_envelope(&log_envelope(b"fine"), 0, 1_000).is_ok());
    }
}
