//! The `file://` backend: a local directory through `object_store`'s
//! `LocalFileSystem`, with a `KEY.sha256` sidecar beside each object (the file
//! store cannot keep attributes). Only the prefix layout: the bucket is the
//! directory's name.

use std::io::Write;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMultipartOptions, WriteMultipart};

use super::parts::PartReader;
use super::{
    StoreBackend, StoreError, StoreLocation, StoredObject, UPLOAD_CHUNK_BYTES, UPLOAD_CONCURRENCY,
    Upload, io_err, os_err,
};

/// A store directory.
pub(super) struct FileBackend {
    dir: PathBuf,
    bucket: String,
    store: Arc<LocalFileSystem>,
}

impl std::fmt::Debug for FileBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackageStore")
            .field("file", &self.dir)
            .finish()
    }
}

impl FileBackend {
    /// The store in `dir` (created when missing).
    pub(super) fn open(dir: &FsPath, url: &str) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(io_err(format!("create store dir {}", dir.display())))?;
        let dir = dir
            .canonicalize()
            .map_err(io_err(format!("resolve store dir {}", dir.display())))?;
        let bucket = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "store".to_owned());
        let store = LocalFileSystem::new_with_prefix(&dir).map_err(os_err("open", url))?;
        Ok(Self {
            dir,
            bucket,
            store: Arc::new(store),
        })
    }

    fn sidecar(&self, key: &str) -> PathBuf {
        let mut p = self.dir.clone();
        for part in key.split('/') {
            p.push(part);
        }
        let mut name = p.into_os_string();
        name.push(".sha256");
        PathBuf::from(name)
    }
}

#[async_trait]
impl StoreBackend for FileBackend {
    fn bucket(&self) -> &str {
        &self.bucket
    }

    fn locate(&self, template: &str, bucket: &str, key: &str) -> Result<StoreLocation, StoreError> {
        if bucket != self.bucket {
            return Err(StoreError::Config(format!(
                "file:// stores support only the prefix layout ({{bucket}}/...), got {template:?}"
            )));
        }
        Ok(StoreLocation {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            url: format!("file://{}/{key}", self.dir.display()),
        })
    }

    async fn stored(&self, loc: &StoreLocation) -> Result<Option<StoredObject>, StoreError> {
        let size = match self.store.head(&Path::from(loc.key.as_str())).await {
            Ok(meta) => meta.size,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(os_err("head", &loc.url)(e)),
        };
        let sha256 = match tokio::fs::read_to_string(self.sidecar(&loc.key)).await {
            Ok(text) => Some(text.trim().to_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(format!("read sidecar of {}", loc.url))(e)),
        };
        Ok(Some(StoredObject {
            size,
            sha256,
            upstream_etag: None,
        }))
    }

    /// The sidecar is removed *before* the object changes and written
    /// (atomically) *after*, so it never vouches for bytes it does not describe.
    async fn put(&self, upload: Upload<'_>) -> Result<u64, StoreError> {
        let loc = upload.loc;
        let path = Path::from(loc.key.as_str());
        let side = self.sidecar(&loc.key);
        match tokio::fs::remove_file(&side).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(format!("remove sidecar of {}", loc.url))(e)),
        }
        let bytes = match link_into_place(&self.store, &path, upload.file).await {
            Ok(bytes) => {
                (upload.on_bytes)(bytes);
                bytes
            }
            Err(err) => {
                tracing::debug!(error = %err, url = %loc.url, "cannot link the package into the store; copying it");
                stream_upload(self.store.as_ref(), &path, &upload).await?
            }
        };
        write_atomic(&side, upload.sha256.as_bytes())
            .await
            .map_err(io_err(format!("write sidecar of {}", loc.url)))?;
        Ok(bytes)
    }

    async fn abort_abandoned_uploads(&self, _lablet: &str) -> Result<usize, StoreError> {
        // a local multipart write is a temp file, gone with its process
        Ok(0)
    }
}

/// Put `file` at `path` of a local store as a hard link: the downloaded temp file
/// already holds the bytes on the same file system, so copying them again would
/// only double the disk traffic. Atomic like the store's own writes (a link under
/// a temporary name in the target directory, then a rename); fails (and the caller
/// copies instead) e.g. across file systems. Returns the package size.
async fn link_into_place(
    store: &LocalFileSystem,
    path: &Path,
    file: &FsPath,
) -> std::io::Result<u64> {
    let dest = store
        .path_to_filesystem(path)
        .map_err(std::io::Error::other)?;
    let file = file.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let dir = dest
            .parent()
            .ok_or_else(|| std::io::Error::other("object path has no parent"))?;
        std::fs::create_dir_all(dir)?;
        let staged = tempfile::Builder::new()
            .prefix(".link-")
            .make_in(dir, |p| std::fs::hard_link(&file, p))?;
        let size = std::fs::metadata(staged.path())?.len();
        #[cfg(unix)]
        {
            // the temp download is private (0600); stored objects are not
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(staged.path(), std::fs::Permissions::from_mode(0o644))?;
        }
        staged.persist(&dest).map_err(|e| e.error)?;
        Ok(size)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Stream the upload's file into a multipart write of a local store; abort on
/// any failure.
async fn stream_upload(
    store: &dyn ObjectStore,
    path: &Path,
    upload: &Upload<'_>,
) -> Result<u64, StoreError> {
    let url = upload.loc.url.as_str();
    let mut reader = PartReader::open(upload.file)?;
    let multipart = store
        .put_multipart_opts(path, PutMultipartOptions::default())
        .await
        .map_err(os_err("upload", url))?;
    let mut writer = WriteMultipart::new_with_chunk_size(multipart, UPLOAD_CHUNK_BYTES);
    let mut total: u64 = 0;
    loop {
        let part = match reader.next().await {
            Ok(part) => part,
            Err(e) => {
                let _ = writer.abort().await;
                return Err(e);
            }
        };
        if part.is_empty() {
            break;
        }
        if let Err(e) = writer.wait_for_capacity(UPLOAD_CONCURRENCY).await {
            let _ = writer.abort().await;
            return Err(os_err("upload", url)(e));
        }
        total += part.len() as u64;
        writer.put(bytes::Bytes::from(part));
        (upload.on_bytes)(total);
    }
    writer.finish().await.map_err(os_err("upload", url))?;
    Ok(total)
}

/// Write `bytes` to `path` atomically: temp file in the same directory, fsync, rename.
async fn write_atomic(path: &FsPath, bytes: &[u8]) -> std::io::Result<()> {
    let path = path.to_path_buf();
    let bytes = bytes.to_vec();
    tokio::task::spawn_blocking(move || {
        let dir = path
            .parent()
            .map(FsPath::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        std::fs::create_dir_all(&dir)?;
        let mut tmp = tempfile::NamedTempFile::new_in(&dir)?;
        tmp.write_all(&bytes)?;
        tmp.as_file().sync_all()?;
        tmp.persist(&path).map_err(|e| e.error)?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })
    .await
    .map_err(std::io::Error::other)?
}

impl FileBackend {
    /// The store directory as an object store, for the shared state kept
    /// beside the packages (key claims).
    pub(super) fn object_store(&self) -> Arc<LocalFileSystem> {
        Arc::clone(&self.store)
    }
}
