//! Who writes the archive: one retention process at a time holds the lease, the others wait
//! as standbys and take over within a lease time of the holder's death.
//!
//! ```text
//! _sluice/catalog/leases/<epoch:020>.json   {holder, epoch, renewed_at_ms, released}
//! ```
//!
//! The holder of the highest epoch is the writer. It renews by rewriting its own object
//! (only it writes that key) every third of `ttl`. A standby watches the highest epoch's
//! object; once it has seen it unchanged for `ttl` on its own clock (no clock is compared
//! across machines), or released by a clean shutdown, it creates the next epoch's object,
//! which succeeds for one standby only (`PutMode::Create`). A holder on this same machine
//! whose process is gone (a crash, then a restart) is taken over at once. The new holder's first catalog
//! change is written under its epoch, after which the catalog refuses the old one's
//! ([`super::CommitError::Fenced`]); an old holder that was only paused finds the newer
//! epoch at its next renewal and stops, and one that cannot renew for `ttl` stops too.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use sluice_common::SluiceError;
use sluice_common::shutdown::Shutdown;
use tokio::time::Instant;
use tracing::{info, warn};

use super::now_ms;

const LEASE_PREFIX: &str = "_sluice/catalog/leases";

fn lease_path(epoch: u64) -> ObjectPath {
    ObjectPath::from(format!("{LEASE_PREFIX}/{epoch:020}.json"))
}

/// The body of a lease object.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    holder: String,
    epoch: u64,
    renewed_at_ms: i64,
    #[serde(default)]
    released: bool,
    /// The holder's machine and process, to tell a dead holder on this machine.
    #[serde(default)]
    host: String,
    #[serde(default)]
    pid: u32,
}

impl Record {
    fn new(holder: &str, epoch: u64, released: bool) -> Record {
        Record {
            holder: holder.to_owned(),
            epoch,
            renewed_at_ms: now_ms(),
            released,
            host: host_name(),
            pid: std::process::id(),
        }
    }

    /// Whether the holder is known to be gone: released, or a process of this machine that
    /// no longer runs.
    fn holder_gone(&self) -> bool {
        self.released
            || (!self.host.is_empty()
                && self.host == host_name()
                && self.pid != std::process::id()
                && !std::path::Path::new(&format!("/proc/{}", self.pid)).exists())
    }
}

/// This machine's name (empty when unknown: never matches).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_default()
}

/// A lease held by this process.
pub struct Lease {
    store: Arc<dyn ObjectStore>,
    holder: String,
    epoch: u64,
    ttl: Duration,
    /// Cleared once the lease is lost (a newer epoch, or no renewal for `ttl`).
    held: Arc<AtomicBool>,
}

/// The highest epoch's object and its version tag, if any.
async fn newest(
    store: &Arc<dyn ObjectStore>,
) -> Result<Option<(u64, object_store::ObjectMeta)>, SluiceError> {
    let prefix = ObjectPath::from(LEASE_PREFIX);
    let objects: Vec<object_store::ObjectMeta> = store
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(|error| SluiceError::unavailable(format!("failed to list {prefix}: {error}")))?;
    Ok(objects
        .into_iter()
        .filter_map(|object| {
            let epoch = object
                .location
                .filename()?
                .strip_suffix(".json")?
                .parse::<u64>()
                .ok()?;
            Some((epoch, object))
        })
        .max_by_key(|(epoch, _)| *epoch))
}

async fn read_record(store: &Arc<dyn ObjectStore>, epoch: u64) -> Option<Record> {
    let bytes = store
        .get(&lease_path(epoch))
        .await
        .ok()?
        .bytes()
        .await
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

impl Lease {
    /// Waits until this process holds the lease (or `shutdown` fires: `None`).
    pub async fn acquire(
        store: Arc<dyn ObjectStore>,
        holder: &str,
        ttl: Duration,
        shutdown: &mut Shutdown,
    ) -> Result<Option<Lease>, SluiceError> {
        let poll = (ttl / 5).max(Duration::from_millis(50));
        // The highest epoch seen, its object's tag, and since when it has not changed.
        let mut watched: Option<(u64, String, Instant)> = None;
        let mut announced = false;
        loop {
            let candidate = match newest(&store).await {
                Ok(None) => Some(1),
                Ok(Some((epoch, object))) => {
                    let tag = format!(
                        "{:?}/{}/{}",
                        object.e_tag, object.last_modified, object.size
                    );
                    let released = read_record(&store, epoch)
                        .await
                        .is_some_and(|record| record.holder_gone());
                    let since = match &watched {
                        Some((seen, seen_tag, since)) if *seen == epoch && *seen_tag == tag => {
                            *since
                        }
                        _ => {
                            let now = Instant::now();
                            watched = Some((epoch, tag, now));
                            now
                        }
                    };
                    if released || since.elapsed() >= ttl {
                        Some(epoch + 1)
                    } else {
                        if !announced {
                            info!(
                                epoch,
                                "another retention process holds the archive's lease; waiting as a standby"
                            );
                            announced = true;
                        }
                        None
                    }
                }
                Err(error) => {
                    warn!(error = %error, "failed to read the archive's lease; retrying");
                    None
                }
            };
            if let Some(epoch) = candidate {
                let record = Record::new(holder, epoch, false);
                let body = serde_json::to_vec(&record)
                    .map_err(|error| SluiceError::internal(error.to_string()))?;
                let options = PutOptions {
                    mode: PutMode::Create,
                    ..PutOptions::default()
                };
                match store
                    .put_opts(&lease_path(epoch), PutPayload::from(body), options)
                    .await
                {
                    Ok(_) => {
                        info!(epoch, "this retention process holds the archive's lease");
                        return Ok(Some(Lease {
                            store,
                            holder: holder.to_owned(),
                            epoch,
                            ttl,
                            held: Arc::new(AtomicBool::new(true)),
                        }));
                    }
                    Err(
                        object_store::Error::AlreadyExists { .. }
                        | object_store::Error::Precondition { .. },
                    ) => {
                        // Another standby took it first: watch the new epoch.
                        watched = None;
                    }
                    Err(error) => {
                        warn!(epoch, error = %error, "failed to take the archive's lease; retrying");
                    }
                }
            }
            tokio::select! {
                () = shutdown.wait() => return Ok(None),
                () = tokio::time::sleep(poll) => {}
            }
        }
    }

    /// The epoch held.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether the lease is still held (as far as this process knows).
    pub fn is_held(&self) -> bool {
        self.held.load(Ordering::Acquire)
    }

    /// Renews the lease every third of its time until it is lost or `stop` fires; the flag
    /// [`Lease::is_held`] reads is cleared when it is lost.
    pub fn keep_renewed(&self, mut stop: Shutdown) -> tokio::task::JoinHandle<()> {
        let store = Arc::clone(&self.store);
        let holder = self.holder.clone();
        let epoch = self.epoch;
        let ttl = self.ttl;
        let held = Arc::clone(&self.held);
        tokio::spawn(async move {
            let mut last_renewed = Instant::now();
            loop {
                tokio::select! {
                    () = stop.wait() => return,
                    () = tokio::time::sleep(ttl / 3) => {}
                }
                match renew(&store, &holder, epoch).await {
                    Ok(true) => last_renewed = Instant::now(),
                    Ok(false) => {
                        warn!(
                            epoch,
                            "a newer retention process took the archive's lease; this one stops writing"
                        );
                        held.store(false, Ordering::Release);
                        return;
                    }
                    Err(error) => {
                        warn!(epoch, error = %error, "failed to renew the archive's lease");
                        if last_renewed.elapsed() >= ttl {
                            warn!(
                                epoch,
                                "the archive's lease was not renewed for its whole time; this process stops writing"
                            );
                            held.store(false, Ordering::Release);
                            return;
                        }
                    }
                }
            }
        })
    }

    /// Gives the lease up so a standby takes over at once (a clean shutdown).
    pub async fn release(&self) {
        self.held.store(false, Ordering::Release);
        let record = Record::new(&self.holder, self.epoch, true);
        if let Ok(body) = serde_json::to_vec(&record)
            && let Err(error) = self
                .store
                .put(&lease_path(self.epoch), PutPayload::from(body))
                .await
        {
            warn!(error = %error, "failed to release the archive's lease; a standby waits out its time");
        }
    }
}

/// Rewrites the lease of `epoch`; `false` when a newer epoch exists.
async fn renew(
    store: &Arc<dyn ObjectStore>,
    holder: &str,
    epoch: u64,
) -> Result<bool, SluiceError> {
    if let Some((newest, _)) = newest(store).await?
        && newest > epoch
    {
        return Ok(false);
    }
    let record = Record::new(holder, epoch, false);
    let body =
        serde_json::to_vec(&record).map_err(|error| SluiceError::internal(error.to_string()))?;
    store
        .put(&lease_path(epoch), PutPayload::from(body))
        .await
        .map_err(|error| SluiceError::unavailable(format!("failed to renew the lease: {error}")))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use sluice_common::shutdown::ShutdownTrigger;

    use super::*;

    #[tokio::test]
    async fn one_holder_at_a_time_a_standby_takes_over_a_silent_or_released_lease() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store: Arc<dyn ObjectStore> = Arc::new(
            object_store::local::LocalFileSystem::new_with_prefix(dir.path()).expect("store"),
        );
        let ttl = Duration::from_millis(300);
        let (_trigger, mut shutdown) = ShutdownTrigger::new();
        let first = Lease::acquire(Arc::clone(&store), "first", ttl, &mut shutdown)
            .await
            .expect("acquire")
            .expect("held");
        assert_eq!(first.epoch(), 1);
        let (stop_renewing, renewing) = ShutdownTrigger::new();
        let renewal = first.keep_renewed(renewing);

        // While the first renews, a standby waits.
        let standby_store = Arc::clone(&store);
        let (_standby_trigger, mut standby_shutdown) = ShutdownTrigger::new();
        let standby = tokio::spawn(async move {
            Lease::acquire(standby_store, "second", ttl, &mut standby_shutdown).await
        });
        tokio::time::sleep(ttl * 3).await;
        assert!(!standby.is_finished(), "the standby took a renewed lease");

        // The first dies (stops renewing): the standby takes over within about a lease time.
        stop_renewing.fire();
        renewal.await.expect("renewal task");
        let died = Instant::now();
        let second = standby
            .await
            .expect("join")
            .expect("acquire")
            .expect("held");
        assert_eq!(second.epoch(), 2);
        assert!(died.elapsed() < ttl * 4, "took {:?}", died.elapsed());

        // The first, only paused, learns it lost the lease at its next renewal.
        let (_stop, renewing) = ShutdownTrigger::new();
        first.keep_renewed(renewing).await.expect("renewal task");
        assert!(!first.is_held());

        // A clean release hands over without waiting.
        second.release().await;
        let released = Instant::now();
        let third = Lease::acquire(
            Arc::clone(&store),
            "third",
            Duration::from_secs(60),
            &mut shutdown,
        )
        .await
        .expect("acquire")
        .expect("held");
        assert_eq!(third.epoch(), 3);
        assert!(released.elapsed() < Duration::from_secs(5));
    }
}
