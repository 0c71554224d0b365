//! Content codings of `/node` answers: choosing one from `Accept-Encoding`, and
//! building the gzip members a compressed body is made of.
//!
//! A gzip stream may hold several members one after the other; a decoder
//! yields their contents concatenated (RFC 1952 §2.2). A compressed payload is
//! therefore a member for the node's own part, the member of the shared part
//! compressed once per generation, and a member for the closing bytes.

use std::cell::RefCell;

use bytes::Bytes;
use flate2::{Compress, Compression, Crc, FlushCompress, Status};
use http::HeaderMap;
use http::header::ACCEPT_ENCODING;

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
}

impl ContentCoding {
    /// The `Content-Encoding` value, `None` for identity.
    pub fn header_value(self) -> Option<&'static str> {
        match self {
            Self::Identity => None,
            Self::Gzip => Some("gzip"),
        }
    }

    /// The coding to answer a request with, from all its `Accept-Encoding`
    /// fields (RFC 9110 §12.5.3).
    ///
    /// - No field: identity (the original's clients send none).
    /// - gzip when its weight (from `gzip`/`x-gzip`, else `*`) is above 0 and at
    ///   least that of identity (from `identity`, else `*`, else 1): `gzip`,
    ///   `gzip, deflate, br`, `*` all get gzip; `gzip;q=0.5, identity` gets
    ///   identity.
    /// - When nothing we have is acceptable (`identity;q=0` without gzip), the
    ///   field is disregarded and identity is sent, as RFC 9110 allows, rather
    ///   than refusing the node its files.
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
        let identity = self.identity.or(self.any).unwrap_or(1000);
        if gzip > 0 && gzip >= identity {
            ContentCoding::Gzip
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
    fn accept_encoding_picks_gzip_only_when_the_request_prefers_it() {
        use ContentCoding::{Gzip, Identity};
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
            (&["zstd"], Identity),
            (&["gzip;q=0"], Identity),
            (&["gzip;q=0.000"], Identity),
            (&["gzip ; q=0.001"], Identity), // identity (implicitly 1) preferred
            (&[" gzip ; Q=0.5 , identity ; q=0.4"], Gzip),
            (&["gzip;q=0.5, identity"], Identity),
            (&["gzip;q=0.5, identity;q=0.5"], Gzip),
            (&["identity;q=0"], Identity), // nothing acceptable: disregarded
            (&["identity;q=0, gzip;q=0.2"], Gzip),
            (&["*;q=0"], Identity),
            (&["*, gzip;q=0"], Identity),
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
}
