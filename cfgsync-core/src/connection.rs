//! One served connection and the bounds a hostile peer meets there: the idle
//! and header timeouts, the request body stall timeout, the connection cap's
//! `503`, the lingering close, and JSON bodies for the answers hyper writes
//! itself.

use std::convert::Infallible;
use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::server::{CfgsyncServerState, ServerLimits};
use crate::{ErrorBody, ErrorCode};

/// Connections beyond the cap that may be answered `503` at once; beyond
/// these, an excess connection is closed without an answer.
pub(crate) const REFUSAL_SLOTS: usize = 64;
/// How long answering one refused connection may take.
const REFUSAL_TIME: Duration = Duration::from_secs(1);
/// Largest connection cap the default sizing picks (an unlimited fd limit).
const MAX_DEFAULT_CONNECTIONS: u64 = 1 << 22;

/// The connection cap when none is configured: the process's open-file limit
/// (raised to its hard limit first, as Go's runtime does) less a sixteenth of
/// it, at least 64, kept for files, the registration store and outgoing
/// connections.
pub(crate) fn default_max_connections() -> usize {
    let limit = open_file_limit();
    let reserve = (limit / 16).max(64);
    let cap = limit
        .saturating_sub(reserve)
        .clamp(1, MAX_DEFAULT_CONNECTIONS);
    usize::try_from(cap).unwrap_or(1 << 16)
}

#[cfg(unix)]
fn open_file_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(error) => {
            tracing::warn!(%error, "cannot read the open-file limit; assuming 1024");
            1024
        }
    }
}

#[cfg(not(unix))]
fn open_file_limit() -> u64 {
    1024
}

/// Serves one accepted connection until it ends, expires, or shutdown drops it.
pub(crate) async fn serve_connection(
    stream: TcpStream,
    app: axum::Router,
    state: CfgsyncServerState,
    closing: CancellationToken,
    _slot: OwnedSemaphorePermit,
) {
    let _open = OpenConnection::new(&state.inner.metrics.connections_open);
    let _ = stream.set_nodelay(true);
    let limits = state.limits().clone();
    let activity = Activity::new();
    let io = TokioIo::new(ServerStream::new(stream, Arc::clone(&activity)));
    let stall_timeout = limits.header_read_timeout();
    let service = {
        let activity = Arc::clone(&activity);
        hyper::service::service_fn(move |request: http::Request<Incoming>| {
            let in_flight = activity.request_started();
            let request = request.map(|body| Body::new(StallTimeoutBody::new(body, stall_timeout)));
            let app = app.clone();
            async move {
                let response = match app.oneshot(request).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                };
                Ok::<_, Infallible>(response.map(|body| {
                    Body::new(InFlightBody {
                        inner: body,
                        _in_flight: in_flight,
                    })
                }))
            }
        })
    };
    let mut builder = http1::Builder::new();
    // hyper's own header timer runs from the moment it waits for a head; ours
    // (below) are finer, this one is a backstop.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout() + limits.idle_timeout());
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let mut closing_started = false;
    loop {
        // `notify_one` keeps a permit for a change made before this wait starts.
        let changed = activity.changed.notified();
        let expires = activity.deadline(&limits);
        let expiry = async {
            match expires {
                Some((at, _)) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "connection ended with an error");
                }
                return;
            }
            () = changed => {}
            () = expiry => {
                if let Some((at, reason)) = activity.deadline(&limits)
                    && at <= Instant::now()
                {
                    tracing::debug!(reason, "closing connection");
                    return;
                }
            }
            () = closing.cancelled(), if !closing_started => {
                closing_started = true;
                // hyper closes a connection that is between requests or has
                // seen nothing yet, and closes the others after their answer.
                connection.as_mut().graceful_shutdown();
                if activity.head_in_progress() {
                    // A partial request head would hold shutdown until the
                    // header timeout: there is no request to finish yet.
                    return;
                }
            }
        }
    }
}

/// Answers a connection beyond the cap with `503 unavailable` and closes it.
pub(crate) fn refuse(
    stream: TcpStream,
    refusals: &Arc<Semaphore>,
    state: &CfgsyncServerState,
    max_connections: usize,
) {
    state.inner.metrics.connections_refused.inc();
    tracing::debug!(max_connections, "connection cap reached: answering 503");
    let Ok(slot) = Arc::clone(refusals).try_acquire_owned() else {
        return;
    };
    let answer = fixed_answer(
        "503 Service Unavailable",
        ErrorCode::Unavailable,
        &format!("the server is serving its maximum of {max_connections} connections; retry later"),
    );
    tokio::spawn(async move {
        let _slot = slot;
        let mut stream = stream;
        let answered = async move {
            stream.write_all(&answer).await?;
            stream.shutdown().await?;
            // Drain what the client sent so closing does not reset the answer.
            let mut buf = [0u8; 4096];
            while stream.read(&mut buf).await? > 0 {}
            Ok::<_, io::Error>(())
        };
        let _ = tokio::time::timeout(REFUSAL_TIME, answered).await;
    });
}

/// A whole `Connection: close` answer with our JSON error body.
fn fixed_answer(status_line: &str, code: ErrorCode, message: &str) -> Vec<u8> {
    let body = error_body(code, message);
    let mut answer = format!(
        "HTTP/1.1 {status_line}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(&body);
    answer
}

fn error_body(code: ErrorCode, message: &str) -> Vec<u8> {
    serde_json::to_vec(&ErrorBody::new(code, message))
        .unwrap_or_else(|_| br#"{"code":"internal","message":"cannot encode error"}"#.to_vec())
}

/// Counts a connection in `cfgsync_connections_open` while it is served.
struct OpenConnection(Gauge);

impl OpenConnection {
    fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// What a connection is doing, for its timeouts.
struct Activity {
    state: Mutex<ActivityState>,
    changed: Notify,
}

struct ActivityState {
    /// Requests whose answer is not completely handed to hyper yet.
    in_flight: usize,
    /// When the connection last had no request in flight and no bytes of the next.
    idle_since: Instant,
    /// When the first byte of the next request head arrived.
    head_started: Option<Instant>,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(ActivityState {
                in_flight: 0,
                idle_since: Instant::now(),
                head_started: None,
            }),
            changed: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, ActivityState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bytes arrived: between requests, they start the next request head.
    fn bytes_read(&self) {
        let mut state = self.lock();
        if state.in_flight == 0 && state.head_started.is_none() {
            state.head_started = Some(Instant::now());
            drop(state);
            self.changed.notify_one();
        }
    }

    fn request_started(self: &Arc<Self>) -> InFlight {
        let mut state = self.lock();
        state.in_flight += 1;
        state.head_started = None;
        drop(state);
        self.changed.notify_one();
        InFlight(Arc::clone(self))
    }

    fn request_done(&self) {
        let mut state = self.lock();
        state.in_flight = state.in_flight.saturating_sub(1);
        if state.in_flight == 0 {
            state.idle_since = Instant::now();
        }
        drop(state);
        self.changed.notify_one();
    }

    /// When the connection expires if nothing changes, and why; `None` while a
    /// request is in flight.
    fn deadline(&self, limits: &ServerLimits) -> Option<(Instant, &'static str)> {
        let state = self.lock();
        if state.in_flight > 0 {
            return None;
        }
        Some(match state.head_started {
            Some(started) => (
                started + limits.header_read_timeout(),
                "request head not complete within header_read_timeout_secs",
            ),
            None => (
                state.idle_since + limits.idle_timeout(),
                "no request within idle_timeout_secs",
            ),
        })
    }

    fn head_in_progress(&self) -> bool {
        let state = self.lock();
        state.in_flight == 0 && state.head_started.is_some()
    }
}

/// One request in flight; done when dropped (its answer's body was sent).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_done();
    }
}

/// An answer's body that keeps its request counted as in flight until hyper
/// has taken all of it.
struct InFlightBody {
    inner: Body,
    _in_flight: InFlight,
}

impl HttpBody for InFlightBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that fails when no bytes arrive for `timeout`, so a client
/// trickling its body cannot hold a connection forever.
struct StallTimeoutBody {
    inner: Incoming,
    timeout: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl StallTimeoutBody {
    fn new(inner: Incoming, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            stalled: None,
        }
    }
}

impl HttpBody for StallTimeoutBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.stalled = None;
            return Poll::Ready(frame.map(|r| r.map_err(axum::BoxError::from)));
        }
        let timeout = this.timeout;
        let stalled = this
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        ready!(stalled.as_mut().poll(cx));
        Poll::Ready(Some(Err(Box::new(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "no request body bytes for {}s (header_read_timeout_secs)",
                timeout.as_secs()
            ),
        )))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// How long a closed connection may keep draining a request body the server
/// refused, so the client sees the answer rather than a reset.
const LINGER_TIME: Duration = Duration::from_secs(2);
/// How much of a refused body a closed connection reads and discards at most.
const LINGER_BYTES: usize = 64 * 1024 * 1024;

/// The server side of a TCP connection as hyper sees it:
///
/// - reads are reported to the connection's [`Activity`] (header timeout);
/// - the bodiless answers hyper writes itself for requests it cannot parse
///   (`400`, `414`, `431`) get our JSON error body (see [`json_for_hyper_answer`]);
/// - it closes the way RFC 9112 §9.6 asks ("lingering close"). When the
///   server answers without reading the whole body (405, 413, 404 on a route
///   that takes none), the HTTP layer closes the connection. Closing a socket
///   with unread bytes makes the kernel send a reset, and a client that is
///   still writing its body gets a broken pipe instead of the answer. So on
///   drop, unless the peer has already closed, the socket is handed to a task
///   that sends FIN and reads and discards until the peer closes, for at most
///   [`LINGER_TIME`] and [`LINGER_BYTES`]. Connections the peer closed (the
///   usual end of keep-alive) close at once.
struct ServerStream {
    stream: Option<TcpStream>,
    activity: Arc<Activity>,
    /// An answer replacing one hyper wrote, not yet written to the socket.
    pending: Vec<u8>,
    pending_written: usize,
}

impl ServerStream {
    fn new(stream: TcpStream, activity: Arc<Activity>) -> Self {
        Self {
            stream: Some(stream),
            activity,
            pending: Vec::new(),
            pending_written: 0,
        }
    }

    fn stream(&mut self) -> io::Result<&mut TcpStream> {
        self.stream
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }

    /// Writes what is left of a replacement answer.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.pending_written < self.pending.len() {
            let Self {
                stream,
                pending,
                pending_written,
                ..
            } = self;
            let stream = stream
                .as_mut()
                .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))?;
            let n = ready!(Pin::new(stream).poll_write(cx, &pending[*pending_written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *pending_written += n;
        }
        self.pending.clear();
        self.pending_written = 0;
        Poll::Ready(Ok(()))
    }

    /// Takes `buf` as written when it is one of hyper's bodiless error
    /// answers, queueing our JSON version instead.
    fn replace_hyper_answer(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Option<Poll<io::Result<usize>>> {
        let answer = json_for_hyper_answer(buf)?;
        self.pending = answer;
        self.pending_written = 0;
        Some(match self.poll_pending(cx) {
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            // The rest is written by the flush hyper does next.
            _ => Poll::Ready(Ok(buf.len())),
        })
    }
}

/// Our JSON version of a bodiless answer hyper wrote itself.
///
/// hyper answers a request it cannot parse with a bare head
/// (`HTTP/1.1 400 Bad Request`, `414 URI Too Long`, `431 Request Header
/// Fields Too Large`, `content-length: 0`) and closes the connection; it has
/// no hook to give that answer a body. Our own answers with those statuses
/// always carry a JSON body, so a whole head with one of them and
/// `content-length: 0` is hyper's, and gets the body here.
fn json_for_hyper_answer(buf: &[u8]) -> Option<Vec<u8>> {
    let rest = buf.strip_prefix(b"HTTP/1.1 ")?;
    if !buf.ends_with(b"\r\n\r\n") {
        return None;
    }
    let (code, message) = match rest.get(..3)? {
        b"400" => (
            ErrorCode::BadRequest,
            "malformed HTTP request: the request line or a header cannot be parsed",
        ),
        b"414" => (ErrorCode::UriTooLong, "the request URI is too long"),
        b"431" => (
            ErrorCode::RequestHeaderFieldsTooLarge,
            "the request head is too large: too many headers, or headers too long",
        ),
        _ => return None,
    };
    const EMPTY: &[u8] = b"\r\ncontent-length: 0\r\n";
    let at = buf.windows(EMPTY.len()).position(|w| w == EMPTY)?;
    let body = error_body(code, message);
    let mut answer = Vec::with_capacity(buf.len() + body.len() + 48);
    answer.extend_from_slice(&buf[..at]);
    answer.extend_from_slice(
        format!(
            "\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        )
        .as_bytes(),
    );
    answer.extend_from_slice(&buf[at + EMPTY.len()..]);
    answer.extend_from_slice(&body);
    Some(answer)
}

fn ready_err<T>(error: io::Error) -> Poll<io::Result<T>> {
    Poll::Ready(Err(error))
}

impl AsyncRead for ServerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let stream = match this.stream() {
            Ok(stream) => stream,
            Err(error) => return ready_err(error),
        };
        ready!(Pin::new(stream).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            this.activity.bytes_read();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ServerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        if let Some(replaced) = this.replace_hyper_answer(cx, buf) {
            return replaced;
        }
        match this.stream() {
            Ok(stream) => Pin::new(stream).poll_write(cx, buf),
            Err(error) => ready_err(error),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        if let Some(first) = bufs.iter().find(|b| !b.is_empty())
            && let Some(replaced) = this.replace_hyper_answer(cx, first)
        {
            return replaced;
        }
        match this.stream() {
            Ok(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Err(error) => ready_err(error),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        match this.stream() {
            Ok(stream) => Pin::new(stream).poll_flush(cx),
            Err(error) => ready_err(error),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        match this.stream() {
            Ok(stream) => Pin::new(stream).poll_shutdown(cx),
            Err(error) => ready_err(error),
        }
    }
}

impl Drop for ServerStream {
    fn drop(&mut self) {
        let Some(stream) = self.stream.take() else {
            return;
        };
        let mut probe = [0u8; 1];
        match stream.try_read(&mut probe) {
            // The peer closed, or the connection failed: nothing to protect.
            Ok(0) => return,
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => return,
            // Pending bytes, or none yet: the HTTP layer may just have drained
            // what had arrived while more is in flight, so the peer may still
            // be writing.
            _ => {}
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(linger(stream));
    }
}

async fn linger(mut stream: TcpStream) {
    // FIN after the answer already written, so the client reads it to the end.
    if stream.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut buf = [0u8; 4096];
        let mut left = LINGER_BYTES;
        while left > 0 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hyper_error_heads_get_a_json_body_and_ours_are_left_alone() {
        let head =
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let answer = String::from_utf8(json_for_hyper_answer(head).unwrap()).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        assert!(
            body.contains(r#""code":"request_header_fields_too_large""#),
            "{body}"
        );
        // A head with a body of its own, another status, a partial buffer: untouched.
        for other in [
            &b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n"[..],
            b"HTTP/1.1 304 Not Modified\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n",
            b"{\"schema_version\":1}",
        ] {
            assert!(json_for_hyper_answer(other).is_none());
        }
    }
}
