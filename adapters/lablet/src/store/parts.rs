//! [`PartReader`]: the package file read one upload part at a time, the only
//! buffer an upload holds per part.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::{StoreError, UPLOAD_CHUNK_BYTES, io_err};

/// Reads a file one upload part at a time, each part straight into its own
/// buffer (one blocking-pool hop per part), so it is handed on without another
/// copy.
pub(super) struct PartReader {
    file: Option<std::fs::File>,
    path: PathBuf,
}

impl PartReader {
    pub(super) fn open(path: &Path) -> Result<Self, StoreError> {
        let file = std::fs::File::open(path).map_err(io_err(format!("open {}", path.display())))?;
        Ok(Self {
            file: Some(file),
            path: path.to_path_buf(),
        })
    }

    /// The next part; empty at the end of the file.
    pub(super) async fn next(&mut self) -> Result<Vec<u8>, StoreError> {
        let read = match self.file.take() {
            Some(f) => tokio::task::spawn_blocking(move || {
                let mut part = Vec::with_capacity(UPLOAD_CHUNK_BYTES);
                let n = (&f).take(UPLOAD_CHUNK_BYTES as u64).read_to_end(&mut part);
                n.map(|_| (f, part))
            })
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r),
            None => Err(std::io::Error::other("upload source lost")),
        };
        let (file, part) = read.map_err(io_err(format!("read {}", self.path.display())))?;
        self.file = Some(file);
        Ok(part)
    }
}
