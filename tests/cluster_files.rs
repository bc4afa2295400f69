//! Files in the object store (`cluster::files`) against a real 3-server nats-server cluster: the
//! leader's puts and deletes reach a follower's data directory through the mirror, a mirror
//! started late catches up, a build cache travels as a tree, big files are streamed, and names
//! outside the replicated directories never reach the disk.
//!
//! The leader's side is `ObjectFiles` (the hook `Store::files()` hands to the call sites) on one
//! server's connection; the follower's is a `Mirror` on another server's, each with its own data
//! directory. Skipped (with a message) when nats-server is missing, except under CI.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deployd::cluster::files::{self, Mirror, MirrorCounts, ObjectFiles, ReplicateFiles};
use deployd::testing::nats::NatsCluster;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

/// Counts the bytes this test process has allocated (now and at its peak), so that the big-file
/// test can tell a streamed copy from one that holds the file in memory.
struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// How long a mirrored change may take to show before the test gives up (not a timing
/// assertion: only a bound on waiting for something that must happen).
const WAIT: Duration = Duration::from_secs(60);

struct Setup {
    cluster: NatsCluster,
    leader_dir: tempfile::TempDir,
    follower_dir: tempfile::TempDir,
    leader: Arc<ObjectFiles>,
    mirror: Mirror,
}

/// A 3-server cluster, the bucket, the leader's hook on server 0 and a follower's mirror on
/// server 2 (not started).
async fn setup() -> Option<Setup> {
    let cluster = tokio::task::spawn_blocking(|| NatsCluster::start(3))
        .await
        .unwrap()?;
    let leader_js = async_nats::jetstream::new(async_nats::connect(cluster.url(0)).await.unwrap());
    let follower_js =
        async_nats::jetstream::new(async_nats::connect(cluster.url(2)).await.unwrap());
    let bucket = files::ensure_bucket(&leader_js, 3).await.unwrap();
    // The follower opens the same bucket (already there: ensure_bucket does not recreate it).
    files::ensure_bucket(&follower_js, 3).await.unwrap();
    let leader_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    let leader = Arc::new(ObjectFiles::new(bucket, leader_dir.path().to_path_buf()));
    let mirror = Mirror::open(&follower_js, follower_dir.path().to_path_buf())
        .await
        .unwrap();
    Some(Setup {
        cluster,
        leader_dir,
        follower_dir,
        leader,
        mirror,
    })
}

/// Starts the mirror in the background; stopped when the token is cancelled.
fn start_mirror(mirror: &Mirror) -> CancellationToken {
    let stop = CancellationToken::new();
    let mirror = mirror.clone();
    let token = stop.clone();
    tokio::spawn(async move { mirror.run(token).await });
    stop
}

/// The hook as the call sites use it: blocking, off the async executor.
async fn put(files: &Arc<ObjectFiles>, rel: &str) {
    let files = files.clone();
    let rel = rel.to_owned();
    tokio::task::spawn_blocking(move || files.put(&rel))
        .await
        .unwrap()
        .unwrap();
}

async fn delete(files: &Arc<ObjectFiles>, rel: &str) {
    let files = files.clone();
    let rel = rel.to_owned();
    tokio::task::spawn_blocking(move || files.delete(&rel))
        .await
        .unwrap()
        .unwrap();
}

fn write(dir: &Path, rel: &str, bytes: &[u8]) {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "still waiting: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn read(path: PathBuf) -> Option<Vec<u8>> {
    std::fs::read(path).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_put_by_the_leader_appears_in_a_followers_data_directory_and_a_delete_removes_it() {
    let Some(s) = setup().await else { return };
    let stop = start_mirror(&s.mirror);
    let id = uuid::Uuid::now_v7();
    let name = files::source_name(id);
    write(s.leader_dir.path(), &name, b"first archive");
    put(&s.leader, &name).await;
    let mirrored = s.follower_dir.path().join(&name);
    wait_until("the source on the follower", || {
        read(mirrored.clone()).as_deref() == Some(&b"first archive"[..])
    })
    .await;

    // A new version replaces the old one whole.
    write(s.leader_dir.path(), &name, b"second archive, longer");
    put(&s.leader, &name).await;
    wait_until("the new version on the follower", || {
        read(mirrored.clone()).as_deref() == Some(&b"second archive, longer"[..])
    })
    .await;

    std::fs::remove_file(s.leader_dir.path().join(&name)).unwrap();
    delete(&s.leader, &name).await;
    wait_until("the source gone from the follower", || !mirrored.exists()).await;
    // Deleting what is gone is not an error (a retried removal).
    delete(&s.leader, &name).await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_started_late_catches_up_and_drops_what_the_bucket_does_not_have() {
    let Some(s) = setup().await else { return };
    let image = files::image_name(deployd::model::DeploymentId(uuid::Uuid::now_v7()));
    let source = files::source_name(uuid::Uuid::now_v7());
    let gone = files::source_name(uuid::Uuid::now_v7());
    write(s.leader_dir.path(), &image, b"an image");
    write(s.leader_dir.path(), &source, b"a source");
    put(&s.leader, &image).await;
    put(&s.leader, &source).await;
    // The follower already has the image (unchanged), a stale copy of the source, and a file
    // that was removed while it was down.
    write(s.follower_dir.path(), &image, b"an image");
    write(s.follower_dir.path(), &source, b"an old source");
    write(s.follower_dir.path(), &gone, b"removed meanwhile");

    let counts = s.mirror.catch_up().await.unwrap();
    assert_eq!(
        counts,
        MirrorCounts {
            written: 1,
            unchanged: 1,
            removed: 1
        }
    );
    let dir = s.follower_dir.path();
    assert_eq!(read(dir.join(&image)).unwrap(), b"an image");
    assert_eq!(read(dir.join(&source)).unwrap(), b"a source");
    assert!(!dir.join(&gone).exists());
    // A second catch-up finds nothing to do.
    let again = s.mirror.catch_up().await.unwrap();
    assert_eq!((again.written, again.removed), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_cache_travels_as_a_tree_and_a_reset_empties_it_everywhere() {
    let Some(s) = setup().await else { return };
    let stop = start_mirror(&s.mirror);
    let cache = files::cache_name(deployd::model::AppId(uuid::Uuid::now_v7()));
    write(s.leader_dir.path(), &format!("{cache}/deps/a.bin"), b"aaa");
    write(
        s.leader_dir.path(),
        &format!("{cache}/deps/nested/b.bin"),
        b"bbb",
    );
    write(s.leader_dir.path(), &format!("{cache}/c.txt"), b"ccc");
    put(&s.leader, &cache).await;
    let follower = s.follower_dir.path().to_path_buf();
    wait_until("the cache tree on the follower", || {
        read(follower.join(&cache).join("deps/nested/b.bin")).as_deref() == Some(&b"bbb"[..])
            && read(follower.join(&cache).join("deps/a.bin")).as_deref() == Some(&b"aaa"[..])
            && read(follower.join(&cache).join("c.txt")).as_deref() == Some(&b"ccc"[..])
    })
    .await;

    // The next build removed a file and changed another: putting the tree again says so.
    std::fs::remove_file(s.leader_dir.path().join(&cache).join("deps/nested/b.bin")).unwrap();
    write(s.leader_dir.path(), &format!("{cache}/c.txt"), b"cccc");
    put(&s.leader, &cache).await;
    // The mirror removes the file, then its emptied directory: waiting for the file alone and
    // then asserting on the directory raced the second step (failed once in a local run at stop 24).
    wait_until("the cache's changes on the follower", || {
        !follower.join(&cache).join("deps/nested/b.bin").exists()
            && read(follower.join(&cache).join("c.txt")).as_deref() == Some(&b"cccc"[..])
    })
    .await;
    wait_until(
        "the directory left empty by the mirror gone with its last file",
        || !follower.join(&cache).join("deps/nested").exists(),
    )
    .await;
    assert!(
        follower.join(&cache).join("deps").is_dir(),
        "a directory that still holds a file stays"
    );

    // A reset (or the app's deletion) deletes the whole tree.
    delete(&s.leader, &cache).await;
    wait_until("the cache gone from the follower", || {
        !follower.join(&cache).join("c.txt").exists()
            && !follower.join(&cache).join("deps/a.bin").exists()
    })
    .await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_outside_the_replicated_directories_are_refused_and_never_written() {
    let Some(s) = setup().await else { return };
    for bad in [
        "store/db",
        "logs/x",
        "../escape",
        "images/../store/db",
        "images",
    ] {
        let files = s.leader.clone();
        let result = tokio::task::spawn_blocking(move || files.put(bad))
            .await
            .unwrap();
        assert!(
            matches!(result, Err(files::FilesError::BadName(_))),
            "{bad}: {result:?}"
        );
    }
    // An object another client put under such a name is ignored by the mirror.
    let js = async_nats::jetstream::new(async_nats::connect(s.cluster.url(1)).await.unwrap());
    let raw = js
        .get_object_store(deployd::cluster::FILES_BUCKET)
        .await
        .unwrap();
    raw.put("store/db", &mut &b"not ours"[..]).await.unwrap();
    raw.put("../outside", &mut &b"not ours"[..]).await.unwrap();
    let good = files::source_name(uuid::Uuid::now_v7());
    write(s.leader_dir.path(), &good, b"ok");
    put(&s.leader, &good).await;
    let counts = s.mirror.catch_up().await.unwrap();
    assert_eq!(counts.written, 1);
    assert!(!s.follower_dir.path().join("store").exists());
    assert!(!s
        .follower_dir
        .path()
        .parent()
        .unwrap()
        .join("outside")
        .exists());
    assert_eq!(read(s.follower_dir.path().join(&good)).unwrap(), b"ok");
}

/// Size of the big file: well above the object store's 128 KiB chunks and any buffer of ours.
const BIG_FILE_BYTES: usize = 50 * 1024 * 1024;
/// The most the process may allocate beyond what it had while the big file is put and
/// mirrored: a fifth of the file, so a copy that held it whole fails (a streamed one takes
/// well under 1 MiB; the rest is room for the other tests of this process).
const BIG_FILE_MEMORY_BOUND: usize = 10 * 1024 * 1024;

/// How much more the process allocated at its peak while `work` ran than before it.
async fn peak_growth_during(work: impl std::future::Future<Output = ()>) -> usize {
    let before = CURRENT.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    work.await;
    PEAK.load(Ordering::Relaxed).saturating_sub(before)
}

/// Writes `len` pseudo-random bytes (one reused buffer) and returns their SHA-256.
fn write_big_file(path: &Path, len: usize) -> Vec<u8> {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut hasher = Sha256::new();
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let mut block = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        for word in block.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes()[..word.len()]);
        }
        let n = left.min(block.len());
        file.write_all(&block[..n]).unwrap();
        hasher.update(&block[..n]);
        left -= n;
    }
    file.flush().unwrap();
    hasher.finalize().to_vec()
}

fn digest_of(path: &Path) -> Vec<u8> {
    let mut file = std::fs::File::open(path).unwrap();
    let mut hasher = Sha256::new();
    let mut block = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut block).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&block[..n]);
    }
    hasher.finalize().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_mib_image_arrives_intact_with_bounded_memory_on_both_sides() {
    let Some(s) = setup().await else { return };
    let name = files::image_name(deployd::model::DeploymentId(uuid::Uuid::now_v7()));
    let source = s.leader_dir.path().join(&name);
    let expected = write_big_file(&source, BIG_FILE_BYTES);

    let put_grew = peak_growth_during(put(&s.leader, &name)).await;
    let (counts, mirror_grew) = {
        let before = CURRENT.load(Ordering::Relaxed);
        PEAK.store(before, Ordering::Relaxed);
        let counts = s.mirror.catch_up().await.unwrap();
        (counts, PEAK.load(Ordering::Relaxed).saturating_sub(before))
    };

    assert_eq!(counts.written, 1);
    let copy = s.follower_dir.path().join(&name);
    assert_eq!(
        std::fs::metadata(&copy).unwrap().len(),
        BIG_FILE_BYTES as u64
    );
    assert_eq!(
        digest_of(&copy),
        expected,
        "the copy has the leader's bytes"
    );
    for (side, grew) in [("the put", put_grew), ("the mirror", mirror_grew)] {
        assert!(
            grew < BIG_FILE_MEMORY_BOUND,
            "{side} of a {BIG_FILE_BYTES}-byte file allocated {grew} bytes at its peak"
        );
    }
    eprintln!(
        "peak allocation growth for {BIG_FILE_BYTES} bytes: put {put_grew}, mirror {mirror_grew}"
    );
}

/// A JetStream consumer may be placed on a replica that has not applied the latest puts yet:
/// `ObjectStore::list` (an ordered consumer that ends when its replica reports nothing pending)
/// missed 1 of 30 objects in 2 of 20 listings through a server down during the puts, and a
/// mirror catching up from such a listing removed the files the bucket still had (the cold CI
/// run of stop 25: `removed: 3` where one was due). The listing now comes from the stream's
/// leader, and each absence is confirmed by a leader read before a file goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_catching_up_through_a_lagging_replica_removes_nothing_the_bucket_has() {
    let Some(mut s) = setup().await else { return };
    // A replica that is not the stream's leader (the puts go on with the other two) is down
    // during the puts, and behind when it is back.
    let leader_js =
        async_nats::jetstream::new(async_nats::connect(s.cluster.url(0)).await.unwrap());
    let mut stream = leader_js.get_stream("OBJ_deployd_files").await.unwrap();
    let leader = stream
        .info()
        .await
        .unwrap()
        .cluster
        .clone()
        .unwrap()
        .leader
        .unwrap();
    let lagging = (0..3).find(|i| format!("n{i}") != leader).unwrap();
    tokio::task::block_in_place(|| s.cluster.kill(lagging));
    let mut names = Vec::new();
    for i in 0..30 {
        let name = files::source_name(uuid::Uuid::now_v7());
        write(s.leader_dir.path(), &name, format!("source {i}").as_bytes());
        put(&s.leader, &name).await;
        names.push(name);
    }
    tokio::task::block_in_place(|| s.cluster.restart(lagging));
    let client = async_nats::connect(s.cluster.url(lagging)).await.unwrap();
    let info = client.server_info();
    let js = async_nats::jetstream::new(client);
    for round in 0..20 {
        // A follower that has every file: nothing to write, nothing to remove.
        let dir = tempfile::tempdir().unwrap();
        for (i, name) in names.iter().enumerate() {
            write(dir.path(), name, format!("source {i}").as_bytes());
        }
        let mirror = Mirror::open(&js, dir.path().to_path_buf()).await.unwrap();
        let counts = mirror.catch_up().await.unwrap();
        assert_eq!(
            counts,
            MirrorCounts {
                written: 0,
                unchanged: names.len(),
                removed: 0
            },
            "catch-up {round} through the server that was down ({} of {:?})",
            info.server_name,
            info.cluster
        );
    }
}
