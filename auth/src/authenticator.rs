//! Checking a request's credential against the token file, re-read when it changes.

use std::os::unix::fs::MetadataExt as _;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use base64::Engine as _;
use sluice_common::SluiceError;

use crate::store::{TokenFile, unix_now};
use crate::token::{self, Identity, TokenRecord};

/// How often the token file is looked at: a revoked token is refused within this long.
pub const RELOAD_INTERVAL: Duration = Duration::from_millis(200);

/// Failed authentications are logged at most this often (the rest counted in the next line).
const LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Why a credential was refused (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No credential.
    Missing,
    /// Not a bearer token of Sluice's shape.
    Malformed,
    /// No such token (never made, revoked, or a wrong secret).
    Unknown,
    /// Past its expiry.
    Expired,
}

impl Refusal {
    /// The label.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Malformed => "malformed",
            Refusal::Unknown => "unknown",
            Refusal::Expired => "expired",
        }
    }

    /// What the client is told.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::Missing => "authentication required: send Authorization: Bearer <token>",
            Refusal::Malformed => "the Authorization header does not hold a Sluice token",
            Refusal::Unknown => "the token is not valid (unknown, revoked or mistyped)",
            Refusal::Expired => "the token has expired",
        }
    }
}

/// The file's identity and version, to notice a change cheaply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    inode: u64,
    length: u64,
    modified_ns: i64,
}

fn stamp(file: &TokenFile) -> Option<Stamp> {
    let metadata = std::fs::metadata(file.path()).ok()?;
    Some(Stamp {
        inode: metadata.ino(),
        length: metadata.len(),
        modified_ns: metadata.mtime() * 1_000_000_000 + metadata.mtime_nsec(),
    })
}

#[derive(Debug)]
struct FailureLog {
    last: Option<Instant>,
    suppressed: u64,
}

/// Authenticates bearer tokens against the token file's current contents.
#[derive(Debug)]
pub struct Authenticator {
    file: TokenFile,
    tokens: RwLock<(Option<Stamp>, Arc<Vec<TokenRecord>>)>,
    failures: Mutex<FailureLog>,
}

impl Authenticator {
    /// Reads `file` (which may not exist yet: then nothing authenticates until it does).
    pub fn open(file: TokenFile) -> Result<Arc<Authenticator>, SluiceError> {
        let stamp = stamp(&file);
        let tokens = file.load()?;
        Ok(Arc::new(Authenticator {
            file,
            tokens: RwLock::new((stamp, Arc::new(tokens))),
            failures: Mutex::new(FailureLog {
                last: None,
                suppressed: 0,
            }),
        }))
    }

    /// Re-reads the file every [`RELOAD_INTERVAL`] while `self` lives. A file that cannot be
    /// read keeps the last good set (and is logged), so a half-finished edit locks nobody out.
    pub fn spawn_reloader(self: &Arc<Self>) {
        let weak: Weak<Authenticator> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(RELOAD_INTERVAL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(authenticator) = weak.upgrade() else {
                    return;
                };
                authenticator.reload_if_changed();
            }
        });
    }

    /// Re-reads the file if it changed since the last read.
    pub fn reload_if_changed(&self) {
        let now = stamp(&self.file);
        if self.tokens.read().unwrap_or_else(|e| e.into_inner()).0 == now {
            return;
        }
        match self.file.load() {
            Ok(tokens) => {
                tracing::info!(
                    file = %self.file.path().display(),
                    tokens = tokens.len(),
                    "token file re-read"
                );
                *self.tokens.write().unwrap_or_else(|e| e.into_inner()) = (now, Arc::new(tokens));
            }
            Err(error) => {
                tracing::error!(%error, "token file unreadable; keeping the tokens read before")
            }
        }
    }

    /// The identity `authorization` (an HTTP `Authorization` header's value, or a bare
    /// token) proves. `peer` is named in the log of a failure; the secret never is.
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
        peer: &str,
    ) -> Result<Identity, Refusal> {
        let result = self.check(authorization);
        if let Err(refusal) = result {
            let presented = authorization.map(bearer).unwrap_or_default();
            let id = token::id_of(&presented).unwrap_or("-");
            self.log_failure(refusal, id, peer);
        }
        result
    }

    fn check(&self, authorization: Option<&str>) -> Result<Identity, Refusal> {
        let presented = bearer(authorization.ok_or(Refusal::Missing)?);
        let presented = presented.as_str();
        let id = token::id_of(presented).ok_or(Refusal::Malformed)?;
        let find = || {
            let tokens = Arc::clone(&self.tokens.read().unwrap_or_else(|e| e.into_inner()).1);
            tokens.iter().find(|record| record.id == id).cloned()
        };
        // A token made a moment ago works at once: an unknown id looks at the file first.
        let record = match find() {
            Some(record) => record,
            None => {
                self.reload_if_changed();
                find().ok_or(Refusal::Unknown)?
            }
        };
        if !token::same_digest(&record.sha256, &token::digest(presented)) {
            return Err(Refusal::Unknown);
        }
        if record
            .expires_unix_s
            .is_some_and(|expires| unix_now() >= expires)
        {
            return Err(Refusal::Expired);
        }
        Ok(Identity::of(&record))
    }

    fn log_failure(&self, refusal: Refusal, id: &str, peer: &str) {
        let mut log = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if log
            .last
            .is_some_and(|last| now.duration_since(last) < LOG_INTERVAL)
        {
            log.suppressed += 1;
            return;
        }
        tracing::warn!(
            reason = refusal.reason(),
            token_id = id,
            peer,
            more_since_last = log.suppressed,
            "authentication refused"
        );
        log.last = Some(now);
        log.suppressed = 0;
    }
}

/// The token an `Authorization` value carries, as the clients of each protocol send one:
/// `Bearer <token>`; `Basic base64(user:token)` (any user; Elasticsearch clients'
/// `basic_auth`); `ApiKey base64(id:token)` (their `api_key=(id, token)`) or `ApiKey <token>`;
/// or the bare token.
fn bearer(value: &str) -> String {
    let value = value.trim();
    let Some((scheme, rest)) = value.split_once(' ') else {
        return value.to_owned();
    };
    let rest = rest.trim();
    let decoded_secret = || {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let text = String::from_utf8(bytes).ok()?;
        text.split_once(':').map(|(_, secret)| secret.to_owned())
    };
    if scheme.eq_ignore_ascii_case("bearer") {
        rest.to_owned()
    } else if scheme.eq_ignore_ascii_case("basic") {
        decoded_secret().unwrap_or_default()
    } else if scheme.eq_ignore_ascii_case("apikey") {
        decoded_secret().unwrap_or_else(|| rest.to_owned())
    } else {
        String::new()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::NewToken;
    use crate::token::Right;

    fn new_token(expires_unix_s: Option<i64>) -> NewToken {
        NewToken {
            name: "test".into(),
            tenant: "default".into(),
            sources: Vec::new(),
            rights: vec![Right::Read],
            expires_unix_s,
        }
    }

    #[tokio::test]
    async fn a_token_authenticates_until_it_is_revoked_or_expires() {
        let dir = tempfile::tempdir().unwrap();
        let file = TokenFile::in_data_dir(dir.path());
        let authenticator = Authenticator::open(file.clone()).unwrap();
        assert_eq!(
            authenticator.authenticate(None, "test"),
            Err(Refusal::Missing)
        );
        let (record, text) = file.create(new_token(None)).unwrap();
        authenticator.reload_if_changed();
        let header = format!("Bearer {text}");
        let identity = authenticator.authenticate(Some(&header), "test").unwrap();
        assert_eq!(identity.token_id, record.id);
        assert_eq!(
            authenticator.authenticate(Some(&text), "test"),
            Ok(identity)
        );
        let wrong = format!("{}x", &text[..text.len() - 1]);
        assert_eq!(
            authenticator.authenticate(Some(&wrong), "test"),
            Err(Refusal::Unknown)
        );
        assert_eq!(
            authenticator.authenticate(Some("Basic dXNlcjpwYXNz"), "test"),
            Err(Refusal::Malformed)
        );
        // The shapes Elasticsearch clients send: basic_auth and api_key.
        let encode = |text: String| base64::engine::general_purpose::STANDARD.encode(text);
        let basic = format!("Basic {}", encode(format!("sluice:{text}")));
        assert!(authenticator.authenticate(Some(&basic), "test").is_ok());
        let api_key = format!("ApiKey {}", encode(format!("{}:{text}", record.id)));
        assert!(authenticator.authenticate(Some(&api_key), "test").is_ok());
        assert!(
            authenticator
                .authenticate(Some(&format!("ApiKey {text}")), "test")
                .is_ok()
        );
        file.revoke(&record.id).unwrap();
        authenticator.reload_if_changed();
        assert_eq!(
            authenticator.authenticate(Some(&text), "test"),
            Err(Refusal::Unknown)
        );
        let (_, expired) = file.create(new_token(Some(unix_now() - 1))).unwrap();
        authenticator.reload_if_changed();
        assert_eq!(
            authenticator.authenticate(Some(&expired), "test"),
            Err(Refusal::Expired)
        );
    }

    #[tokio::test]
    async fn an_unreadable_file_keeps_the_tokens_read_before() {
        let dir = tempfile::tempdir().unwrap();
        let file = TokenFile::in_data_dir(dir.path());
        let (_, text) = file.create(new_token(None)).unwrap();
        let authenticator = Authenticator::open(file.clone()).unwrap();
        std::fs::write(file.path(), "{ half a file").unwrap();
        authenticator.reload_if_changed();
        assert!(authenticator.authenticate(Some(&text), "test").is_ok());
    }
}
