//! Admission rules of the Loggregator ingress. The gRPC service itself is driven end to end,
//! with a real client over mutual TLS, by the suite in `tests/`.

use sluice_common::ErrorKind;
use sluice_proto::v2::{Envelope, Log, envelope};

use super::source::admit_envelopes;

fn log(timestamp: i64, payload_bytes: usize) -> Envelope {
    Envelope {
        timestamp,
        source_id: "app".into(),
        message: Some(envelope::Message::Log(Log {
            payload: vec![b'a'; payload_bytes],
            r#type: 0,
        })),
        ..Default::default()
    }
}

#[test]
fn missing_timestamps_are_stamped_and_given_ones_kept() {
    let mut envelopes = vec![log(0, 1), log(42, 1)];
    admit_envelopes(&mut envelopes, 1_000, 7).expect("admitted");
    assert_eq!(envelopes[0].timestamp, 7);
    assert_eq!(envelopes[1].timestamp, 42);
}

#[test]
fn one_bad_envelope_refuses_the_whole_message_untouched() {
    let mut envelopes = vec![log(0, 1), log(0, 5_000)];
    let error = admit_envelopes(&mut envelopes, 1_000, 7).expect_err("too large");
    assert_eq!(error.kind(), ErrorKind::TooLarge);
    assert!(error.message().starts_with("envelope 1 is"), "{error}");
    assert_eq!(envelopes[0].timestamp, 0, "nothing was stamped");
}
