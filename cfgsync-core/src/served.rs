//! Payloads ready to serve: a node's own part plus the shared part of its
//! generation, held by reference, sent as a chain of byte chunks in the coding
//! the request asked for.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt;
use std::ops::Range;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use cfgsync_artifacts::{ArtifactDigest, ArtifactFile, ArtifactSet};
use http_body::{Frame, SizeHint};

use crate::encoding::{ContentCoding, compressed_piece};
use crate::{Error, NodeArtifactsPayload, Result};

const BODY_PREFIX: &[u8] = br#"{"schema_version":1,"files":["#;
const BODY_SUFFIX: &[u8] = b"]}";

/// Files shared by many payloads, encoded once: every file's JSON in one
/// buffer, with each file's place in it and its digest. Payloads built with
/// [`ServedPayload::merged`] hold this buffer by reference (cloning a
/// `SharedFiles` is cheap), so N payloads that share a large file (a peer list)
/// cost one copy of it, not N. Compressed forms are made on first need and
/// kept here too, so the shared part is compressed once, whatever the number
/// of nodes asking.
#[derive(Clone, Default)]
pub struct SharedFiles {
    inner: Arc<SharedInner>,
}

#[derive(Default)]
struct SharedInner {
    files: ArtifactSet,
    digests: Vec<ArtifactDigest>,
    /// Every file's JSON, comma-separated.
    joined: Bytes,
    /// Where each file's JSON lies in `joined`.
    spans: Vec<Range<usize>>,
    gzip: OnceLock<Result<SharedPieces, String>>,
    zstd: OnceLock<Result<SharedPieces, String>>,
}

/// The pieces (gzip members or zstd frames) of one coding a compressed
/// payload is assembled from.
struct SharedPieces {
    coding: ContentCoding,
    /// All shared files (`joined`), one piece.
    joined: Bytes,
    /// `,` and `]}`, one piece each.
    comma: Bytes,
    suffix: Bytes,
    /// Each file alone, made on first need: only a node that overrides a
    /// shared path gets a subset of the shared files.
    files: Vec<OnceLock<Result<Bytes, String>>>,
}

fn source_error(message: String) -> Error {
    Error::Source {
        message,
        source: None,
    }
}

fn encode_file(file: &ArtifactFile, out: &mut Vec<u8>) -> Result<()> {
    serde_json::to_writer(out, file).map_err(|e| Error::Source {
        message: format!("cannot encode file {:?} as JSON", file.path),
        source: Some(Box::new(e)),
    })
}

/// The shared files of payloads built with [`ServedPayload::new`]: none.
static NO_SHARED_FILES: LazyLock<SharedFiles> = LazyLock::new(SharedFiles::default);

impl SharedFiles {
    /// Encodes `files` once.
    pub fn new(files: ArtifactSet) -> Result<Self> {
        let mut joined = Vec::new();
        let mut spans = Vec::with_capacity(files.len());
        let mut digests = Vec::with_capacity(files.len());
        for (i, file) in files.iter().enumerate() {
            if i > 0 {
                joined.push(b',');
            }
            let start = joined.len();
            encode_file(file, &mut joined)?;
            spans.push(start..joined.len());
            digests.push(file.digest());
        }
        Ok(Self {
            inner: Arc::new(SharedInner {
                files,
                digests,
                joined: Bytes::from(joined),
                spans,
                gzip: OnceLock::new(),
                zstd: OnceLock::new(),
            }),
        })
    }

    /// The shared files.
    pub fn files(&self) -> &ArtifactSet {
        &self.inner.files
    }

    /// Size of the encoded shared part, in bytes.
    pub fn encoded_len(&self) -> usize {
        self.inner.joined.len()
    }
}

impl SharedInner {
    /// The shared pieces in a compressed `coding`, made on first need.
    fn pieces(&self, coding: ContentCoding) -> Result<&SharedPieces> {
        let slot = match coding {
            ContentCoding::Zstd => &self.zstd,
            _ => &self.gzip,
        };
        slot.get_or_init(|| {
            let piece = |data: Bytes| compressed_piece(coding, &data).map_err(|e| e.to_string());
            Ok(SharedPieces {
                coding,
                joined: piece(self.joined.clone())?,
                comma: piece(Bytes::from_static(b","))?,
                suffix: piece(Bytes::from_static(BODY_SUFFIX))?,
                files: self.spans.iter().map(|_| OnceLock::new()).collect(),
            })
        })
        .as_ref()
        .map_err(|message| source_error(message.clone()))
    }

    fn file_piece(&self, pieces: &SharedPieces, index: usize) -> Result<Bytes> {
        let (Some(slot), Some(span)) = (pieces.files.get(index), self.spans.get(index)) else {
            return Err(source_error(format!("no shared file #{index}")));
        };
        slot.get_or_init(|| {
            let file = self.joined.slice(span.clone());
            compressed_piece(pieces.coding, &file).map_err(|e| e.to_string())
        })
        .clone()
        .map_err(source_error)
    }

    /// The bytes of shared files `run` (adjacent files, commas included).
    fn run(&self, run: &Range<usize>) -> Bytes {
        let start = self.spans.get(run.start).map_or(0, |s| s.start);
        let end = run
            .end
            .checked_sub(1)
            .and_then(|last| self.spans.get(last))
            .map_or(start, |s| s.end);
        self.joined.slice(start..end.max(start))
    }
}

impl fmt::Debug for SharedFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedFiles")
            .field("files", &self.inner.files.len())
            .field("bytes", &self.inner.joined.len())
            .finish_non_exhaustive()
    }
}

/// Which shared files a payload carries.
#[derive(Debug, Clone)]
enum Kept {
    /// All of them (the node overrides none).
    All,
    /// The ones the node does not override, as runs of adjacent indexes.
    Runs(Box<[Range<usize>]>),
}

/// A payload ready to serve: the node's own part (`{"schema_version":1,
/// "files":[` and its own files, encoded when the source builds it) plus a
/// reference to its generation's [`SharedFiles`], and the ETag computed once.
/// Answering `/node` costs no serialization and no copy of the shared files;
/// [`chunks`](Self::chunks) gives the body in either coding.
///
/// Memory per payload is its own part (plus, once a client asked for gzip or
/// zstd, that part compressed), independent of the size of the shared files.
#[derive(Clone)]
pub struct ServedPayload {
    etag: String,
    /// `{"schema_version":1,"files":[`, the node's own files, and `,` when
    /// shared files follow.
    head: Bytes,
    shared: SharedFiles,
    kept: Kept,
    files: usize,
    len: usize,
    /// `head` as a gzip member, made on the first gzip request.
    gzip_head: OnceLock<Result<Bytes, String>>,
    /// `head` as a zstd frame, made on the first zstd request.
    zstd_head: OnceLock<Result<Bytes, String>>,
}

impl ServedPayload {
    /// Encodes `files` as a schema-1 payload and computes its ETag (the quoted
    /// SHA-256 digest of the set).
    pub fn new(files: ArtifactSet) -> Result<Self> {
        Self::merged(&files, &NO_SHARED_FILES)
    }

    /// The payload of `own` files merged with `shared` ones (a node's own file
    /// wins a path clash), byte for byte what encoding
    /// `own.merged_with_shared(shared.files())` gives, with the same ETag — but
    /// the shared files are neither encoded, hashed nor copied again.
    pub fn merged(own: &ArtifactSet, shared: &SharedFiles) -> Result<Self> {
        let inner = &shared.inner;
        let kept: Vec<usize> = inner
            .files
            .iter()
            .enumerate()
            .filter(|(_, file)| !own.contains(&file.path))
            .map(|(i, _)| i)
            .collect();
        let digest = ArtifactDigest::of_files(
            own.iter()
                .map(ArtifactFile::digest)
                .chain(kept.iter().filter_map(|&i| inner.digests.get(i).copied())),
        );
        let mut head = BODY_PREFIX.to_vec();
        for (i, file) in own.iter().enumerate() {
            if i > 0 {
                head.push(b',');
            }
            encode_file(file, &mut head)?;
        }
        if !own.is_empty() && !kept.is_empty() {
            head.push(b',');
        }
        let kept_count = kept.len();
        let kept = if kept_count == inner.files.len() {
            Kept::All
        } else {
            Kept::Runs(runs(&kept))
        };
        let mut payload = Self {
            etag: format!("\"{digest}\""),
            head: Bytes::from(head),
            shared: shared.clone(),
            kept,
            files: own.len() + kept_count,
            len: 0,
            gzip_head: OnceLock::new(),
            zstd_head: OnceLock::new(),
        };
        payload.len = payload.identity_chunks().iter().map(Bytes::len).sum();
        Ok(payload)
    }

    fn identity_chunks(&self) -> Vec<Bytes> {
        let inner = &self.shared.inner;
        let mut chunks = vec![self.head.clone()];
        match &self.kept {
            Kept::All => chunks.push(inner.joined.clone()),
            Kept::Runs(runs) => {
                for (i, run) in runs.iter().enumerate() {
                    if i > 0 {
                        chunks.push(Bytes::from_static(b","));
                    }
                    chunks.push(inner.run(run));
                }
            }
        }
        chunks.push(Bytes::from_static(BODY_SUFFIX));
        chunks.retain(|chunk| !chunk.is_empty());
        chunks
    }

    fn compressed_chunks(&self, coding: ContentCoding) -> Result<Vec<Bytes>> {
        let inner = &self.shared.inner;
        let pieces = inner.pieces(coding)?;
        let head = match coding {
            ContentCoding::Zstd => &self.zstd_head,
            _ => &self.gzip_head,
        };
        let head = head
            .get_or_init(|| compressed_piece(coding, &self.head).map_err(|e| e.to_string()))
            .clone()
            .map_err(source_error)?;
        let mut chunks = vec![head];
        match &self.kept {
            Kept::All if !inner.joined.is_empty() => chunks.push(pieces.joined.clone()),
            Kept::All => {}
            Kept::Runs(runs) => {
                for (i, index) in runs.iter().flat_map(Clone::clone).enumerate() {
                    if i > 0 {
                        chunks.push(pieces.comma.clone());
                    }
                    chunks.push(inner.file_piece(pieces, index)?);
                }
            }
        }
        chunks.push(pieces.suffix.clone());
        Ok(chunks)
    }

    /// The body in `coding`, as chunks to send in order. Identity chunks are
    /// the JSON bytes (the node's own part, then slices of the shared buffer);
    /// gzip chunks are gzip members and zstd chunks zstd frames, which together
    /// form one stream of that coding that decodes to exactly the identity
    /// bytes. The shared pieces are made once per [`SharedFiles`] and coding,
    /// the node's own piece once per payload and coding.
    pub fn chunks(&self, coding: ContentCoding) -> Result<Vec<Bytes>> {
        match coding {
            ContentCoding::Identity => Ok(self.identity_chunks()),
            _ => self.compressed_chunks(coding),
        }
    }

    /// The identity body in one buffer (a copy: for tests and tools; the
    /// server sends [`chunks`](Self::chunks)).
    pub fn body(&self) -> Bytes {
        let mut body = Vec::with_capacity(self.len);
        for chunk in self.identity_chunks() {
            body.extend_from_slice(&chunk);
        }
        Bytes::from(body)
    }

    /// Length of the identity body, in bytes.
    pub fn body_len(&self) -> usize {
        self.len
    }

    /// The payload, decoded from the body.
    pub fn payload(&self) -> Result<NodeArtifactsPayload> {
        serde_json::from_slice(&self.body()).map_err(|e| Error::Source {
            message: "cannot decode a payload this crate encoded".into(),
            source: Some(Box::new(e)),
        })
    }

    /// Number of files.
    pub fn file_count(&self) -> usize {
        self.files
    }

    /// The strong ETag, quoted as sent in the `ETag` header. It names the
    /// content: the same whatever coding the body is sent in.
    pub fn etag(&self) -> &str {
        &self.etag
    }

    /// Whether an `If-None-Match` header value matches this payload's ETag
    /// (`*`, a list, weak `W/` tags all handled).
    pub fn matches_if_none_match(&self, header: &str) -> bool {
        header
            .split(',')
            .map(str::trim)
            .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == self.etag)
    }
}

/// Runs of adjacent values in ascending `indexes`.
fn runs(indexes: &[usize]) -> Box<[Range<usize>]> {
    let mut runs: Vec<Range<usize>> = Vec::new();
    for &index in indexes {
        match runs.last_mut() {
            Some(run) if run.end == index => run.end += 1,
            _ => runs.push(index..index + 1),
        }
    }
    runs.into_boxed_slice()
}

impl PartialEq for ServedPayload {
    fn eq(&self, other: &Self) -> bool {
        self.etag == other.etag && self.files == other.files && self.body() == other.body()
    }
}

impl Eq for ServedPayload {}

impl fmt::Debug for ServedPayload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServedPayload")
            .field("etag", &self.etag)
            .field("files", &self.files)
            .field("bytes", &self.len)
            .finish()
    }
}

/// A response body of ready chunks, one frame each, whose exact length is
/// known up front (so the answer carries `Content-Length`, as before).
#[derive(Debug)]
pub(crate) struct ChunkedBody {
    chunks: VecDeque<Bytes>,
    remaining: u64,
}

impl ChunkedBody {
    pub(crate) fn new(chunks: Vec<Bytes>) -> Self {
        let remaining = chunks.iter().map(|c| c.len() as u64).sum();
        Self {
            chunks: chunks.into_iter().filter(|c| !c.is_empty()).collect(),
            remaining,
        }
    }
}

impl http_body::Body for ChunkedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        Poll::Ready(this.chunks.pop_front().map(|chunk| {
            this.remaining = this.remaining.saturating_sub(chunk.len() as u64);
            Ok(Frame::data(chunk))
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use cfgsync_artifacts::ArtifactFile;
    use proptest::prelude::*;

    use super::*;

    fn joined(chunks: &[Bytes]) -> Vec<u8> {
        chunks.iter().flat_map(|c| c.iter().copied()).collect()
    }

    fn gunzip(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(data)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    fn unzstd(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len() * 64 + 1024);
        ruzstd::decoding::FrameDecoder::new()
            .decode_all_to_vec(data, &mut out)
            .unwrap();
        out
    }

    /// What today's server sends: the payload encoded from the merged set.
    fn reference(own: &ArtifactSet, shared: &ArtifactSet) -> Vec<u8> {
        serde_json::to_vec(&NodeArtifactsPayload::new(
            own.clone().merged_with_shared(shared),
        ))
        .unwrap()
    }

    /// Every coding of `merged(own, shared)` against the encoding of the merged
    /// set itself: identity byte for byte, gzip and zstd decoding to it, ETag
    /// and file count as for the merged set.
    fn check(own: &ArtifactSet, shared_set: &ArtifactSet, shared: &SharedFiles) {
        let merged = ServedPayload::merged(own, shared).unwrap();
        let expected = reference(own, shared_set);
        let identity = merged.chunks(ContentCoding::Identity).unwrap();
        assert_eq!(joined(&identity), expected);
        assert_eq!(merged.body().as_ref(), expected.as_slice());
        assert_eq!(merged.body_len(), expected.len());
        let gzip = merged.chunks(ContentCoding::Gzip).unwrap();
        assert_eq!(gunzip(&joined(&gzip)), expected);
        // A second compressed request gets the same members (cached).
        assert_eq!(merged.chunks(ContentCoding::Gzip).unwrap(), gzip);
        let zstd = merged.chunks(ContentCoding::Zstd).unwrap();
        assert_eq!(unzstd(&joined(&zstd)), expected);
        assert_eq!(merged.chunks(ContentCoding::Zstd).unwrap(), zstd);
        let full = ServedPayload::new(own.clone().merged_with_shared(shared_set)).unwrap();
        assert_eq!(merged.etag(), full.etag());
        assert_eq!(merged.file_count(), full.file_count());
        assert_eq!(
            merged.payload().unwrap().files,
            own.clone().merged_with_shared(shared_set)
        );
        assert_eq!(
            gunzip(&joined(&full.chunks(ContentCoding::Gzip).unwrap())),
            expected
        );
        assert_eq!(
            unzstd(&joined(&full.chunks(ContentCoding::Zstd).unwrap())),
            expected
        );
    }

    #[test]
    fn served_payload_body_is_the_original_wire_form() {
        let served = ServedPayload::new(
            ArtifactSet::from_files([ArtifactFile::new("/config.yaml", "id: 1\n")]).unwrap(),
        )
        .unwrap();
        assert_eq!(
            served.body().as_ref(),
            br#"{"schema_version":1,"files":[{"path":"/config.yaml","content":"id: 1\n"}]}"#
        );
        let etag = served.etag().to_owned();
        assert!(served.matches_if_none_match(&etag));
        assert!(served.matches_if_none_match(&format!("\"other\", W/{etag}")));
        assert!(served.matches_if_none_match("*"));
        assert!(!served.matches_if_none_match("\"other\""));
        assert_eq!(
            ServedPayload::new(ArtifactSet::new())
                .unwrap()
                .body()
                .as_ref(),
            br#"{"schema_version":1,"files":[]}"#
        );
    }

    #[test]
    fn merged_payload_is_the_merged_sets_encoding_with_and_without_overrides() {
        let file = |p: &str, c: &str| ArtifactFile::new(p, c);
        let shared_set = ArtifactSet::from_files([
            file("/a", "shared a"),
            file("/peers.yaml", "peers: [a, b]\n"),
            ArtifactFile::binary("/key", b"\x00\x01"),
            file("/d", "shared d").with_mode(0o640),
        ])
        .unwrap();
        let shared = SharedFiles::new(shared_set.clone()).unwrap();
        let own = |files: &[ArtifactFile]| ArtifactSet::from_files(files.to_vec()).unwrap();
        for own in [
            own(&[]),
            own(&[
                file("/config.yaml", "id: 1\n"),
                file("/b", "own b").with_mode(0o600),
            ]),
            own(&[file("/peers.yaml", "mine")]), // one in the middle
            own(&[file("/a", "mine"), file("/d", "mine")]), // first and last
            own(&[file("/key", "k"), file("/x", "x")]), // splits into two runs
            own(&[
                file("/a", "1"),
                file("/peers.yaml", "2"),
                file("/key", "3"),
                file("/d", "4"),
            ]), // all
        ] {
            check(&own, &shared_set, &shared);
        }
        // No shared files at all.
        let none = SharedFiles::default();
        check(&own(&[]), &ArtifactSet::new(), &none);
        check(&own(&[file("/c", "c")]), &ArtifactSet::new(), &none);
    }

    #[test]
    fn payloads_hold_the_shared_bytes_by_reference() {
        let peers = "x".repeat(100_000);
        let shared = SharedFiles::new(
            ArtifactSet::from_files([ArtifactFile::new("/peers.yaml", peers)]).unwrap(),
        )
        .unwrap();
        let own = ArtifactSet::from_files([ArtifactFile::new("/config.yaml", "id")]).unwrap();
        let a = ServedPayload::merged(&own, &shared).unwrap();
        let b = ServedPayload::merged(&own, &shared).unwrap();
        for coding in [
            ContentCoding::Identity,
            ContentCoding::Gzip,
            ContentCoding::Zstd,
        ] {
            let (a, b) = (a.chunks(coding).unwrap(), b.chunks(coding).unwrap());
            // The shared chunk of both payloads is the same allocation.
            let largest =
                |chunks: &[Bytes]| chunks.iter().max_by_key(|c| c.len()).unwrap().as_ptr();
            assert_eq!(largest(&a), largest(&b), "{coding:?}");
        }
        assert!(a.head.len() < 100);
    }

    fn arb_set(paths: &'static [&'static str]) -> impl Strategy<Value = ArtifactSet> {
        proptest::sample::subsequence(paths, 0..=paths.len()).prop_flat_map(|chosen| {
            let n = chosen.len();
            (
                Just(chosen),
                proptest::collection::vec("[a-z\n\"\\\\]{0,40}", n),
            )
                .prop_map(|(chosen, contents)| {
                    ArtifactSet::from_files(
                        chosen
                            .iter()
                            .zip(contents)
                            .map(|(path, content)| ArtifactFile::new(*path, content)),
                    )
                    .unwrap()
                })
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn any_merge_serves_the_merged_sets_bytes(
            own in arb_set(&["/a", "/c", "/e", "/own"]),
            shared_set in arb_set(&["/a", "/b", "/c", "/d", "/e"]),
        ) {
            let shared = SharedFiles::new(shared_set.clone()).unwrap();
            check(&own, &shared_set, &shared);
        }
    }
}
