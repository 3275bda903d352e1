//! What kind of value a masked token held, as a template shows it: `<num>`, `<ip>:<num>`,
//! `blk_<num>`.
//!
//! The miner groups lines by their masked tokens alone (a value is a value, whatever its
//! kind), so a pattern's id does not depend on this; the kind only names the placeholder. A
//! pattern whose lines held different kinds in one place shows the wider kind there
//! ([`join`]), `<*>` when none covers both.
//!
//! The kinds a value's core (its punctuation and key stripped) can be:
//!
//! | kind | examples |
//! |---|---|
//! | `<time>` | `Jul`, `Sunday`, `03:55:22`, `2015-10-18`, `2015-10-18T18:01:47.978Z`, `17/06/09` |
//! | `<num>` | `42`, `-7`, `3.25`, `#12` shows as `#<num>` |
//! | `<duration>`, `<size>` | `12ms`, `5s`, `1.2 KB`, `(12 ms)`; `45%` shows as `<num>%` |
//! | `<ip>` | `10.0.0.1`, `fe80::1`, `2001:db8:0:0:0:0:0:1`; with a port `<ip>:<num>` |
//! | `<uuid>` | `123e4567-e89b-12d3-a456-426614174000` |
//! | `<mac>` | `00:1a:2b:3c:4d:5e` |
//! | `<hex>` | `0x7f3a`, `e6200003ab`, `a1b2c3d4-00ff` |
//! | `<path>` | `/var/log/app.log` (but `/10.0.0.1:50010` shows as `/<ip>:<num>`), `./run`, `C:\tmp` |
//! | `<url>` | `https://example.com/a?b=1` |
//! | `<host>:<num>` | `node-7.example.com:8020` |
//! | a word with numbers in it | `blk_-1608` as `blk_<num>`, `core.1287` as `core.<num>`, `eu-west-1` as `eu-west-<num>` |
//! | `<*>` | anything else, and a word that turned out to vary |

/// The placeholder of a value of no particular kind (and of words that vary).
pub const ANY: &str = "<*>";

const NUM: &str = "<num>";
const HEX: &str = "<hex>";
const TIME: &str = "<time>";

/// Units of time a number may carry (`12 ms`, `5s`).
const TIME_UNITS: [&str; 20] = [
    "s", "sec", "secs", "second", "seconds", "ms", "msec", "us", "ns", "min", "mins", "minute",
    "minutes", "h", "hr", "hrs", "hour", "hours", "day", "days",
];

/// Units of size a number may carry (`1.2 KB`, `512MB`).
const SIZE_UNITS: [&str; 9] = ["b", "kb", "mb", "gb", "tb", "kib", "mib", "gib", "tib"];

/// The kind of a value carrying `unit`, if it is a unit (`ms` → `<duration>`).
pub fn of_unit(unit: &str) -> Option<&'static str> {
    let known = |list: &[&str]| list.iter().any(|known| unit.eq_ignore_ascii_case(known));
    if known(&TIME_UNITS) {
        Some("<duration>")
    } else if known(&SIZE_UNITS) {
        Some("<size>")
    } else {
        None
    }
}

/// The kind shown where `a` and `b` were both seen: the same kind, the wider of two (a run of
/// decimal digits reads as hexadecimal too), or `<*>`.
pub fn join<'a>(a: &'a str, b: &'a str) -> &'a str {
    if a == b {
        a
    } else if (a == NUM && b == HEX) || (a == HEX && b == NUM) {
        HEX
    } else {
        ANY
    }
}

/// The kind of a run of adjacent values seen as one (`Sun Jul 10 03:55:22 2005`): a time if
/// any part is one, else the kind they share, else `<*>`.
pub fn join_run<'a>(a: &'a str, b: &'a str) -> &'a str {
    if a == TIME || b == TIME {
        TIME
    } else {
        join(a, b)
    }
}

/// Appends the kind of the value `core` to `out`.
pub fn render(core: &str, out: &mut String) {
    match classify(core) {
        Kind::Named(kind) => out.push_str(kind),
        Kind::Prefixed(prefix, rest) => {
            out.push(prefix);
            render(rest, out);
        }
        Kind::Shape => shape(core, out),
    }
}

/// What [`classify`] found.
enum Kind<'a> {
    /// A kind with a name (`<ip>:<num>`).
    Named(&'static str),
    /// A character kept before the kind of the rest (`#12`, `/10.0.0.1:80`).
    Prefixed(char, &'a str),
    /// A word with numbers in it, shown by [`shape`].
    Shape,
}

fn classify(core: &str) -> Kind<'_> {
    let bytes = core.as_bytes();
    let Some(&first) = bytes.first() else {
        return Kind::Named(ANY);
    };
    // `host:port`, with a port and a host that pass.
    let port_of = |port_ok: fn(&[u8]) -> bool, host_ok: &dyn Fn(&str) -> bool| {
        core.rsplit_once(':')
            .is_some_and(|(host, port)| port_ok(port.as_bytes()) && host_ok(host))
    };
    let digits = |port: &[u8]| !port.is_empty() && port.iter().all(u8::is_ascii_digit);
    // The common cases first: a plain number, a day or month name.
    let named = if (first.is_ascii_digit() || matches!(first, b'-' | b'+')) && is_number(bytes) {
        NUM
    } else if first.is_ascii_alphabetic() && core.len() <= 9 && crate::tokens::is_time_word(core) {
        TIME
    } else if is_ipv4(bytes) {
        "<ip>"
    } else if port_of(digits, &|host| is_ipv4(host.as_bytes())) {
        "<ip>:<num>"
    } else if is_time(bytes) {
        // (A number never gets here: `2005` is one, `03:55` and `2015-10-18` are times.)
        TIME
    } else if first == b'#' && core.len() > 1 {
        return Kind::Prefixed('#', &core[1..]);
    } else if let Some(kind) = number_with_unit(core) {
        kind
    } else if is_ipv6(bytes) {
        "<ip>"
    } else if port_of(is_number, &|host| {
        host.strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(']'))
            .is_some_and(|inner| is_ipv6(inner.as_bytes()))
    }) {
        "[<ip>]:<num>"
    } else if is_uuid(bytes) {
        "<uuid>"
    } else if is_mac(bytes) {
        "<mac>"
    } else if is_hex(bytes) {
        HEX
    } else if let Some(rest) = core.strip_prefix('/') {
        let address = is_ipv4(rest.as_bytes())
            || rest
                .rsplit_once(':')
                .is_some_and(|(host, port)| is_ipv4(host.as_bytes()) && is_number(port.as_bytes()));
        if address {
            return Kind::Prefixed('/', rest);
        }
        "<path>"
    } else if core.starts_with("./")
        || core.starts_with("../")
        || core.starts_with("~/")
        || (bytes.len() > 2 && first.is_ascii_alphabetic() && &bytes[1..3] == b":\\")
    {
        "<path>"
    } else if core.split_once("://").is_some_and(|(scheme, _)| {
        !scheme.is_empty() && scheme.bytes().all(|byte| byte.is_ascii_alphabetic())
    }) {
        "<url>"
    } else if port_of(is_number, &|host| is_host(host.as_bytes())) {
        "<host>:<num>"
    } else if first.is_ascii_alphabetic() {
        return Kind::Shape;
    } else {
        ANY
    };
    Kind::Named(named)
}

/// An integer or decimal, optionally signed: `42`, `-7`, `3.25`, `1,5`.
fn is_number(bytes: &[u8]) -> bool {
    let digits = match bytes.first() {
        Some(b'-' | b'+') => &bytes[1..],
        _ => bytes,
    };
    let whole = digits
        .iter()
        .take_while(|byte| byte.is_ascii_digit())
        .count();
    if whole == 0 {
        return false;
    }
    match &digits[whole..] {
        [] => true,
        [b'.' | b',', fraction @ ..] => {
            !fraction.is_empty() && fraction.iter().all(u8::is_ascii_digit)
        }
        _ => false,
    }
}

/// A number with its unit attached: `12ms` → `<duration>`, `512MB` → `<size>`, `45%` →
/// `<num>%`.
fn number_with_unit(core: &str) -> Option<&'static str> {
    let split = core
        .bytes()
        .position(|byte| !(byte.is_ascii_digit() || byte == b'.' || byte == b','))?;
    let (number, unit) = core.split_at(split);
    if !is_number(number.as_bytes()) {
        return None;
    }
    if unit == "%" {
        return Some("<num>%");
    }
    of_unit(unit)
}

/// A time of day or a date in the forms logs write them: digits and `-:/.,TZ+` only, with a
/// clock (`03:55`) or three date fields (`2015-10-18`, `17/06/09`).
fn is_time(bytes: &[u8]) -> bool {
    if !bytes.first().is_some_and(u8::is_ascii_digit)
        || !bytes.iter().all(|&byte| {
            byte.is_ascii_digit()
                || matches!(byte, b'-' | b':' | b'/' | b'.' | b',' | b'T' | b'Z' | b'+')
        })
    {
        return false;
    }
    let clock = bytes.windows(4).any(|window| {
        window[0].is_ascii_digit()
            && window[1] == b':'
            && window[2].is_ascii_digit()
            && window[3].is_ascii_digit()
    });
    if clock {
        return true;
    }
    // Three groups of digits joined by one kind of separator, one of them at least two long.
    let date = bytes
        .iter()
        .position(|byte| !byte.is_ascii_digit())
        .map(|at| bytes[at]);
    let Some(separator @ (b'-' | b'/' | b'.')) = date else {
        return false;
    };
    let end = bytes
        .iter()
        .position(|&byte| byte == b'T')
        .unwrap_or(bytes.len());
    let groups: Vec<&[u8]> = bytes[..end].split(|&byte| byte == separator).collect();
    groups.len() == 3
        && groups
            .iter()
            .all(|group| (1..=4).contains(&group.len()) && group.iter().all(u8::is_ascii_digit))
        && groups.iter().any(|group| group.len() >= 2)
        && if separator == b'.' {
            // Dots join versions and addresses too: only a year first or last is a date.
            groups[0].len() == 4 || groups[2].len() == 4
        } else {
            groups[0].len() == 4 || groups[2].len() >= 2
        }
}

fn is_ipv4(bytes: &[u8]) -> bool {
    let mut parts = 0;
    for part in bytes.split(|&byte| byte == b'.') {
        parts += 1;
        if part.is_empty()
            || part.len() > 3
            || !part.iter().all(u8::is_ascii_digit)
            || part
                .iter()
                .fold(0u32, |value, &digit| value * 10 + u32::from(digit - b'0'))
                > 255
        {
            return false;
        }
    }
    parts == 4
}

fn is_ipv6(bytes: &[u8]) -> bool {
    let colons = bytes.iter().filter(|&&byte| byte == b':').count();
    let compressed = bytes.windows(2).any(|window| window == b"::");
    (2..=7).contains(&colons)
        && (compressed || colons == 7)
        && bytes
            .split(|&byte| byte == b':')
            .all(|group| group.len() <= 4 && group.iter().all(u8::is_ascii_hexdigit))
}

fn is_uuid(bytes: &[u8]) -> bool {
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(index, byte)| match index {
            8 | 13 | 18 | 23 => *byte == b'-',
            _ => byte.is_ascii_hexdigit(),
        })
}

fn is_mac(bytes: &[u8]) -> bool {
    bytes.len() == 17
        && matches!(bytes[2], b':' | b'-')
        && bytes.iter().enumerate().all(|(index, byte)| {
            if index % 3 == 2 {
                *byte == bytes[2]
            } else {
                byte.is_ascii_hexdigit()
            }
        })
}

/// `0x7f`, or eight or more hexadecimal digits (in groups of two or more joined by `-`) with a
/// digit among them.
fn is_hex(bytes: &[u8]) -> bool {
    if let Some(digits) = bytes
        .strip_prefix(b"0x")
        .or_else(|| bytes.strip_prefix(b"0X"))
    {
        return !digits.is_empty() && digits.iter().all(u8::is_ascii_hexdigit);
    }
    let digits = bytes.iter().filter(|byte| byte.is_ascii_hexdigit()).count();
    digits >= 8
        && bytes.iter().any(u8::is_ascii_digit)
        && bytes
            .split(|&byte| byte == b'-')
            .all(|group| group.len() >= 2 && group.iter().all(u8::is_ascii_hexdigit))
}

/// A host name: letters, digits, `.`, `-` and `_`, starting with a letter or digit, with a
/// letter in it.
fn is_host(bytes: &[u8]) -> bool {
    bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.iter().any(u8::is_ascii_alphabetic)
        && bytes
            .iter()
            .all(|&byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'-' | b'_'))
}

/// A word with numbers in it, shown with its letters and separators kept and each part that
/// varies replaced: digits by `<num>` (a `-` right after a separator is the number's sign),
/// addresses by `<ip>` or `<ip>:<num>`, letters followed by digits (`e12`) as `e<num>` (but one
/// digit names a thing, `jk2`), long hexadecimal parts by `<hex>`, any other mix by `<*>`.
fn shape(core: &str, out: &mut String) {
    let bytes = core.as_bytes();
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        if !byte.is_ascii_alphanumeric() {
            let signed = byte == b'-'
                && bytes.get(index + 1).is_some_and(u8::is_ascii_digit)
                && (index == 0 || !bytes[index - 1].is_ascii_alphanumeric());
            if !signed {
                // A separator, kept (multi-byte characters are copied whole).
                let width = core[index..].chars().next().map_or(1, char::len_utf8);
                out.push_str(&core[index..index + width]);
                index += width;
                continue;
            }
            index += 1;
        }
        let start = index;
        if bytes[index].is_ascii_digit() {
            // An address inside a word (`rack-7/10.0.0.1:8030`).
            let run = bytes[index..]
                .iter()
                .take_while(|byte| byte.is_ascii_digit() || matches!(byte, b'.' | b':'))
                .count();
            let address = &core[index..index + run];
            let address = address.trim_end_matches(['.', ':']);
            if is_ipv4(address.as_bytes()) {
                out.push_str("<ip>");
                index += address.len();
                continue;
            }
            if let Some((host, port)) = address.rsplit_once(':')
                && is_ipv4(host.as_bytes())
                && is_number(port.as_bytes())
            {
                out.push_str("<ip>:<num>");
                index += address.len();
                continue;
            }
        }
        while index < bytes.len() && bytes[index].is_ascii_alphanumeric() {
            index += 1;
        }
        let part = &bytes[start..index];
        if part.is_empty() {
            continue;
        }
        let letters = part.iter().take_while(|b| b.is_ascii_alphabetic()).count();
        if letters == part.len() || (letters > 0 && letters + 1 == part.len()) {
            // Letters, or letters and one digit, which name a thing (`jk2`, `ssh2`).
            out.push_str(&core[start..index]);
        } else if part[letters..].iter().all(u8::is_ascii_digit) {
            out.push_str(&core[start..start + letters]);
            out.push_str(NUM);
        } else if part.len() >= 8 && part.iter().all(u8::is_ascii_hexdigit) {
            out.push_str(HEX);
        } else {
            out.push_str(ANY);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(core: &str) -> String {
        let mut out = String::new();
        render(core, &mut out);
        out
    }

    #[test]
    fn values_are_named_by_their_kind() {
        let cases = [
            ("42", "<num>"),
            ("-1608999687919862906", "<num>"),
            ("3.25", "<num>"),
            ("#12", "#<num>"),
            ("12ms", "<duration>"),
            ("512MB", "<size>"),
            ("45.3%", "<num>%"),
            ("10.250.19.102", "<ip>"),
            ("10.250.19.102:50010", "<ip>:<num>"),
            ("/10.250.19.102:50010", "/<ip>:<num>"),
            ("fe80::1", "<ip>"),
            ("[::1]:8080", "[<ip>]:<num>"),
            ("03:55:22", "<time>"),
            ("2015-10-18", "<time>"),
            ("2015-10-18T18:01:47.978Z", "<time>"),
            ("17/06/09", "<time>"),
            ("20171223-22:15:29:606", "<time>"),
            ("Jul", "<time>"),
            ("123e4567-e89b-12d3-a456-426614174000", "<uuid>"),
            ("00:1a:2b:3c:4d:5e", "<mac>"),
            ("0x7f3a", "<hex>"),
            ("e6200003ab", "<hex>"),
            ("a1b2c3d4-00ff", "<hex>"),
            ("/var/log/app-2.log", "<path>"),
            ("./run7", "<path>"),
            ("https://example.com/a?b=1", "<url>"),
            ("node-7.example.com:8020", "<host>:<num>"),
            ("blk_-1608999687919862906", "blk_<num>"),
            ("core.1287", "core.<num>"),
            ("eu-west-1", "eu-west-<num>"),
            ("pool-3-thread-7", "pool-<num>-thread-<num>"),
            ("container_e12_1445", "container_e<num>_<num>"),
            ("jk2_init()", "jk2_init()"),
            ("msra-sa-41/10.190.173.170:8030", "msra-sa-<num>/<ip>:<num>"),
            ("node-3/10.0.0.1", "node-<num>/<ip>"),
            ("job_a3f9c2", "job_<*>"),
            ("1.2.3", "<*>"),
            ("", "<*>"),
        ];
        for (core, expected) in cases {
            assert_eq!(kind(core), expected, "{core}");
        }
    }

    #[test]
    fn kinds_join_to_the_wider() {
        assert_eq!(join("<num>", "<num>"), "<num>");
        assert_eq!(join("<num>", "<hex>"), "<hex>");
        assert_eq!(join("<ip>", "<num>"), "<*>");
        assert_eq!(join_run("<time>", "<num>"), "<time>");
        assert_eq!(join_run("<num>", "<num>"), "<num>");
        assert_eq!(of_unit("KB"), Some("<size>"));
        assert_eq!(of_unit("ms"), Some("<duration>"));
        assert_eq!(of_unit("bytes"), None);
    }
}
