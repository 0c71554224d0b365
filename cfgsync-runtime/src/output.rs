//! [`ArtifactOutputMap`]: where artifact paths land locally, and the atomic,
//! all-or-nothing write of a payload.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use cfgsync_artifacts::{ArtifactFile, ArtifactSet};
use tempfile::NamedTempFile;

use crate::{Error, Result};

/// Where the files of a payload go on the local disk.
///
/// A file whose artifact path has a [route](Self::route) goes to the routed local
/// path (chosen by the operator, so it may be anywhere); every other file goes
/// under the output [root](Self::with_root) (default `/`): `/etc/app.yaml` and
/// `etc/app.yaml` both land at `<root>/etc/app.yaml`.
///
/// [`write_files`](Self::write_files) checks **every** file before writing any: an
/// artifact path that is empty, holds a NUL byte, names a directory, has a `..`
/// component, or would land outside the root (also through a symlinked directory
/// inside the root) is refused, and then nothing of the payload is written. Each
/// file is written atomically: a temp file in the target's directory, written,
/// given its mode, fsynced, renamed onto the target, then the directory fsynced.
/// A reader sees the old file or the new one, never a part. A writer killed
/// mid-write can leave a `.cfgsync-*.tmp` beside the target (never at it); a
/// later write into that directory removes such files once they are 15
/// minutes old.
///
/// File modes are masked: a `mode` from the server never sets setuid, setgid
/// or sticky, and loses group and world write unless
/// [`allow_group_world_write`](Self::allow_group_world_write) is on (so `0o7777`
/// is written as `0o755`). A file written without a mode keeps the mode of the
/// file it replaces, less setuid, setgid and sticky.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactOutputMap {
    root: PathBuf,
    routes: BTreeMap<String, PathBuf>,
    allow_group_world_write: bool,
}

/// Mode bits a file written by the client may never have: setuid, setgid, sticky.
pub const FORBIDDEN_MODE_BITS: u32 = 0o7000;
/// Mode bits stripped unless group/world write is allowed.
pub const GROUP_WORLD_WRITE_BITS: u32 = 0o022;

/// One file [`ArtifactOutputMap::write_files`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WrittenFile {
    /// The artifact path as the server sent it.
    pub artifact: String,
    /// Where it was written.
    pub path: PathBuf,
    /// How many bytes were written.
    pub bytes: u64,
}

impl Default for ArtifactOutputMap {
    fn default() -> Self {
        Self::new()
    }
}

/// A file that passed every check, ready to be written.
struct PlannedWrite<'a> {
    artifact: &'a str,
    target: PathBuf,
    bytes: Cow<'a, [u8]>,
    mode: Option<u32>,
}

impl ArtifactOutputMap {
    /// No routes, output root `/`: absolute artifact paths land where they say.
    pub fn new() -> Self {
        Self {
            root: PathBuf::from("/"),
            routes: BTreeMap::new(),
            allow_group_world_write: false,
        }
    }

    /// Keeps group and world write bits of the modes the server sends (off by
    /// default: they are stripped). Setuid, setgid and sticky are always stripped.
    #[must_use]
    pub fn allow_group_world_write(mut self, allow: bool) -> Self {
        self.allow_group_world_write = allow;
        self
    }

    /// The mode a file gets when the server (or the replaced file) asks for `mode`.
    pub fn masked_mode(&self, mode: u32) -> u32 {
        let mut mask = 0o777;
        if !self.allow_group_world_write {
            mask &= !GROUP_WORLD_WRITE_BITS;
        }
        mode & mask & !FORBIDDEN_MODE_BITS
    }

    /// Sets the directory unrouted files are written under.
    #[must_use]
    pub fn with_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.root = root.into();
        self
    }

    /// Writes the artifact at exactly `artifact_path` (e.g. `/config.yaml`; the
    /// leading `/` matters) to `local_path` instead of under the root.
    #[must_use]
    pub fn route(
        mut self,
        artifact_path: impl Into<String>,
        local_path: impl Into<PathBuf>,
    ) -> Self {
        self.routes.insert(artifact_path.into(), local_path.into());
        self
    }

    /// The output root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The routes, by artifact path.
    pub fn routes(&self) -> impl Iterator<Item = (&str, &Path)> {
        self.routes.iter().map(|(k, v)| (k.as_str(), v.as_path()))
    }

    /// Where the artifact at `artifact_path` would be written, after the same
    /// checks [`write_files`](Self::write_files) makes.
    pub fn local_path(&self, artifact_path: &str) -> Result<PathBuf> {
        let (root, real_root) = self.resolved_root()?;
        self.target_of(artifact_path, &root, &real_root)
    }

    /// The root made absolute, and with symlinks resolved.
    fn resolved_root(&self) -> Result<(PathBuf, PathBuf)> {
        let io_error = |source| Error::OutputRoot {
            path: self.root.clone(),
            source,
        };
        let root = std::path::absolute(&self.root).map_err(io_error)?;
        let real_root = resolve_existing(&root).map_err(io_error)?;
        Ok((root, real_root))
    }

    /// Writes every file of `files`, after checking all of them (see the type's
    /// docs). Returns what was written, in payload order.
    ///
    /// Blocking file I/O: from async code, call it in
    /// [`tokio::task::spawn_blocking`].
    pub fn write_files(&self, files: &ArtifactSet) -> Result<Vec<WrittenFile>> {
        let plan = self.plan(files.iter())?;
        write_plan(plan)
    }

    fn plan<'a>(
        &self,
        files: impl Iterator<Item = &'a ArtifactFile>,
    ) -> Result<Vec<PlannedWrite<'a>>> {
        let (root, real_root) = self.resolved_root()?;
        files
            .map(|file| {
                let target = self.target_of(&file.path, &root, &real_root)?;
                let bytes = file.bytes().map_err(|source| Error::Content { source })?;
                let mode = file.mode.map(|asked| {
                    let mode = self.masked_mode(asked);
                    if mode != asked {
                        tracing::warn!(
                            artifact = %file.path,
                            asked = format_args!("{asked:#o}"),
                            written = format_args!("{mode:#o}"),
                            "mode masked: setuid/setgid/sticky and group/world write are not applied"
                        );
                    }
                    mode
                });
                Ok(PlannedWrite {
                    artifact: &file.path,
                    target,
                    bytes,
                    mode,
                })
            })
            .collect()
    }

    fn target_of(&self, artifact: &str, root: &Path, real_root: &Path) -> Result<PathBuf> {
        let refuse = |reason: String| Error::UnsafePath {
            path: artifact.to_owned(),
            reason,
        };
        check_artifact_path(artifact).map_err(|r| refuse(r.to_owned()))?;
        let target = match self.routes.get(artifact) {
            Some(local) => std::path::absolute(local)
                .map_err(|e| refuse(format!("its route {} is unusable: {e}", local.display())))?,
            None => {
                let target = root.join(artifact.trim_start_matches('/'));
                let parent = target.parent().unwrap_or(root);
                let real_parent = resolve_existing(parent)
                    .map_err(|e| refuse(format!("cannot resolve {}: {e}", parent.display())))?;
                if !real_parent.starts_with(real_root) {
                    return Err(refuse(format!(
                        "it would land outside the output root {} (at {})",
                        real_root.display(),
                        real_parent.display()
                    )));
                }
                target
            }
        };
        check_target(&target).map_err(refuse)?;
        Ok(target)
    }
}

/// Checks the artifact path itself: not empty, no NUL, not a directory, no `..`.
fn check_artifact_path(path: &str) -> std::result::Result<(), &'static str> {
    if path.trim_start_matches('/').is_empty() {
        return Err("the path is empty");
    }
    if path.contains('\0') {
        return Err("the path contains a NUL byte");
    }
    if path.ends_with('/') || path.rsplit('/').next() == Some(".") {
        return Err("the path names a directory, not a file");
    }
    if path.split('/').any(|c| c == "..") {
        return Err("the path has a `..` component");
    }
    Ok(())
}

/// Checks the local target: it is not a directory, and its nearest existing
/// ancestor is a directory (so the parent can be created). A target that is a
/// symlink is fine: the rename replaces the link, it does not write through it.
fn check_target(target: &Path) -> std::result::Result<(), String> {
    if fs::metadata(target).is_ok_and(|m| m.is_dir()) {
        return Err(format!("{} is a directory", target.display()));
    }
    let parent = target.parent().unwrap_or(target);
    if let Some(existing) = parent.ancestors().find(|a| fs::symlink_metadata(a).is_ok()) {
        match fs::metadata(existing) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(format!(
                    "{} is not a directory, so {} cannot be created",
                    existing.display(),
                    parent.display()
                ));
            }
            Err(e) => return Err(format!("cannot resolve {}: {e}", existing.display())),
        }
    }
    Ok(())
}

/// `path` with its deepest existing ancestor canonicalized (symlinks resolved) and
/// the not-yet-existing rest appended.
fn resolve_existing(path: &Path) -> io::Result<PathBuf> {
    for ancestor in path.ancestors() {
        match fs::symlink_metadata(ancestor) {
            Ok(_) => {
                let real = fs::canonicalize(ancestor)?;
                let rest = path.strip_prefix(ancestor).unwrap_or(Path::new(""));
                return Ok(if rest.as_os_str().is_empty() {
                    real
                } else {
                    real.join(rest)
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(path.to_path_buf())
}

/// Stages every file as a synced temp file next to its target, then renames them
/// all into place and syncs the directories: an I/O failure while staging
/// (disk full, permission) leaves no target changed.
fn write_plan(plan: Vec<PlannedWrite<'_>>) -> Result<Vec<WrittenFile>> {
    let mut staged = Vec::with_capacity(plan.len());
    for planned in plan {
        let temp = stage(&planned)?;
        staged.push((planned, temp));
    }
    let mut dirs = BTreeMap::new();
    let mut written = Vec::with_capacity(staged.len());
    for (planned, temp) in staged {
        temp.persist(&planned.target).map_err(|e| Error::Io {
            artifact: planned.artifact.to_owned(),
            path: planned.target.clone(),
            action: "rename the temp file onto",
            source: e.error,
        })?;
        if let Some(dir) = planned.target.parent() {
            dirs.entry(dir.to_path_buf()).or_insert(planned.artifact);
        }
        tracing::debug!(artifact = planned.artifact, path = %planned.target.display(), "wrote");
        written.push(WrittenFile {
            artifact: planned.artifact.to_owned(),
            path: planned.target,
            bytes: planned.bytes.len() as u64,
        });
    }
    for (dir, artifact) in dirs {
        sync_dir(&dir).map_err(|source| Error::Io {
            artifact: artifact.to_owned(),
            path: dir.clone(),
            action: "fsync directory",
            source,
        })?;
        remove_abandoned_temps(&dir);
    }
    Ok(written)
}

/// Temp files untouched for this long belong to a writer that was killed
/// mid-write (a live one finishes within moments).
const ABANDONED_TEMP_AGE: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// Best effort: removes our temp files in `dir` that a killed writer left
/// behind, so repeated crashes do not pile them up beside the targets.
fn remove_abandoned_temps(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with(TEMP_PREFIX) && name.ends_with(TEMP_SUFFIX)) {
            continue;
        }
        let abandoned = entry
            .metadata()
            .ok()
            .filter(fs::Metadata::is_file)
            .and_then(|m| m.modified().ok())
            .and_then(|modified| modified.elapsed().ok())
            .is_some_and(|age| age >= ABANDONED_TEMP_AGE);
        if abandoned {
            match fs::remove_file(entry.path()) {
                Ok(()) => {
                    tracing::info!(path = %entry.path().display(), "removed an abandoned temp file")
                }
                Err(e) => {
                    tracing::debug!(path = %entry.path().display(), error = %e, "cannot remove an abandoned temp file")
                }
            }
        }
    }
}

fn stage(planned: &PlannedWrite<'_>) -> Result<NamedTempFile> {
    let io_error = |action: &'static str, path: &Path| {
        let artifact = planned.artifact.to_owned();
        let path = path.to_path_buf();
        move |source: io::Error| Error::Io {
            artifact,
            path,
            action,
            source,
        }
    };
    let dir = planned.target.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(dir).map_err(io_error("create directory", dir))?;
    // Without an explicit mode: keep the mode of the file being replaced, or
    // create it as any new file (0o666 less the umask).
    let mode = planned
        .mode
        .or_else(|| existing_mode(&planned.target).map(|mode| mode & !FORBIDDEN_MODE_BITS));
    let mut temp = temp_builder(planned.mode.is_none())
        .tempfile_in(dir)
        .map_err(io_error("create a temp file in", dir))?;
    temp.write_all(&planned.bytes)
        .map_err(io_error("write a temp file for", &planned.target))?;
    if let Some(mode) = mode {
        set_mode(temp.as_file(), mode)
            .map_err(io_error("set the mode of a temp file for", &planned.target))?;
    }
    temp.as_file()
        .sync_all()
        .map_err(io_error("fsync a temp file for", &planned.target))?;
    Ok(temp)
}

const TEMP_PREFIX: &str = ".cfgsync-";
const TEMP_SUFFIX: &str = ".tmp";

fn temp_builder(default_permissions: bool) -> tempfile::Builder<'static, 'static> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(TEMP_PREFIX).suffix(TEMP_SUFFIX);
    #[cfg(unix)]
    if default_permissions {
        use std::os::unix::fs::PermissionsExt as _;
        builder.permissions(fs::Permissions::from_mode(0o666));
    }
    #[cfg(not(unix))]
    let _ = default_permissions;
    builder
}

#[cfg(unix)]
fn existing_mode(target: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::symlink_metadata(target)
        .ok()
        .filter(fs::Metadata::is_file)
        .map(|m| m.permissions().mode() & 0o7777)
}

#[cfg(not(unix))]
fn existing_mode(_target: &Path) -> Option<u32> {
    None
}

#[cfg(unix)]
fn set_mode(file: &File, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    file.set_permissions(fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_file: &File, _mode: u32) -> io::Result<()> {
    Ok(())
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_path_checks_name_the_reason() {
        assert_eq!(check_artifact_path(""), Err("the path is empty"));
        assert_eq!(check_artifact_path("/"), Err("the path is empty"));
        assert_eq!(
            check_artifact_path("/a\0b"),
            Err("the path contains a NUL byte")
        );
        assert_eq!(
            check_artifact_path("/etc/"),
            Err("the path names a directory, not a file")
        );
        assert_eq!(
            check_artifact_path("/a/../b"),
            Err("the path has a `..` component")
        );
        assert_eq!(
            check_artifact_path(".."),
            Err("the path has a `..` component")
        );
        assert_eq!(check_artifact_path("/a/..b/c..d"), Ok(()));
        assert_eq!(check_artifact_path("config.yaml"), Ok(()));
    }

    #[test]
    fn unrouted_paths_land_under_the_root_and_routes_win() {
        let map = ArtifactOutputMap::new()
            .with_root("/srv/out")
            .route("/config.yaml", "/etc/node/config.yaml");
        assert_eq!(
            map.local_path("/a/b.txt").unwrap(),
            PathBuf::from("/srv/out/a/b.txt")
        );
        assert_eq!(
            map.local_path("a/b.txt").unwrap(),
            PathBuf::from("/srv/out/a/b.txt")
        );
        assert_eq!(
            map.local_path("/config.yaml").unwrap(),
            PathBuf::from("/etc/node/config.yaml")
        );
        // Exact match only: the relative spelling is not routed.
        assert_eq!(
            map.local_path("config.yaml").unwrap(),
            PathBuf::from("/srv/out/config.yaml")
        );
    }
}
