//! Splitting a message into tokens and masking the values whose type says they vary.
//!
//! A message is split at whitespace (and at dot leaders, `depth..........12`), except that a
//! quoted value after a key (`tag="View Lock"`) stays one token. Each token is then one of:
//!
//! - a **value**, masked as [`VAR`] with the punctuation around it kept (`(<*>)`, `<*>,`):
//!   numbers, and anything that starts with a digit; identifiers that mix digits with
//!   separators (`blk_-1608`, `10.251.31.5:50010`, `/var/log/2`, `core.1287`); hexadecimal
//!   runs of eight or more; day and month names (a timestamp's words); a number followed by its
//!   unit (`12 ms`, `(1.2 KB)`) is one value, and adjacent bare values are one;
//! - a **keyed value** (`uid=0`, `rhost=10.0.0.1`, `time:42`): the key stays, the value is
//!   masked when it is a value by the rules above (`uid=<*>`); an empty pair of brackets is an
//!   empty value (`()` becomes `(<*>)`);
//! - a **word**, kept as it is: everything else, including words with a one-digit suffix
//!   (`ssh2`, `SOCKS5`, `PSR0`), which name things more often than they count them.
//!
//! Words that vary (user names, host names without digits) are not recognised here: the
//! miner generalises them when it has seen enough different ones in the same place.

/// The placeholder of a masked value inside tokens (shown as `<*>`).
pub const VAR: char = '\u{1}';

/// Punctuation that may surround a value and stays when the value is masked.
fn is_affix(character: char) -> bool {
    matches!(
        character,
        '(' | ')' | '[' | ']' | '{' | '}' | '<' | '>' | ',' | ';' | ':' | '\'' | '"'
    )
}

/// Day and month names, as timestamps spell them.
const TIME_WORDS: [&str; 31] = [
    "mon",
    "tue",
    "wed",
    "thu",
    "fri",
    "sat",
    "sun",
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
    "jan",
    "feb",
    "mar",
    "apr",
    "may",
    "jun",
    "jul",
    "aug",
    "sep",
    "sept",
    "oct",
    "nov",
    "dec",
    "january",
    "february",
    "march",
    "april",
];
const MORE_MONTHS: [&str; 7] = [
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
];

/// Whether `word` is a day or month name (in any case).
pub fn is_time_word(word: &str) -> bool {
    let bytes = word.as_bytes();
    if !(3..=9).contains(&bytes.len()) || !bytes[0].is_ascii_alphabetic() {
        return false;
    }
    let mut lower = [0_u8; 9];
    for (slot, byte) in lower.iter_mut().zip(bytes) {
        *slot = byte.to_ascii_lowercase();
    }
    let lower = &lower[..bytes.len()];
    TIME_WORDS
        .iter()
        .chain(&MORE_MONTHS)
        .any(|candidate| candidate.as_bytes() == lower)
}

/// Splits `token` into leading punctuation, core and trailing punctuation.
pub fn split_affix(token: &str) -> (&str, &str, &str) {
    let start = token
        .char_indices()
        .find(|(_, character)| !is_affix(*character))
        .map_or(token.len(), |(index, _)| index);
    let end = token[start..]
        .char_indices()
        .rev()
        .find(|(_, character)| !is_affix(*character))
        .map_or(start, |(index, character)| {
            start + index + character.len_utf8()
        });
    (&token[..start], &token[start..end], &token[end..])
}

/// Whether a token's core is a value by its type alone.
pub fn is_value(core: &str) -> bool {
    let Some(first) = core.chars().next() else {
        return false;
    };
    if is_time_word(core) {
        return true;
    }
    if !core.bytes().any(|byte| byte.is_ascii_digit()) {
        return false;
    }
    if first.is_ascii_digit() || matches!(first, '-' | '+' | '#') {
        return true;
    }
    if core
        .bytes()
        .any(|byte| matches!(byte, b'.' | b':' | b'/' | b'-' | b'_' | b'=' | b'@' | b'#'))
    {
        return true;
    }
    if core.len() >= 8 && core.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return true;
    }
    // Letters and one digit (ssh2, SOCKS5) name a thing; longer digit runs are ids.
    let letters = core.bytes().take_while(u8::is_ascii_alphabetic).count();
    !(letters > 0 && letters + 1 == core.len())
}

/// The length of a key at the start of `core` with its separator (`uid=`, `time:`), if any:
/// `=` after a name of letters, digits, `_`, `.` and `-`; `:` after a plain word (so that
/// `host.example.com:80` is not a key).
pub fn key_len(core: &str) -> Option<usize> {
    let bytes = core.as_bytes();
    let first = *bytes.first()?;
    if !(first.is_ascii_alphabetic() || first == b'_') {
        return None;
    }
    let mut plain = true;
    for (index, &byte) in bytes.iter().enumerate().skip(1) {
        match byte {
            b'=' => return Some(index + 1),
            b':' if plain => return Some(index + 1),
            b'.' | b'-' => plain = false,
            byte if byte.is_ascii_alphanumeric() || byte == b'_' => {}
            _ => return None,
        }
    }
    None
}

/// Splits `message` into raw tokens: at whitespace and dot leaders (three dots or more), a
/// quoted value after a key kept whole.
pub fn raw_tokens(message: &str) -> Vec<&str> {
    let mut tokens = Vec::new();
    let bytes = message.as_bytes();
    let mut index = 0;
    while index < bytes.len() {
        while index < bytes.len() && (bytes[index].is_ascii_whitespace() || leader_at(bytes, index))
        {
            index += if bytes[index] == b'.' {
                leader_len(bytes, index)
            } else {
                1
            };
        }
        if index >= bytes.len() {
            break;
        }
        let start = index;
        let mut quoted = false;
        while index < bytes.len() {
            let byte = bytes[index];
            if quoted {
                if byte == b'"' {
                    quoted = false;
                }
            } else if byte.is_ascii_whitespace() || leader_at(bytes, index) {
                break;
            } else if byte == b'"'
                && index > start
                && bytes[index - 1] == b'='
                && key_len(&message[start..index]) == Some(index - start)
                && bytes[index + 1..].contains(&b'"')
            {
                quoted = true;
            }
            index += 1;
        }
        tokens.push(&message[start..index]);
    }
    tokens
}

fn leader_at(bytes: &[u8], index: usize) -> bool {
    leader_len(bytes, index) >= 3
}

fn leader_len(bytes: &[u8], index: usize) -> usize {
    bytes[index..]
        .iter()
        .take_while(|&&byte| byte == b'.')
        .count()
}

/// A masked line: its tokens, and how the value in each reads ([`crate::kinds`]), held in two
/// buffers that are reused from line to line.
#[derive(Debug, Default, Clone)]
pub struct Masked {
    /// The tokens joined by single spaces.
    line: String,
    /// Where each token ends in `line`.
    ends: Vec<usize>,
    /// The kinds of the tokens' values, one after the other (nothing for a token without one).
    kinds: String,
    /// Where each token's kind ends in `kinds`.
    kind_ends: Vec<usize>,
}

impl Masked {
    /// The tokens joined by single spaces: what lines that mask alike share.
    pub fn line(&self) -> &str {
        &self.line
    }

    /// How many tokens there are.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Token `index`.
    pub fn token(&self, index: usize) -> &str {
        let start = if index == 0 {
            0
        } else {
            self.ends[index - 1] + 1
        };
        &self.line[start..self.ends[index]]
    }

    /// The kind of token `index`'s value (`<num>`), empty when it holds none.
    pub fn kind(&self, index: usize) -> &str {
        let start = if index == 0 {
            0
        } else {
            self.kind_ends[index - 1]
        };
        &self.kinds[start..self.kind_ends[index]]
    }

    /// A hash of the kinds, to tell cheaply whether a line's kinds are those seen before.
    pub fn kinds_hash(&self) -> u64 {
        let mut hash = 0xcbf2_9ce4_8422_2325u64;
        for (index, &end) in self.kind_ends.iter().enumerate() {
            let start = if index == 0 {
                0
            } else {
                self.kind_ends[index - 1]
            };
            for &byte in self.kinds.as_bytes()[start..end].iter().chain(&[0xff]) {
                hash ^= u64::from(byte);
                hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        hash
    }

    fn clear(&mut self) {
        self.line.clear();
        self.ends.clear();
        self.kinds.clear();
        self.kind_ends.clear();
    }

    /// Appends a token made of `parts`.
    fn push(&mut self, parts: &[&str]) {
        if !self.ends.is_empty() {
            self.line.push(' ');
        }
        for part in parts {
            self.line.push_str(part);
        }
        self.ends.push(self.line.len());
        self.kind_ends.push(self.kinds.len());
    }

    /// Appends a token made of `parts` that holds the value `core`.
    fn push_value(&mut self, parts: &[&str], core: &str) {
        self.push(parts);
        crate::kinds::render(core, &mut self.kinds);
        if let Some(end) = self.kind_ends.last_mut() {
            *end = self.kinds.len();
        }
    }

    /// Appends a token made of `parts` whose value is of `kind`.
    fn push_kind(&mut self, parts: &[&str], kind: &str) {
        self.push(parts);
        self.kinds.push_str(kind);
        if let Some(end) = self.kind_ends.last_mut() {
            *end = self.kinds.len();
        }
    }

    /// Whether the last token is a bare value (nothing around it).
    fn ends_in_bare_value(&self) -> bool {
        !self.is_empty() && self.token(self.len() - 1) == "\u{1}"
    }

    /// Folds the value `core`, or a value of `kind`, into the bare value that ends the line
    /// (adjacent values are one).
    fn extend_last(&mut self, core: &str, kind: Option<&str>) {
        let last = self.len() - 1;
        let start = if last == 0 {
            0
        } else {
            self.kind_ends[last - 1]
        };
        let end = self.kinds.len();
        match kind {
            Some(kind) => self.kinds.push_str(kind),
            None => crate::kinds::render(core, &mut self.kinds),
        }
        let joined = crate::kinds::join_run(&self.kinds[start..end], &self.kinds[end..]).to_owned();
        self.kinds.truncate(start);
        self.kinds.push_str(&joined);
        self.kind_ends[last] = self.kinds.len();
    }
}

/// Masks `message` into `out` (cleared first).
pub fn mask(message: &str, out: &mut Masked) {
    out.clear();
    // The placeholder cannot come from the text itself.
    let cleaned;
    let message = if message.contains(VAR) {
        cleaned = message.replace(VAR, "\u{fffd}");
        cleaned.as_str()
    } else {
        message
    };
    let var: &str = "\u{1}";
    let raw = raw_tokens(message);
    let mut index = 0;
    while index < raw.len() {
        let token = raw[index];
        index += 1;
        let (prefix, core, suffix) = split_affix(token);
        if let Some(key) = key_len(core) {
            let (value_prefix, value, value_suffix) = split_affix(&core[key..]);
            if is_value(value) {
                out.push_value(
                    &[
                        prefix,
                        &core[..key],
                        value_prefix,
                        var,
                        value_suffix,
                        suffix,
                    ],
                    value,
                );
            } else {
                out.push(&[token]);
            }
            continue;
        }
        if core.is_empty() && matches!(token, "()" | "[]" | "{}" | "<>" | "''" | "\"\"") {
            let (open, close) = token.split_at(1);
            out.push_kind(&[open, var, close], crate::kinds::ANY);
            continue;
        }
        if is_value(core) {
            let mut suffix = suffix;
            let mut unit_kind = None;
            if let Some(next) = raw.get(index) {
                let (unit_prefix, unit, unit_suffix) = split_affix(next);
                if unit_prefix.is_empty()
                    && !unit.is_empty()
                    && let Some(kind) = crate::kinds::of_unit(unit)
                {
                    if suffix.is_empty() {
                        suffix = unit_suffix;
                    }
                    unit_kind = Some(kind);
                    index += 1;
                }
            }
            let bare = prefix.is_empty() && suffix.is_empty();
            if bare && out.ends_in_bare_value() {
                out.extend_last(core, unit_kind);
                continue;
            }
            match unit_kind {
                Some(kind) => out.push_kind(&[prefix, var, suffix], kind),
                None => out.push_value(&[prefix, var, suffix], core),
            }
            continue;
        }
        out.push(&[token]);
    }
}

/// Whether `token` holds a masked value.
pub fn has_value(token: &str) -> bool {
    token.contains(VAR)
}

/// What a token keeps when its value varies: the key (`rhost=`) and the punctuation around.
pub fn head(token: &str) -> (&str, &str) {
    let (prefix, core, suffix) = split_affix(token);
    match key_len(core) {
        Some(key) => (&token[..prefix.len() + key], suffix),
        None => (prefix, suffix),
    }
}

/// The token two differing tokens generalise to.
pub fn generalise(a: &str, b: &str) -> String {
    if a == b {
        return a.to_owned();
    }
    let (head_a, head_b) = (head(a), head(b));
    if head_a == head_b && head_a != ("", "") {
        return format!("{}{VAR}{}", head_a.0, head_a.1);
    }
    VAR.to_string()
}

/// The template's tokens as a person reads them: each value shown as its kind (`shown`, one
/// per token, empty where it has none), `<*>` where the kind is not known.
pub fn display(tokens: &[Box<str>], shown: &[Box<str>]) -> String {
    let mut text = String::new();
    for (index, token) in tokens.iter().enumerate() {
        if index > 0 {
            text.push(' ');
        }
        let kind = shown
            .get(index)
            .map(|kind| &**kind)
            .filter(|kind| !kind.is_empty())
            .unwrap_or(crate::kinds::ANY);
        for character in token.chars() {
            if character == VAR {
                text.push_str(kind);
            } else {
                text.push(character);
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(message: &str) -> String {
        let mut out = Masked::default();
        mask(message, &mut out);
        out.line().replace(VAR, "<*>")
    }

    /// The line as a template shows it, each value as its kind.
    fn typed(message: &str) -> String {
        let mut out = Masked::default();
        mask(message, &mut out);
        let tokens: Vec<Box<str>> = (0..out.len())
            .map(|index| out.token(index).into())
            .collect();
        let kinds: Vec<Box<str>> = (0..out.len()).map(|index| out.kind(index).into()).collect();
        display(&tokens, &kinds)
    }

    #[test]
    fn values_are_masked_by_type_and_words_stay() {
        assert_eq!(
            masked(
                "Receiving block blk_-1608999687919862906 src: /10.250.19.102:54106 dest: /10.250.19.102:50010"
            ),
            "Receiving block <*> src: <*> dest: <*>"
        );
        assert_eq!(
            masked("Accepted password for root from 10.0.0.1 port 22 ssh2"),
            "Accepted password for root from <*> port <*> ssh2"
        );
        assert_eq!(
            masked("connection from 1.2.3.4 () at Sun Jul 10 03:55:22 2005"),
            "connection from <*> (<*>) at <*>"
        );
        assert_eq!(
            masked(
                "authentication failure; logname= uid=0 euid=0 tty=NODEVssh ruser= rhost=10.0.0.1"
            ),
            "authentication failure; logname= uid=<*> euid=<*> tty=NODEVssh ruser= rhost=<*>"
        );
        assert_eq!(
            masked("close, 403 bytes (1.2 KB) sent, lifetime <1 sec"),
            "close, <*> bytes (<*>) sent, lifetime <<*>"
        );
        assert_eq!(
            masked("icache prefetch depth..........12"),
            "icache prefetch depth <*>"
        );
        assert_eq!(
            masked(r#"acquire lock=123, tag="View Lock", name=android"#),
            r#"acquire lock=<*>, tag="View Lock", name=android"#
        );
        assert_eq!(
            masked("open through proxy host.example.com:5070 SOCKS5"),
            "open through proxy <*> SOCKS5"
        );
        assert_eq!(masked("session e6200003ab started"), "session <*> started");
    }

    #[test]
    fn values_show_their_kind() {
        assert_eq!(
            typed(
                "Receiving block blk_-1608999687919862906 src: /10.250.19.102:54106 dest: /10.250.19.102:50010"
            ),
            "Receiving block blk_<num> src: /<ip>:<num> dest: /<ip>:<num>"
        );
        assert_eq!(
            typed("connection from 1.2.3.4 () at Sun Jul 10 03:55:22 2005"),
            "connection from <ip> (<*>) at <time>"
        );
        assert_eq!(
            typed("close, 403 bytes (1.2 KB) sent, lifetime <1 sec"),
            "close, <num> bytes (<size>) sent, lifetime <<duration>"
        );
        assert_eq!(
            typed("authentication failure; uid=0 tty=NODEVssh rhost=10.0.0.1"),
            "authentication failure; uid=<num> tty=NODEVssh rhost=<ip>"
        );
        assert_eq!(
            typed("took 12 ms and 7 retries, 3 4 5 left"),
            "took <duration> and <num> retries, <num> left"
        );
    }

    #[test]
    fn affixes_keys_and_generalisation() {
        assert_eq!(split_affix("(uid=0)"), ("(", "uid=0", ")"));
        assert_eq!(split_affix("()"), ("()", "", ""));
        assert_eq!(key_len("uid=0"), Some(4));
        assert_eq!(key_len("state.clip:3"), None);
        assert_eq!(key_len("time:3"), Some(5));
        assert_eq!(key_len("host.example.com:80"), None);
        assert_eq!(
            generalise("rhost=a.org", "rhost=b.org").replace(VAR, "*"),
            "rhost=*"
        );
        assert_eq!(generalise("(alice)", "(bob)").replace(VAR, "*"), "(*)");
        assert_eq!(generalise("alice", "bob").replace(VAR, "*"), "*");
    }

    #[test]
    fn arbitrary_text_never_panics() {
        let samples = [
            "",
            " ",
            "...",
            "....x",
            "=",
            "a=\"",
            "a=\"b",
            "\"\"",
            "()",
            "é=ü",
            "a:",
            "0",
            "\u{1}",
            "a=\"x\" y",
        ];
        for sample in samples {
            let mut out = Masked::default();
            mask(sample, &mut out);
            for index in 0..out.len() {
                let _ = head(out.token(index));
                let _ = out.kind(index);
            }
            let _ = typed(sample);
        }
    }
}
