use sluice_proto::v2::{Envelope, envelope};

use super::bulk::{Action, Mapping, parse};

const NOW: i64 = 1_795_768_200_000_000_000;

fn payload(envelope: &Envelope) -> String {
    match &envelope.message {
        Some(envelope::Message::Log(log)) => String::from_utf8_lossy(&log.payload).into_owned(),
        other => panic!("not a log: {other:?}"),
    }
}

#[test]
fn index_and_create_documents_map_onto_envelopes() {
    let body = br#"{"index":{"_index":"web","_id":"1","_type":"_doc"}}
{"@timestamp":"2026-11-27T08:00:00.250Z","message":"GET / 200","host":{"name":"web-1"},"status":200,"tags":["a","b"],"empty":null}
{"create":{"_id":7}}
{"msg":"no index in the action","level":"ERROR","time":1795766400123}

{"index":{}}
{"service":{"name":"billing"},"log":"from fluent bit","ts":"2026-11-27T08:00:00"}
"#;
    let items = parse(body, Some("fallback"), &Mapping::default(), NOW).expect("parses");
    assert_eq!(items.len(), 3);

    assert_eq!(items[0].action, Action::Index);
    assert_eq!(items[0].index, "web");
    assert_eq!(items[0].id.as_deref(), Some("1"));
    let first = items[0].outcome.as_ref().expect("kept");
    assert_eq!(first.source_id, "web");
    assert_eq!(first.timestamp, 1_795_766_400_250_000_000);
    assert_eq!(payload(first), "GET / 200");
    let tag = |envelope: &Envelope, name: &str| envelope.tags.get(name).cloned();
    assert_eq!(tag(first, "host.name").as_deref(), Some("web-1"));
    assert_eq!(tag(first, "status").as_deref(), Some("200"));
    assert_eq!(tag(first, "tags").as_deref(), Some(r#"["a","b"]"#));
    assert_eq!(tag(first, "index").as_deref(), Some("web"));
    assert!(!first.tags.contains_key("empty"));
    assert!(!first.tags.contains_key("message"));
    assert!(!first.tags.contains_key("@timestamp"));

    assert_eq!(items[1].action, Action::Create);
    assert_eq!(items[1].index, "fallback", "the URL's index");
    assert_eq!(items[1].id.as_deref(), Some("7"));
    let second = items[1].outcome.as_ref().expect("kept");
    assert_eq!(second.timestamp, 1_795_766_400_123_000_000, "epoch millis");
    assert_eq!(payload(second), "no index in the action");
    match &second.message {
        Some(envelope::Message::Log(log)) => assert_eq!(log.r#type, 1, "level ERROR"),
        _ => panic!("log"),
    }

    let third = items[2].outcome.as_ref().expect("kept");
    assert_eq!(
        third.timestamp, 1_795_766_400_000_000_000,
        "zone-less is UTC"
    );
    assert_eq!(payload(third), "from fluent bit");
}

#[test]
fn the_source_id_field_and_documents_without_a_message() {
    let mapping = Mapping {
        source_id_field: Some(vec!["service".to_owned(), "name".to_owned()]),
    };
    let body = b"{\"index\":{\"_index\":\"logs\"}}\n{\"service\":{\"name\":\"billing\"},\"event\":\"paid\"}\n\
{\"index\":{\"_index\":\"logs\"}}\n{\"service.name\":\"dotted\",\"message\":\"m\"}\n\
{\"index\":{\"_index\":\"logs\"}}\n{\"other\":1,\"message\":\"no service\"}\n";
    let items = parse(body, None, &mapping, NOW).expect("parses");
    let envelope = |index: usize| items[index].outcome.as_ref().expect("kept");
    assert_eq!(envelope(0).source_id, "billing");
    assert_eq!(envelope(0).timestamp, NOW, "arrival time");
    // No message field: the whole document is the payload.
    assert_eq!(
        payload(envelope(0)),
        r#"{"event":"paid","service":{"name":"billing"}}"#
    );
    assert_eq!(envelope(1).source_id, "dotted");
    assert_eq!(envelope(2).source_id, "logs", "falls back to the index");
}

#[test]
fn bad_documents_fail_alone_and_bad_action_lines_fail_the_request() {
    let body = br#"{"index":{"_index":"a"}}
{"message":"good"}
{"index":{"_index":"a"}}
{"message": "broken
{"index":{"_index":"a"}}
[1,2]
{"index":{"_index":"a"}}
{"@timestamp":"yesterday","message":"x"}
{"delete":{"_index":"a","_id":"1"}}
{"update":{"_index":"a","_id":"1"}}
{"doc":{"x":1}}
{"create":{"_index":"a"}}
{"message":"also good"}
"#;
    let items = parse(body, None, &Mapping::default(), NOW).expect("parses");
    let metrics: Vec<&str> = items
        .iter()
        .map(|item| match &item.outcome {
            Ok(_) => "ok",
            Err(refused) => refused.metric,
        })
        .collect();
    assert_eq!(
        metrics,
        [
            "ok",
            "malformed_json",
            "not_an_object",
            "bad_timestamp",
            "unsupported_action",
            "unsupported_action",
            "ok"
        ]
    );
    assert_eq!(items[1].outcome.as_ref().err().map(|e| e.status), Some(400));

    for bad in [
        &b"not json\n{}\n"[..],
        b"{\"index\":{}}\n{}\n",
        b"{\"index\":{\"_index\":\"a\"}}\n",
        b"{\"upsert\":{\"_index\":\"a\"}}\n{}\n",
        b"{\"index\":{\"_index\":\"a\"},\"create\":{}}\n{}\n",
    ] {
        let error = parse(bad, None, &Mapping::default(), NOW).expect_err("whole request refused");
        assert!(error.0.starts_with("line 1: "), "{}", error.0);
    }
}

/// The parser takes any bytes without panicking (a deterministic stand-in for the fuzz target
/// in `fuzz/`, run with every test run).
#[test]
fn arbitrary_bytes_never_panic() {
    let seed: &[u8] = br#"{"index":{"_index":"a","_id":"1"}}
{"@timestamp":"2026-11-27T08:00:00Z","message":"m","a":{"b":[1,{"c":null}]},"level":"error"}
{"create":{}}
{"ts":1.5e9,"log":{"x":1}}
"#;
    let mapping = Mapping {
        source_id_field: Some(vec!["a".to_owned(), "b".to_owned()]),
    };
    crate::sources::mutated_inputs(&[seed], b"{}[]\":,\n0e-.\\", 20_000, |input| {
        let _ = parse(input, Some("url"), &mapping, NOW);
    });
}
