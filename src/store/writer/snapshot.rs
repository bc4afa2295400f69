//! The writer's point-in-time snapshot of the store's records, for backups.
//!
//! A [`Snapshot`] is taken by the writer thread between two group commits (the command commits
//! alone, so every earlier group is durable and no later one has begun) and costs the writer
//! only the registration: ingest does not wait while a backup reads. From then on, until the
//! snapshot is dropped, the writer saves the *before-image* of every key a commit is about to
//! change (the value it had at the snapshot, or its absence) into the snapshot's overlay before
//! applying the batch. A reader walks the live engine and takes a key's value from the overlay
//! whenever the overlay holds it, so it sees exactly the records of the snapshot point whatever
//! the writer commits meanwhile. The overlay grows with the keys changed while the backup runs
//! (not with the store's size).
//!
//! Log files need no copy: they are append-only and the snapshot's segment index says where
//! each one ends; bytes past that end are never read. The one thing that could take a file away
//! (a pruned or deleted deployment's file, removed after its commit) is deferred by the writer
//! while any snapshot lives, and done at the first commit after the last snapshot is dropped.
//!
//! This module owns the overlay and the writer's bookkeeping of live snapshots; it never writes
//! the engine, and what is made of a snapshot (the tar) is `crate::backup`'s.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};

use super::group::WriterState;
use crate::model::DeploymentId;
use crate::store::engine::{BatchOp, Engine, EngineError};
use crate::store::Store;

/// Keys below this first byte are every key the store holds (tags are `0x01`–`0x18`; the
/// codec never uses `0xFF`).
const KEYS_END: [u8; 1] = [0xFF];

/// What the writer saved for one snapshot.
#[derive(Default)]
struct Overlay {
    /// Key → its value at the snapshot point (`None`: it did not exist), for every key a
    /// commit changed since.
    before: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Set when saving a before-image failed: the snapshot can no longer be trusted.
    broken: Option<String>,
    /// How far the reader's walk has come: keys it has passed need no before-image.
    walked: Walked,
}

/// The reader's progress through the keyspace.
#[derive(Default)]
enum Walked {
    #[default]
    Nothing,
    /// Every key up to and including this one.
    UpTo(Vec<u8>),
    /// The walk is over: nothing more is saved.
    All,
}

impl Walked {
    fn passed(&self, key: &[u8]) -> bool {
        match self {
            Walked::Nothing => false,
            Walked::UpTo(last) => key <= last.as_slice(),
            Walked::All => true,
        }
    }
}

type Shared = Mutex<Overlay>;

/// A point-in-time view of the store's records (see the module doc). Dropping it lets the
/// writer remove the log files it deferred.
pub struct Snapshot {
    store: Store,
    overlay: Arc<Shared>,
}

impl Snapshot {
    /// The store the snapshot was taken of (its log files are read through it).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Every record of the snapshot, once each (in key order, except that the keys changed
    /// during the walk come last). Fails if the writer could not save a before-image.
    pub fn for_each_record(
        &self,
        mut visit: impl FnMut(&[u8], &[u8]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let engine = self.store.engine();
        for entry in engine.range(&[], &KEYS_END, false) {
            let (key, value) = entry.map_err(std::io::Error::other)?;
            {
                let mut overlay = self.lock()?;
                // A key the overlay holds was changed before the walk reached it: its snapshot
                // value is emitted from the overlay below. One it does not hold was not changed
                // before this point, so `value` is its snapshot value, and from here on the
                // writer leaves it alone (the walk has passed it).
                if overlay.before.contains_key(&key) {
                    continue;
                }
                overlay.walked = Walked::UpTo(key.clone());
            }
            visit(&key, &value)?;
        }
        let before = {
            let mut overlay = self.lock()?;
            overlay.walked = Walked::All;
            if let Some(reason) = overlay.broken.take() {
                return Err(std::io::Error::other(format!(
                    "the snapshot could not be kept consistent: {reason}"
                )));
            }
            std::mem::take(&mut overlay.before)
        };
        for (key, value) in &before {
            if let Some(value) = value {
                visit(key, value)?;
            }
        }
        Ok(())
    }

    fn lock(&self) -> std::io::Result<std::sync::MutexGuard<'_, Overlay>> {
        self.overlay
            .lock()
            .map_err(|_| std::io::Error::other("the writer panicked while saving a snapshot"))
    }
}

/// The writer's live snapshots and the log files it holds back for them.
#[derive(Default)]
pub(super) struct Snapshots {
    live: Vec<Weak<Shared>>,
    /// Log files to remove once no snapshot lives.
    deferred: Vec<DeploymentId>,
}

impl WriterState {
    /// Registers a snapshot at this point between two commits.
    pub(super) fn take_snapshot(&mut self) -> Snapshot {
        let overlay = Arc::new(Shared::default());
        self.snapshots.live.push(Arc::downgrade(&overlay));
        Snapshot {
            store: self.store.clone(),
            overlay,
        }
    }

    /// Saves, for every live snapshot, the before-image of each key `ops` change that it has
    /// not saved yet. Called before the batch is applied. A failed read breaks only the
    /// snapshots (their backups fail), never the commit.
    pub(super) fn save_before_images(&mut self, ops: &[BatchOp]) {
        self.snapshots.live.retain(|weak| weak.strong_count() > 0);
        if self.snapshots.live.is_empty() {
            return;
        }
        for weak in &self.snapshots.live {
            let Some(shared) = weak.upgrade() else {
                continue;
            };
            let Ok(mut overlay) = shared.lock() else {
                continue;
            };
            if overlay.broken.is_some() {
                continue;
            }
            if let Err(err) = save(&mut overlay, &*self.engine, ops) {
                overlay.broken = Some(err.to_string());
            }
        }
    }

    /// Removes a committed deletion's log file, or defers it while a snapshot lives; removes
    /// the deferred ones once none does.
    pub(super) fn remove_log_files(&mut self, ids: Vec<DeploymentId>) {
        self.snapshots.live.retain(|weak| weak.strong_count() > 0);
        if !self.snapshots.live.is_empty() {
            self.snapshots.deferred.extend(ids);
            return;
        }
        let deferred = std::mem::take(&mut self.snapshots.deferred);
        let ids: Vec<DeploymentId> = deferred.into_iter().chain(ids).collect();
        if let Some(replication) = self.store.replication() {
            if !ids.is_empty() {
                // After the commit that dropped their index: a replica that misses this only
                // keeps files nothing points to.
                if let Err(err) = replication
                    .target()
                    .replicate(crate::store::replicate::Entry::RemoveLogs(&ids))
                {
                    tracing::warn!(error = %err, "cannot replicate the removal of log files");
                }
            }
        }
        for id in ids {
            self.appender.close(id);
            self.logs.remove(id);
        }
    }
}

fn save(overlay: &mut Overlay, engine: &dyn Engine, ops: &[BatchOp]) -> Result<(), EngineError> {
    for op in ops {
        let key = match op {
            BatchOp::Put(key, _) | BatchOp::Delete(key) => key,
        };
        if !overlay.walked.passed(key) && !overlay.before.contains_key(key) {
            let value = engine.get(key)?;
            overlay.before.insert(key.clone(), value);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use crate::hub::Hub;
    use crate::model::{new_user, App, AppId, Driver, NewLine, Pusher};
    use crate::store::engine::{prefix_end, Engine, MemoryEngine};
    use crate::store::logs::LogFiles;
    use crate::store::writer::Writer;
    use crate::store::Store;

    fn dump(engine: &dyn Engine) -> BTreeMap<Vec<u8>, Vec<u8>> {
        engine
            .range(&[], &prefix_end(&[0xFE]), false)
            .map(|entry| entry.expect("entry"))
            .collect()
    }

    fn read(snapshot: &super::Snapshot) -> (BTreeMap<Vec<u8>, Vec<u8>>, usize) {
        let mut seen = BTreeMap::new();
        let mut visits = 0;
        snapshot
            .for_each_record(|key, value| {
                visits += 1;
                seen.insert(key.to_vec(), value.to_vec());
                Ok(())
            })
            .expect("read the snapshot");
        (seen, visits)
    }

    #[tokio::test]
    async fn a_snapshot_reads_the_records_of_its_point_whatever_is_committed_after_and_keeps_deleted_log_files(
    ) {
        let scratch = tempfile::tempdir().expect("tempdir");
        let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::default());
        let store = Store::new(
            engine.clone(),
            LogFiles::open(scratch.path()).expect("logs"),
        );
        let (writer, _, _thread) =
            Writer::start(store.clone(), Arc::new(Hub::default())).expect("writer");
        let now = time::OffsetDateTime::now_utc();
        let (user, token) = new_user("u".into(), "u@example.com".into(), String::new(), true, now);
        writer
            .create_user(user.clone(), token, [1; 32])
            .await
            .expect("user");
        let app = App {
            id: AppId::generate(),
            name: "web".into(),
            owner: user.id,
            git_source: None,
            created_at: now,
            updated_at: now,
            last_deployment: None,
        };
        writer.create_app(app.clone()).await.expect("app");
        let pusher = Pusher {
            id: user.id,
            username: user.username.clone(),
            email: user.email.clone(),
        };
        let deployment = writer
            .create_deployment(app.id, "main".into(), pusher.clone(), Driver::External)
            .await
            .expect("deployment");
        writer
            .append_logs(deployment.id, vec![NewLine::stdout("before")])
            .await
            .expect("append");
        writer
            .put_meta("kept".into(), b"old".to_vec())
            .await
            .expect("meta");
        let before = dump(&*engine);
        let log_file = store.logs().path(deployment.id);
        let log_before = std::fs::read(&log_file).expect("log file");

        let snapshot = writer.snapshot().await.expect("snapshot");
        // After the snapshot: an overwrite, inserts, and a deletion of the app with its
        // deployment, index entries and log file.
        writer
            .put_meta("kept".into(), b"new".to_vec())
            .await
            .expect("meta");
        writer
            .append_logs(deployment.id, vec![NewLine::stdout("after")])
            .await
            .expect("append");
        writer.delete_app(app.id).await.expect("delete app");
        let (other, token) = new_user(
            "v".into(),
            "v@example.com".into(),
            String::new(),
            false,
            now,
        );
        writer
            .create_user(other, token, [2; 32])
            .await
            .expect("user");
        assert_ne!(dump(&*engine), before, "the live store moved on");
        let log_now = std::fs::read(&log_file)
            .expect("a deleted deployment's log file stays while a snapshot lives");
        assert!(log_now.starts_with(&log_before));
        let (seen, visits) = read(&snapshot);
        assert_eq!(seen, before, "the snapshot holds the records of its point");
        assert_eq!(visits, before.len(), "every record once");
        drop(snapshot);
        writer
            .put_meta("next".into(), Vec::new())
            .await
            .expect("meta");
        assert!(
            !log_file.exists(),
            "the deferred log file goes at the first commit after the snapshot is dropped"
        );
    }
}
