use std::io::Write as _;

use crate::config::StartAt;
use regex::Regex;

use super::reader::{Record, cut, join};
use super::source::{Checkpoint, fingerprint, resume_offset};

fn texts(records: &[Record]) -> Vec<&str> {
    records.iter().map(|record| record.text.as_str()).collect()
}

#[test]
fn lines_are_cut_and_an_unfinished_one_waits() {
    let (records, used) = cut(b"one\r\ntwo\nthr", 100, 64, false);
    assert_eq!(texts(&records), ["one", "two"]);
    assert_eq!(used, 9);
    assert_eq!(records[0].end_offset, 105);
    assert_eq!(records[1].end_offset, 109);
    // The writer went quiet: the unfinished line is taken whole.
    let (records, used) = cut(b"thr", 109, 64, true);
    assert_eq!(texts(&records), ["thr"]);
    assert_eq!((used, records[0].end_offset), (3, 112));
}

#[test]
fn long_lines_are_split_and_flagged_not_dropped() {
    let line = format!("{}é{}\nnext\n", "a".repeat(63), "b".repeat(70));
    let (records, used) = cut(line.as_bytes(), 0, 64, false);
    assert_eq!(used, line.len());
    let parts: Vec<Option<(usize, usize)>> = records.iter().map(|record| record.part).collect();
    assert_eq!(parts, [Some((1, 3)), Some((2, 3)), Some((3, 3)), None]);
    // Cut on a character boundary: é is not torn in two.
    assert_eq!(records[0].text, "a".repeat(63));
    let joined: String = records[..3]
        .iter()
        .map(|record| record.text.as_str())
        .collect();
    assert_eq!(joined, format!("{}é{}", "a".repeat(63), "b".repeat(70)));
    // Only the last part moves the checkpoint past the line.
    assert_eq!(records[0].end_offset, 0);
    assert_eq!(records[2].end_offset, 136);
    // A line longer than the limit without a newline yet is split too, not held forever.
    let (records, _) = cut(&[b'x'; 200], 0, 64, false);
    assert_eq!(records.len(), 4);
}

#[test]
fn multiline_records_join_until_the_next_start() {
    let start = Regex::new(r"^\d{4}-").expect("pattern");
    let (records, _) = cut(
        b"2026-11-27 boom\n  at a()\n  at b()\n2026-11-27 fine\n  more",
        0,
        1024,
        false,
    );
    let (done, open) = join(None, records, &start, false);
    assert_eq!(texts(&done), ["2026-11-27 boom\n  at a()\n  at b()"]);
    let open = open.expect("the last record may still grow");
    assert_eq!(open.text, "2026-11-27 fine");
    let (records, _) = cut(b"  more\n", 51, 1024, false);
    let (done, open) = join(Some(open), records, &start, true);
    assert_eq!(texts(&done), ["2026-11-27 fine\n  more"]);
    assert_eq!(done[0].end_offset, 58);
    assert!(open.is_none());
}

/// Regression: checkpoints were keyed by device and inode only, so a new file that got the
/// inode of a deleted one while the agent was down was resumed mid-file and its head never
/// read. A checkpoint whose fingerprint does not match the file there now is not used.
#[test]
fn regression_a_reused_inode_is_read_from_its_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("app.log");
    std::fs::write(&path, "first file line one\nfirst file line two\n").expect("write");
    let file = std::fs::File::open(&path).expect("open");
    let checkpoint = Checkpoint {
        path: path.clone(),
        offset: 40,
        fingerprint: fingerprint(&file, 40),
        fingerprint_bytes: 40,
    };
    let head = |length| fingerprint(&file, length);
    // The same file, grown: resumed where it was.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .and_then(|mut appender| appender.write_all(b"and more\n"))
        .expect("append");
    assert_eq!(
        resume_offset(Some(&checkpoint), 49, head, true, StartAt::End),
        40
    );
    // Another file now at that inode (same size or larger): read from its start.
    std::fs::write(&path, "a new file, longer than the first one was\n").expect("write");
    let other = std::fs::File::open(&path).expect("open");
    let head = |length| fingerprint(&other, length);
    assert_eq!(
        resume_offset(Some(&checkpoint), 43, head, true, StartAt::End),
        0
    );
    // Checkpoints from before fingerprints are trusted; a checkpoint past the end is not.
    let legacy = Checkpoint {
        fingerprint: None,
        ..checkpoint.clone()
    };
    assert_eq!(
        resume_offset(Some(&legacy), 43, |_| None, true, StartAt::End),
        40
    );
    assert_eq!(
        resume_offset(Some(&legacy), 10, |_| None, true, StartAt::End),
        0
    );
    // No checkpoint: the end for files there at start (start_at = "end"), else the start.
    assert_eq!(resume_offset(None, 43, |_| None, true, StartAt::End), 43);
    assert_eq!(resume_offset(None, 43, |_| None, false, StartAt::End), 0);
    assert_eq!(
        resume_offset(None, 43, |_| None, true, StartAt::Beginning),
        0
    );
}

/// Regression: when a batch of a file's lines failed, its lines were already taken from the
/// buffer, and the next batch's acknowledgement moved the checkpoint past them: they were
/// never sent. Now the file is read again from its last acknowledged line, so lines refused
/// twice still arrive, in order, and the checkpoint ends at the end of the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_lines_of_a_failed_batch_are_sent_again_not_skipped() {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().expect("temp dir");
    let doppler = crate::test_support::TestDoppler::start(2).await;
    let (address, tls) = (doppler.address, doppler.tls.clone());
    let log = dir.path().join("app.log");
    let lines: Vec<String> = (0..10).map(|index| format!("line {index}")).collect();
    std::fs::write(&log, format!("{}\n", lines.join("\n"))).expect("write");
    let agent: crate::config::RawAgentConfig = toml::from_str(&format!(
        "dopplers = [\"{address}\"]\n\
         [[files]]\npaths = [{:?}]\nsource_id = \"app\"\nstart_at = \"beginning\"\n",
        log.display().to_string()
    ))
    .expect("config parses");
    let agent = agent.validate(&dir.path().join("data")).expect("config");
    let telemetry = sluice_common::telemetry::Telemetry::new();
    let metrics = crate::metrics::AgentMetrics::register(&telemetry);
    let forwarder =
        crate::forwarder::Forwarder::start(&agent, "agent".to_owned(), &tls, metrics.clone())
            .expect("forwarder");
    let source = super::FilesSource::new(
        agent.files.clone(),
        &agent.state_dir,
        Arc::clone(&forwarder),
        metrics,
    )
    .expect("source");
    let (trigger, shutdown) = sluice_common::shutdown::ShutdownTrigger::new();
    let task = tokio::spawn(source.serve(shutdown));
    let deadline = Instant::now() + Duration::from_secs(30);
    while doppler.line_count() < lines.len() {
        assert!(
            Instant::now() < deadline,
            "only {:?}",
            doppler.state.lines.lock()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let checkpoints = agent.state_dir.join("files-checkpoints.json");
    let size = std::fs::metadata(&log).expect("log").len();
    while !std::fs::read_to_string(&checkpoints)
        .is_ok_and(|text| text.contains(&format!("\"offset\":{size}")))
    {
        assert!(Instant::now() < deadline, "checkpoint never reached {size}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    trigger.fire();
    task.await.expect("join").expect("source ran");
    forwarder.drain().await;
    assert_eq!(*doppler.state.lines.lock().expect("lock"), lines);
}
