//! The writer's failure paths, with faults injected at the engine and the log files: what
//! callers are told, what is stored, and what a restart recovers. A transient log-file failure
//! (`EMFILE`, `ENOSPC`, ...) makes the writer refuse writes until the store takes a durable
//! write again, then resume on its own; anything else latches it until a restart.

use tokio::sync::broadcast::error::TryRecvError;

use super::*;

fn unavailable_because(result: Result<impl std::fmt::Debug, WriteError>, why: &str) -> bool {
    matches!(&result, Err(WriteError::Unavailable(reason)) if reason.contains(why))
}

/// Every kind of write after a failed commit is refused with the first failure's reason, and
/// changes nothing.
async fn assert_latched(f: &Fixture, id: DeploymentId, why: &str) {
    let before = f.store.deployment(id).expect("read").expect("exists");
    assert!(unavailable_because(
        f.writer
            .append_logs(id, vec![NewLine::stdout("after")])
            .await,
        why
    ));
    assert!(unavailable_because(
        f.writer
            .transition(id, Target::Status(Status::Pushing), None)
            .await,
        why
    ));
    assert!(unavailable_because(
        f.writer.set_image_size(id, 9).await,
        why
    ));
    assert!(unavailable_because(
        f.writer
            .create_deployment(f.app, "r".into(), f.pusher(), Driver::External)
            .await,
        why
    ));
    assert!(unavailable_because(f.writer.delete_app(f.app).await, why));
    let after = f.store.deployment(id).expect("read").expect("exists");
    assert_eq!(
        (after.status, after.last_line),
        (before.status, before.last_line)
    );
}

#[tokio::test]
async fn a_failed_index_commit_is_reported_stores_nothing_and_refuses_every_later_write() {
    let engine = Arc::new(FaultyEngine::new(Arc::new(MemoryEngine::default())));
    let f = Fixture::with_engine(engine.clone()).await;
    let d = f.deploy(f.app, "r").await;
    f.writer
        .append_logs(d.id, vec![NewLine::stdout("kept")])
        .await
        .expect("append");
    let mut events = f.hub.subscribe(f.app);
    engine.apply.arm(1);
    let failed = f
        .writer
        .append_logs(d.id, vec![NewLine::stdout("lost")])
        .await;
    assert!(unavailable_because(failed, "injected apply failure"));
    assert_eq!(f.store.last_line(d.id).expect("read"), LineNo(1));
    assert_eq!(stored_text(&f.store, d.id), "kept\n");
    assert!(
        matches!(events.try_recv(), Err(TryRecvError::Empty)),
        "nothing is published before it is durable"
    );
    assert_latched(&f, d.id, "injected apply failure").await;
}

/// Waits (real time, no assertion on how long) until the writer reports `Ready`.
async fn until_ready(writer: &Writer) {
    for _ in 0..2000 {
        if writer.health() == Health::Ready {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    panic!("the writer never recovered: {:?}", writer.health());
}

/// Regression: one commit failing with `EMFILE` latched the writer ("refusing further writes")
/// for the life of the process.
#[tokio::test]
async fn one_failed_commit_with_emfile_or_enospc_no_longer_latches_the_writer_for_the_life_of_the_process(
) {
    for (fault, errno) in [
        ("open", libc::EMFILE),
        ("open", libc::ENFILE),
        ("write", libc::ENOSPC),
        ("write", libc::EINTR),
        ("fdatasync", libc::ENOSPC),
        ("fdatasync", libc::EAGAIN),
    ] {
        let f = Fixture::in_memory().await;
        let d = f.deploy(f.app, "r").await;
        if fault != "open" {
            f.writer
                .append_logs(d.id, vec![NewLine::stdout("kept")])
                .await
                .expect("append");
        }
        let kept = if fault == "open" { "" } else { "kept\n" };
        let kept_lines = u64::from(fault != "open");
        let mut events = f.hub.subscribe(f.app);
        let faults = &f.store.logs().faults;
        faults
            .errno
            .store(errno, std::sync::atomic::Ordering::SeqCst);
        let point = match fault {
            "open" => &faults.open,
            "write" => &faults.write,
            _ => &faults.sync,
        };
        point.fail_always();
        let failed = f
            .writer
            .append_logs(d.id, vec![NewLine::stdout("lost")])
            .await;
        assert!(unavailable_because(failed, "failing"), "{fault} {errno}");
        assert!(
            matches!(f.writer.health(), Health::Failing { .. }),
            "{fault} {errno}: {:?}",
            f.writer.health()
        );
        // While failing: writes are refused and change nothing, reads are served.
        let refused = f
            .writer
            .transition(d.id, Target::Status(Status::Pushing), None)
            .await;
        assert!(unavailable_because(refused, "failing"), "{fault} {errno}");
        let stored = f.store.deployment(d.id).expect("read").expect("exists");
        assert_eq!(
            (stored.status, stored.last_line),
            (Status::Building, LineNo(kept_lines)),
            "{fault} {errno}"
        );
        assert!(
            matches!(events.try_recv(), Err(TryRecvError::Empty)),
            "nothing unstored is published"
        );
        // The fault clears: the writer takes writes again by itself, numbering from what is
        // stored (the refused lines took no numbers).
        point.clear();
        until_ready(&f.writer).await;
        let last = f
            .writer
            .append_logs(d.id, vec![NewLine::stdout("after")])
            .await
            .expect("append after recovery");
        assert_eq!(last, LineNo(kept_lines + 1), "{fault} {errno}");
        assert_eq!(
            stored_text(&f.store, d.id),
            format!("{kept}after\n"),
            "{fault} {errno}"
        );
        let (_, log_end) = f.store.log_end(d.id).expect("read");
        assert_eq!(
            std::fs::metadata(f.store.logs().path(d.id))
                .expect("file")
                .len(),
            log_end,
            "{fault} {errno}: the failed group's unsynced tail was cut and rewritten, not kept"
        );
        f.writer
            .transition(d.id, Target::Status(Status::Pushing), None)
            .await
            .expect("the lifecycle still knows the deployment");
    }
}

#[tokio::test]
async fn a_failed_transition_group_is_rolled_back_in_memory_so_the_queue_does_not_move() {
    let f = Fixture::in_memory().await;
    let first = f.deploy(f.app, "1").await;
    let second = f.deploy(f.app, "2").await;
    assert_eq!(second.status, Status::Queued);
    // A note line makes the transition write a log file: the fault hits the group.
    let faults = &f.store.logs().faults;
    faults
        .errno
        .store(libc::ENOSPC, std::sync::atomic::Ordering::SeqCst);
    faults.write.arm(1);
    let failed = f
        .writer
        .transition(
            first.id,
            Target::Status(Status::BuildError),
            Some(NewLine::system("why")),
        )
        .await;
    assert!(unavailable_because(failed, "failing"));
    until_ready(&f.writer).await;
    assert_eq!(
        f.store
            .deployment(second.id)
            .expect("read")
            .expect("exists")
            .status,
        Status::Queued
    );
    assert!(
        matches!(
            f.writer
                .append_logs(second.id, vec![NewLine::stdout("x")])
                .await,
            Err(WriteError::Queued)
        ),
        "the second one was not promoted by the group that failed"
    );
    f.writer
        .append_logs(first.id, vec![NewLine::stdout("still running")])
        .await
        .expect("the first one still runs");
    let ended = f
        .writer
        .transition(first.id, Target::Status(Status::BuildError), None)
        .await
        .expect("end");
    assert_eq!(ended.status, Status::BuildError);
    assert_eq!(
        f.store
            .deployment(second.id)
            .expect("read")
            .expect("exists")
            .status,
        Status::Building
    );
}

#[tokio::test]
async fn a_failed_engine_sync_is_reported_unpublished_and_latches_the_writer() {
    let engine = Arc::new(FaultyEngine::new(Arc::new(MemoryEngine::default())));
    let f = Fixture::with_engine(engine.clone()).await;
    let d = f.deploy(f.app, "r").await;
    let mut events = f.hub.subscribe(f.app);
    let watch = f.hub.watch_status(d.id).expect("watch");
    engine.sync.arm(1);
    let failed = f
        .writer
        .transition(d.id, Target::Status(Status::Pushing), None)
        .await;
    assert!(unavailable_because(failed, "injected sync failure"));
    // The batch was applied but is not known durable: it is neither acknowledged nor
    // published, and what readers see of it is not promised either way.
    assert!(matches!(events.try_recv(), Err(TryRecvError::Empty)));
    assert_eq!(*watch.borrow(), Status::Building);
    assert!(unavailable_because(
        f.writer.append_logs(d.id, vec![NewLine::stdout("x")]).await,
        "injected sync failure"
    ));
    assert!(
        matches!(f.writer.health(), Health::Latched { reason } if reason.contains("injected sync failure")),
        "{:?}",
        f.writer.health()
    );
}

#[tokio::test]
async fn a_log_write_or_fdatasync_failing_with_no_transient_errno_commits_no_index_and_latches_the_writer(
) {
    for (fault, why) in [
        ("write", "injected log write failure"),
        ("fdatasync", "injected log fdatasync failure"),
    ] {
        let f = Fixture::in_memory().await;
        let d = f.deploy(f.app, "r").await;
        f.writer
            .append_logs(d.id, vec![NewLine::stdout("kept")])
            .await
            .expect("append");
        let faults = &f.store.logs().faults;
        match fault {
            "write" => faults.write.arm(1),
            _ => faults.sync.arm(1),
        }
        let failed = f
            .writer
            .append_logs(d.id, vec![NewLine::stdout("lost")])
            .await;
        assert!(unavailable_because(failed, why), "{fault}");
        assert_eq!(f.store.last_line(d.id).expect("read"), LineNo(1), "{fault}");
        assert_eq!(stored_text(&f.store, d.id), "kept\n", "{fault}");
        assert_latched(&f, d.id, why).await;
    }
}

#[tokio::test]
async fn a_crash_between_the_log_fdatasync_and_the_index_commit_leaves_a_tail_recovery_cuts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (d, indexed_len, torn_len) = {
        let (sled, logs) = on_disk(dir.path());
        let engine = Arc::new(FaultyEngine::new(sled));
        let f = Fixture::start(engine.clone(), logs).await;
        let d = f.deploy(f.app, "r").await;
        f.writer
            .append_logs(d.id, vec![NewLine::stdout("kept")])
            .await
            .expect("append");
        let path = f.store.logs().path(d.id);
        let indexed_len = std::fs::metadata(&path).expect("file").len();
        // The log text is written and synced, then the index commit fails: as if the process
        // died between the two.
        engine.apply.arm(1);
        let failed = f
            .writer
            .append_logs(d.id, vec![NewLine::stdout("torn")])
            .await;
        assert!(unavailable_because(failed, "injected apply failure"));
        let torn_len = std::fs::metadata(&path).expect("file").len();
        f.crash();
        (d.id, indexed_len, torn_len)
    };
    assert!(
        torn_len > indexed_len,
        "the unindexed text reached the file"
    );
    let (engine, logs) = on_disk(dir.path());
    let store = Store::new(engine, logs);
    let (_, recovery, _) =
        Writer::start(store.clone(), Arc::new(Hub::default())).expect("recovery");
    assert_eq!(recovery.ended, vec![(d, Status::Aborted)]);
    let text = stored_text(&store, d);
    assert!(
        text.starts_with("kept\n!     Deployment aborted: "),
        "{text}"
    );
    assert!(!text.contains("torn"), "{text}");
    let (last_line, log_end) = store.log_end(d).expect("read");
    assert_eq!(last_line, LineNo(2), "kept + the why line");
    assert_eq!(
        std::fs::metadata(store.logs().path(d)).expect("file").len(),
        log_end,
        "the torn tail was cut before the why line was appended"
    );
}

/// Regression: a log file shorter than its index made recovery fail, so `serve` exited 1.
#[tokio::test]
async fn an_unfinished_deployment_whose_log_file_is_shorter_than_its_index_no_longer_stops_the_start(
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (d, finished) = {
        let (engine, logs) = on_disk(dir.path());
        let f = Fixture::start(engine, logs).await;
        let finished = f.deploy(f.app, "old").await;
        f.writer
            .append_logs(
                finished.id,
                vec![NewLine::stdout("one"), NewLine::stdout("two")],
            )
            .await
            .expect("append");
        f.writer
            .transition(finished.id, Target::Status(Status::BuildError), None)
            .await
            .expect("end");
        let d = f.deploy(f.app, "r").await;
        f.writer
            .append_logs(d.id, vec![NewLine::stdout("kept")])
            .await
            .expect("append");
        // The disk acknowledges the write and the fdatasync, and loses the text: the index
        // commit then points past the end of the file.
        f.store.logs().faults.lose_write.arm(1);
        f.writer
            .append_logs(d.id, vec![NewLine::stdout("vanished")])
            .await
            .expect("acknowledged");
        f.crash();
        (d.id, finished.id)
    };
    // The finished deployment's file loses its tail too.
    let path = dir.path().join("logs").join(format!("{finished}.log"));
    let len = std::fs::metadata(&path).expect("file").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open")
        .set_len(len - 2)
        .expect("cut");
    let (engine, logs) = on_disk(dir.path());
    let store = Store::new(engine, logs);
    let (writer, recovery, _) =
        Writer::start(store.clone(), Arc::new(Hub::default())).expect("the start is not stopped");
    assert_eq!(recovery.ended, vec![(d, Status::Aborted)]);
    assert_eq!(recovery.damaged.len(), 2, "{:?}", recovery.damaged);
    let text = stored_text(&store, d);
    assert!(
        text.starts_with("kept\n!     Deployment aborted: "),
        "{text}"
    );
    assert!(text.contains("lines 2-2 of the output were lost"), "{text}");
    assert_eq!(
        store.last_line(d).expect("read"),
        LineNo(2),
        "kept + the why line"
    );
    // The finished one: nothing appended, the damage recorded.
    let old = store.deployment(finished).expect("read").expect("exists");
    assert_eq!((old.status, old.last_line), (Status::BuildError, LineNo(2)));
    let recorded = store
        .meta(&crate::store::damage::damage_meta_name(finished))
        .expect("read")
        .expect("the damage is recorded");
    assert!(
        String::from_utf8_lossy(&recorded).contains("lines 1-2 of the output were lost"),
        "{}",
        String::from_utf8_lossy(&recorded)
    );
    // The repaired deployment's file takes writes again from the intact end.
    drop(writer);
}
