//! The vendored sled (vendor/sled, DEPLOYD.md there): a flush hands its write to one of sled's
//! I/O threads and wakes that one only. sled 0.34.7 woke all seven waiting threads for every
//! job, six of them only to find the queue empty and sleep again: at a thousand one-line
//! commits per second that herd was a fifth of the server's CPU (README "Performance").
//!
//! A binary of its own: sled's thread pool is one per process, and any other test flushing at
//! the same time would add its own wake-ups to the count.

use std::fs;

/// Context switches so far of this process's threads named `sled-io-*`.
fn sled_io_switches() -> u64 {
    let mut total = 0;
    for task in fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let path = task.expect("task").path();
        let Ok(name) = fs::read_to_string(path.join("comm")) else {
            continue; // the thread ended meanwhile
        };
        if !name.starts_with("sled-io-") {
            continue;
        }
        let Ok(status) = fs::read_to_string(path.join("status")) else {
            continue;
        };
        for line in status.lines() {
            if let Some(n) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                total += n.trim().parse::<u64>().expect("a count");
            }
        }
    }
    total
}

#[test]
fn a_sled_flush_wakes_one_io_thread_not_all_seven() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = sled::open(dir.path().join("db")).expect("sled");
    // The pool starts with its first job; let every thread reach its wait.
    db.insert(b"warm", b"up").expect("insert");
    db.flush().expect("flush");
    std::thread::sleep(std::time::Duration::from_millis(300));

    const FLUSHES: u64 = 300;
    let before = sled_io_switches();
    for i in 0..FLUSHES {
        db.insert(i.to_be_bytes(), b"value").expect("insert");
        db.flush().expect("flush");
    }
    let switches = sled_io_switches() - before;
    eprintln!("{switches} context switches of sled's I/O threads for {FLUSHES} flushes");
    // A flush hands sled's pool one or two jobs; a woken thread switches about once per job
    // (its wait after it). Measured: about 2.5 per flush with one thread woken per job, 9.6
    // with the whole pool woken. Five leaves room for preemptions on a loaded machine.
    assert!(
        switches < 5 * FLUSHES,
        "{switches} context switches of sled's I/O threads for {FLUSHES} flushes: a flush woke the whole pool"
    );
}
