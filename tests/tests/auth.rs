//! API tokens through `sluice up` with `[query_api.auth]` on: the admin token it makes and
//! the client commands use, tokens made, listed and revoked with `sluice tokens`, refusals
//! (no token, a wrong one, a missing right, an operator's route for a scoped token) answered
//! 401 or 403 and counted, and a revocation refused within a second.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use sluice_tests::{Sluice, log_envelope, metric_sample, send, sluice_binary};

fn sluice_cli(data_dir: &Path, arguments: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let output = std::process::Command::new(sluice_binary())
        .args(arguments)
        .args(["--data-dir", data_dir.to_str().unwrap()])
        .env_remove("SLUICE_TOKEN")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

async fn search_status(api: &str, token: Option<&str>) -> (u16, String) {
    let mut request = reqwest::Client::new()
        .get(format!("{api}/api/v1/search"))
        .query(&[("query", "auth"), ("limit", "10")]);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|value| value.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = response.text().await.unwrap();
    (status, format!("{challenge} {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_guard_every_route_and_a_revoked_one_is_refused_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let sluice = Sluice::start_with_config(&data_dir, "[query_api.auth]\nenabled = true\n").await;
    let admin = std::fs::read_to_string(data_dir.join("auth/admin.token"))
        .unwrap()
        .trim()
        .to_owned();
    let stored = std::fs::read_to_string(data_dir.join("auth/tokens.json")).unwrap();
    assert!(!stored.contains(&admin), "only the hash is stored");

    let mut client = sluice.ingress().await;
    let lines: Vec<_> = (0..20)
        .map(|n| log_envelope("auth-app", format!("auth line {n}")))
        .collect();
    send(&mut client, lines).await.unwrap();

    // A wrong token (the admin's id, another secret), none, one of another shape: 401 with
    // a challenge. The first refusal is logged (later ones at most once a second).
    let admin_id = admin.split('_').nth(1).unwrap().to_owned();
    let wrong = format!("sluice_{admin_id}_{}", "A".repeat(43));
    let (status, body) = search_status(&sluice.api, Some(&wrong)).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.starts_with("Bearer"), "{body}");
    assert_eq!(search_status(&sluice.api, None).await.0, 401);
    assert_eq!(search_status(&sluice.api, Some("hunter2")).await.0, 401);
    assert_eq!(
        reqwest::get(format!("{}/healthz", sluice.api))
            .await
            .unwrap()
            .status(),
        200,
        "liveness needs no token"
    );

    // The admin token reads everything, and the client commands find it in the data dir.
    sluice
        .wait_for("indexed", 20, Duration::from_secs(30), || async {
            let response = reqwest::Client::new()
                .get(format!("{}/api/v1/search", sluice.api))
                .query(&[("query", "auth"), ("limit", "100")])
                .bearer_auth(&admin)
                .send()
                .await
                .unwrap();
            let body: serde_json::Value = response.json().await.unwrap();
            body["total"].as_u64().unwrap_or(0)
        })
        .await;
    let (ok, printed, complaint) = sluice_cli(
        &data_dir,
        &["search", "auth", "--api", &sluice.api, "--output", "json"],
        &[],
    );
    assert!(ok, "{complaint}");
    assert!(printed.contains("auth line"), "{printed}");

    // A reader: reads, may not operate the archive; passed by flag or environment.
    let (ok, reader, complaint) = sluice_cli(
        &data_dir,
        &["tokens", "create", "--name", "reader", "--rights", "read"],
        &[],
    );
    assert!(ok, "{complaint}");
    let reader = reader.trim().to_owned();
    assert!(reader.starts_with("sluice_"), "{reader}");
    let (ok, listed, _) = sluice_cli(&data_dir, &["tokens", "list"], &[]);
    assert!(ok && listed.contains("reader"), "{listed}");
    assert!(!listed.contains(&reader), "lists never show secrets");
    let (ok, printed, complaint) = sluice_cli(
        &data_dir.join("elsewhere"),
        &[
            "sql",
            "SELECT 1 AS one",
            "--api",
            &sluice.api,
            "--output",
            "csv",
        ],
        &[("SLUICE_TOKEN", reader.as_str())],
    );
    assert!(ok, "{complaint}\n{}", sluice.log());
    assert!(printed.contains("one"), "{printed}");
    assert_eq!(search_status(&sluice.api, Some(&reader)).await.0, 200);
    let compact = reqwest::Client::new()
        .post(format!("{}/api/v1/archive/compact", sluice.api))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(compact.status().as_u16(), 403);
    assert!(compact.text().await.unwrap().contains("admin right"));

    // A token narrowed to some sources reads only those (none of them here), and the
    // operator's routes, which cover every source, are refused to it.
    let (ok, narrowed, complaint) = sluice_cli(
        &data_dir,
        &["tokens", "create", "--name", "dev", "--source", "web-*"],
        &[],
    );
    assert!(ok, "{complaint}");
    let (status, body) = search_status(&sluice.api, Some(narrowed.trim())).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"total\":0"), "{body}");
    let metrics = reqwest::Client::new()
        .get(format!("{}/metrics", sluice.api))
        .bearer_auth(narrowed.trim())
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status().as_u16(), 403);

    // Revoked: refused within a second.
    let id = reader
        .strip_prefix("sluice_")
        .unwrap()
        .split('_')
        .next()
        .unwrap()
        .to_owned();
    let (ok, _, complaint) = sluice_cli(&data_dir, &["tokens", "revoke", &id], &[]);
    assert!(ok, "{complaint}");
    let revoked = Instant::now();
    loop {
        let (status, _) = search_status(&sluice.api, Some(&reader)).await;
        if status == 401 {
            break;
        }
        assert!(
            revoked.elapsed() < Duration::from_secs(1),
            "a revoked token still answered {status} after {:?}",
            revoked.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (ok, _, complaint) = sluice_cli(&data_dir, &["tokens", "revoke", &id], &[]);
    assert!(!ok && complaint.contains("no token"), "{complaint}");

    // Every refusal counted by reason; logged with the token's id, never its secret.
    let metrics = reqwest::Client::new()
        .get(format!("{}/metrics", sluice.api))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for reason in ["missing", "unknown", "malformed", "right", "scope"] {
        let sample = format!("sluice_query_auth_refused_total{{reason=\"{reason}\"}}");
        assert!(
            metric_sample(&metrics, &sample) >= 1.0,
            "{reason}: {metrics}"
        );
    }
    let log = sluice.log();
    assert!(log.contains("authentication refused"), "{log}");
    assert!(log.contains(&admin_id), "the refusal names the token id");
    assert!(
        !log.contains(&reader) && !log.contains(&admin) && !log.contains(&wrong),
        "no secret in the log"
    );
}

/// Each token has its own request rate: past its burst it is answered 429 with `Retry-After`,
/// counted, while another token is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_past_its_rate_is_answered_429_and_others_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let sluice = Sluice::start_with_config(
        &data_dir,
        "[query_api.auth]\nenabled = true\nrequests_per_second = 0.5\nrequest_burst = 3\n",
    )
    .await;
    let (ok, reader, complaint) = sluice_cli(
        &data_dir,
        &["tokens", "create", "--name", "busy", "--rights", "read"],
        &[],
    );
    assert!(ok, "{complaint}");
    let reader = reader.trim().to_owned();
    let statuses: Vec<u16> =
        futures::future::join_all((0..5).map(|_| search_status(&sluice.api, Some(&reader))))
            .await
            .into_iter()
            .map(|(status, _)| status)
            .collect();
    assert_eq!(
        statuses.iter().filter(|status| **status == 200).count(),
        3,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|status| **status == 429).count(),
        2,
        "{statuses:?}"
    );
    let response = reqwest::Client::new()
        .get(format!("{}/api/v1/search", sluice.api))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 429);
    assert_eq!(response.headers()["retry-after"], "1");
    let admin = std::fs::read_to_string(data_dir.join("auth/admin.token"))
        .unwrap()
        .trim()
        .to_owned();
    assert_eq!(search_status(&sluice.api, Some(&admin)).await.0, 200);
    let metrics = sluice_tests::text_as(&format!("{}/metrics", sluice.api), &admin).await;
    assert!(
        metric_sample(&metrics, "sluice_query_auth_refused_total{reason=\"rate\"}") >= 3.0,
        "{metrics}"
    );
}
