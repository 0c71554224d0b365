//! Inspect a content package zip: a pure function over a file path.
//!
//! Only the central directory and a few small entries are read. Every entry of the
//! central directory is checked first (names, symlinks, encryption, declared sizes,
//! compression ratio, count, duplicates); then `cml.yaml`/`cml.yml`, `devices.json`
//! and `mosaic_meta.json` are read with a hard cap enforced while reading
//! (`Read::take`), never trusting declared sizes alone.
//!
//! **Where entries may sit**: the package may keep its files at the root or inside
//! folders (e.g. `LAB-1.1.1/cml.yaml`, as `zip -r` of a folder produces). For each
//! wanted file the *shallowest* entry with that exact (case-sensitive) file name wins;
//! two candidates at the same shallowest depth are rejected as ambiguous
//! ([`InspectError::AmbiguousEntry`]). `cml.yaml` and `cml.yml` count as the same
//! wanted file.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zip::ZipArchive;
use zip::result::ZipError;

const CML_NAMES: [&str; 2] = ["cml.yaml", "cml.yml"];
const DEVICES_NAME: &str = "devices.json";
const GRADE_NAME: &str = "grade.xml";
const META_NAME: &str = "mosaic_meta.json";
/// Unix file-type bits (`S_IFMT`) and the symlink type (`S_IFLNK`).
const S_IFMT: u32 = 0o170_000;
const S_IFLNK: u32 = 0o120_000;

/// Limits applied while inspecting a package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InspectLimits {
    /// Most central-directory entries accepted (default 100 000).
    pub max_entries: usize,
    /// Most bytes read from any entry we read (`cml.yaml`, `devices.json`,
    /// `mosaic_meta.json`); default 8 MiB.
    pub max_read_entry_bytes: u64,
    /// Most total uncompressed bytes the central directory may declare (default 16 GiB).
    pub max_total_uncompressed_bytes: u64,
    /// Highest uncompressed/compressed ratio accepted for an entry larger than
    /// [`InspectLimits::ratio_check_min_bytes`] (default 1000).
    pub max_compression_ratio: u64,
    /// Entries smaller than this (uncompressed) are not ratio-checked (default 1 MiB).
    pub ratio_check_min_bytes: u64,
    /// Largest central directory accepted (default 64 MiB). Checked, with the entry
    /// count, from the end-of-central-directory record *before* the directory is
    /// parsed, so a hostile directory cannot make the parser allocate unboundedly.
    pub max_central_directory_bytes: u64,
}

impl Default for InspectLimits {
    fn default() -> Self {
        Self {
            max_entries: 100_000,
            max_read_entry_bytes: 8 * 1024 * 1024,
            max_total_uncompressed_bytes: 16 * 1024 * 1024 * 1024,
            max_compression_ratio: 1000,
            ratio_check_min_bytes: 1024 * 1024,
            max_central_directory_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Fields of `mosaic_meta.json` (ADR-025 `upstream_*`). Scalars other than strings
/// (e.g. a numeric `Version`) are recorded as their JSON text.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MosaicMeta {
    /// `Version`
    pub version: Option<String>,
    /// `DatePublished`
    pub date_published: Option<String>,
    /// `InstanceName`
    pub instance_name: Option<String>,
    /// `FormId`
    pub form_id: Option<String>,
}

/// What inspection extracts from a valid package (the ADR-025 content fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageInfo {
    /// Path of `cml.yaml`/`cml.yml` inside the zip.
    pub cml_yaml_path: String,
    /// Full YAML text.
    pub cml_yaml_content: String,
    /// SHA-256 (lower-case hex) of the YAML bytes.
    pub cml_yaml_hash: String,
    /// Full `devices.json` text, when present.
    pub devices_json: Option<String>,
    /// Path of `grade.xml` inside the zip, when present.
    pub grade_xml_path: Option<String>,
    /// Path of `mosaic_meta.json` inside the zip, when present.
    pub mosaic_meta_path: Option<String>,
    /// Parsed `mosaic_meta.json` (all `None` when absent).
    pub meta: MosaicMeta,
    /// Number of central-directory entries.
    pub entries: usize,
    /// Total uncompressed size declared by the central directory.
    pub declared_uncompressed_bytes: u64,
}

/// Why a package was rejected at inspect.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InspectError {
    /// The package file could not be opened or read.
    #[error("cannot read package file: {0}")]
    Io(#[source] io::Error),
    /// Zero bytes.
    #[error("package is empty (0 bytes)")]
    Empty,
    /// Does not start with a zip signature (e.g. an HTML error page).
    #[error("package is not a zip archive (starts with {head:?})")]
    NotAZip {
        /// The first bytes, lossily decoded.
        head: String,
    },
    /// Starts like a zip but its central directory cannot be read.
    #[error("package is truncated or its central directory is unreadable: {0}")]
    Truncated(#[source] ZipError),
    /// An entry's data cannot be read (bad CRC, bad compressed stream, ...).
    #[error("entry {name:?} is corrupt: {source}")]
    CorruptEntry {
        /// Entry name.
        name: String,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
    /// More entries than [`InspectLimits::max_entries`].
    #[error("package has {count} entries, more than the limit of {limit}")]
    TooManyEntries {
        /// Entries in the central directory.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// The central directory is larger than
    /// [`InspectLimits::max_central_directory_bytes`].
    #[error("central directory is {size} bytes, more than the limit of {limit}")]
    CentralDirectoryTooLarge {
        /// Declared size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// An entry name that could escape an extraction directory (zip-slip).
    #[error("unsafe entry name {name:?}: {reason}")]
    UnsafeName {
        /// Entry name (lossy).
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Two central-directory entries with the same name.
    #[error("package has duplicate entry names")]
    DuplicateNames,
    /// A symbolic-link entry.
    #[error("entry {name:?} is a symbolic link")]
    Symlink {
        /// Entry name.
        name: String,
    },
    /// An encrypted entry.
    #[error("entry {name:?} is encrypted")]
    Encrypted {
        /// Entry name.
        name: String,
    },
    /// An entry compressed with a method we do not read.
    #[error("entry {name:?} uses unsupported compression: {reason}")]
    UnsupportedCompression {
        /// Entry name.
        name: String,
        /// Reason reported by the zip reader.
        reason: String,
    },
    /// The central directory declares more uncompressed bytes than allowed (zip bomb).
    #[error(
        "package declares {declared} uncompressed bytes, more than the limit of {limit} (zip bomb)"
    )]
    DeclaredTooLarge {
        /// Declared total.
        declared: u64,
        /// The limit.
        limit: u64,
    },
    /// An entry compresses suspiciously well (zip bomb).
    #[error(
        "entry {name:?} has compression ratio {ratio}, more than the limit of {limit} (zip bomb)"
    )]
    CompressionRatio {
        /// Entry name.
        name: String,
        /// uncompressed / compressed
        ratio: u64,
        /// The limit.
        limit: u64,
    },
    /// An entry we read is larger than [`InspectLimits::max_read_entry_bytes`]
    /// (checked while reading, whatever the entry declares).
    #[error("entry {name:?} is larger than the limit of {limit} bytes")]
    EntryTooLarge {
        /// Entry name.
        name: String,
        /// The limit.
        limit: u64,
    },
    /// No `cml.yaml` / `cml.yml`.
    #[error("package has no cml.yaml or cml.yml")]
    MissingCmlYaml,
    /// Several candidates for one wanted file at the same depth.
    #[error("ambiguous {file}: found {paths:?} at the same depth")]
    AmbiguousEntry {
        /// The wanted file.
        file: &'static str,
        /// The candidates.
        paths: Vec<String>,
    },
    /// A text entry that is not valid UTF-8.
    #[error("entry {name:?} is not valid UTF-8")]
    NotUtf8 {
        /// Entry name.
        name: String,
    },
    /// Invalid YAML, or YAML beyond the parser's budget (an alias bomb, nesting
    /// deeper than 64): the parser's one-line message with line and column.
    #[error("entry {name:?} is not valid YAML: {message}")]
    InvalidYaml {
        /// Entry name.
        name: String,
        /// The parser's message (`cfgsync_core::document::parse_yaml`).
        message: String,
    },
    /// Invalid JSON.
    #[error("entry {name:?} is not valid JSON: {source}")]
    InvalidJson {
        /// Entry name.
        name: String,
        /// Parser error.
        #[source]
        source: serde_json::Error,
    },
    /// `mosaic_meta.json` is valid JSON but not an object.
    #[error("mosaic_meta.json {name:?} is not a JSON object")]
    MetaNotObject {
        /// Entry name.
        name: String,
    },
}

impl InspectError {
    /// A short `snake_case` code for the rejection reason (stable, for scripts).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Io(_) => "io",
            Self::Empty => "empty",
            Self::NotAZip { .. } => "not_a_zip",
            Self::Truncated(_) => "truncated",
            Self::CorruptEntry { .. } => "corrupt_entry",
            Self::TooManyEntries { .. } => "too_many_entries",
            Self::CentralDirectoryTooLarge { .. } => "central_directory_too_large",
            Self::UnsafeName { .. } => "unsafe_name",
            Self::DuplicateNames => "duplicate_names",
            Self::Symlink { .. } => "symlink",
            Self::Encrypted { .. } => "encrypted",
            Self::UnsupportedCompression { .. } => "unsupported_compression",
            Self::DeclaredTooLarge { .. } => "declared_too_large",
            Self::CompressionRatio { .. } => "compression_ratio",
            Self::EntryTooLarge { .. } => "entry_too_large",
            Self::MissingCmlYaml => "missing_cml_yaml",
            Self::AmbiguousEntry { .. } => "ambiguous_entry",
            Self::NotUtf8 { .. } => "not_utf8",
            Self::InvalidYaml { .. } => "invalid_yaml",
            Self::InvalidJson { .. } => "invalid_json",
            Self::MetaNotObject { .. } => "meta_not_object",
        }
    }
}

/// SHA-256 (lower-case hex) of a file, streamed with a constant-size buffer.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut file = BufReader::new(File::open(path)?);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Inspect the package at `path` under `limits`.
///
/// Reads nothing but the central directory and the few small entries named in the
/// module docs; changes nothing.
pub fn inspect_package(path: &Path, limits: &InspectLimits) -> Result<PackageInfo, InspectError> {
    let file = File::open(path).map_err(InspectError::Io)?;
    inspect_source(Box::new(file), limits)
}

/// A package's bytes as inspect reads them: a file, or a temp file of which
/// only some ranges were written (`mosaic::kept`).
pub(crate) trait Source: Read + io::Seek + Send {}

impl<T: Read + io::Seek + Send> Source for T {}

/// [`inspect_package`] over any [`Source`].
pub(crate) fn inspect_source(
    source: Box<dyn Source>,
    limits: &InspectLimits,
) -> Result<PackageInfo, InspectError> {
    let mut archive = open_archive(source, limits)?;
    let (names, declared) = check_entries(&mut archive, limits)?;

    let cml = pick(&names, &CML_NAMES, "cml.yaml")?.ok_or(InspectError::MissingCmlYaml)?;
    let devices = pick(&names, &[DEVICES_NAME], DEVICES_NAME)?;
    let grade = pick(&names, &[GRADE_NAME], GRADE_NAME)?;
    let meta_entry = pick(&names, &[META_NAME], META_NAME)?;

    let cml_bytes = read_entry(&mut archive, &names[cml], limits)?;
    let cml_yaml_hash = hex::encode(Sha256::digest(&cml_bytes));
    let cml_yaml_content = utf8(cml_bytes, &names[cml].1)?;
    // validated only (the text is recorded as it is), with the workspace's
    // panic-free parser under its linear budget
    cfgsync_core::document::parse_yaml::<serde::de::IgnoredAny>(&cml_yaml_content).map_err(
        |message| InspectError::InvalidYaml {
            name: names[cml].1.clone(),
            message,
        },
    )?;
    let devices_json = match devices {
        Some(i) => {
            let text = read_text(&mut archive, &names[i], limits)?;
            parse_json(&text, &names[i].1)?;
            Some(text)
        }
        None => None,
    };
    let meta = match meta_entry {
        Some(i) => read_meta(&mut archive, &names[i], limits)?,
        None => MosaicMeta::default(),
    };

    Ok(PackageInfo {
        cml_yaml_path: names[cml].1.clone(),
        cml_yaml_content,
        cml_yaml_hash,
        devices_json,
        grade_xml_path: grade.map(|i| names[i].1.clone()),
        mosaic_meta_path: meta_entry.map(|i| names[i].1.clone()),
        meta,
        entries: archive.len(),
        declared_uncompressed_bytes: declared,
    })
}

type Archive = ZipArchive<BufReader<Box<dyn Source>>>;

/// The zip in `file`, once its signature and end-of-central-directory record
/// pass, and its entry count and names are acceptable.
fn open_archive(
    mut file: Box<dyn Source>,
    limits: &InspectLimits,
) -> Result<Archive, InspectError> {
    check_signature(&mut *file)?;
    precheck_directory(&mut *file, limits)?;
    let archive = ZipArchive::new(BufReader::new(file)).map_err(|e| match e {
        ZipError::Io(io) if io.kind() != io::ErrorKind::UnexpectedEof => InspectError::Io(io),
        other => InspectError::Truncated(other),
    })?;
    let count = archive.len();
    if count > limits.max_entries {
        return Err(InspectError::TooManyEntries {
            count,
            limit: limits.max_entries,
        });
    }
    if archive.has_duplicate_names() {
        return Err(InspectError::DuplicateNames);
    }
    Ok(archive)
}

/// Checks every central-directory entry (name, symlink, encryption, declared
/// sizes, compression ratio); returns the files as `(index, name)` and the
/// total declared uncompressed size.
fn check_entries(
    archive: &mut Archive,
    limits: &InspectLimits,
) -> Result<(Vec<(usize, String)>, u64), InspectError> {
    let count = archive.len();
    let mut names = Vec::with_capacity(count.min(4096));
    let mut declared: u64 = 0;
    for index in 0..count {
        let entry = archive
            .by_index_data(index)
            .map_err(InspectError::Truncated)?;
        let name = match entry.name() {
            Ok(name) => name.into_owned(),
            Err(_) => {
                return Err(InspectError::UnsafeName {
                    name: String::from_utf8_lossy(entry.name_raw()).into_owned(),
                    reason: "name is not decodable",
                });
            }
        };
        check_name(&name)?;
        if entry.is_symlink()
            || entry
                .unix_mode()
                .is_some_and(|mode| mode & S_IFMT == S_IFLNK)
        {
            return Err(InspectError::Symlink { name });
        }
        if entry.encrypted() {
            return Err(InspectError::Encrypted { name });
        }
        let size = entry.size();
        declared = declared.saturating_add(size);
        check_sizes(&name, size, entry.compressed_size(), declared, limits)?;
        if !entry.is_dir() {
            names.push((index, name));
        }
    }
    Ok((names, declared))
}

/// Zip-bomb checks of one entry: the running declared total, and the
/// compression ratio of a large entry.
fn check_sizes(
    name: &str,
    size: u64,
    compressed: u64,
    declared: u64,
    limits: &InspectLimits,
) -> Result<(), InspectError> {
    if declared > limits.max_total_uncompressed_bytes {
        return Err(InspectError::DeclaredTooLarge {
            declared,
            limit: limits.max_total_uncompressed_bytes,
        });
    }
    if size >= limits.ratio_check_min_bytes {
        let ratio = size / compressed.max(1);
        if ratio > limits.max_compression_ratio {
            return Err(InspectError::CompressionRatio {
                name: name.to_owned(),
                ratio,
                limit: limits.max_compression_ratio,
            });
        }
    }
    Ok(())
}

/// A text entry: read under the cap, valid UTF-8.
fn read_text(
    archive: &mut Archive,
    entry: &(usize, String),
    limits: &InspectLimits,
) -> Result<String, InspectError> {
    utf8(read_entry(archive, entry, limits)?, &entry.1)
}

/// `mosaic_meta.json`: a JSON object whose `Version`, `DatePublished`,
/// `InstanceName` and `FormId` are recorded.
fn read_meta(
    archive: &mut Archive,
    entry: &(usize, String),
    limits: &InspectLimits,
) -> Result<MosaicMeta, InspectError> {
    let text = read_text(archive, entry, limits)?;
    let serde_json::Value::Object(map) = parse_json(&text, &entry.1)? else {
        return Err(InspectError::MetaNotObject {
            name: entry.1.clone(),
        });
    };
    Ok(MosaicMeta {
        version: scalar(map.get("Version")),
        date_published: scalar(map.get("DatePublished")),
        instance_name: scalar(map.get("InstanceName")),
        form_id: scalar(map.get("FormId")),
    })
}

fn check_signature(file: &mut dyn Source) -> Result<(), InspectError> {
    let mut head = [0u8; 64];
    let mut filled = 0;
    while filled < head.len() {
        let n = file.read(&mut head[filled..]).map_err(InspectError::Io)?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    if filled == 0 {
        return Err(InspectError::Empty);
    }
    let head = &head[..filled];
    // local file header, or the end-of-central-directory of an empty archive
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        file.rewind().map_err(InspectError::Io)?;
        return Ok(());
    }
    Err(InspectError::NotAZip {
        head: String::from_utf8_lossy(&head[..head.len().min(32)]).into_owned(),
    })
}

/// Read the end-of-central-directory record (and the zip64 one when present) and
/// reject too many entries or too large a directory before the parser allocates.
/// Anything unparseable is left to the zip parser (which reports it as truncated).
fn precheck_directory(file: &mut dyn Source, limits: &InspectLimits) -> Result<(), InspectError> {
    use std::io::SeekFrom;
    let len = file.seek(SeekFrom::End(0)).map_err(InspectError::Io)?;
    // EOCD is 22 bytes plus a comment of at most 65 535 bytes
    let tail_len = len.min(22 + 65_535 + 20);
    file.seek(SeekFrom::Start(len - tail_len))
        .map_err(InspectError::Io)?;
    let mut tail = vec![0u8; usize::try_from(tail_len).unwrap_or(0)];
    file.read_exact(&mut tail).map_err(InspectError::Io)?;
    file.rewind().map_err(InspectError::Io)?;

    let Some(eocd) = (0..tail.len().saturating_sub(21))
        .rev()
        .find(|&i| tail[i..].starts_with(b"PK\x05\x06"))
    else {
        return Ok(());
    };
    let u16_at = |b: &[u8], o: usize| {
        b.get(o..o + 2)
            .map(|x| u64::from(u16::from_le_bytes([x[0], x[1]])))
    };
    let u32_at = |b: &[u8], o: usize| {
        b.get(o..o + 4)
            .map(|x| u64::from(u32::from_le_bytes([x[0], x[1], x[2], x[3]])))
    };
    let rec = &tail[eocd..];
    let (Some(mut entries), Some(mut cd_size)) = (u16_at(rec, 10), u32_at(rec, 12)) else {
        return Ok(());
    };
    // zip64: the locator sits right before the EOCD and points at the zip64 record
    if (entries == 0xFFFF || cd_size == 0xFFFF_FFFF) && eocd >= 20 {
        let loc = &tail[eocd - 20..eocd];
        if loc.starts_with(b"PK\x06\x07") {
            let offset = loc
                .get(8..16)
                .and_then(|x| <[u8; 8]>::try_from(x).ok())
                .map(u64::from_le_bytes);
            if let Some(offset) = offset.filter(|o| o.saturating_add(56) <= len) {
                let mut rec64 = [0u8; 56];
                file.seek(SeekFrom::Start(offset))
                    .map_err(InspectError::Io)?;
                file.read_exact(&mut rec64).map_err(InspectError::Io)?;
                file.rewind().map_err(InspectError::Io)?;
                if rec64.starts_with(b"PK\x06\x06") {
                    let u64_at = |o: usize| {
                        rec64
                            .get(o..o + 8)
                            .and_then(|x| <[u8; 8]>::try_from(x).ok())
                            .map(u64::from_le_bytes)
                    };
                    entries = u64_at(32).unwrap_or(entries);
                    cd_size = u64_at(40).unwrap_or(cd_size);
                }
            }
        }
    }
    if entries > limits.max_entries as u64 {
        return Err(InspectError::TooManyEntries {
            count: usize::try_from(entries).unwrap_or(usize::MAX),
            limit: limits.max_entries,
        });
    }
    if cd_size > limits.max_central_directory_bytes {
        return Err(InspectError::CentralDirectoryTooLarge {
            size: cd_size,
            limit: limits.max_central_directory_bytes,
        });
    }
    Ok(())
}

/// Reject names that could escape an extraction root on any OS.
fn check_name(name: &str) -> Result<(), InspectError> {
    let reject = |reason| {
        Err(InspectError::UnsafeName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return reject("empty name");
    }
    if name.contains('\0') {
        return reject("NUL byte in name");
    }
    if name.contains('\\') {
        return reject("backslash in name");
    }
    if name.starts_with('/') {
        return reject("absolute path");
    }
    let bytes = name.as_bytes();
    if bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':' {
        return reject("drive-letter path");
    }
    if name.split('/').any(|c| c == "..") {
        return reject("parent-directory component");
    }
    Ok(())
}

/// Index into `names` of the shallowest entry whose file name is one of `wanted`.
fn pick(
    names: &[(usize, String)],
    wanted: &[&str],
    label: &'static str,
) -> Result<Option<usize>, InspectError> {
    let mut best: Option<(usize, Vec<usize>)> = None;
    for (pos, (_, name)) in names.iter().enumerate() {
        let base = name.rsplit('/').next().unwrap_or(name);
        if !wanted.contains(&base) {
            continue;
        }
        let depth = name.matches('/').count();
        match &mut best {
            Some((d, list)) if *d == depth => list.push(pos),
            Some((d, _)) if *d < depth => {}
            _ => best = Some((depth, vec![pos])),
        }
    }
    match best {
        None => Ok(None),
        Some((_, list)) if list.len() == 1 => Ok(list.first().copied()),
        Some((_, list)) => Err(InspectError::AmbiguousEntry {
            file: label,
            paths: list.into_iter().map(|p| names[p].1.clone()).collect(),
        }),
    }
}

fn read_entry<R: Read + io::Seek>(
    archive: &mut ZipArchive<R>,
    entry: &(usize, String),
    limits: &InspectLimits,
) -> Result<Vec<u8>, InspectError> {
    let (index, name) = entry;
    let file = archive.by_index(*index).map_err(|e| match e {
        ZipError::UnsupportedArchive(reason) => InspectError::UnsupportedCompression {
            name: name.clone(),
            reason: reason.to_owned(),
        },
        ZipError::CompressionMethodNotSupported(method) => InspectError::UnsupportedCompression {
            name: name.clone(),
            reason: format!("compression method {method}"),
        },
        ZipError::Io(source) => InspectError::CorruptEntry {
            name: name.clone(),
            source,
        },
        other => InspectError::CorruptEntry {
            name: name.clone(),
            source: io::Error::other(other),
        },
    })?;
    let limit = limits.max_read_entry_bytes;
    let mut buf = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|source| InspectError::CorruptEntry {
            name: name.clone(),
            source,
        })?;
    if buf.len() as u64 > limit {
        return Err(InspectError::EntryTooLarge {
            name: name.clone(),
            limit,
        });
    }
    Ok(buf)
}

fn utf8(bytes: Vec<u8>, name: &str) -> Result<String, InspectError> {
    String::from_utf8(bytes).map_err(|_| InspectError::NotUtf8 {
        name: name.to_owned(),
    })
}

fn parse_json(text: &str, name: &str) -> Result<serde_json::Value, InspectError> {
    serde_json::from_str(text).map_err(|source| InspectError::InvalidJson {
        name: name.to_owned(),
        source,
    })
}

fn scalar(value: Option<&serde_json::Value>) -> Option<String> {
    match value? {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}
