//! The load generator: the boot storm (N nodes register and wait for their
//! files) and the throughput phase (many `/node` requests with the payload
//! ready). Every loop is bounded in count and in time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use std::io::Read as _;

use bytes::Bytes;
use cfgsync_core::ContentCoding;
use reqwest::StatusCode;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::fleet::Fleet;

/// How simulated nodes wait for their files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum WaitMode {
    /// `POST /node` with exponential backoff (+ jitter) until `200`.
    Poll,
    /// `POST /node?wait=SECS` until `200`.
    LongPoll,
}

impl WaitMode {
    pub fn name(self) -> &'static str {
        match self {
            Self::Poll => "poll",
            Self::LongPoll => "long-poll",
        }
    }
}

/// The coding simulated nodes ask for (`--compress`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Compress {
    /// `Accept-Encoding: gzip`.
    Gzip,
    /// `Accept-Encoding: zstd` (alone: our server prefers gzip when a request
    /// accepts both).
    Zstd,
}

impl Compress {
    pub fn name(self) -> &'static str {
        match self {
            Self::Gzip => "gzip",
            Self::Zstd => "zstd",
        }
    }
}

/// Time a request may take beyond its long-poll wait.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const POLL_BACKOFF_START: Duration = Duration::from_millis(10);
const POLL_BACKOFF_MAX: Duration = Duration::from_millis(500);

/// An HTTP client for the bench: one connection pool, no proxies.
pub fn http_client() -> anyhow::Result<reqwest::Client> {
    Ok(cfgsync_core::tls::http_client_builder()
        .no_proxy()
        .pool_max_idle_per_host(usize::MAX)
        .tcp_nodelay(true)
        .build()?)
}

/// An answer as it came over the wire.
struct Answer {
    status: StatusCode,
    /// The body as sent (in `coding`).
    body: Bytes,
    /// Its `Content-Encoding`.
    coding: ContentCoding,
}

/// POSTs `body`; with `compress`, says `Accept-Encoding` with that coding
/// (the body is left as sent: the caller decodes or checks it).
async fn post(
    http: &reqwest::Client,
    url: &str,
    body: &Bytes,
    timeout: Duration,
    compress: Option<Compress>,
) -> Result<Answer, String> {
    let mut request = http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.clone())
        .timeout(timeout);
    if let Some(compress) = compress {
        request = request.header(reqwest::header::ACCEPT_ENCODING, compress.name());
    }
    let response = request
        .send()
        .await
        .map_err(|e| format!("POST {url}: {e}"))?;
    let status = response.status();
    let encoding = response
        .headers()
        .get(reqwest::header::CONTENT_ENCODING)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let coding = ContentCoding::from_content_encoding(encoding.as_deref())
        .ok_or_else(|| format!("POST {url}: unexpected Content-Encoding {encoding:?}"))?;
    let body = response
        .bytes()
        .await
        .map_err(|e| format!("POST {url}: reading the body: {e}"))?;
    Ok(Answer {
        status,
        body,
        coding,
    })
}

/// A body decoded from `coding` — by flate2 and ruzstd directly, not by
/// cfgsync's client, so the bench checks the server independently.
fn decode(coding: ContentCoding, body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    match coding {
        ContentCoding::Gzip => {
            flate2::read::MultiGzDecoder::new(body)
                .read_to_end(&mut out)
                .map_err(|e| format!("gzip body does not decode: {e}"))?;
        }
        ContentCoding::Zstd => {
            let mut input = body;
            let mut decoder = ruzstd::decoding::FrameDecoder::new();
            while !input.is_empty() {
                decoder
                    .reset(&mut input)
                    .and_then(|()| {
                        decoder
                            .decode_blocks(&mut input, ruzstd::decoding::BlockDecodingStrategy::All)
                    })
                    .map_err(|e| format!("zstd body does not decode: {e}"))?;
                out.extend(decoder.collect().unwrap_or_default());
            }
        }
        _ => out.extend_from_slice(body),
    }
    Ok(out)
}

/// CRC-32 of each node's verified body, per coding it arrived in, so later
/// phases check every body cheaply without decoding it.
#[derive(Debug, Clone, Default)]
pub struct Checksums {
    pub identity: Vec<Option<u32>>,
    pub gzip: Vec<Option<u32>>,
    pub zstd: Vec<Option<u32>>,
}

impl Checksums {
    fn new(count: usize) -> Self {
        Self {
            identity: vec![None; count],
            gzip: vec![None; count],
            zstd: vec![None; count],
        }
    }

    fn of(&mut self, coding: ContentCoding) -> &mut Vec<Option<u32>> {
        match coding {
            ContentCoding::Gzip => &mut self.gzip,
            ContentCoding::Zstd => &mut self.zstd,
            _ => &mut self.identity,
        }
    }

    /// Checks the body of node `index`: against the CRC of its coding when
    /// known, else decoded and verified in full.
    fn check(&self, fleet: &Fleet, index: usize, answer: &Answer) -> Result<(), String> {
        let known = match answer.coding {
            ContentCoding::Gzip => &self.gzip,
            ContentCoding::Zstd => &self.zstd,
            _ => &self.identity,
        };
        match known.get(index).copied().flatten() {
            Some(expected) if expected == crc32fast::hash(&answer.body) => Ok(()),
            Some(_) => Err(format!(
                "{}: body differs from the verified payload",
                fleet.nodes[index].identifier
            )),
            None => fleet.verify(index, &decode(answer.coding, &answer.body)?),
        }
    }
}

/// What the boot storm measured.
#[derive(Debug, Clone, Serialize)]
pub struct BootResult {
    pub mode: WaitMode,
    pub nodes: usize,
    /// First register sent → last node holding its verified files.
    #[serde(serialize_with = "crate::report::ms")]
    pub wall: Duration,
    /// First register sent → the N-th registration acknowledged.
    #[serde(serialize_with = "crate::report::ms")]
    pub registered: Duration,
    /// From the N-th registration's `202` to each node holding its files.
    #[serde(serialize_with = "crate::report::ms")]
    pub delay_p50: Duration,
    #[serde(serialize_with = "crate::report::ms")]
    pub delay_p99: Duration,
    #[serde(serialize_with = "crate::report::ms")]
    pub delay_max: Duration,
    /// `/node` requests sent (incl. `425` answers and ended long-polls).
    pub node_requests: u64,
    /// Nodes that got wrong files, an unexpected status, a transport error or
    /// ran out of time.
    pub errors: usize,
    pub first_errors: Vec<String>,
    /// Mean payload per node: its JSON (identity) bytes, and what came over
    /// the wire (smaller when compression was asked for and sent).
    pub identity_bytes: u64,
    pub wire_bytes: u64,
    /// CRC-32 of each node's verified body (`None` where it failed), so the
    /// throughput phase can check every body cheaply.
    #[serde(skip)]
    pub checksums: Checksums,
}

struct NodeDone {
    index: usize,
    at: Instant,
    /// Checked after the storm, so the load generator's decoding and JSON
    /// parsing do not compete with the server for the CPU while delays are
    /// measured.
    body: Bytes,
    coding: ContentCoding,
    requests: u64,
}

/// N nodes register (at most `concurrency` registrations or polls in flight)
/// and wait for their files. Long-polls are not bounded by `concurrency`: a
/// node holds its long-poll until the N-th registration, so bounding them
/// below N would deadlock the storm; each long-polling node holds one
/// connection, as a real node does.
pub async fn boot_storm(
    base: &str,
    fleet: Arc<Fleet>,
    mode: WaitMode,
    concurrency: usize,
    long_poll_secs: u64,
    time_limit: Duration,
    compress: Option<Compress>,
) -> anyhow::Result<BootResult> {
    let http = http_client()?;
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let acked = Arc::new(AtomicUsize::new(0));
    let all_registered: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
    let register_url: Arc<str> = format!("{base}/register").into();
    let node_url: Arc<str> = match mode {
        WaitMode::Poll => format!("{base}/node"),
        WaitMode::LongPoll => format!("{base}/node?wait={long_poll_secs}"),
    }
    .into();
    let count = fleet.len();
    let started = Instant::now();
    let deadline = started + time_limit;
    let mut tasks = JoinSet::new();
    for index in 0..count {
        let (http, permits, acked, all_registered, fleet) = (
            http.clone(),
            permits.clone(),
            acked.clone(),
            all_registered.clone(),
            fleet.clone(),
        );
        let (register_url, node_url) = (register_url.clone(), node_url.clone());
        tasks.spawn(async move {
            let body = &fleet.nodes[index].body;
            {
                let _permit = permits.acquire().await.map_err(|e| e.to_string())?;
                let answer = post(&http, &register_url, body, REQUEST_TIMEOUT, None).await?;
                if answer.status != StatusCode::ACCEPTED {
                    return Err(format!(
                        "/register answered {}: {}",
                        answer.status,
                        String::from_utf8_lossy(&answer.body)
                    ));
                }
            }
            if acked.fetch_add(1, Ordering::SeqCst) + 1 == count {
                let _ = all_registered.set(Instant::now());
            }
            let mut backoff = POLL_BACKOFF_START;
            let mut requests = 0_u64;
            loop {
                let now = Instant::now();
                if now >= deadline {
                    return Err(format!("no files after {time_limit:?}"));
                }
                requests += 1;
                let answer = match mode {
                    WaitMode::Poll => {
                        let _permit = permits.acquire().await.map_err(|e| e.to_string())?;
                        post(&http, &node_url, body, REQUEST_TIMEOUT, compress).await?
                    }
                    WaitMode::LongPoll => {
                        let timeout = REQUEST_TIMEOUT + Duration::from_secs(long_poll_secs);
                        post(&http, &node_url, body, timeout, compress).await?
                    }
                };
                match answer.status {
                    StatusCode::OK => {
                        return Ok(NodeDone {
                            index,
                            at: Instant::now(),
                            body: answer.body,
                            coding: answer.coding,
                            requests,
                        });
                    }
                    StatusCode::TOO_EARLY => {
                        if mode == WaitMode::Poll {
                            tokio::time::sleep(jittered(backoff, index, requests)).await;
                            backoff = (backoff * 2).min(POLL_BACKOFF_MAX);
                        }
                    }
                    status => {
                        return Err(format!(
                            "/node answered {status}: {}",
                            String::from_utf8_lossy(&answer.body)
                        ));
                    }
                }
            }
        });
    }

    let mut checksums = Checksums::new(count);
    let (mut identity_bytes, mut wire_bytes) = (0_u64, 0_u64);
    let mut done = Vec::with_capacity(count);
    let mut first_errors = Vec::new();
    let mut errors = 0;
    let mut node_requests = 0;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(node)) => {
                node_requests += node.requests;
                done.push(node);
            }
            Ok(Err(message)) => {
                errors += 1;
                if first_errors.len() < 5 {
                    first_errors.push(message);
                }
            }
            Err(e) => {
                errors += 1;
                if first_errors.len() < 5 {
                    first_errors.push(format!("node task failed: {e}"));
                }
            }
        }
    }
    for node in &mut done {
        let body = std::mem::take(&mut node.body);
        let decoded = decode(node.coding, &body).map(Bytes::from);
        match decoded.and_then(|decoded| fleet.verify(node.index, &decoded).map(|()| decoded)) {
            Ok(decoded) => {
                checksums.identity[node.index] = Some(crc32fast::hash(&decoded));
                if node.coding != ContentCoding::Identity {
                    checksums.of(node.coding)[node.index] = Some(crc32fast::hash(&body));
                }
                identity_bytes += decoded.len() as u64;
                wire_bytes += body.len() as u64;
            }
            Err(message) => {
                errors += 1;
                if first_errors.len() < 5 {
                    first_errors.push(message);
                }
            }
        }
    }
    let ready = all_registered.get().copied();
    let last = done.iter().map(|d| d.at).max().unwrap_or(started);
    let mut delays: Vec<Duration> = done
        .iter()
        .map(|d| ready.map_or(Duration::ZERO, |r| d.at.saturating_duration_since(r)))
        .collect();
    delays.sort_unstable();
    Ok(BootResult {
        mode,
        nodes: count,
        wall: last.saturating_duration_since(started),
        registered: ready.map_or(Duration::ZERO, |r| r.saturating_duration_since(started)),
        delay_p50: percentile(&delays, 0.50),
        delay_p99: percentile(&delays, 0.99),
        delay_max: delays.last().copied().unwrap_or_default(),
        node_requests,
        errors,
        first_errors,
        identity_bytes: identity_bytes.checked_div(done.len() as u64).unwrap_or(0),
        wire_bytes: wire_bytes.checked_div(done.len() as u64).unwrap_or(0),
        checksums,
    })
}

/// `base` ± 50 %, spread deterministically over nodes and attempts.
fn jittered(base: Duration, index: usize, attempt: u64) -> Duration {
    let mixed = (index as u64)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(attempt.wrapping_mul(0xBF58_476D_1CE4_E5B9));
    let fraction = (mixed >> 40) as f64 / (1_u64 << 24) as f64; // [0, 1)
    base.mul_f64(0.5 + fraction)
}

/// The value at quantile `q` of sorted `values`.
pub fn percentile(values: &[Duration], q: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((values.len() - 1) as f64 * q).round() as usize;
    values[rank.min(values.len() - 1)]
}

/// What the throughput phase measured.
#[derive(Debug, Clone, Serialize)]
pub struct LoadResult {
    pub requests: usize,
    #[serde(serialize_with = "crate::report::ms")]
    pub elapsed: Duration,
    pub rps: f64,
    #[serde(serialize_with = "crate::report::ms")]
    pub p50: Duration,
    #[serde(serialize_with = "crate::report::ms")]
    pub p99: Duration,
    #[serde(serialize_with = "crate::report::ms")]
    pub max: Duration,
    pub body_bytes: u64,
    pub errors: usize,
    pub first_errors: Vec<String>,
    /// Whether the time limit ended the phase before all requests were sent.
    pub truncated: bool,
}

/// `requests` × `POST /node` across the fleet's identities, `concurrency` at a
/// time, after `warmup` unmeasured requests; each body's CRC-32 must match the
/// one verified in the boot storm.
pub async fn throughput(
    base: &str,
    fleet: Arc<Fleet>,
    checksums: Arc<Checksums>,
    concurrency: usize,
    requests: usize,
    time_limit: Duration,
    compress: Option<Compress>,
) -> anyhow::Result<LoadResult> {
    let http = http_client()?;
    let url: Arc<str> = format!("{base}/node").into();
    let warmup = (requests / 10).max(concurrency);
    let run = |requests| {
        run_requests(
            &http,
            &url,
            &fleet,
            &checksums,
            concurrency,
            requests,
            time_limit,
            compress,
        )
    };
    run(warmup).await;
    Ok(run(requests).await)
}

#[allow(clippy::too_many_arguments)]
async fn run_requests(
    http: &reqwest::Client,
    url: &Arc<str>,
    fleet: &Arc<Fleet>,
    checksums: &Arc<Checksums>,
    concurrency: usize,
    requests: usize,
    time_limit: Duration,
    compress: Option<Compress>,
) -> LoadResult {
    struct Shared {
        latencies: Vec<Duration>,
        errors: usize,
        first_errors: Vec<String>,
        bytes: u64,
    }
    let next = Arc::new(AtomicUsize::new(0));
    let shared = Arc::new(Mutex::new(Shared {
        latencies: Vec::with_capacity(requests),
        errors: 0,
        first_errors: Vec::new(),
        bytes: 0,
    }));
    let started = Instant::now();
    let deadline = started + time_limit;
    let mut workers = JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (http, url, fleet, checksums, next, shared) = (
            http.clone(),
            url.clone(),
            fleet.clone(),
            checksums.clone(),
            next.clone(),
            shared.clone(),
        );
        workers.spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = Vec::new();
            let mut bytes_total = 0_u64;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests || Instant::now() >= deadline {
                    break;
                }
                let index = i % fleet.len();
                let sent = Instant::now();
                let outcome = post(
                    &http,
                    &url,
                    &fleet.nodes[index].body,
                    REQUEST_TIMEOUT,
                    compress,
                )
                .await;
                let took = sent.elapsed();
                let checked = outcome.and_then(|answer| {
                    if answer.status != StatusCode::OK {
                        return Err(format!("/node answered {}", answer.status));
                    }
                    bytes_total += answer.body.len() as u64;
                    checksums.check(&fleet, index, &answer)
                });
                match checked {
                    Ok(()) => latencies.push(took),
                    Err(message) => errors.push(message),
                }
            }
            let mut shared = shared.lock().unwrap_or_else(PoisonError::into_inner);
            shared.latencies.extend(latencies);
            shared.errors += errors.len();
            shared.bytes += bytes_total;
            let room = 5_usize.saturating_sub(shared.first_errors.len());
            shared.first_errors.extend(errors.into_iter().take(room));
        });
    }
    while workers.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    let mut shared = shared.lock().unwrap_or_else(PoisonError::into_inner);
    let completed = shared.latencies.len() + shared.errors;
    shared.latencies.sort_unstable();
    LoadResult {
        requests: completed,
        elapsed,
        rps: shared.latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: percentile(&shared.latencies, 0.50),
        p99: percentile(&shared.latencies, 0.99),
        max: shared.latencies.last().copied().unwrap_or_default(),
        body_bytes: shared.bytes,
        errors: shared.errors,
        first_errors: shared.first_errors.clone(),
        truncated: completed < requests,
    }
}

/// All N nodes asking at the same instant over already open connections —
/// what a long-poll wake-up is, minus the payload building when the server
/// has its payloads at hand: the floor of the long-poll delay.
#[derive(Debug, Clone, Serialize)]
pub struct BurstResult {
    #[serde(serialize_with = "crate::report::ms")]
    pub p50: Duration,
    #[serde(serialize_with = "crate::report::ms")]
    pub p99: Duration,
    #[serde(serialize_with = "crate::report::ms")]
    pub max: Duration,
    pub errors: usize,
    pub first_errors: Vec<String>,
}

/// One request per node, all N released at once (after an unmeasured round
/// that opens the N connections); each body's CRC-32 is checked.
pub async fn burst(
    base: &str,
    fleet: Arc<Fleet>,
    checksums: Arc<Checksums>,
    time_limit: Duration,
    compress: Option<Compress>,
) -> anyhow::Result<BurstResult> {
    let http = http_client()?;
    let url: Arc<str> = format!("{base}/node").into();
    let mut result = BurstResult {
        p50: Duration::ZERO,
        p99: Duration::ZERO,
        max: Duration::ZERO,
        errors: 0,
        first_errors: Vec::new(),
    };
    for measured in [false, true] {
        let (go, _) = tokio::sync::broadcast::channel::<Instant>(1);
        let mut tasks = JoinSet::new();
        for index in 0..fleet.len() {
            let (http, url, fleet, checksums) =
                (http.clone(), url.clone(), fleet.clone(), checksums.clone());
            let mut start = go.subscribe();
            tasks.spawn(async move {
                let started = start.recv().await.map_err(|e| e.to_string())?;
                let body = &fleet.nodes[index].body;
                let answer = post(&http, &url, body, REQUEST_TIMEOUT, compress).await?;
                let took = started.elapsed();
                if answer.status != StatusCode::OK {
                    return Err(format!("/node answered {}", answer.status));
                }
                checksums.check(&fleet, index, &answer).map(|()| took)
            });
        }
        // Let every task reach its `recv` before the start signal.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = go.send(Instant::now());
        let mut took = Vec::with_capacity(fleet.len());
        let joined = tokio::time::timeout(time_limit, async {
            while let Some(outcome) = tasks.join_next().await {
                match outcome {
                    Ok(Ok(d)) => took.push(d),
                    Ok(Err(message)) => {
                        result.errors += usize::from(measured);
                        if measured && result.first_errors.len() < 5 {
                            result.first_errors.push(message);
                        }
                    }
                    Err(e) => {
                        result.errors += usize::from(measured);
                        if measured && result.first_errors.len() < 5 {
                            result.first_errors.push(format!("burst task failed: {e}"));
                        }
                    }
                }
            }
        })
        .await;
        if joined.is_err() && measured {
            result.errors += tasks.len();
            result
                .first_errors
                .push(format!("burst not done after {time_limit:?}"));
        }
        if measured {
            took.sort_unstable();
            result.p50 = percentile(&took, 0.50);
            result.p99 = percentile(&took, 0.99);
            result.max = took.last().copied().unwrap_or_default();
        }
    }
    Ok(result)
}
