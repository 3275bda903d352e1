use sluice_proto::v2::{Envelope, envelope};

use super::parse::{Discard, Frame, FramingError, next_frame, parse_message};

/// 2026-11-27T08:30:00Z.
const NOW: i64 = 1_795_768_200_000_000_000;

fn parse(message: &str) -> Envelope {
    parse_message(message.as_bytes(), "syslog", NOW).expect("parses")
}

fn payload(envelope: &Envelope) -> String {
    match &envelope.message {
        Some(envelope::Message::Log(log)) => String::from_utf8_lossy(&log.payload).into_owned(),
        other => panic!("not a log: {other:?}"),
    }
}

fn log_type(envelope: &Envelope) -> i32 {
    match &envelope.message {
        Some(envelope::Message::Log(log)) => log.r#type,
        _ => -1,
    }
}

#[test]
fn rfc5424_with_structured_data_maps_every_field() {
    let envelope = parse(
        "<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog 4242 ID47 \
         [exampleSDID@32473 iut=\"3\" eventSource=\"Application\" eventID=\"1011\"]\
         [meta seq=\"a \\\"quoted\\\" \\] value\"] \u{feff}An application event log entry",
    );
    assert_eq!(envelope.timestamp, 1_065_910_455_003_000_000);
    assert_eq!(envelope.source_id, "evntslog");
    assert_eq!(envelope.instance_id, "4242");
    assert_eq!(payload(&envelope), "An application event log entry");
    assert_eq!(log_type(&envelope), 0, "notice is not an error");
    let tag = |name: &str| envelope.tags.get(name).map(String::as_str);
    assert_eq!(tag("severity"), Some("notice"));
    assert_eq!(tag("facility"), Some("local4"));
    assert_eq!(tag("host"), Some("mymachine.example.com"));
    assert_eq!(tag("app_name"), Some("evntslog"));
    assert_eq!(tag("procid"), Some("4242"));
    assert_eq!(tag("msgid"), Some("ID47"));
    assert_eq!(tag("exampleSDID@32473.eventID"), Some("1011"));
    assert_eq!(tag("meta.seq"), Some("a \"quoted\" ] value"));
}

#[test]
fn rfc5424_nil_values_use_defaults() {
    let envelope = parse("<11>1 - - - - - - disk full");
    assert_eq!(envelope.timestamp, NOW);
    assert_eq!(envelope.source_id, "syslog");
    assert_eq!(payload(&envelope), "disk full");
    assert_eq!(log_type(&envelope), 1, "err (3) is an error");
    assert_eq!(
        envelope.tags.get("facility").map(String::as_str),
        Some("user")
    );
}

#[test]
fn rfc3164_with_and_without_hostname_and_pid() {
    let envelope = parse("<34>Oct 11 22:14:15 mymachine su[230]: 'su root' failed on /dev/pts/8");
    assert_eq!(envelope.source_id, "su");
    assert_eq!(envelope.instance_id, "230");
    assert_eq!(payload(&envelope), "'su root' failed on /dev/pts/8");
    assert_eq!(
        envelope.tags.get("host").map(String::as_str),
        Some("mymachine")
    );
    assert_eq!(
        envelope.tags.get("severity").map(String::as_str),
        Some("crit")
    );
    // October 11 22:14:15 UTC of the current year (2026).
    assert_eq!(envelope.timestamp, 1_791_756_855_000_000_000);

    let bare = parse("<13>Nov 27 08:29:59 cron: job started");
    assert_eq!(bare.source_id, "cron");
    assert!(!bare.tags.contains_key("host"));
    assert_eq!(payload(&bare), "job started");

    // A date later than tomorrow is last year's.
    let december = parse("<13>Dec 31 23:00:00 host app: old");
    assert_eq!(december.timestamp, 1_767_222_000_000_000_000);

    // rsyslog's forwarding format: an RFC 3339 stamp in an RFC 3164 line.
    let iso = parse("<30>2026-11-27T08:00:00.5+00:00 web1 nginx[12]: GET /");
    assert_eq!(iso.timestamp, 1_795_766_400_500_000_000);
    assert_eq!(iso.source_id, "nginx");
    assert_eq!(iso.tags.get("host").map(String::as_str), Some("web1"));
}

#[test]
fn text_without_a_header_is_kept_whole() {
    let envelope = parse("just some words");
    assert_eq!(payload(&envelope), "just some words");
    assert_eq!(envelope.source_id, "syslog");
    assert_eq!(
        envelope.tags.get("severity").map(String::as_str),
        Some("notice")
    );
    let odd = parse("<13>not a date: words");
    assert_eq!(payload(&odd), "not a date: words");
}

#[test]
fn malformed_messages_are_refused_with_a_reason() {
    let reason = |message: &str| {
        parse_message(message.as_bytes(), "syslog", NOW)
            .map(|_| ())
            .err()
    };
    assert_eq!(
        reason("<192>1 - - - - - - x").map(|r| r.metric),
        Some("bad_priority")
    );
    assert_eq!(
        reason("<1>1 notadate h a p m - x").map(|r| r.metric),
        Some("bad_timestamp")
    );
    assert_eq!(reason("<1>1 - h a").map(|r| r.metric), Some("bad_header"));
    assert_eq!(
        reason("<1>1 - h a p m [id x=unquoted] m").map(|r| r.metric),
        Some("bad_structured_data")
    );
    assert_eq!(
        reason("<1>1 - h a p m [id x=\"open").map(|r| r.metric),
        Some("bad_structured_data")
    );
    assert_eq!(reason("\r\n").map(|r| r.metric), Some("empty"));
}

#[test]
fn framing_octet_counting_newlines_and_oversize() {
    let buffer = b"11 <13>hello 1\n<13>line two\n5 <13>";
    let (frame, used) = next_frame(buffer, 100).expect("ok").expect("frame");
    assert_eq!(frame, Frame::Message(b"<13>hello 1"));
    let rest = &buffer[used..];
    // The newline after an octet-counted frame is not part of the next one.
    let (frame, used2) = next_frame(rest, 100).expect("ok").expect("frame");
    assert_eq!(frame, Frame::Message(b""));
    let rest = &rest[used2..];
    let (frame, used3) = next_frame(rest, 100).expect("ok").expect("frame");
    assert_eq!(frame, Frame::Message(b"<13>line two"));
    let rest = &rest[used3..];
    assert_eq!(next_frame(rest, 100), Ok(None), "5 bytes announced, 4 here");

    assert_eq!(
        next_frame(b"200 <13>abc", 100),
        Ok(Some((
            Frame::TooLarge {
                then: Discard::Bytes(193)
            },
            11
        )))
    );
    assert_eq!(
        next_frame(&[b'x'; 150], 100),
        Ok(Some((
            Frame::TooLarge {
                then: Discard::ToNewline
            },
            150
        )))
    );
    assert!(matches!(
        next_frame(b"12345678901234 x", 100),
        Err(FramingError(_))
    ));
}

/// The parsers take any bytes without panicking: random and mutated messages (a deterministic
/// stand-in for the fuzz targets in `fuzz/`, run with every test run).
#[test]
fn arbitrary_bytes_never_panic() {
    let seeds: [&[u8]; 4] = [
        b"<165>1 2003-10-11T22:14:15.003Z host app 1 ID [a b=\"c\"] msg",
        b"<34>Oct 11 22:14:15 mymachine su[230]: failed",
        b"12 <13>hello wor\n",
        b"<13>\xff\xfe\x00 [x=\"",
    ];
    crate::sources::mutated_inputs(&seeds, b"<>[]\"\\= 0123456789\n", 20_000, |input| {
        let _ = parse_message(input, "syslog", NOW);
        let _ = next_frame(input, 64);
    });
}
