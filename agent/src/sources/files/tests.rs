use regex::Regex;

use super::reader::{Record, cut, join};

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
