//! `deployd check [--repair] --data DIR`: an offline check of a data directory (the server must
//! not be running: sled's lock says so). Unlike the other subcommands it opens the store
//! itself, read-only unless `--repair` is given, and never starts the writer.
//!
//! It verifies every record (each value decodes for its key's tag), every segment index entry
//! (line numbers and file offsets follow each other) and every log file (no shorter than its
//! index, every indexed segment parses and holds the lines its entry says), and reports each
//! problem on stdout, one line each. `--repair` fixes what can be fixed without guessing:
//!
//! - a torn tail (bytes past the index, never acknowledged) is cut off;
//! - a log file without a deployment record, and index entries of a missing deployment, are
//!   removed;
//! - the damage of a finished deployment's file shorter than its index is recorded (as
//!   `serve` does at startup); an unfinished one is left for `serve`, which ends it with a line
//!   saying what was lost;
//! - deployment counts (`store::counts`) out of step with the status index are rebuilt from it.
//! - a pending cancel (`0x0E`) of a deployment that is not unfinished (the commit that ends a
//!   deployment deletes its request) is removed.
//!
//! Records that do not decode, and segments that do not parse, are reported and left alone.
//!
//! # Exit codes
//!
//! | code | meaning |
//! |---|---|
//! | 0 | no problem found (or, with `--repair`, every problem found was repaired) |
//! | 1 | problems remain (printed) |
//! | 2 | the check could not run: no such directory, or the store is locked (a server runs) |

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use crate::model::{DeploymentId, LineNo};
use crate::store::engine::{prefix_end, BatchOp, SledEngine};
use crate::store::logs::{LogFiles, PROBE_FILE};
use crate::store::{codec, damage, Segment, Store};

/// `deployd check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Data directory to check (the server must be stopped).
    #[arg(long = "data", env = "DEPLOYD_DATA")]
    pub data_dir: PathBuf,
    /// Repair what can be repaired (see `deployd check --help`).
    #[arg(long)]
    pub repair: bool,
}

/// One problem found, and whether it was repaired.
struct Finding {
    text: String,
    repaired: bool,
}

/// Runs the check; returns the exit code.
pub fn run_check(args: CheckArgs) -> i32 {
    if !args.data_dir.is_dir() {
        eprintln!(
            "deployd check: {} is not a directory",
            args.data_dir.display()
        );
        return 2;
    }
    let engine = match SledEngine::open(&args.data_dir.join("store")) {
        Ok(engine) => Arc::new(engine),
        Err(err) => {
            eprintln!(
                "deployd check: cannot open the store (is a deployd server running on this \
                 data directory?): {err}"
            );
            return 2;
        }
    };
    let logs = match LogFiles::open(&args.data_dir.join("logs")) {
        Ok(logs) => logs,
        Err(err) => {
            eprintln!("deployd check: cannot open the log directory: {err}");
            return 2;
        }
    };
    let store = Store::new(engine, logs);
    let findings = match check(&store, args.repair) {
        Ok(findings) => findings,
        Err(err) => {
            eprintln!("deployd check: reading the store failed: {err}");
            return 2;
        }
    };
    let remaining = findings.iter().filter(|f| !f.repaired).count();
    for finding in &findings {
        let mark = if finding.repaired {
            "repaired"
        } else {
            "problem"
        };
        println!("{mark}: {}", finding.text);
    }
    println!(
        "deployd check: {} problem(s) found, {} repaired, {remaining} remaining",
        findings.len(),
        findings.len() - remaining
    );
    i32::from(remaining > 0)
}

fn check(store: &Store, repair: bool) -> Result<Vec<Finding>, crate::store::StoreError> {
    let mut findings = Vec::new();
    let engine = store.engine().clone();
    let mut deployments = HashSet::new();
    let mut unfinished = HashSet::new();
    let mut indexed = HashSet::new();
    let mut cancels = Vec::new();
    // Every record decodes for its tag.
    for entry in engine.range(&[], &[0xFF], false) {
        let (key, value) = entry?;
        let Some(&tag) = key.first() else {
            findings.push(problem("an empty key".into()));
            continue;
        };
        let decoded: Result<(), codec::CodecError> = match tag {
            codec::TAG_USER => codec::decode_user(&value).map(drop),
            codec::TAG_USERNAME | codec::TAG_EMAIL | codec::TAG_APP_NAME => {
                codec::id_value(&value).map(drop)
            }
            codec::TAG_TOKEN => codec::decode_token(&value).map(drop),
            codec::TAG_APP => codec::decode_app(&value).map(drop),
            codec::TAG_COLLABORATOR => codec::decode_collaborator(&value).map(drop),
            codec::TAG_DEPLOYMENT => codec::decode_deployment(&value).map(|d| {
                deployments.insert(d.id);
                if !d.status.is_terminal() {
                    unfinished.insert(d.id);
                }
            }),
            codec::TAG_SEGMENT => codec::decode_segment_ref(&value).and_then(|_| {
                let id = DeploymentId::from_bytes(segment_owner(&key)?);
                indexed.insert(id);
                Ok(())
            }),
            codec::TAG_SOURCE => codec::decode_source(&value).map(drop),
            codec::TAG_CANCEL_REQUEST => codec::decode_cancel_request(&value).and_then(|_| {
                cancels.push((
                    DeploymentId::from_bytes(codec::trailing_id(&key)?),
                    key.clone(),
                ));
                Ok(())
            }),
            // Meta values are free-form; the other tags belong to features that check their own.
            _ => Ok(()),
        };
        if let Err(err) = decoded {
            findings.push(problem(format!(
                "record with key {} (tag {tag:#04x}) does not decode: {err}",
                hex::encode(&key)
            )));
        }
    }
    let mut deletes = Vec::new();
    // A pending cancel is deleted by the commit that ends its deployment.
    for (id, key) in cancels {
        if !unfinished.contains(&id) {
            deletes.push(BatchOp::Delete(key));
            findings.push(Finding {
                text: format!("a pending cancel of deployment {id}, which is not unfinished"),
                repaired: repair,
            });
        }
    }
    for id in &indexed {
        if !deployments.contains(id) {
            let prefix = codec::segments_prefix(*id);
            for entry in engine.range(&prefix, &prefix_end(&prefix), false) {
                deletes.push(BatchOp::Delete(entry?.0));
            }
            findings.push(Finding {
                text: format!("segment index entries of deployment {id}, which does not exist"),
                repaired: repair,
            });
        }
    }
    for id in &deployments {
        check_log(store, *id, unfinished.contains(id), repair, &mut findings)?;
    }
    // Log files nobody owns.
    if let Ok(entries) = std::fs::read_dir(store.logs().dir()) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let owner = name
                .strip_suffix(".log")
                .and_then(|id| id.parse::<DeploymentId>().ok());
            let orphan = match owner {
                Some(id) => !deployments.contains(&id),
                None => name == PROBE_FILE,
            };
            if orphan {
                let removed = repair && std::fs::remove_file(entry.path()).is_ok();
                findings.push(Finding {
                    text: format!("log file {name} belongs to no deployment"),
                    repaired: removed,
                });
            }
        }
    }
    if repair && !deletes.is_empty() {
        engine.apply(deletes)?;
        engine.sync()?;
    }
    // The deployment counts against the status index; a repair rebuilds them from it.
    let out_of_step = crate::store::counts::verify(&*engine)?;
    if repair && !out_of_step.is_empty() {
        crate::store::counts::rebuild(&*engine)?;
    }
    findings.extend(out_of_step.into_iter().map(|text| Finding {
        text,
        repaired: repair,
    }));
    Ok(findings)
}

/// Checks one deployment's index entries against its log file.
fn check_log(
    store: &Store,
    id: DeploymentId,
    unfinished: bool,
    repair: bool,
    findings: &mut Vec<Finding>,
) -> Result<(), crate::store::StoreError> {
    if let Some(damage) = damage::find(store, id)? {
        let text = format!("deployment {id}: {}", damage.describe());
        if unfinished {
            findings.push(problem(format!(
                "{text} (unfinished: `deployd serve` ends it with a line saying so)"
            )));
        } else {
            let name = damage::damage_meta_name(id);
            let recorded = store.meta(&name)?.is_some();
            if repair && !recorded {
                store.engine().apply(vec![BatchOp::Put(
                    codec::meta_key(&name),
                    damage.describe().into_bytes().into(),
                )])?;
                store.engine().sync()?;
            }
            findings.push(Finding {
                text: format!("{text} (finished: recorded, /output is aborted there)"),
                repaired: repair || recorded,
            });
        }
        return Ok(());
    }
    let prefix = codec::segments_prefix(id);
    let mut expected_line = LineNo(1);
    let mut expected_offset = 0;
    let mut file = None;
    for entry in store.engine().range(&prefix, &prefix_end(&prefix), false) {
        let (key, value) = entry?;
        let first = codec::segment_first_line(&key)?;
        let segment = codec::decode_segment_ref(&value)?;
        if first != expected_line || segment.offset != expected_offset {
            findings.push(problem(format!(
                "deployment {id}: the segment at line {} (offset {}) does not follow line {} \
                 (offset {expected_offset})",
                first.0,
                segment.offset,
                expected_line.0.saturating_sub(1)
            )));
        }
        let file = match &mut file {
            Some(file) => file,
            slot => slot.insert(store.logs().open_for_read(id)?),
        };
        let bytes = LogFiles::read_at(file, segment.offset, segment.len as usize)?;
        let stored = Segment::from_stored(bytes);
        match stored.view() {
            Ok(view) if view.line_count() == segment.lines as usize => {}
            Ok(view) => findings.push(problem(format!(
                "deployment {id}: the segment at line {} holds {} lines, its index says {}",
                first.0,
                view.line_count(),
                segment.lines
            ))),
            Err(err) => findings.push(problem(format!(
                "deployment {id}: the segment at line {} does not parse: {err}",
                first.0
            ))),
        }
        expected_line = LineNo(first.0 + u64::from(segment.lines));
        expected_offset = segment.end();
    }
    let path = store.logs().path(id);
    if let Ok(meta) = std::fs::metadata(&path) {
        if meta.len() > expected_offset {
            let cut = repair
                && std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_len(expected_offset).and_then(|()| f.sync_all()))
                    .is_ok();
            findings.push(Finding {
                text: format!(
                    "deployment {id}: a torn tail of {} bytes past the index (never acknowledged)",
                    meta.len() - expected_offset
                ),
                repaired: cut,
            });
        }
    }
    Ok(())
}

fn problem(text: String) -> Finding {
    Finding {
        text,
        repaired: false,
    }
}

/// The deployment id in a segment index key (tag, id, first line).
fn segment_owner(key: &[u8]) -> Result<[u8; 16], codec::CodecError> {
    key.get(1..17)
        .and_then(|id| id.try_into().ok())
        .ok_or(codec::CodecError::Corrupt("segment key length"))
}
