//! Damaged log files: a file shorter than its index says (a lost write, a restored backup
//! missing its tail, a disk error). Found by startup recovery and by `deployd check`.
//!
//! The index is the truth about what was acknowledged; the file is where the text lives. When
//! the file ends before a segment the index points to, that segment and every later one are
//! lost. What is done about it is decided by the callers: recovery ends an unfinished
//! deployment with a line saying what was lost (its index is cut back to the intact part, so
//! the file can grow again), and records the damage of a finished one in a meta record
//! ([`damage_meta_name`]) without touching its output (nothing is stored after a terminal
//! status; `/output` is aborted where the damage starts).
//!
//! Reads only; never writes.

use crate::model::{DeploymentId, LineNo};
use crate::store::engine::prefix_end;
use crate::store::{codec, Store, StoreError};

/// What is lost of one deployment's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The file's length (0 when the file is missing).
    pub file_len: u64,
    /// Where the index says the text ends.
    pub index_end: u64,
    /// The end of the last segment wholly in the file.
    pub intact_end: u64,
    /// The last line of that segment (0: none).
    pub intact_last: LineNo,
    /// The lines lost: `lost.0..=lost.1`.
    pub lost: (LineNo, LineNo),
    /// The index keys of the lost segments.
    pub lost_keys: Vec<Vec<u8>>,
}

impl Damage {
    /// One sentence for people (the line ending an unfinished deployment, the meta record,
    /// `deployd check`).
    pub fn describe(&self) -> String {
        format!(
            "lines {}-{} of the output were lost: the log file is {} bytes but its index ends at {}",
            self.lost.0 .0, self.lost.1 .0, self.file_len, self.index_end
        )
    }
}

/// The meta record that holds the damage found in a finished deployment's log file.
pub fn damage_meta_name(id: DeploymentId) -> String {
    format!("damage/{id}")
}

/// The damage recorded for a finished deployment (its meta record, written by recovery or
/// `deployd check --repair`), as it stands now: `None` when none was recorded, or when the
/// file has since been made whole again. One engine read when there is none.
pub fn recorded(store: &Store, id: DeploymentId) -> Result<Option<Damage>, StoreError> {
    if store.meta(&damage_meta_name(id))?.is_none() {
        return Ok(None);
    }
    find(store, id)
}

/// The damage of one deployment's log file, if its file is shorter than its index.
pub fn find(store: &Store, id: DeploymentId) -> Result<Option<Damage>, StoreError> {
    let (last_line, index_end) = store.log_end(id)?;
    if index_end == 0 {
        return Ok(None);
    }
    let file_len = match std::fs::metadata(store.logs().path(id)) {
        Ok(meta) => meta.len(),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => 0,
        Err(err) => return Err(err.into()),
    };
    if file_len >= index_end {
        return Ok(None);
    }
    let prefix = codec::segments_prefix(id);
    let mut intact_end = 0;
    let mut intact_last = LineNo(0);
    let mut lost_from = None;
    let mut lost_keys = Vec::new();
    for entry in store.engine().range(&prefix, &prefix_end(&prefix), false) {
        let (key, value) = entry?;
        let first = codec::segment_first_line(&key)?;
        let segment = codec::decode_segment_ref(&value)?;
        if lost_from.is_none() && segment.end() <= file_len {
            intact_end = segment.end();
            intact_last = LineNo(first.0 + u64::from(segment.lines) - 1);
        } else {
            lost_from.get_or_insert(first);
            lost_keys.push(key);
        }
    }
    Ok(Some(Damage {
        file_len,
        index_end,
        intact_end,
        intact_last,
        lost: (lost_from.unwrap_or(intact_last.next()), last_line),
        lost_keys,
    }))
}
