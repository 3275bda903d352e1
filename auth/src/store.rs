//! The file of tokens: read, and changed atomically.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sluice_common::SluiceError;

use crate::token::{self, Right, TokenRecord};

/// Format version of the file.
const VERSION: u32 = 1;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Contents {
    version: u32,
    tokens: Vec<TokenRecord>,
}

/// What a new token may do.
#[derive(Debug, Clone)]
pub struct NewToken {
    /// What it is for.
    pub name: String,
    /// Its tenant.
    pub tenant: String,
    /// Source id patterns it is narrowed to (empty: all of the tenant's).
    pub sources: Vec<String>,
    /// Its rights.
    pub rights: Vec<Right>,
    /// When it stops working, Unix seconds.
    pub expires_unix_s: Option<i64>,
}

/// `<data_dir>/auth/tokens.json`, or wherever it is configured.
#[derive(Debug, Clone)]
pub struct TokenFile {
    path: PathBuf,
}

impl TokenFile {
    /// The token file of a data directory.
    pub fn in_data_dir(data_dir: &Path) -> TokenFile {
        TokenFile::at(data_dir.join("auth").join("tokens.json"))
    }

    /// The token file at `path`.
    pub fn at(path: PathBuf) -> TokenFile {
        TokenFile { path }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every token; none if the file does not exist yet.
    pub fn load(&self) -> Result<Vec<TokenRecord>, SluiceError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => {
                return Err(SluiceError::unavailable(format!(
                    "failed to read {}: {error}",
                    self.path.display()
                )));
            }
        };
        let contents: Contents = serde_json::from_str(&text).map_err(|error| {
            SluiceError::invalid(format!(
                "{} is not a token file: {error}",
                self.path.display()
            ))
        })?;
        if contents.version != VERSION {
            return Err(SluiceError::invalid(format!(
                "{}: token file version {} is not known (this build reads {VERSION})",
                self.path.display(),
                contents.version
            )));
        }
        Ok(contents.tokens)
    }

    /// Makes a token; returns its record and its text, which is shown once and kept nowhere.
    pub fn create(&self, new: NewToken) -> Result<(TokenRecord, String), SluiceError> {
        if new.name.trim().is_empty() {
            return Err(SluiceError::invalid("a token needs a name"));
        }
        if !sluice_common::tenancy::valid_name(&new.tenant) {
            return Err(SluiceError::invalid(format!(
                "tenant {:?}: a tenant is 1 to 64 of ASCII letters, digits, '-', '_' and '.'",
                new.tenant
            )));
        }
        if new.rights.is_empty() {
            return Err(SluiceError::invalid("a token needs at least one right"));
        }
        if new.sources.iter().any(|pattern| pattern.trim().is_empty()) {
            return Err(SluiceError::invalid(
                "an empty source pattern matches nothing",
            ));
        }
        let mut tokens = self.load()?;
        let (id, text) = token::generate()?;
        let mut rights = new.rights;
        rights.sort_by_key(|right| right.name());
        rights.dedup();
        let record = TokenRecord {
            id,
            name: new.name,
            tenant: new.tenant,
            sources: new.sources,
            rights,
            created_unix_s: unix_now(),
            expires_unix_s: new.expires_unix_s,
            sha256: token::digest(&text),
        };
        tokens.push(record.clone());
        self.save(&tokens)?;
        Ok((record, text))
    }

    /// Removes the token `id`; whether there was one.
    pub fn revoke(&self, id: &str) -> Result<bool, SluiceError> {
        let mut tokens = self.load()?;
        let before = tokens.len();
        tokens.retain(|record| record.id != id);
        if tokens.len() == before {
            return Ok(false);
        }
        self.save(&tokens)?;
        Ok(true)
    }

    /// Writes `tokens` beside the file, readable by its owner only, then renames it over the
    /// file: a reader sees the old set or the new one, never part of one.
    fn save(&self, tokens: &[TokenRecord]) -> Result<(), SluiceError> {
        let failed = |what: &str, error: std::io::Error| {
            SluiceError::unavailable(format!("failed to {what} {}: {error}", self.path.display()))
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|error| failed("make the directory of", error))?;
        let text = serde_json::to_vec_pretty(&Contents {
            version: VERSION,
            tokens: tokens.to_vec(),
        })
        .map_err(|error| SluiceError::internal(format!("failed to encode tokens: {error}")))?;
        let temporary = self
            .path
            .with_extension(format!("json.{}.tmp", std::process::id()));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)
            .map_err(|error| failed("write", error))?;
        file.write_all(&text)
            .and_then(|()| file.sync_all())
            .map_err(|error| failed("write", error))?;
        std::fs::rename(&temporary, &self.path).map_err(|error| failed("replace", error))?;
        if let Ok(directory) = std::fs::File::open(dir) {
            let _ = directory.sync_all();
        }
        Ok(())
    }
}

pub(crate) fn unix_now() -> i64 {
    sluice_common::time::now_nanos() / 1_000_000_000
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn reader() -> NewToken {
        NewToken {
            name: "ci".into(),
            tenant: "default".into(),
            sources: Vec::new(),
            rights: vec![Right::Read, Right::Read],
            expires_unix_s: None,
        }
    }

    #[test]
    fn tokens_are_stored_hashed_and_revoked_by_id() {
        let dir = tempfile::tempdir().unwrap();
        let file = TokenFile::in_data_dir(dir.path());
        assert!(file.load().unwrap().is_empty());
        let (record, text) = file.create(reader()).unwrap();
        assert_eq!(record.rights, vec![Right::Read]);
        let stored = std::fs::read_to_string(file.path()).unwrap();
        assert!(!stored.contains(&text), "the secret is never written");
        assert!(stored.contains(&record.sha256));
        let mode = std::fs::metadata(file.path()).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        assert_eq!(file.load().unwrap(), vec![record.clone()]);
        assert!(file.revoke(&record.id).unwrap());
        assert!(!file.revoke(&record.id).unwrap());
        assert!(file.load().unwrap().is_empty());
    }

    #[test]
    fn a_token_without_rights_or_name_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = TokenFile::in_data_dir(dir.path());
        let mut new = reader();
        new.rights.clear();
        assert!(file.create(new).is_err());
        let mut new = reader();
        new.name = " ".into();
        assert!(file.create(new).is_err());
    }
}
