//! Hot reload of playbooks: validate, then swap. An invalid set is reported and the set in
//! force is kept. The directory is polled (names, sizes, modification times), which works the
//! same on every filesystem, including ConfigMap volumes whose files change by symlink swap.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use super::worker::SharedPlaybooks;
use crate::error::Diagnostic;
use crate::playbook::{LoadError, load_dir};

/// What a reload attempt did.
#[derive(Debug)]
pub enum Reload {
    /// Nothing changed on disk.
    Unchanged,
    /// A valid set replaced the old one.
    Swapped {
        /// Playbooks now in force.
        playbooks: usize,
    },
    /// The new set is invalid; the old one stays in force.
    Rejected(Vec<Diagnostic>),
}

/// Watches one playbook directory.
#[derive(Debug)]
pub struct Reloader {
    dir: PathBuf,
    shared: SharedPlaybooks,
    last: String,
}

/// A digest of the directory's playbook files: names, sizes and modification times (following
/// symlinks, so a ConfigMap's atomic swap is seen).
fn snapshot(dir: &Path) -> String {
    let mut h = Sha256::new();
    let mut entries: Vec<(String, u64, u128)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| {
                    let path = e.path();
                    let ext = path
                        .extension()
                        .and_then(|x| x.to_str())
                        .unwrap_or_default();
                    if !matches!(ext, "yaml" | "yml") {
                        return None;
                    }
                    let meta = std::fs::metadata(&path).ok()?;
                    let mtime = meta
                        .modified()
                        .ok()?
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .ok()?
                        .as_nanos();
                    Some((path.to_string_lossy().into_owned(), meta.len(), mtime))
                })
                .collect()
        })
        .unwrap_or_default();
    entries.sort();
    for (name, len, mtime) in entries {
        h.update(name.as_bytes());
        h.update(len.to_le_bytes());
        h.update(mtime.to_le_bytes());
    }
    hex::encode(h.finalize())
}

impl Reloader {
    /// A reloader for the set currently in `shared`, loaded from `dir`.
    #[must_use]
    pub fn new(dir: &Path, shared: SharedPlaybooks) -> Self {
        Self {
            dir: dir.to_path_buf(),
            last: snapshot(dir),
            shared,
        }
    }

    /// Checks the directory once and swaps in a changed, valid set.
    pub fn check(&mut self) -> Reload {
        let now = snapshot(&self.dir);
        if now == self.last {
            return Reload::Unchanged;
        }
        self.last = now;
        match load_dir(&self.dir) {
            Ok(set) => {
                let n = set.playbooks().len();
                match self.shared.write() {
                    Ok(mut guard) => *guard = Arc::new(set),
                    Err(poisoned) => *poisoned.into_inner() = Arc::new(set),
                }
                tracing::info!(dir = %self.dir.display(), playbooks = n, "playbooks reloaded");
                Reload::Swapped { playbooks: n }
            }
            Err(e) => {
                let ds = match e {
                    LoadError::Invalid(ds) => ds,
                    LoadError::Unreadable(d) => vec![d],
                };
                for d in &ds {
                    tracing::error!(problem = %crate::redact::Scrubbed(d), "playbook reload rejected; the previous set stays in force");
                }
                Reload::Rejected(ds)
            }
        }
    }

    /// Polls every `interval` until `shutdown` resolves; `on_result` sees every attempt that
    /// found a change (for metrics).
    pub async fn run(
        mut self,
        interval: Duration,
        on_result: impl Fn(&Reload),
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(interval) => {
                    let r = self.check();
                    if !matches!(r, Reload::Unchanged) {
                        on_result(&r);
                    }
                }
            }
        }
    }
}
