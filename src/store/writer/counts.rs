//! The writer's side of the deployment counts (`codec` tags `0x19`, `0x1A`, `0x1B`; what they
//! promise is in `store::counts`): every change to the status index is noted in its group as a
//! [`CountChange`], and just before the group's batch is applied the changes are resolved, in
//! order, against the committed counts into the ops that update them. So the counts are in the
//! same atomic batch as the records they count, and several changes of one group to one app
//! (a finished deployment and the queued one it promotes) add up. Each change is counted twice:
//! in its app's counts and in every app's ([`CountScope::All`]).
//!
//! Runs on the writer thread; it reads committed state and adds ops, and never commits. Counts
//! found out of step (a bucket missing, a count going below zero) are logged and saturated:
//! the listing stays served and `deployd check --repair` rebuilds them.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::model::{AppId, DeploymentId};
use crate::status::Status;
use crate::store::codec::{self, CountScope, StoredAppCounts, StoredBucket};
use crate::store::counts::BUCKET_SIZE;
use crate::store::engine::{prefix_end, BatchOp};
use crate::store::{Store, StoreError};

/// A change to the status index, to count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CountChange {
    /// A new deployment of `app`, at `status`.
    Created {
        app: AppId,
        id: DeploymentId,
        status: Status,
    },
    /// A deployment moved to `to` (from the status it had before, committed or earlier in the
    /// group).
    Moved {
        app: AppId,
        id: DeploymentId,
        to: Status,
    },
    /// A deployment at `status` was forgotten (pruned).
    Forgotten {
        app: AppId,
        id: DeploymentId,
        status: Status,
    },
    /// The app was deleted with every deployment: its counts go, and every app's counts lose
    /// its deployments.
    AppDeleted { app: AppId },
}

/// Resolves a group's count changes, in order, into ops appended to `ops` (after every op of
/// the group, so they are applied in the same batch).
pub(super) fn resolve(
    store: &Store,
    changes: Vec<CountChange>,
    ops: &mut Vec<BatchOp>,
) -> Result<(), StoreError> {
    if changes.is_empty() {
        return Ok(());
    }
    let mut resolver = Resolver {
        store,
        scopes: HashMap::new(),
        buckets: BTreeMap::new(),
        statuses: HashMap::new(),
        apps_of: HashMap::new(),
        forgotten: HashSet::new(),
    };
    for change in changes {
        resolver.apply(change)?;
    }
    for (scope, counts) in resolver.scopes {
        let key = scope.counts_key();
        ops.push(match counts {
            Some(counts) => put(key, codec::encode_app_counts(&counts)),
            None => BatchOp::Delete(key),
        });
    }
    for (key, bucket) in resolver.buckets {
        ops.push(match bucket {
            Some(bucket) => put(key, codec::encode_bucket(&bucket)),
            None => BatchOp::Delete(key),
        });
    }
    Ok(())
}

/// The two scopes a deployment of `app` is counted in.
fn scopes_of(app: AppId) -> [CountScope; 2] {
    [CountScope::App(app), CountScope::All]
}

/// The counts as the group leaves them so far, over the committed ones. `None`: deleted.
struct Resolver<'a> {
    store: &'a Store,
    scopes: HashMap<CountScope, Option<StoredAppCounts>>,
    /// Bucket key → bucket (keys of every scope: each scope's keys have their own prefix).
    buckets: BTreeMap<Vec<u8>, Option<StoredBucket>>,
    /// The status of each deployment the group moved or created, as the group leaves it.
    statuses: HashMap<DeploymentId, Status>,
    /// The app of each deployment the group created or moved (an app's delete forgets them).
    apps_of: HashMap<DeploymentId, AppId>,
    /// Deployments the group forgot: their committed index entries count no more.
    forgotten: HashSet<DeploymentId>,
}

impl Resolver<'_> {
    fn apply(&mut self, change: CountChange) -> Result<(), StoreError> {
        match change {
            CountChange::Created { app, id, status } => {
                for scope in scopes_of(app) {
                    let key = self.bucket_for_new(scope, id)?;
                    self.add(scope, &key, status, 1)?;
                }
                self.statuses.insert(id, status);
                self.apps_of.insert(id, app);
            }
            CountChange::Moved { app, id, to } => {
                let Some(from) = self.status_of(id)? else {
                    tracing::error!(deployment = %id, "deployment counts: a moved deployment \
                        has no record; run `deployd check --repair`");
                    return Ok(());
                };
                if from == to {
                    return Ok(());
                }
                for scope in scopes_of(app) {
                    let key = self.covering_or_new(scope, id)?;
                    self.add(scope, &key, from, -1)?;
                    self.add(scope, &key, to, 1)?;
                }
                self.statuses.insert(id, to);
                self.apps_of.insert(id, app);
            }
            CountChange::Forgotten { app, id, status } => {
                // Its status as the group leaves it (a prune commits alone, so the record's).
                let status = self.statuses.get(&id).copied().unwrap_or(status);
                for scope in scopes_of(app) {
                    self.forget(scope, id, status)?;
                }
                self.statuses.remove(&id);
                self.forgotten.insert(id);
            }
            CountChange::AppDeleted { app } => {
                for (id, status) in self.deployments_of(app)? {
                    self.forget(CountScope::All, id, status)?;
                    self.statuses.remove(&id);
                    self.forgotten.insert(id);
                }
                let scope = CountScope::App(app);
                self.scopes.insert(scope, None);
                let prefix = scope.buckets_prefix();
                let end = prefix_end(&prefix);
                for entry in self.store.engine().range(&prefix, &end, false) {
                    self.buckets.insert(entry?.0, None);
                }
                for (_, bucket) in self.buckets.range_mut(prefix..end) {
                    *bucket = None;
                }
            }
        }
        Ok(())
    }

    /// Every deployment of `app` counted so far, at its status as the group leaves it: the
    /// committed status index, less what the group forgot, plus what the group created.
    fn deployments_of(&self, app: AppId) -> Result<BTreeMap<DeploymentId, Status>, StoreError> {
        let mut found = BTreeMap::new();
        let prefix = codec::app_statuses_prefix(app);
        for entry in self
            .store
            .engine()
            .range(&prefix, &prefix_end(&prefix), false)
        {
            let (key, _) = entry?;
            let id = DeploymentId::from_bytes(codec::trailing_id(&key)?);
            let status = key
                .get(prefix.len())
                .and_then(|code| codec::status_from_code(*code))
                .ok_or(codec::CodecError::Corrupt("status index key"))?;
            found.insert(id, status);
        }
        for (id, of) in &self.apps_of {
            if let (true, Some(status)) = (*of == app, self.statuses.get(id)) {
                found.insert(*id, *status);
            }
        }
        found.retain(|id, _| !self.forgotten.contains(id));
        for (id, status) in found.iter_mut() {
            if let Some(now) = self.statuses.get(id) {
                *status = *now;
            }
        }
        Ok(found)
    }

    /// Takes a deployment at `status` out of the scope's counts; a bucket left empty goes (the
    /// bucket before it takes its range over).
    fn forget(
        &mut self,
        scope: CountScope,
        id: DeploymentId,
        status: Status,
    ) -> Result<(), StoreError> {
        let key = self.covering_or_new(scope, id)?;
        self.add(scope, &key, status, -1)?;
        if self.bucket(&key)?.is_none_or(|b| b.live() == 0) {
            self.buckets.insert(key.clone(), None);
            let counts = self.counts(scope)?;
            if counts
                .newest_bucket
                .is_some_and(|first| scope.bucket_key(DeploymentId::from_bytes(first)) == key)
            {
                counts.newest_bucket = None;
            }
        }
        Ok(())
    }

    /// The bucket a new deployment joins. Normally `id` is newer than every deployment the
    /// scope had: it joins the newest bucket, or opens the next one when that is full (or
    /// gone). An id older than one already counted (the clock went back) joins the bucket whose
    /// range holds it, so that every bucket keeps counting exactly its range.
    fn bucket_for_new(
        &mut self,
        scope: CountScope,
        id: DeploymentId,
    ) -> Result<Vec<u8>, StoreError> {
        let counts = *self.counts(scope)?;
        let newest = counts.newest.map(DeploymentId::from_bytes);
        if newest.is_some_and(|newest| newest >= id) {
            return self.covering_or_new(scope, id);
        }
        let joined = match counts.newest_bucket {
            Some(first) => {
                let key = scope.bucket_key(DeploymentId::from_bytes(first));
                match self.bucket(&key)? {
                    Some(bucket) if bucket.live() < BUCKET_SIZE => Some(key),
                    _ => None,
                }
            }
            None => None,
        };
        let counts = self.counts(scope)?;
        counts.newest = Some(*id.as_bytes());
        Ok(match joined {
            Some(key) => key,
            None => {
                counts.newest_bucket = Some(*id.as_bytes());
                scope.bucket_key(id)
            }
        })
    }

    /// The key of the scope's bucket whose range holds `id`: the one with the largest first id
    /// at or before it. When there is none (`id` is older than every bucket), a new bucket
    /// starting at `id`, which then holds exactly `id` up to the first one.
    fn covering_or_new(
        &mut self,
        scope: CountScope,
        id: DeploymentId,
    ) -> Result<Vec<u8>, StoreError> {
        let low = scope.buckets_prefix();
        let mut high = scope.bucket_key(id);
        // Just past `id`'s own key: a bucket starting at `id` holds it.
        high.push(0);
        let mut committed = None;
        for entry in self.store.engine().range(&low, &high, true) {
            let (key, value) = entry?;
            match self.buckets.get(&key) {
                Some(None) => continue,
                Some(Some(_)) => {}
                None => {
                    let bucket = decode_or_log(&key, &value);
                    self.buckets.insert(key.clone(), Some(bucket));
                }
            }
            committed = Some(key);
            break;
        }
        let staged = self
            .buckets
            .range(low..high)
            .rev()
            .find(|(_, bucket)| bucket.is_some())
            .map(|(key, _)| key.clone());
        Ok(committed
            .max(staged)
            .unwrap_or_else(|| scope.bucket_key(id)))
    }

    /// Adds `delta` to `status` in the bucket at `key` (read already by the lookup that chose
    /// it) and in the scope's counts.
    fn add(
        &mut self,
        scope: CountScope,
        key: &[u8],
        status: Status,
        delta: i64,
    ) -> Result<(), StoreError> {
        let slot = usize::from(codec::status_code(status));
        let bucket = self
            .buckets
            .entry(key.to_vec())
            .or_insert(None)
            .get_or_insert_with(StoredBucket::default);
        bucket.by_status[slot] = step(u64::from(bucket.by_status[slot]), delta, scope)
            .try_into()
            .unwrap_or(u32::MAX);
        let counts = self.counts(scope)?;
        counts.by_status[slot] = step(counts.by_status[slot], delta, scope);
        Ok(())
    }

    /// The scope's counts as the group leaves them (loaded on first use; zeros when none).
    fn counts(&mut self, scope: CountScope) -> Result<&mut StoredAppCounts, StoreError> {
        if !self.scopes.contains_key(&scope) {
            let counts = match self.store.engine().get(&scope.counts_key())? {
                Some(value) => codec::decode_app_counts(&value).unwrap_or_else(|err| {
                    tracing::error!(%scope, error = %err, "deployment counts: the counts \
                        record does not decode; counting from zero (run `deployd check --repair`)");
                    StoredAppCounts::default()
                }),
                None => StoredAppCounts::default(),
            };
            self.scopes.insert(scope, Some(counts));
        }
        let slot = self.scopes.entry(scope).or_insert(None);
        Ok(slot.get_or_insert_with(StoredAppCounts::default))
    }

    /// The bucket at `key` as the group leaves it (`None`: none or deleted).
    fn bucket(&mut self, key: &[u8]) -> Result<Option<StoredBucket>, StoreError> {
        if let Some(bucket) = self.buckets.get(key) {
            return Ok(*bucket);
        }
        let bucket = self
            .store
            .engine()
            .get(key)?
            .map(|value| decode_or_log(key, &value));
        self.buckets.insert(key.to_vec(), bucket);
        Ok(bucket)
    }

    /// A deployment's status as the group leaves it so far (`None`: no record).
    fn status_of(&mut self, id: DeploymentId) -> Result<Option<Status>, StoreError> {
        if let Some(status) = self.statuses.get(&id) {
            return Ok(Some(*status));
        }
        match self.store.engine().get(&codec::deployment_key(id))? {
            Some(value) => Ok(Some(codec::decode_deployment(&value)?.status)),
            None => Ok(None),
        }
    }
}

/// `count + delta`, saturating at zero (logged: the counts are out of step).
fn step(count: u64, delta: i64, scope: CountScope) -> u64 {
    match count.checked_add_signed(delta) {
        Some(next) => next,
        None => {
            tracing::error!(%scope, "deployment counts: a count went below zero; they are out \
                of step with the status index (run `deployd check --repair`)");
            0
        }
    }
}

fn decode_or_log(key: &[u8], value: &[u8]) -> StoredBucket {
    codec::decode_bucket(value).unwrap_or_else(|err| {
        tracing::error!(key = %hex::encode(key), error = %err, "deployment counts: a bucket \
            does not decode; counting it from zero (run `deployd check --repair`)");
        StoredBucket::default()
    })
}

fn put(key: Vec<u8>, value: Vec<u8>) -> BatchOp {
    BatchOp::Put(key, bytes::Bytes::from(value))
}

#[cfg(test)]
mod tests {
    //! The counts and the seeks they allow, against the plain scan (skipping `offset` index
    //! keys, counting every key), after any mix of creates, status changes, prunes and app
    //! deletes. Unit tests build buckets of `BUCKET_SIZE` = 4, so a few dozen deployments
    //! span many buckets.

    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use crate::hub::Hub;
    use crate::model::{App, Driver, Pusher, Token, TokenId, User, UserId};
    use crate::store::counts;
    use crate::store::engine::{Engine, MemoryEngine};
    use crate::store::logs::LogFiles;
    use crate::store::writer::{Target, Writer};

    /// The filters the listing is asked for: none, one status, `unfinished`, two finished.
    fn filters() -> Vec<Option<Vec<Status>>> {
        vec![
            None,
            Some(vec![Status::Success]),
            Some(
                Status::ALL
                    .into_iter()
                    .filter(|s| !s.is_terminal())
                    .collect(),
            ),
            Some(vec![Status::Aborted, Status::BuildError]),
        ]
    }

    /// Every page (every offset, limits 1 and 3) of every filter of `app` is the plain scan's,
    /// and the counts pass `counts::verify`.
    fn assert_pages_match_the_plain_scan(store: &Store, app: AppId) {
        for filter in filters() {
            let plain_all = match &filter {
                None => store.deployment_ids(app, 0, u64::MAX),
                Some(statuses) => store.status_ids(&[app], statuses, 0, u64::MAX),
            }
            .expect("plain scan");
            let total = plain_all.len() as u64;
            for limit in [1, 3] {
                for offset in 0..=total + 1 {
                    let plain = match &filter {
                        None => store.deployment_ids(app, offset, limit),
                        Some(statuses) => store.status_ids(&[app], statuses, offset, limit),
                    }
                    .expect("plain page");
                    let (count, page) = store
                        .app_page(app, filter.as_deref(), offset, limit)
                        .expect("page");
                    assert_eq!(count, total, "total of {filter:?}");
                    assert_eq!(page, plain, "{filter:?} offset {offset} limit {limit}");
                }
            }
        }
        assert_eq!(
            counts::verify(&**store.engine()).expect("verify"),
            Vec::<String>::new()
        );
    }

    /// Every page of every filter over all of `apps` (every app there is) from every app's
    /// counts is the plain k-way merge's, which skips `offset` keys.
    fn assert_every_apps_pages_match_the_plain_scan(store: &Store, apps: &[AppId]) {
        for filter in filters() {
            let statuses = filter.clone().unwrap_or(Status::ALL.to_vec());
            let total = store
                .status_ids(apps, &statuses, 0, u64::MAX)
                .expect("plain scan")
                .len() as u64;
            for limit in [1, 3] {
                for offset in 0..=total + 1 {
                    let plain = store
                        .status_ids(apps, &statuses, offset, limit)
                        .expect("plain page");
                    let (count, page) = store
                        .every_apps_page(apps, filter.as_deref(), offset, limit)
                        .expect("page");
                    assert_eq!(count, total, "total of {filter:?} over every app");
                    assert_eq!(page, plain, "{filter:?} offset {offset} limit {limit}");
                }
            }
        }
    }

    #[derive(Debug, Clone)]
    enum Step {
        Create(usize),
        /// Moves the n-th unfinished deployment (mod their number) to the status.
        Move(usize, Status),
        /// Prunes the n-th finished deployment and the one after it.
        Prune(usize),
        /// Deletes the app (and makes a new one in its place).
        DeleteApp(usize),
    }

    fn step() -> impl Strategy<Value = Step> {
        let status = proptest::sample::select(Status::ALL.to_vec());
        prop_oneof![
            6 => (0..2usize).prop_map(Step::Create),
            6 => (any::<usize>(), status).prop_map(|(n, s)| Step::Move(n, s)),
            2 => any::<usize>().prop_map(Step::Prune),
            1 => (0..2usize).prop_map(Step::DeleteApp),
        ]
    }

    struct Fixture {
        writer: Writer,
        store: Store,
        owner: UserId,
        apps: Vec<AppId>,
        _dir: tempfile::TempDir,
    }

    impl Fixture {
        async fn new() -> Fixture {
            let dir = tempfile::tempdir().expect("tempdir");
            let logs = LogFiles::open(dir.path()).expect("logs");
            let store = Store::new(Arc::new(MemoryEngine::default()), logs);
            let (writer, _, _) =
                Writer::start(store.clone(), Arc::new(Hub::default())).expect("writer");
            let owner = User {
                id: UserId::generate(),
                username: "u".into(),
                email: "u@example.com".into(),
                fullname: String::new(),
                is_admin: false,
                created_at: time::OffsetDateTime::now_utc(),
            };
            let token = Token {
                id: TokenId::generate(),
                user_id: owner.id,
                name: "t".into(),
                created_at: owner.created_at,
            };
            writer
                .create_user(owner.clone(), token, [3; 32])
                .await
                .expect("user");
            let mut fixture = Fixture {
                writer,
                store,
                owner: owner.id,
                apps: Vec::new(),
                _dir: dir,
            };
            for _ in 0..2 {
                let app = fixture.new_app().await;
                fixture.apps.push(app);
            }
            fixture
        }

        async fn new_app(&self) -> AppId {
            let now = time::OffsetDateTime::now_utc();
            let app = App {
                id: AppId::generate(),
                name: format!("app-{}", AppId::generate()),
                owner: self.owner,
                git_source: None,
                created_at: now,
                updated_at: now,
                last_deployment: None,
            };
            self.writer.create_app(app.clone()).await.expect("app");
            app.id
        }

        fn of_app(&self, app: AppId, finished: bool) -> Vec<DeploymentId> {
            let statuses: Vec<Status> = Status::ALL
                .into_iter()
                .filter(|s| s.is_terminal() == finished)
                .collect();
            self.store
                .status_ids(&[app], &statuses, 0, u64::MAX)
                .expect("ids")
        }

        async fn run(&mut self, step: &Step) {
            let pusher = Pusher {
                id: self.owner,
                username: "u".into(),
                email: "u@example.com".into(),
            };
            match step {
                Step::Create(i) => {
                    self.writer
                        .create_deployment(self.apps[*i], "main".into(), pusher, Driver::External)
                        .await
                        .expect("create");
                }
                Step::Move(n, to) => {
                    let unfinished: Vec<_> = self
                        .apps
                        .iter()
                        .flat_map(|app| self.of_app(*app, false))
                        .collect();
                    if !unfinished.is_empty() {
                        let id = unfinished[n % unfinished.len()];
                        // Refused moves (not allowed from its status) change nothing.
                        let _ = self.writer.transition(id, Target::Status(*to), None).await;
                    }
                }
                Step::Prune(n) => {
                    let finished: Vec<_> = self
                        .apps
                        .iter()
                        .flat_map(|app| self.of_app(*app, true))
                        .collect();
                    if !finished.is_empty() {
                        let ids = vec![
                            finished[n % finished.len()],
                            finished[(n + 1) % finished.len()],
                        ];
                        self.writer.prune_deployments(ids).await.expect("prune");
                    }
                }
                Step::DeleteApp(i) => {
                    self.writer.delete_app(self.apps[*i]).await.expect("delete");
                    self.apps[*i] = self.new_app().await;
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn pages_from_the_counts_are_the_plain_scans_pages_through_every_write(
            steps in proptest::collection::vec(step(), 1..60)
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
            rt.block_on(async {
                let mut fixture = Fixture::new().await;
                for step in &steps {
                    fixture.run(step).await;
                }
                for app in fixture.apps.clone() {
                    assert_pages_match_the_plain_scan(&fixture.store, app);
                }
                assert_every_apps_pages_match_the_plain_scan(&fixture.store, &fixture.apps);
                // What a delete left behind: nothing of the deleted apps' counts.
                let prefix = [codec::TAG_APP_COUNTS];
                let apps_counted = fixture.store.engine().range(&prefix, &prefix_end(&prefix), false).count();
                assert!(apps_counted <= fixture.apps.len());
                // A rebuild from the index gives counts that page the same.
                counts::rebuild(&**fixture.store.engine()).expect("rebuild");
                for app in fixture.apps.clone() {
                    assert_pages_match_the_plain_scan(&fixture.store, app);
                }
                assert_every_apps_pages_match_the_plain_scan(&fixture.store, &fixture.apps);
            });
        }

        /// Ids in any order (as when the clock goes back between two creations): each new one
        /// joins the bucket whose range holds it, so pages stay exact.
        #[test]
        fn out_of_order_ids_are_counted_in_the_bucket_whose_range_holds_them(
            steps in proptest::collection::vec((any::<u16>(), 0..3u8, proptest::sample::select(Status::ALL.to_vec())), 1..80)
        ) {
            let dir = tempfile::tempdir().expect("tempdir");
            let engine = Arc::new(MemoryEngine::default());
            let store = Store::new(engine.clone(), LogFiles::open(dir.path()).expect("logs"));
            let app = AppId::generate();
            let mut live: Vec<(DeploymentId, Status)> = Vec::new();
            for (n, action, status) in steps {
                let mut ops = Vec::new();
                let change = match action {
                    // Ids from a small space, in random order; a taken one is skipped.
                    0 => {
                        let mut bytes = [0u8; 16];
                        bytes[..2].copy_from_slice(&n.to_be_bytes());
                        let id = DeploymentId::from_bytes(bytes);
                        if live.iter().any(|(other, _)| *other == id) {
                            continue;
                        }
                        live.push((id, status));
                        ops.push(put(codec::app_deployment_key(app, id), Vec::new()));
                        ops.push(put(codec::app_status_key(app, status, id), Vec::new()));
                        let mut record = sample(app, id);
                        record.status = status;
                        ops.push(put(codec::deployment_key(id), codec::encode_deployment(&record)));
                        CountChange::Created { app, id, status }
                    }
                    _ if live.is_empty() => continue,
                    1 => {
                        let i = usize::from(n) % live.len();
                        let (id, from) = live[i];
                        live[i].1 = status;
                        ops.push(BatchOp::Delete(codec::app_status_key(app, from, id)));
                        ops.push(put(codec::app_status_key(app, status, id), Vec::new()));
                        let mut record = sample(app, id);
                        record.status = status;
                        ops.push(put(codec::deployment_key(id), codec::encode_deployment(&record)));
                        CountChange::Moved { app, id, to: status }
                    }
                    _ => {
                        let (id, status) = live.remove(usize::from(n) % live.len());
                        ops.push(BatchOp::Delete(codec::app_deployment_key(app, id)));
                        ops.push(BatchOp::Delete(codec::app_status_key(app, status, id)));
                        ops.push(BatchOp::Delete(codec::deployment_key(id)));
                        CountChange::Forgotten { app, id, status }
                    }
                };
                resolve(&store, vec![change], &mut ops).expect("resolve");
                engine.apply(ops).expect("apply");
            }
            assert_pages_match_the_plain_scan(&store, app);
            assert_every_apps_pages_match_the_plain_scan(&store, &[app]);
        }
    }

    fn sample(app: AppId, id: DeploymentId) -> crate::model::Deployment {
        crate::model::Deployment {
            id,
            app_id: app,
            created_at: time::OffsetDateTime::UNIX_EPOCH,
            status: Status::Queued,
            finished_at: None,
            git_ref: "main".into(),
            previous_git_ref: None,
            pusher: Pusher {
                id: UserId::from_bytes([1; 16]),
                username: "u".into(),
                email: "u@example.com".into(),
            },
            image_size: 0,
            image_kept: false,
            driver: Driver::External,
            last_line: crate::model::LineNo(0),
        }
    }

    #[test]
    fn a_group_moving_one_deployment_twice_counts_it_once_at_its_last_status() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Arc::new(MemoryEngine::default());
        let store = Store::new(engine.clone(), LogFiles::open(dir.path()).expect("logs"));
        let app = AppId::generate();
        let id = DeploymentId::generate();
        let mut ops = vec![
            put(codec::app_deployment_key(app, id), Vec::new()),
            put(codec::app_status_key(app, Status::Success, id), Vec::new()),
        ];
        let changes = vec![
            CountChange::Created {
                app,
                id,
                status: Status::Building,
            },
            CountChange::Moved {
                app,
                id,
                to: Status::Pushing,
            },
            CountChange::Moved {
                app,
                id,
                to: Status::Success,
            },
        ];
        resolve(&store, changes, &mut ops).expect("resolve");
        engine.apply(ops).expect("apply");
        let counts = store.app_counts(app).expect("counts");
        assert_eq!(counts.total(), 1);
        assert_eq!(counts.of(&[Status::Success]), 1);
        assert_eq!(
            counts::verify(&*engine).expect("verify"),
            Vec::<String>::new()
        );
    }
}
