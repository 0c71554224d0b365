//! The parts of a package inspect reads, and only those, written to the temp
//! file of an overlapped download: the zip's local headers, the data of the
//! entries inspect may read (by file name, wherever they sit), the first
//! [`HEAD_BYTES`], and everything from the central directory (or from
//! anything the scan does not follow) to the end, plus the last
//! [`TAIL_BYTES`]. The rest — the bulk of the package — goes to the upload
//! only; writing it to a file nobody reads cost the sync ~2 CPU-seconds per
//! GiB on a 2-core machine (BENCHMARKS.md).
//!
//! The scan is not trusted for safety: inspect reads the file through
//! [`KeptFile`], which fails any read of a byte that was not kept and
//! remembers it, and then the sync downloads the package whole and inspects
//! that instead (the pipeline's `inspect`). So inspect always judges exactly
//! the package's bytes.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Always kept at the start (inspect's signature check reads 64 bytes).
pub(crate) const HEAD_BYTES: u64 = 64 * 1024;
/// Always kept at the end: the end-of-central-directory search reads up to
/// 22 + 65 535 + 20 bytes from the end.
pub(crate) const TAIL_BYTES: u64 = 128 * 1024;
/// Entries whose data inspect may read (matched on the last path component).
const WANTED: [&str; 5] = [
    "cml.yaml",
    "cml.yml",
    "devices.json",
    "mosaic_meta.json",
    "grade.xml",
];
/// Most separate ranges kept (16 bytes each); a package with more entries
/// than that is kept whole from there on, so memory stays bounded whatever
/// the stream holds.
const MAX_RANGES: usize = 65_536;
const LOCAL_HEADER: &[u8; 4] = b"PK\x03\x04";
const LOCAL_FIXED: usize = 30;

/// Byte ranges `[start, end)`, sorted, merged.
pub(crate) type Ranges = Vec<(u64, u64)>;

#[derive(Debug)]
enum State {
    /// Reading a record header into `buf` (its start at `at`).
    Header { at: u64, buf: Vec<u8> },
    /// Inside an entry's data: `left` bytes to go, kept or not.
    Data { left: u64, keep: bool },
    /// From here on everything is kept.
    All,
}

/// Decides, as the package streams by, which of its bytes to keep.
#[derive(Debug)]
pub(crate) struct ZipScan {
    len: u64,
    pos: u64,
    state: State,
    kept: Ranges,
}

impl ZipScan {
    /// A scan of a package of `len` bytes (its announced `Content-Length`).
    pub(crate) fn new(len: u64) -> Self {
        Self {
            len,
            pos: 0,
            state: State::Header {
                at: 0,
                buf: Vec::new(),
            },
            kept: Vec::new(),
        }
    }

    /// The ranges of the next `chunk` (at the current position) to write, as
    /// `(offset in the file, range within chunk)`.
    pub(crate) fn next(&mut self, chunk: &[u8]) -> Vec<(u64, std::ops::Range<usize>)> {
        let start = self.pos;
        let mut keep_marks: Vec<(u64, u64)> = Vec::new();
        let mut i = 0usize;
        while i < chunk.len() {
            let at = self.pos + i as u64;
            match &mut self.state {
                State::All => {
                    keep_marks.push((at, start + chunk.len() as u64));
                    i = chunk.len();
                }
                State::Data { left, keep } => {
                    let take = usize::try_from((*left).min((chunk.len() - i) as u64))
                        .unwrap_or(chunk.len() - i);
                    if *keep {
                        keep_marks.push((at, at + take as u64));
                    }
                    *left -= take as u64;
                    i += take;
                    if *left == 0 {
                        self.state = State::Header {
                            at: at + take as u64,
                            buf: Vec::new(),
                        };
                    }
                }
                State::Header { at: header_at, buf } => {
                    let need = header_len(buf);
                    if buf.len() < need {
                        let take = (need - buf.len()).min(chunk.len() - i);
                        buf.extend_from_slice(&chunk[i..i + take]);
                        keep_marks.push((at, at + take as u64));
                        i += take;
                        continue;
                    }
                    // complete: a local header, or something else
                    if !buf.starts_with(LOCAL_HEADER) {
                        // the central directory, or something the scan does
                        // not follow: keep all of it
                        self.state = State::All;
                        continue;
                    }
                    let next = *header_at + buf.len() as u64;
                    self.state = match data_of(buf) {
                        Some((left, keep)) if left > 0 => State::Data { left, keep },
                        Some(_) => State::Header {
                            at: next,
                            buf: Vec::new(),
                        },
                        None => State::All,
                    };
                }
            }
        }
        self.pos += chunk.len() as u64;
        let end = self.pos;
        // the head and the tail, always
        if start < HEAD_BYTES {
            keep_marks.push((start, end.min(HEAD_BYTES)));
        }
        let tail = self.len.saturating_sub(TAIL_BYTES);
        if end > tail {
            keep_marks.push((start.max(tail), end));
        }
        let merged = merge(keep_marks);
        for &(a, b) in &merged {
            push_merged(&mut self.kept, (a, b));
        }
        if self.kept.len() > MAX_RANGES {
            self.state = State::All;
        }
        merged
            .into_iter()
            .filter_map(|(a, b)| {
                let from = usize::try_from(a - start).ok()?;
                let to = usize::try_from(b - start).ok()?;
                Some((a, from..to))
            })
            .collect()
    }

    /// The ranges kept so far.
    pub(crate) fn kept(&self) -> &Ranges {
        &self.kept
    }
}

/// Bytes of the record header being read: the signature first, then a local
/// header's fixed part, then its name and extra field.
fn header_len(buf: &[u8]) -> usize {
    if buf.len() < 4 || !buf.starts_with(LOCAL_HEADER) {
        return 4;
    }
    need_full(buf)
}

fn need_full(buf: &[u8]) -> usize {
    if buf.len() < LOCAL_FIXED {
        return LOCAL_FIXED;
    }
    LOCAL_FIXED + usize::from(u16_at(buf, 26)) + usize::from(u16_at(buf, 28))
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

/// The compressed size of a complete local header's entry and whether its
/// data is kept; `None` when the size is not known from the header (a data
/// descriptor follows the data) or cannot be read.
fn data_of(header: &[u8]) -> Option<(u64, bool)> {
    let flags = u16_at(header, 6);
    if flags & 0x0008 != 0 {
        return None;
    }
    let name_len = usize::from(u16_at(header, 26));
    let name = header.get(LOCAL_FIXED..LOCAL_FIXED + name_len)?;
    let extra = header.get(LOCAL_FIXED + name_len..)?;
    let mut size = u64::from(u32_at(header, 18));
    if size == u64::from(u32::MAX) {
        size = zip64_compressed(extra, u32_at(header, 22) == u32::MAX)?;
    }
    let file = name.rsplit(|&b| b == b'/').next().unwrap_or(name);
    let keep = WANTED.iter().any(|w| w.as_bytes() == file);
    Some((size, keep))
}

/// The compressed size in a local header's zip64 extra field: after the
/// uncompressed size (a local header's zip64 field holds both), or alone in a
/// field of 8 bytes when only it overflowed. A wrong guess costs only a
/// second download (see the module docs), never a wrong verdict.
fn zip64_compressed(mut extra: &[u8], has_uncompressed: bool) -> Option<u64> {
    while extra.len() >= 4 {
        let id = u16_at(extra, 0);
        let len = usize::from(u16_at(extra, 2));
        let body = extra.get(4..4 + len)?;
        if id == 0x0001 {
            let at = if has_uncompressed || body.len() >= 16 {
                8
            } else {
                0
            };
            let b = body.get(at..at + 8)?;
            return Some(u64::from_le_bytes(b.try_into().ok()?));
        }
        extra = &extra[4 + len..];
    }
    None
}

fn merge(mut ranges: Vec<(u64, u64)>) -> Ranges {
    ranges.sort_unstable();
    let mut out: Ranges = Vec::with_capacity(ranges.len());
    for r in ranges.into_iter().filter(|(a, b)| a < b) {
        push_merged(&mut out, r);
    }
    out
}

/// Appends `r` to sorted `ranges`, merging it with the last when they touch.
fn push_merged(ranges: &mut Ranges, r: (u64, u64)) {
    match ranges.last_mut() {
        Some(last) if r.0 <= last.1 => last.1 = last.1.max(r.1),
        _ => ranges.push(r),
    }
}

/// A temp file of which only `kept` ranges were written, read as the whole
/// package: a read of a byte not kept fails (and sets [`KeptFile::missed`]).
#[derive(Debug)]
pub(crate) struct KeptFile {
    file: File,
    kept: Arc<Ranges>,
    len: u64,
    pos: u64,
    missed: Arc<AtomicBool>,
}

impl KeptFile {
    pub(crate) fn new(file: File, kept: Arc<Ranges>, len: u64, missed: Arc<AtomicBool>) -> Self {
        Self {
            file,
            kept,
            len,
            pos: 0,
            missed,
        }
    }
}

impl Read for KeptFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() || self.pos >= self.len {
            return Ok(0);
        }
        let i = self.kept.partition_point(|&(_, end)| end <= self.pos);
        let Some(&(start, end)) = self.kept.get(i).filter(|(start, _)| *start <= self.pos) else {
            self.missed.store(true, Ordering::SeqCst);
            return Err(io::Error::other(
                "inspect read a part of the package the overlapped download did not keep",
            ));
        };
        debug_assert!(start <= self.pos);
        let n = usize::try_from(end - self.pos).map_or(buf.len(), |left| left.min(buf.len()));
        let n = self.file.read_at(&mut buf[..n], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for KeptFile {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        let Some(pos) = pos else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the package",
            ));
        };
        self.pos = pos;
        Ok(pos)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::Write;

    fn zip_of(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let stored = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for (name, bytes) in entries {
            w.start_file(*name, stored).unwrap();
            w.write_all(bytes).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    /// Scans `bytes` in `chunk`-sized pieces, writes the kept ranges into a
    /// file, and reads it back through a [`KeptFile`].
    fn kept_copy(bytes: &[u8], chunk: usize) -> (KeptFile, Arc<AtomicBool>, u64) {
        let mut scan = ZipScan::new(bytes.len() as u64);
        let file = tempfile::tempfile().unwrap();
        let mut written = 0u64;
        for (n, piece) in bytes.chunks(chunk).enumerate() {
            for (at, range) in scan.next(piece) {
                assert_eq!(at, (n * chunk + range.start) as u64);
                file.write_all_at(&piece[range.clone()], at).unwrap();
                written += range.len() as u64;
            }
        }
        file.set_len(bytes.len() as u64).unwrap();
        let missed = Arc::new(AtomicBool::new(false));
        let kept = Arc::new(scan.kept().clone());
        (
            KeptFile::new(file, kept, bytes.len() as u64, Arc::clone(&missed)),
            missed,
            written,
        )
    }

    #[test]
    fn keeps_what_inspect_reads_and_little_else() {
        let noise: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i * 7 % 251) as u8).collect();
        let bytes = zip_of(&[
            ("LAB/a.img", noise.clone()),
            ("LAB/cml.yaml", b"lab: {}\n".to_vec()),
            ("LAB/devices.json", b"[]".to_vec()),
            ("LAB/z.img", noise),
        ]);
        for chunk in [1, 7, 4096, 65536, bytes.len()] {
            if chunk == 1 && bytes.len() > 1 << 20 {
                // one byte at a time over 6 MiB: slow in a debug build; 7 covers splits
                continue;
            }
            let (reader, missed, written) = kept_copy(&bytes, chunk);
            assert!(
                written < (HEAD_BYTES + TAIL_BYTES + 4096),
                "wrote {written}"
            );
            let mut archive = zip::ZipArchive::new(std::io::BufReader::new(reader)).unwrap();
            let mut text = String::new();
            archive
                .by_name("LAB/cml.yaml")
                .unwrap()
                .read_to_string(&mut text)
                .unwrap();
            assert_eq!(text, "lab: {}\n");
            assert!(!missed.load(Ordering::SeqCst), "chunk {chunk}");
            // a skipped entry cannot be read, and says so
            let mut rest = Vec::new();
            assert!(
                archive
                    .by_name("LAB/a.img")
                    .unwrap()
                    .read_to_end(&mut rest)
                    .is_err()
            );
            assert!(missed.load(Ordering::SeqCst));
        }
    }

    #[test]
    fn ever_more_entries_keep_everything_past_the_range_cap() {
        // local headers of empty-named 1-byte entries, one after the other
        let mut entry = b"PK\x03\x04".to_vec();
        entry.extend_from_slice(&[20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        entry.extend_from_slice(&1u32.to_le_bytes());
        entry.extend_from_slice(&1u32.to_le_bytes());
        entry.extend_from_slice(&[0, 0, 0, 0]);
        entry.push(7);
        let bytes: Vec<u8> = entry.repeat(MAX_RANGES + 10);
        let mut scan = ZipScan::new(bytes.len() as u64);
        for piece in bytes.chunks(64 * 1024) {
            let _ = scan.next(piece);
        }
        assert!(scan.kept().len() <= MAX_RANGES + 2, "{}", scan.kept().len());
        assert_eq!(scan.kept().last().map(|r| r.1), Some(bytes.len() as u64));
    }

    #[test]
    fn a_data_descriptor_keeps_everything_from_there() {
        // a local header with bit 3 set and sizes 0, as a streaming writer makes
        let mut bytes = b"PK\x03\x04".to_vec();
        bytes.extend_from_slice(&[20, 0, 8, 0, 0, 0, 0, 0, 0, 0]);
        bytes.extend_from_slice(&[0; 12]);
        bytes.extend_from_slice(&1u16.to_le_bytes());
        bytes.extend_from_slice(&0u16.to_le_bytes());
        bytes.push(b'a');
        bytes.extend(std::iter::repeat_n(9u8, 300_000));
        let mut scan = ZipScan::new(bytes.len() as u64);
        let _ = scan.next(&bytes);
        assert_eq!(scan.kept(), &vec![(0, bytes.len() as u64)]);
    }
}
