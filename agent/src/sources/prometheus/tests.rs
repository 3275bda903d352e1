use sluice_proto::v2::envelope;

use super::exposition::{envelopes, parse};

const PAGE: &str = r#"# HELP http_requests_total Requests.
# TYPE http_requests_total counter
http_requests_total{method="post",code="200"} 1027 1395066363000
http_requests_total{method="get",path="/a \"quoted\" \\ path\nx"} 3
http_requests_created{method="post",code="200"} 1395066363
# TYPE temperature gauge
temperature 21.5
# TYPE latency histogram
latency_bucket{le="0.1"} 5
latency_bucket{le="+Inf"} 9
latency_sum 1.7
latency_count 9
# TYPE rpc summary
rpc{quantile="0.99"} NaN
untyped_thing -3e2
this line is not a sample
broken{label="open} 1
# TYPE negative counter
negative_total -1
"#;

#[test]
fn a_page_maps_onto_counters_and_gauges() {
    let page = parse(PAGE);
    assert_eq!(page.refused.len(), 2, "{:?}", page.refused);
    let (envelopes, refused) = envelopes(&page, "svc", "127.0.0.1:9100", 42);
    assert_eq!(refused.len(), 1, "the negative counter");
    let described: Vec<(String, String, f64, i64)> = envelopes
        .iter()
        .map(|envelope| match &envelope.message {
            Some(envelope::Message::Counter(counter)) => (
                "counter".to_owned(),
                counter.name.clone(),
                counter.total as f64,
                envelope.timestamp,
            ),
            Some(envelope::Message::Gauge(gauge)) => {
                let (name, value) = gauge.metrics.iter().next().expect("one metric");
                (
                    "gauge".to_owned(),
                    name.clone(),
                    value.value,
                    envelope.timestamp,
                )
            }
            other => panic!("{other:?}"),
        })
        .collect();
    let names: Vec<(&str, &str)> = described
        .iter()
        .map(|(kind, name, _, _)| (kind.as_str(), name.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("counter", "http_requests_total"),
            ("counter", "http_requests_total"),
            ("gauge", "temperature"),
            ("gauge", "latency_bucket"),
            ("gauge", "latency_bucket"),
            ("gauge", "latency_sum"),
            ("gauge", "latency_count"),
            ("gauge", "rpc"),
            ("gauge", "untyped_thing"),
        ]
    );
    assert_eq!(described[0].2, 1027.0);
    assert_eq!(
        described[0].3, 1_395_066_363_000_000_000,
        "the sample's own time"
    );
    assert_eq!(described[1].3, 42, "the scrape time");
    assert_eq!(described[8].2, -300.0);
    assert!(described[7].2.is_nan());

    let tags = &envelopes[1].tags;
    assert_eq!(
        tags.get("path").map(String::as_str),
        Some("/a \"quoted\" \\ path\nx")
    );
    assert_eq!(
        tags.get("instance").map(String::as_str),
        Some("127.0.0.1:9100")
    );
    assert_eq!(envelopes[3].tags.get("le").map(String::as_str), Some("0.1"));
    assert!(envelopes.iter().all(|envelope| envelope.source_id == "svc"));
}

#[test]
fn arbitrary_bytes_never_panic() {
    crate::sources::mutated_inputs(&[PAGE.as_bytes()], b"{}\"=,\\ #\n0.e+", 20_000, |input| {
        let page = parse(&String::from_utf8_lossy(input));
        let _ = envelopes(&page, "s", "i", 0);
    });
}
