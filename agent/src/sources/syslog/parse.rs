//! Syslog messages (RFC 5424 and RFC 3164) and TCP framing (RFC 6587: octet counting and
//! newline-terminated), and their mapping onto envelopes.
//!
//! | syslog | envelope |
//! |---|---|
//! | timestamp (RFC 5424: RFC 3339; RFC 3164: `Mmm dd hh:mm:ss`, read as UTC in the current year, or the year before when that would be more than a day ahead; also an RFC 3339 stamp) | `timestamp` (arrival time when absent or `-`) |
//! | APP-NAME (RFC 3164: the tag before `[pid]:`) | `source_id` (the configured default without one) |
//! | PROCID (RFC 3164: the `[pid]`) | `instance_id`, tag `procid` |
//! | MSG (a leading UTF-8 BOM removed) | log payload |
//! | severity ≤ 3 (emerg, alert, crit, err) | log type `ERR` (else `OUT`) |
//! | severity, facility (names), HOSTNAME, APP-NAME, MSGID | tags `severity`, `facility`, `host`, `app_name`, `msgid` |
//! | structured data `[id name="value"]` | tag `<id>.<name>` |
//!
//! A message without a `<PRI>` is taken whole as the text of a `user.notice` message, as RFC
//! 3164 section 4.3.3 tells relays to. A PRI over 191, a malformed RFC 5424 header or
//! structured data, and an empty message are refused, each on its own.

use std::collections::HashMap;

use sluice_proto::v2::{Envelope, Log, envelope};

/// Why one message is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The `reason` label of the rejection counter.
    pub metric: &'static str,
    /// What is wrong.
    pub reason: String,
}

fn refused(metric: &'static str, reason: impl Into<String>) -> Refused {
    Refused {
        metric,
        reason: reason.into(),
    }
}

const SEVERITIES: [&str; 8] = [
    "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
];
const FACILITIES: [&str; 24] = [
    "kern",
    "user",
    "mail",
    "daemon",
    "auth",
    "syslog",
    "lpr",
    "news",
    "uucp",
    "cron",
    "authpriv",
    "ftp",
    "ntp",
    "security",
    "console",
    "solaris-cron",
    "local0",
    "local1",
    "local2",
    "local3",
    "local4",
    "local5",
    "local6",
    "local7",
];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Parses one message (without framing) into an envelope. `now` stamps messages without a
/// timestamp and anchors RFC 3164's year-less dates.
pub fn parse_message(
    message: &[u8],
    default_source_id: &str,
    now: i64,
) -> Result<Envelope, Refused> {
    let message = trim_end(message);
    if message.is_empty() {
        return Err(refused("empty", "empty message"));
    }
    let (pri, rest) = match parse_pri(message)? {
        Some((pri, rest)) => (pri, rest),
        None => (13, message),
    };
    let mut parsed = if let Some(header) = rest.strip_prefix(b"1 ") {
        parse_5424(header)?
    } else {
        parse_3164(rest, now)
    };
    let severity = usize::from(pri % 8);
    let facility = usize::from(pri / 8);
    parsed
        .tags
        .insert("severity".to_owned(), SEVERITIES[severity].to_owned());
    parsed
        .tags
        .insert("facility".to_owned(), FACILITIES[facility].to_owned());
    let payload = parsed
        .message
        .strip_prefix("\u{feff}")
        .unwrap_or(&parsed.message)
        .to_owned();
    if payload.is_empty() && parsed.tags.keys().all(|key| !key.contains('.')) {
        return Err(refused("empty", "the message has a header and no text"));
    }
    let source_id = parsed
        .app_name
        .clone()
        .unwrap_or_else(|| default_source_id.to_owned());
    if let Some(app) = parsed.app_name {
        parsed.tags.insert("app_name".to_owned(), app);
    }
    let instance_id = parsed.procid.clone().unwrap_or_default();
    if let Some(procid) = parsed.procid {
        parsed.tags.insert("procid".to_owned(), procid);
    }
    Ok(Envelope {
        timestamp: parsed.timestamp.unwrap_or(now),
        source_id,
        instance_id,
        tags: parsed.tags,
        message: Some(envelope::Message::Log(Log {
            payload: payload.into_bytes(),
            r#type: if severity <= 3 { 1 } else { 0 },
        })),
        ..Default::default()
    })
}

struct Parsed {
    timestamp: Option<i64>,
    app_name: Option<String>,
    procid: Option<String>,
    message: String,
    tags: HashMap<String, String>,
}

fn trim_end(message: &[u8]) -> &[u8] {
    let end = message
        .iter()
        .rposition(|byte| !matches!(byte, b'\n' | b'\r' | b'\0'))
        .map_or(0, |last| last + 1);
    &message[..end]
}

/// `<PRI>`: `Ok(None)` when the message does not start with one.
fn parse_pri(message: &[u8]) -> Result<Option<(u8, &[u8])>, Refused> {
    let Some(rest) = message.strip_prefix(b"<") else {
        return Ok(None);
    };
    let Some(close) = rest.iter().take(4).position(|byte| *byte == b'>') else {
        return Ok(None);
    };
    let digits = &rest[..close];
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Ok(None);
    }
    let value: u16 = std::str::from_utf8(digits)
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(u16::MAX);
    if value > 191 || (digits.len() > 1 && digits[0] == b'0') {
        return Err(refused(
            "bad_priority",
            format!(
                "PRI <{}> is not a priority (0 to 191)",
                String::from_utf8_lossy(digits)
            ),
        ));
    }
    Ok(Some((value as u8, &rest[close + 1..])))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The next space-delimited header field and what follows its space.
fn field(input: &[u8]) -> (&[u8], &[u8]) {
    match input.iter().position(|byte| *byte == b' ') {
        Some(space) => (&input[..space], &input[space + 1..]),
        None => (input, &[]),
    }
}

fn nil_or(value: &[u8]) -> Option<String> {
    (value != b"-" && !value.is_empty()).then(|| text(value))
}

/// RFC 5424 after `<PRI>1 `: TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD [SP MSG].
fn parse_5424(input: &[u8]) -> Result<Parsed, Refused> {
    let (timestamp, input) = field(input);
    let (hostname, input) = field(input);
    let (app_name, input) = field(input);
    let (procid, input) = field(input);
    let (msgid, input) = field(input);
    if msgid.is_empty() {
        return Err(refused(
            "bad_header",
            "RFC 5424 header is cut short (TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA)",
        ));
    }
    let timestamp = if timestamp == b"-" {
        None
    } else {
        Some(
            std::str::from_utf8(timestamp)
                .ok()
                .and_then(sluice_common::time::parse_time_nanos)
                .ok_or_else(|| {
                    refused(
                        "bad_timestamp",
                        format!("RFC 5424 timestamp {:?} is not RFC 3339", text(timestamp)),
                    )
                })?,
        )
    };
    let mut tags = HashMap::new();
    if let Some(host) = nil_or(hostname) {
        tags.insert("host".to_owned(), host);
    }
    if let Some(msgid) = nil_or(msgid) {
        tags.insert("msgid".to_owned(), msgid);
    }
    let rest = parse_structured_data(input, &mut tags)?;
    let message = rest.strip_prefix(b" ").unwrap_or(rest);
    Ok(Parsed {
        timestamp,
        app_name: nil_or(app_name),
        procid: nil_or(procid),
        message: text(message),
        tags,
    })
}

/// `-` or `[id name="value" ...]...`; returns what follows.
fn parse_structured_data<'a>(
    input: &'a [u8],
    tags: &mut HashMap<String, String>,
) -> Result<&'a [u8], Refused> {
    if let Some(rest) = input.strip_prefix(b"-") {
        return Ok(rest);
    }
    let bad = |what: &str| refused("bad_structured_data", format!("structured data: {what}"));
    let mut rest = input;
    if !rest.starts_with(b"[") {
        return Err(bad("expected '-' or '['"));
    }
    while let Some(element) = rest.strip_prefix(b"[") {
        let id_end = element
            .iter()
            .position(|byte| matches!(byte, b' ' | b']'))
            .ok_or_else(|| bad("unterminated element"))?;
        let id = text(&element[..id_end]);
        if id.is_empty() || id.contains(['=', '"']) {
            return Err(bad("bad SD-ID"));
        }
        let mut cursor = &element[id_end..];
        loop {
            if let Some(after) = cursor.strip_prefix(b"]") {
                cursor = after;
                break;
            }
            cursor = cursor
                .strip_prefix(b" ")
                .ok_or_else(|| bad("expected ' ' or ']' after a parameter"))?;
            let equals = cursor
                .iter()
                .position(|byte| *byte == b'=')
                .ok_or_else(|| bad("parameter without '='"))?;
            let name = text(&cursor[..equals]);
            if name.is_empty() || name.contains([' ', ']', '"']) {
                return Err(bad("bad parameter name"));
            }
            let mut value_bytes = cursor[equals + 1..]
                .strip_prefix(b"\"")
                .ok_or_else(|| bad("parameter value not in quotes"))?;
            let mut value = Vec::new();
            loop {
                match value_bytes {
                    [b'\\', escaped @ (b'"' | b'\\' | b']'), tail @ ..] => {
                        value.push(*escaped);
                        value_bytes = tail;
                    }
                    [b'"', tail @ ..] => {
                        value_bytes = tail;
                        break;
                    }
                    [byte, tail @ ..] => {
                        value.push(*byte);
                        value_bytes = tail;
                    }
                    [] => return Err(bad("unterminated parameter value")),
                }
            }
            tags.insert(format!("{id}.{name}"), text(&value));
            cursor = value_bytes;
        }
        rest = cursor;
    }
    Ok(rest)
}

/// RFC 3164 after `<PRI>`: [TIMESTAMP SP] [HOSTNAME SP] TAG[PID]: MSG, leniently: what does
/// not fit the shape is message text.
fn parse_3164(input: &[u8], now: i64) -> Parsed {
    let mut tags = HashMap::new();
    let (timestamp, mut rest) = match bsd_timestamp(input, now) {
        Some((timestamp, rest)) => (Some(timestamp), rest),
        None => {
            let (first, after) = field(input);
            match std::str::from_utf8(first)
                .ok()
                .filter(|stamp| stamp.len() >= 20)
                .and_then(sluice_common::time::parse_time_nanos)
            {
                Some(timestamp) => (Some(timestamp), after),
                None => (None, input),
            }
        }
    };
    // HOSTNAME, unless the next word is already the tag (`tag:` or `tag[pid]:`).
    if timestamp.is_some() {
        let (word, after) = field(rest);
        if !word.is_empty() && !word.ends_with(b":") && !word.contains(&b'[') && !after.is_empty() {
            tags.insert("host".to_owned(), text(word));
            rest = after;
        }
    }
    let (mut app_name, mut procid) = (None, None);
    let (word, after) = field(rest);
    let tag_end = word.iter().position(|byte| matches!(byte, b'[' | b':'));
    if let Some(end) = tag_end
        && end > 0
        && word.len() <= 64
        && word.ends_with(b":")
    {
        let tag = &word[..end];
        if tag
            .iter()
            .all(|byte| byte.is_ascii_graphic() && !matches!(byte, b'[' | b']' | b':'))
        {
            app_name = Some(text(tag));
            let inside = &word[end..word.len() - 1];
            if let Some(pid) = inside
                .strip_prefix(b"[")
                .and_then(|pid| pid.strip_suffix(b"]"))
            {
                procid = Some(text(pid));
            }
            rest = after;
        }
    }
    Parsed {
        timestamp,
        app_name,
        procid,
        message: text(rest),
        tags,
    }
}

/// `Mmm dd hh:mm:ss ` (day space-padded), as UTC in the year that puts it closest to `now`.
fn bsd_timestamp(input: &[u8], now: i64) -> Option<(i64, &[u8])> {
    if input.len() < 16 || input[15] != b' ' {
        return None;
    }
    let stamp = std::str::from_utf8(&input[..15])
        .ok()
        .filter(|stamp| stamp.is_ascii())?;
    let month = MONTHS.iter().position(|name| stamp.starts_with(name))? as u32 + 1;
    if stamp.as_bytes()[3] != b' ' || stamp.as_bytes()[6] != b' ' {
        return None;
    }
    let day: u32 = stamp[4..6].trim_start().parse().ok()?;
    let clock = &stamp[7..15];
    let mut parts = clock.split(':');
    let hour: i64 = parts.next()?.parse().ok()?;
    let minute: i64 = parts.next()?.parse().ok()?;
    let second: i64 = parts.next()?.parse().ok()?;
    if !(1..=31).contains(&day)
        || !(0..=23).contains(&hour)
        || !(0..=59).contains(&minute)
        || !(0..=60).contains(&second)
    {
        return None;
    }
    let this_year = sluice_common::time::Hour::of_nanos(now).civil().0;
    let at = |year: i64| {
        (sluice_common::time::days_from_civil(year, month, day) * 86_400
            + hour * 3_600
            + minute * 60
            + second)
            * 1_000_000_000
    };
    let mut timestamp = at(this_year);
    if timestamp > now + 86_400 * 1_000_000_000 {
        timestamp = at(this_year - 1);
    }
    Some((timestamp, &input[16..]))
}

/// One frame taken from a TCP stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A whole message.
    Message(&'a [u8]),
    /// A message over the size limit: refused, and `then` says what of it is still to come.
    TooLarge {
        /// What the reader must still throw away.
        then: Discard,
    },
}

/// The rest of a too-large message, still to be thrown away by the reader.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Discard {
    /// Nothing: it was all in the buffer.
    Nothing,
    /// This many more bytes (an octet-counted frame).
    Bytes(usize),
    /// Everything up to and including the next newline.
    ToNewline,
}

/// Framing errors after which the stream cannot be read on.
#[derive(Debug, PartialEq, Eq)]
pub struct FramingError(pub String);

/// Splits one frame off the front of `buffer` (RFC 6587): octet counting when it starts with
/// a digit, else up to the next newline. `Ok(None)`: more bytes are needed. The `usize` is how
/// many bytes of `buffer` the frame used.
pub fn next_frame(
    buffer: &[u8],
    max_message_bytes: usize,
) -> Result<Option<(Frame<'_>, usize)>, FramingError> {
    let Some(first) = buffer.first() else {
        return Ok(None);
    };
    if first.is_ascii_digit() {
        let Some(space) = buffer.iter().take(12).position(|byte| *byte == b' ') else {
            if buffer.len() >= 12 || !buffer.iter().all(u8::is_ascii_digit) {
                return Err(FramingError(
                    "octet-counted frame without a valid length".to_owned(),
                ));
            }
            return Ok(None);
        };
        let length: usize = std::str::from_utf8(&buffer[..space])
            .ok()
            .and_then(|digits| digits.parse().ok())
            .ok_or_else(|| FramingError("octet-counted frame length is not a number".to_owned()))?;
        let start = space + 1;
        if length > max_message_bytes {
            let buffered = (buffer.len() - start).min(length);
            let then = if buffered == length {
                Discard::Nothing
            } else {
                Discard::Bytes(length - buffered)
            };
            return Ok(Some((Frame::TooLarge { then }, start + buffered)));
        }
        if buffer.len() < start + length {
            return Ok(None);
        }
        return Ok(Some((
            Frame::Message(&buffer[start..start + length]),
            start + length,
        )));
    }
    match buffer.iter().position(|byte| *byte == b'\n') {
        Some(newline) if newline > max_message_bytes => Ok(Some((
            Frame::TooLarge {
                then: Discard::Nothing,
            },
            newline + 1,
        ))),
        Some(newline) => Ok(Some((Frame::Message(&buffer[..newline]), newline + 1))),
        None if buffer.len() > max_message_bytes => Ok(Some((
            Frame::TooLarge {
                then: Discard::ToNewline,
            },
            buffer.len(),
        ))),
        None => Ok(None),
    }
}
