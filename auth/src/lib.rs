//! Identities: API tokens, their scopes, and checking a request's credential.
//!
//! A token is `sluice_<id>_<secret>`: the id names it in lists, logs and revocations; the
//! secret is 32 random bytes. Only the SHA-256 of the whole token is stored (a token is as
//! random as a key, so a slow password hash would add nothing). The tokens live in one file
//! (`<data_dir>/auth/tokens.json`), written atomically by `sluice tokens`; every process that
//! authenticates re-reads it when it changes, so a revocation takes effect within
//! [`RELOAD_INTERVAL`].
//!
//! Each token carries its scope: a tenant, optionally narrowed to source id patterns (a
//! developer sees only their apps), and rights (read, ingest, admin).

mod authenticator;
mod store;
mod token;

pub use authenticator::{Authenticator, RELOAD_INTERVAL, Refusal};
pub use store::{NewToken, TokenFile};
pub use token::{DEFAULT_TENANT, Identity, Right, TokenRecord};
