//! What went wrong when an HTTP request got no answer, from a `reqwest` error:
//! one classifier for every client of the workspace, so messages keep the
//! cause ("connection refused", "timed out") instead of "error sending request".

use std::error::Error as StdError;
use std::fmt;
use std::io;

/// Why a request got no (complete) answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TransportFailure {
    /// The request (connect, send or read) took longer than its timeout.
    TimedOut,
    /// Nothing listens at the address (TCP RST to the SYN).
    ConnectionRefused,
    /// The peer reset or closed the connection before the answer was complete.
    ConnectionReset,
    /// The host name does not resolve.
    Dns,
    /// The TLS handshake failed (certificate, protocol).
    Tls,
    /// The connection could not be made for another reason (no route, ...).
    Connect,
    /// The answer's body could not be read.
    Body,
    /// Anything else.
    Other,
}

impl TransportFailure {
    /// Classifies `error` by walking its chain of causes.
    pub fn of(error: &reqwest::Error) -> Self {
        let mut cause: Option<&(dyn StdError + 'static)> = Some(error);
        let mut text = String::new();
        while let Some(current) = cause {
            if let Some(io) = current.downcast_ref::<io::Error>()
                && let Some(kind) = Self::of_io(io.kind())
            {
                return kind;
            }
            if let Some(hyper) = current.downcast_ref::<hyper::Error>() {
                if hyper.is_timeout() {
                    return Self::TimedOut;
                }
                if hyper.is_incomplete_message() || hyper.is_canceled() {
                    return Self::ConnectionReset;
                }
            }
            text.push_str(&current.to_string().to_ascii_lowercase());
            text.push('\n');
            cause = current.source();
        }
        if error.is_timeout() || text.contains("timed out") {
            return Self::TimedOut;
        }
        if text.contains("dns error")
            || text.contains("failed to lookup address")
            || text.contains("name or service not known")
            || text.contains("no address associated")
        {
            return Self::Dns;
        }
        if text.contains("certificate")
            || text.contains("tls")
            || text.contains("handshake")
            || text.contains("invalid peer")
        {
            return Self::Tls;
        }
        if text.contains("connection closed before message completed")
            || text.contains("connection reset")
        {
            return Self::ConnectionReset;
        }
        if error.is_connect() {
            return Self::Connect;
        }
        if error.is_body() || error.is_decode() {
            return Self::Body;
        }
        Self::Other
    }

    fn of_io(kind: io::ErrorKind) -> Option<Self> {
        Some(match kind {
            io::ErrorKind::ConnectionRefused => Self::ConnectionRefused,
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof => Self::ConnectionReset,
            io::ErrorKind::TimedOut => Self::TimedOut,
            _ => return None,
        })
    }

    /// A short phrase: `connection refused`, `timed out`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TimedOut => "timed out",
            Self::ConnectionRefused => "connection refused",
            Self::ConnectionReset => "connection reset",
            Self::Dns => "DNS lookup failed",
            Self::Tls => "TLS handshake failed",
            Self::Connect => "cannot connect",
            Self::Body => "answer cut off",
            Self::Other => "request failed",
        }
    }

    /// Whether the address (or name) the request went to is a likely cause, so
    /// a message should name the setting that holds it.
    pub fn blames_address(self) -> bool {
        matches!(
            self,
            Self::ConnectionRefused | Self::Dns | Self::Tls | Self::Connect | Self::TimedOut
        )
    }
}

impl fmt::Display for TransportFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `failure` described for a request to `url`, naming `setting` (e.g.
/// `CFG_SERVER_ADDR`) when the address is a likely cause:
/// `connection refused to http://10.0.0.1:4400/node (check CFG_SERVER_ADDR)`.
pub fn describe_transport_failure(
    failure: TransportFailure,
    url: &str,
    setting: Option<&str>,
) -> String {
    match setting {
        Some(setting) if failure.blames_address() => {
            format!("{failure} to {url} (check {setting})")
        }
        _ => format!("{failure} to {url}"),
    }
}

/// The error's chain of causes, `: `-separated, for messages that keep the detail.
pub fn error_chain(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let next = inner.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        cause = inner.source();
    }
    text
}
