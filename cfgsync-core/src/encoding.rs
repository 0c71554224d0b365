//! Content codings of `/node` answers: choosing one from `Accept-Encoding`,
//! building the gzip members and zstd frames a compressed body is made of, and
//! decoding a compressed body within a size limit (the client's side).
//!
//! A gzip stream may hold several members one after the other, and a zstd
//! stream several frames; a decoder yields their contents concatenated (RFC
//! 1952 §2.2, RFC 8878 §3.1). A compressed payload is therefore a member (or
//! frame) for the node's own part, the one of the shared part compressed once
//! per generation, and one for the closing bytes.

use std::cell::RefCell;
use std::io::{self, Read};

use bytes::{Buf as _, Bytes};
use flate2::{Compress, Compression, Crc, FlushCompress, Status};
use http::HeaderMap;
use http::header::ACCEPT_ENCODING;
use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};
use ruzstd::encoding::{CompressionLevel, FrameCompressor, MatchGeneratorDriver};

use crate::{Error, Result};

/// A content coding a `/node` body can be sent in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ContentCoding {
    /// The JSON bytes as they are (no `Content-Encoding`): what the original's
    /// clients get.
    Identity,
    /// `Content-Encoding: gzip`.
    Gzip,
    /// `Content-Encoding: zstd` (RFC 8878), frames made by the pure-Rust
    /// `ruzstd` at its fastest level (about zstd's level 1).
    Zstd,
}

impl ContentCoding {
    /// The `Content-Encoding` value, `None` for identity.
    pub fn header_value(self) -> Option<&'static str> {
        match self {
            Self::Identity => None,
            Self::Gzip => Some("gzip"),
            Self::Zstd => Some("zstd"),
        }
    }

    /// The coding a `Content-Encoding` value names (case-insensitive; none or
    /// `identity` is identity), `None` for a coding this crate cannot decode.
    pub fn from_content_encoding(value: Option<&str>) -> Option<Self> {
        let value = value.map_or("", str::trim);
        if value.is_empty() || value.eq_ignore_ascii_case("identity") {
            Some(Self::Identity)
        } else if value.eq_ignore_ascii_case("gzip") || value.eq_ignore_ascii_case("x-gzip") {
            Some(Self::Gzip)
        } else if value.eq_ignore_ascii_case("zstd") {
            Some(Self::Zstd)
        } else {
            None
        }
    }

    /// The coding to answer a request with, from all its `Accept-Encoding`
    /// fields (RFC 9110 §12.5.3).
    ///
    /// - No field: identity (the original's clients send none).
    /// - Each coding's weight comes from its name (`gzip`/`x-gzip`, `zstd`,
    ///   `identity`), else from `*`; unnamed, gzip and zstd weigh 0 and
    ///   identity 1.
    /// - The heavier of gzip and zstd, **gzip when they weigh the same** (its
    ///   body is 15–25 % smaller on a peer list, and both are compressed once
    ///   per payload; see `BENCHMARKS.md`), is sent when its weight is above 0
    ///   and at least that of identity: `gzip`, `gzip, zstd`, `*` get gzip;
    ///   `zstd`, `zstd, gzip;q=0.9` get zstd; `gzip;q=0.5, identity` gets
    ///   identity.
    /// - When nothing we have is acceptable (`identity;q=0` alone), the field
    ///   is disregarded and identity is sent, as RFC 9110 allows, rather than
    ///   refusing the node its files.
    /// - Names are case-insensitive; malformed elements (a bad `q`) are skipped.
    pub fn negotiate(headers: &HeaderMap) -> Self {
        let mut fields = headers.get_all(ACCEPT_ENCODING).iter().peekable();
        if fields.peek().is_none() {
            return Self::Identity;
        }
        let mut weights = Weights::default();
        for field in fields {
            // A field that is not visible ASCII is skipped like a malformed element.
            if let Ok(text) = field.to_str() {
                weights.add_field(text);
            }
        }
        weights.choose()
    }
}

/// Weights (in thousandths, as `q` has at most three decimals) named by a
/// request; `None` where the request did not name the coding.
#[derive(Debug, Default)]
struct Weights {
    gzip: Option<u16>,
    zstd: Option<u16>,
    identity: Option<u16>,
    any: Option<u16>,
}

impl Weights {
    fn add_field(&mut self, text: &str) {
        for element in text.split(',') {
            let mut parts = element.split(';');
            let name = parts.next().unwrap_or("").trim();
            if name.is_empty() {
                continue;
            }
            let mut weight = Some(1000);
            for param in parts {
                let Some((key, value)) = param.split_once('=') else {
                    weight = None;
                    break;
                };
                if key.trim().eq_ignore_ascii_case("q") {
                    weight = parse_qvalue(value.trim());
                }
            }
            let Some(weight) = weight else { continue };
            let slot = if name.eq_ignore_ascii_case("gzip") || name.eq_ignore_ascii_case("x-gzip") {
                &mut self.gzip
            } else if name.eq_ignore_ascii_case("zstd") {
                &mut self.zstd
            } else if name.eq_ignore_ascii_case("identity") {
                &mut self.identity
            } else if name == "*" {
                &mut self.any
            } else {
                continue;
            };
            // Named twice: the higher weight counts.
            *slot = Some(slot.map_or(weight, |w| w.max(weight)));
        }
    }

    fn choose(&self) -> ContentCoding {
        let gzip = self.gzip.or(self.any).unwrap_or(0);
        let zstd = self.zstd.or(self.any).unwrap_or(0);
        let identity = self.identity.or(self.any).unwrap_or(1000);
        let (coding, weight) = if zstd > gzip {
            (ContentCoding::Zstd, zstd)
        } else {
            (ContentCoding::Gzip, gzip)
        };
        if weight > 0 && weight >= identity {
            coding
        } else {
            ContentCoding::Identity
        }
    }
}

/// `qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )`, in
/// thousandths; `None` when malformed.
fn parse_qvalue(text: &str) -> Option<u16> {
    let (int, frac) = match text.split_once('.') {
        Some((int, frac)) => (int, frac),
        None => (text, ""),
    };
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut thousandths = 0_u16;
    for (i, digit) in frac.bytes().enumerate() {
        thousandths += u16::from(digit - b'0') * [100, 10, 1][i];
    }
    match int {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

thread_local! {
    /// One raw-deflate compressor per thread, reset between members: a fresh
    /// one allocates and clears ~300 KiB of state, more than compressing a
    /// node's own part costs.
    static DEFLATE: RefCell<Compress> = RefCell::new(Compress::new(Compression::default(), false));
}

/// Header of a gzip member (RFC 1952): deflate, no name or time, unknown OS.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

/// `data` as one complete gzip member, on its own a valid gzip stream.
pub(crate) fn gzip_member(data: &[u8]) -> Result<Bytes> {
    let mut out = Vec::with_capacity(GZIP_HEADER.len() + data.len() / 2 + 64);
    out.extend_from_slice(&GZIP_HEADER);
    DEFLATE.with(|cell| {
        let mut deflate = cell.borrow_mut();
        deflate.reset();
        let mut input = data;
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity().max(256));
            }
            let before = deflate.total_in();
            let status = deflate
                .compress_vec(input, &mut out, FlushCompress::Finish)
                .map_err(|e| Error::Source {
                    message: format!("cannot gzip {} bytes of payload", data.len()),
                    source: Some(Box::new(e)),
                })?;
            let consumed = usize::try_from(deflate.total_in() - before).unwrap_or(input.len());
            input = input.get(consumed..).unwrap_or_default();
            if status == Status::StreamEnd {
                return Ok(());
            }
        }
    })?;
    let mut crc = Crc::new();
    crc.update(data);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    // ISIZE is the length modulo 2^32 (RFC 1952).
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    Ok(Bytes::from(out))
}

type ZstdCompressor = FrameCompressor<bytes::buf::Reader<Bytes>, Vec<u8>, MatchGeneratorDriver>;

thread_local! {
    /// One zstd compressor per thread, reset between frames: its match window
    /// (128 KiB) is allocated once, which makes a node's own part about 4×
    /// cheaper to compress than with a fresh one.
    static ZSTD: RefCell<ZstdCompressor> = RefCell::new(FrameCompressor::new(CompressionLevel::Fastest));
}

/// `data` as one complete zstd frame (with its content checksum), on its own a
/// valid zstd stream.
pub(crate) fn zstd_frame(data: Bytes) -> Bytes {
    let capacity = data.len() / 2 + 32;
    ZSTD.with(|cell| {
        let mut compressor = cell.borrow_mut();
        compressor.set_source(data.reader());
        compressor.set_drain(Vec::with_capacity(capacity));
        // Reading from memory and writing to a Vec cannot fail.
        compressor.compress();
        compressor.take_source();
        Bytes::from(compressor.take_drain().unwrap_or_default())
    })
}

/// `data` as a piece of a body in `coding`: a gzip member, a zstd frame, or
/// the bytes themselves. Pieces of one coding concatenate into one stream.
pub(crate) fn compressed_piece(coding: ContentCoding, data: &Bytes) -> Result<Bytes> {
    match coding {
        ContentCoding::Identity => Ok(data.clone()),
        ContentCoding::Gzip => gzip_member(data),
        ContentCoding::Zstd => Ok(zstd_frame(data.clone())),
    }
}

/// Why a compressed body did not decode.
#[derive(Debug)]
pub(crate) enum Undecodable {
    /// It decodes to more than the limit (decoding stopped there).
    TooLarge,
    /// It is not a valid stream of that coding.
    Corrupt(io::Error),
}

/// `body` decoded from `coding`, at most `limit` bytes: the decoder stops one
/// byte past the limit, so a small body that decodes to gigabytes (a
/// "compression bomb") costs no more than the limit.
pub(crate) fn decode(coding: ContentCoding, body: Bytes, limit: u64) -> Result<Bytes, Undecodable> {
    let reader: Box<dyn Read + '_> = match coding {
        ContentCoding::Identity => {
            return if u64::try_from(body.len()).unwrap_or(u64::MAX) > limit {
                Err(Undecodable::TooLarge)
            } else {
                Ok(body)
            };
        }
        ContentCoding::Gzip => Box::new(flate2::read::MultiGzDecoder::new(body.as_ref())),
        ContentCoding::Zstd => Box::new(ZstdFrames::new(&body, limit)),
    };
    let mut decoded = Vec::new();
    reader
        .take(limit.saturating_add(1))
        .read_to_end(&mut decoded)
        .map_err(Undecodable::Corrupt)?;
    if u64::try_from(decoded.len()).unwrap_or(u64::MAX) > limit {
        return Err(Undecodable::TooLarge);
    }
    Ok(Bytes::from(decoded))
}

/// Smallest window a zstd frame may ask for whatever the payload limit: 8 MiB,
/// libzstd's largest default window below its level 20.
const MIN_ZSTD_WINDOW_LIMIT: u64 = 8 << 20;

/// The contents of the zstd frames of a body, one after the other, as a
/// reader (skippable frames skipped). Each frame's content checksum, when it
/// has one, is checked once the frame is read.
struct ZstdFrames<'a> {
    input: &'a [u8],
    decoder: FrameDecoder,
    in_frame: bool,
}

impl<'a> ZstdFrames<'a> {
    fn new(input: &'a [u8], limit: u64) -> Self {
        let mut decoder = FrameDecoder::new();
        // A frame's window is reserved up front: no more than the payload
        // may hold (a header asking for 2 GiB is refused, not allocated).
        decoder.set_max_window_size(limit.max(MIN_ZSTD_WINDOW_LIMIT));
        Self {
            input,
            decoder,
            in_frame: false,
        }
    }

    fn finish_frame(&mut self) -> io::Result<()> {
        self.in_frame = false;
        match (
            self.decoder.get_checksum_from_data(),
            self.decoder.get_calculated_checksum(),
        ) {
            (Some(sent), Some(computed)) if sent != computed => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "zstd frame checksum mismatch (frame says {sent:08x}, content is {computed:08x})"
                ),
            )),
            _ => Ok(()),
        }
    }
}

/// A zstd decoding error as an `io::Error` that says what was wrong.
fn zstd_error(error: FrameDecoderError) -> io::Error {
    let message = match &error {
        FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::BadMagicNumber(magic)) => {
            format!("not a zstd frame (magic number {magic:#010x})")
        }
        FrameDecoderError::ReadFrameHeaderError(header) => {
            format!("bad zstd frame header: {header}")
        }
        FrameDecoderError::WindowSizeTooBig { requested, max } => format!(
            "zstd frame asks for a window of {requested} bytes, more than the {max} allowed"
        ),
        other => format!("zstd frame does not decode: {other}"),
    };
    io::Error::new(io::ErrorKind::InvalidData, message)
}

impl Read for ZstdFrames<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.in_frame {
                // One block (at most 128 KiB) at a time, so what is held
                // beyond the window is bounded whatever the frame says.
                while self.decoder.can_collect() == 0 && !self.decoder.is_finished() {
                    self.decoder
                        .decode_blocks(&mut self.input, BlockDecodingStrategy::UptoBlocks(1))
                        .map_err(zstd_error)?;
                }
                let read = self.decoder.read(buf)?;
                if read > 0 {
                    return Ok(read);
                }
                self.finish_frame()?;
            }
            if self.input.is_empty() {
                return Ok(0);
            }
            match self.decoder.reset(&mut self.input) {
                Ok(()) => self.in_frame = true,
                Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame {
                    length,
                    ..
                })) => {
                    self.input = usize::try_from(length)
                        .ok()
                        .and_then(|length| self.input.get(length..))
                        .ok_or_else(|| {
                            io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "zstd skippable frame cut off",
                            )
                        })?;
                }
                Err(error) => return Err(zstd_error(error)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use http::HeaderValue;

    use super::*;

    fn negotiate(fields: &[&str]) -> ContentCoding {
        let mut headers = HeaderMap::new();
        for field in fields {
            headers.append(ACCEPT_ENCODING, HeaderValue::from_str(field).unwrap());
        }
        ContentCoding::negotiate(&headers)
    }

    #[test]
    fn accept_encoding_picks_the_heaviest_coding_and_gzip_on_a_tie() {
        use ContentCoding::{Gzip, Identity, Zstd};
        for (fields, expected) in [
            (&[][..], Identity),
            (&[""], Identity),
            (&["gzip"], Gzip),
            (&["GZip"], Gzip),
            (&["x-gzip"], Gzip),
            (&["gzip, deflate, br, zstd"], Gzip),
            (&["br;q=1.0, gzip;q=0.8, *;q=0.1"], Gzip),
            (&["*"], Gzip),
            (&["deflate, br"], Identity),
            (&["zstd"], Zstd),
            (&["ZStd"], Zstd),
            (&["zstd, gzip"], Gzip), // a tie: gzip, the smaller body
            (&["zstd;q=0.5, gzip;q=0.5"], Identity), // identity (implicitly 1) preferred
            (&["zstd;q=0.5, gzip;q=0.5, identity;q=0.1"], Gzip),
            (&["zstd, gzip;q=0.9"], Zstd),
            (&["gzip;q=0.9, zstd"], Zstd),
            (&["br, zstd;q=0.2, identity;q=0"], Zstd),
            (&["zstd;q=0"], Identity),
            (&["zstd;q=0.5, identity"], Identity),
            (&["zstd;q=0.5, identity;q=0.5"], Zstd),
            (&["identity;q=0, zstd;q=0.2"], Zstd),
            (&["*, gzip;q=0, zstd;q=0"], Identity),
            (&["*;q=0.5, zstd"], Zstd),
            (&["zstd;q=x"], Identity),
            (&["gzip;q=0"], Identity),
            (&["gzip;q=0.000"], Identity),
            (&["gzip ; q=0.001"], Identity), // identity (implicitly 1) preferred
            (&[" gzip ; Q=0.5 , identity ; q=0.4"], Gzip),
            (&["gzip;q=0.5, identity"], Identity),
            (&["gzip;q=0.5, identity;q=0.5"], Gzip),
            (&["identity;q=0"], Identity), // nothing acceptable: disregarded
            (&["identity;q=0, gzip;q=0.2"], Gzip),
            (&["*;q=0"], Identity),
            (&["*, gzip;q=0"], Zstd), // `*` names zstd too
            (&["*;q=0.3, identity;q=0.2"], Gzip),
            (&["gzip;q=2"], Identity), // malformed weight: element skipped
            (&["gzip;q=0.1234"], Identity),
            (&["gzip;q=abc, deflate"], Identity),
            (&["gzip;level"], Identity),
            (&["gzip;q=1.000"], Gzip),
            (&["gzip;q=1.5"], Identity),
            (&[" , ,gzip,"], Gzip),
            (&["gzip;q=0", "gzip"], Gzip), // two fields; the higher weight wins
            (&["identity", "gzip"], Gzip),
            (&["zstd;q=0.1", "gzip;q=0.2", "zstd"], Zstd),
        ] {
            assert_eq!(negotiate(fields), expected, "Accept-Encoding: {fields:?}");
        }
    }

    #[test]
    fn a_non_ascii_field_is_disregarded() {
        let mut headers = HeaderMap::new();
        headers.insert(
            ACCEPT_ENCODING,
            HeaderValue::from_bytes(b"gzip\xff").unwrap(),
        );
        assert_eq!(ContentCoding::negotiate(&headers), ContentCoding::Identity);
    }

    fn gunzip(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(data)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn gzip_members_decode_alone_and_concatenated() {
        let large: Vec<u8> = (0..20_000_u32)
            .flat_map(|i| format!("  - id: node-{i:05}\n").into_bytes())
            .collect();
        let pieces: [&[u8]; 4] = [b"", b"{\"a\":", &large, b"]}"];
        let mut stream = Vec::new();
        let mut plain = Vec::new();
        for piece in pieces {
            let member = gzip_member(piece).unwrap();
            assert_eq!(gunzip(&member), piece);
            stream.extend_from_slice(&member);
            plain.extend_from_slice(piece);
        }
        assert_eq!(gunzip(&stream), plain);
        // The compressor is reused: the same input gives the same member.
        assert_eq!(gzip_member(&large).unwrap(), gzip_member(&large).unwrap());
        assert!(gzip_member(&large).unwrap().len() < large.len() / 4);
    }

    fn peer_list(count: u32) -> Vec<u8> {
        (0..count)
            .flat_map(|i| {
                format!("  - id: node-{i:05}\n    addr: 10.0.0.{}:4400\n", i % 250).into_bytes()
            })
            .collect()
    }

    /// A decoder other than ours: ruzstd's own whole-buffer one.
    fn unzstd(data: &[u8], capacity: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(capacity);
        FrameDecoder::new()
            .decode_all_to_vec(data, &mut out)
            .unwrap();
        out
    }

    #[test]
    fn zstd_frames_decode_alone_and_concatenated() {
        let large = peer_list(20_000); // several 128 KiB blocks
        let pieces: [&[u8]; 4] = [b"", b"{\"a\":", &large, b"]}"];
        let mut stream = Vec::new();
        let mut plain = Vec::new();
        for piece in pieces {
            let frame = zstd_frame(Bytes::copy_from_slice(piece));
            assert_eq!(unzstd(&frame, piece.len()), piece);
            stream.extend_from_slice(&frame);
            plain.extend_from_slice(piece);
        }
        assert_eq!(unzstd(&stream, plain.len()), plain);
        let decoded = decode(ContentCoding::Zstd, Bytes::from(stream), 1 << 30).unwrap();
        assert_eq!(decoded, plain);
        // The compressor is reused: the same input gives the same frame.
        let frame = zstd_frame(Bytes::from(large.clone()));
        assert_eq!(frame, zstd_frame(Bytes::from(large.clone())));
        assert!(frame.len() < large.len() / 4);
    }

    fn corrupt(coding: ContentCoding, body: Vec<u8>) -> String {
        match decode(coding, Bytes::from(body), 1 << 20) {
            Err(Undecodable::Corrupt(e)) => e.to_string(),
            other => panic!("{coding:?}: expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn decoding_stops_at_the_limit_and_names_a_corrupt_body() {
        // A bomb: 2 MiB of zeros in a few KiB; refused at a 128 KiB limit.
        // (Sixteen times the limit, as 16 MiB over 1 MiB did, at an eighth
        // of the debug build's compress and decode work: was 5 CPU-s.)
        let zeros = Bytes::from(vec![0_u8; 2 << 20]);
        for coding in [ContentCoding::Gzip, ContentCoding::Zstd] {
            let bomb = compressed_piece(coding, &zeros).unwrap();
            assert!(bomb.len() < 8 << 10, "{coding:?}: {} bytes", bomb.len());
            assert!(matches!(
                decode(coding, bomb.clone(), 128 << 10),
                Err(Undecodable::TooLarge)
            ));
            assert_eq!(decode(coding, bomb, 2 << 20).unwrap().len(), 2 << 20);
        }
        assert!(matches!(
            decode(ContentCoding::Identity, Bytes::from(vec![b' '; 11]), 10),
            Err(Undecodable::TooLarge)
        ));

        let text = Bytes::from(peer_list(2_000));
        let frame = zstd_frame(text.clone()).to_vec();
        // Not zstd at all.
        let reason = corrupt(ContentCoding::Zstd, b"{\"schema_version\":1}".to_vec());
        assert!(reason.contains("magic number"), "{reason}");
        // Cut off in the middle, or a frame with trailing garbage.
        assert!(!corrupt(ContentCoding::Zstd, frame[..frame.len() / 2].to_vec()).is_empty());
        let mut trailing = frame.clone();
        trailing.extend_from_slice(b"xyz!");
        assert!(!corrupt(ContentCoding::Zstd, trailing).is_empty());
        // One byte of content changed: the frame's checksum catches it.
        // (A frame of one raw block, so the content lies there as it is.)
        let mut flipped = ruzstd::encoding::compress_to_vec(
            &b"{\"content\":\"id: 1\"}"[..],
            CompressionLevel::Uncompressed,
        );
        let at = flipped.iter().position(|&b| b == b'1').unwrap();
        flipped[at] = b'2';
        let reason = corrupt(ContentCoding::Zstd, flipped);
        assert!(reason.contains("checksum"), "{reason}");
        // A header asking for a window far above the limit: refused, not allocated
        // (magic, descriptor: single segment off, window byte for 2 GiB).
        let huge_window = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, 0xf8, 0x01, 0x00, 0x00];
        let reason = corrupt(ContentCoding::Zstd, huge_window);
        assert!(reason.contains("asks for a window of"), "{reason}");
        assert!(!corrupt(ContentCoding::Gzip, frame).is_empty());
    }

    #[test]
    fn skippable_zstd_frames_are_skipped() {
        let mut stream = vec![0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 1, 2, 3];
        stream.extend_from_slice(&zstd_frame(Bytes::from_static(b"after")));
        assert_eq!(
            decode(ContentCoding::Zstd, Bytes::from(stream), 100).unwrap(),
            &b"after"[..]
        );
        let cut = vec![0x50, 0x2a, 0x4d, 0x18, 9, 0, 0, 0, 1];
        assert!(matches!(
            decode(ContentCoding::Zstd, Bytes::from(cut), 100),
            Err(Undecodable::Corrupt(_))
        ));
    }

    #[test]
    fn content_encoding_values_name_a_coding() {
        for (value, coding) in [
            (None, Some(ContentCoding::Identity)),
            (Some(""), Some(ContentCoding::Identity)),
            (Some("Identity"), Some(ContentCoding::Identity)),
            (Some("gzip"), Some(ContentCoding::Gzip)),
            (Some("x-gzip"), Some(ContentCoding::Gzip)),
            (Some(" ZSTD "), Some(ContentCoding::Zstd)),
            (Some("br"), None),
            (Some("gzip, zstd"), None),
        ] {
            assert_eq!(
                ContentCoding::from_content_encoding(value),
                coding,
                "{value:?}"
            );
        }
    }
}
