//! The image record (tag `0x0F`, key: deployment id): a deployment's kept image in
//! `DATA/images`, which makes it a rollback target once the deployment is `success`.
//!
//! Every deployment whose image is kept has its own file, `<deployment id>.tar.gz`; a
//! rollback's file is a hard link to its target's, so the file system counts the references
//! and deleting one deployment's file never takes another's. This module only encodes and
//! decodes; which images exist and when they go is `store::writer::images` and
//! `crate::images`.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{decode, encode, from_nanos, key, nanos, CodecError, TAG_IMAGE};
use crate::model::{AppId, DeploymentId};

/// A kept image, as the writer records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRecord {
    /// The deployment's app (image retention is per app).
    pub app: AppId,
    /// The file's name in the images directory (`<deployment id>.tar.gz`; no directories).
    pub file: String,
    /// The image's size in bytes.
    pub size: u64,
    /// When the record was written.
    pub created_at: OffsetDateTime,
    /// For a rollback: the deployment whose image this one's file links to. A rollback's
    /// record is written when it is created, before its file exists, so that its executor
    /// (after a restart too) knows to link instead of fetching and building.
    pub rollback_of: Option<DeploymentId>,
    /// The rollbacks created to this image whose file is not linked yet: while one of them is
    /// unfinished, this image is never pruned. Ended ones are dropped when they end (a stale
    /// entry naming a finished deployment protects nothing).
    pub references: Vec<DeploymentId>,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct StoredImage {
    app_id: [u8; 16],
    file: String,
    size: u64,
    created_at: i64,
    rollback_of: Option<[u8; 16]>,
    references: Vec<[u8; 16]>,
}

/// The key of a deployment's image record.
pub fn image_key(deployment: DeploymentId) -> Vec<u8> {
    key(TAG_IMAGE, &[deployment.as_bytes()])
}

/// The prefix of every image record (a scan: at most `keep_images` per app plus the pending).
pub fn images_prefix() -> Vec<u8> {
    vec![TAG_IMAGE]
}

pub fn encode_image(image: &ImageRecord) -> Vec<u8> {
    encode(&StoredImage {
        app_id: *image.app.as_bytes(),
        file: image.file.clone(),
        size: image.size,
        created_at: nanos(image.created_at),
        rollback_of: image.rollback_of.map(|id| *id.as_bytes()),
        references: image.references.iter().map(|id| *id.as_bytes()).collect(),
    })
}

pub fn decode_image(bytes: &[u8]) -> Result<ImageRecord, CodecError> {
    let s: StoredImage = decode(bytes)?;
    if s.file.is_empty() || s.file.contains('/') || s.file.starts_with('.') {
        return Err(CodecError::Corrupt("image file name"));
    }
    Ok(ImageRecord {
        app: AppId::from_bytes(s.app_id),
        file: s.file,
        size: s.size,
        created_at: from_nanos(s.created_at)?,
        rollback_of: s.rollback_of.map(DeploymentId::from_bytes),
        references: s
            .references
            .into_iter()
            .map(DeploymentId::from_bytes)
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ImageRecord {
        ImageRecord {
            app: AppId::from_bytes([7; 16]),
            file: format!("{}.tar.gz", DeploymentId::from_bytes([9; 16])),
            size: 12_345,
            created_at: OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("time"),
            rollback_of: Some(DeploymentId::from_bytes([3; 16])),
            references: vec![
                DeploymentId::from_bytes([4; 16]),
                DeploymentId::from_bytes([5; 16]),
            ],
        }
    }

    #[test]
    fn an_image_record_reads_back_as_written() {
        let image = sample();
        assert_eq!(decode_image(&encode_image(&image)).expect("decode"), image);
        let plain = ImageRecord {
            rollback_of: None,
            references: Vec::new(),
            ..sample()
        };
        assert_eq!(decode_image(&encode_image(&plain)).expect("decode"), plain);
    }

    #[test]
    fn an_image_record_starts_with_the_format_byte_and_its_key_with_the_reserved_tag() {
        let bytes = encode_image(&sample());
        assert_eq!(bytes[0], super::super::FORMAT_V1);
        let id = DeploymentId::from_bytes([9; 16]);
        let key = image_key(id);
        assert_eq!(key[0], 0x0F);
        assert_eq!(&key[1..], id.as_bytes());
    }

    #[test]
    fn an_image_record_naming_a_path_outside_the_images_directory_is_corrupt() {
        for file in ["../etc/passwd", "a/b.tar.gz", "", ".hidden"] {
            let image = ImageRecord {
                file: file.to_owned(),
                ..sample()
            };
            assert!(
                decode_image(&encode_image(&image)).is_err(),
                "{file:?} accepted"
            );
        }
    }

    #[test]
    fn a_truncated_or_unknown_image_record_is_an_error() {
        let bytes = encode_image(&sample());
        assert!(decode_image(&bytes[..bytes.len() - 3]).is_err());
        let mut other = bytes.clone();
        other[0] = 9;
        assert!(matches!(
            decode_image(&other),
            Err(CodecError::UnknownFormat(9))
        ));
        assert!(matches!(decode_image(&[]), Err(CodecError::Empty)));
    }
}
