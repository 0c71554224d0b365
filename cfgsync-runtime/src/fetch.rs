//! The client flow: register, wait for the payload (long-poll, or backoff with
//! jitter driven by backon) under one deadline, write the files.

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder as _, ExponentialBuilder, Retryable as _};
use cfgsync_core::{
    ArtifactSet, CfgsyncClient, FetchOptions, FetchOutcome, NodeRegistration, Secret,
};
use tracing::Instrument as _;

use crate::{ArtifactOutputMap, Error, Result, Step, WrittenFile};

/// Default overall deadline of one client run.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// Default long-poll wait asked of the server per `POST /node`.
pub const DEFAULT_LONG_POLL: Duration = Duration::from_secs(30);
/// Default bound on the requests of one step. With the default backoff (full
/// jitter up to 5 s, 2.5 s on average) that is about seven hours of polling,
/// far beyond the default deadline: the deadline is what normally ends a wait;
/// this bound stops a client whose backoff is configured near zero from
/// hammering the server.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 10_000;

/// How the client helpers talk to the server and how long they wait.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientOptions {
    /// One deadline for registering and waiting for the payload (writing the
    /// files, local and quick, follows). Default 300 s.
    pub timeout: Duration,
    /// Bearer token sent on every request (never logged).
    pub token: Option<Secret>,
    /// Time one request may take, connect included, long-poll wait excluded.
    /// Default 10 s.
    pub request_timeout: Duration,
    /// First retry delay; each retry doubles it, up to `max_backoff`, and sleeps a
    /// random time between zero and that (full jitter). Default 250 ms.
    pub initial_backoff: Duration,
    /// Longest retry delay. Default 5 s.
    pub max_backoff: Duration,
    /// Requests one step (register, fetch) may send before it gives up
    /// ([`Error::AttemptsExhausted`]), even with time left. Default
    /// [`DEFAULT_MAX_ATTEMPTS`].
    pub max_attempts: u32,
    /// Long-poll wait asked of the server (`POST /node?wait=`), capped by the
    /// time left; `None` polls with backoff only. Default 30 s. A server that
    /// answers `425` sooner than asked (the original ignores `wait`) is polled
    /// with backoff instead.
    pub long_poll: Option<Duration>,
    /// Largest payload read from the server; a larger one fails the fetch
    /// (not retried) without being held in memory. Default 64 MiB.
    pub max_payload_bytes: u64,
    /// The setting that holds the server address, named in transport errors
    /// (`connection refused to … (check CFG_SERVER_ADDR)`).
    pub address_setting: Option<&'static str>,
    /// While a step waits, log at `INFO` what it waits for (the step, the last
    /// answer, time elapsed and left) this often; `None` stays quiet. Default
    /// [`DEFAULT_PROGRESS_INTERVAL`].
    pub progress_interval: Option<Duration>,
}

/// How often a waiting client says what it waits for (10 s).
pub const DEFAULT_PROGRESS_INTERVAL: Duration = Duration::from_secs(10);

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_TIMEOUT,
            token: None,
            request_timeout: Duration::from_secs(10),
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(5),
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            long_poll: Some(DEFAULT_LONG_POLL),
            max_payload_bytes: cfgsync_core::DEFAULT_MAX_PAYLOAD_BYTES,
            address_setting: None,
            progress_interval: Some(DEFAULT_PROGRESS_INTERVAL),
        }
    }
}

impl ClientOptions {
    /// Sets how often a waiting step logs what it waits for (`None`: never).
    #[must_use]
    pub fn with_progress_interval(mut self, every: Option<Duration>) -> Self {
        self.progress_interval = every;
        self
    }

    /// Sets the overall deadline.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends `Authorization: Bearer <token>`.
    #[must_use]
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(Secret::new(token));
        self
    }

    /// Sets the time one request may take (long-poll wait excluded).
    #[must_use]
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets the first and the longest retry delay.
    #[must_use]
    pub fn with_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max;
        self
    }

    /// Sets how many requests one step may send.
    #[must_use]
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// Sets the largest payload read from the server.
    #[must_use]
    pub fn with_max_payload_bytes(mut self, limit: u64) -> Self {
        self.max_payload_bytes = limit;
        self
    }

    /// Names the setting that holds the server address in transport errors.
    #[must_use]
    pub fn with_address_setting(mut self, setting: &'static str) -> Self {
        self.address_setting = Some(setting);
        self
    }

    /// Sets the long-poll wait; `None` turns long-poll off.
    #[must_use]
    pub fn with_long_poll(mut self, wait: Option<Duration>) -> Self {
        self.long_poll = wait;
        self
    }
}

/// Waits for the node's payload (no registration: for servers that serve without
/// one, e.g. a bundle) and writes its files, with [`ClientOptions::default`].
pub async fn fetch_and_write_artifacts(
    registration: &NodeRegistration,
    server_url: &str,
    outputs: &ArtifactOutputMap,
) -> Result<Vec<WrittenFile>> {
    fetch_and_write_artifacts_with(registration, server_url, outputs, &ClientOptions::default())
        .await
}

/// [`fetch_and_write_artifacts`] with options.
pub async fn fetch_and_write_artifacts_with(
    registration: &NodeRegistration,
    server_url: &str,
    outputs: &ArtifactOutputMap,
    options: &ClientOptions,
) -> Result<Vec<WrittenFile>> {
    let run = Run::start(server_url, options)?;
    async {
        let files = run.wait_for_payload(registration).await?;
        write_payload(outputs, files).await
    }
    .instrument(span(registration, server_url))
    .await
}

/// Registers the node, waits for its payload and writes its files, with
/// [`ClientOptions::default`].
pub async fn register_and_fetch_artifacts(
    registration: &NodeRegistration,
    server_url: &str,
    outputs: &ArtifactOutputMap,
) -> Result<Vec<WrittenFile>> {
    register_and_fetch_artifacts_with(registration, server_url, outputs, &ClientOptions::default())
        .await
}

/// [`register_and_fetch_artifacts`] with options: one deadline covers all steps.
pub async fn register_and_fetch_artifacts_with(
    registration: &NodeRegistration,
    server_url: &str,
    outputs: &ArtifactOutputMap,
    options: &ClientOptions,
) -> Result<Vec<WrittenFile>> {
    let run = Run::start(server_url, options)?;
    async {
        run.register(registration).await?;
        let files = run.wait_for_payload(registration).await?;
        write_payload(outputs, files).await
    }
    .instrument(span(registration, server_url))
    .await
}

fn span(registration: &NodeRegistration, server_url: &str) -> tracing::Span {
    tracing::info_span!("cfgsync_client", node = %registration.identifier, server = server_url)
}

async fn write_payload(
    outputs: &ArtifactOutputMap,
    files: ArtifactSet,
) -> Result<Vec<WrittenFile>> {
    let outputs = outputs.clone();
    tokio::task::spawn_blocking(move || outputs.write_files(&files))
        .await
        .map_err(|source| Error::WriterTask { source })?
}

/// One client run: the client, the options and the one deadline.
struct Run<'a> {
    client: CfgsyncClient,
    options: &'a ClientOptions,
    started: Instant,
    deadline: Instant,
}

/// The attempts of one step so far: how many, and the last retryable answer.
/// Shared by the attempts and the delays between them, hence atomics.
struct Attempts {
    step: Step,
    count: AtomicU32,
    last: Mutex<Option<cfgsync_core::Error>>,
}

/// How one attempt of a step ended, when it did not give the result.
enum Miss {
    /// A retryable answer (kept in [`Attempts`]): back off, then try again.
    Retry,
    /// The server held a long-poll for its whole wait: ask again at once,
    /// with the backoff started afresh.
    Held,
    /// The deadline passed before or during the attempt.
    Deadline,
    /// An answer waiting will not change.
    Fail(Error),
}

impl<'a> Run<'a> {
    fn start(server_url: &str, options: &'a ClientOptions) -> Result<Self> {
        check_server_url(server_url).map_err(|reason| Error::InvalidServerUrl {
            url: server_url.to_owned(),
            reason,
        })?;
        let mut builder = CfgsyncClient::builder(server_url)
            .timeout(options.request_timeout)
            .max_payload_bytes(options.max_payload_bytes);
        if let Some(setting) = options.address_setting {
            builder = builder.address_setting(setting);
        }
        if let Some(token) = &options.token {
            builder = builder.bearer_token(token.expose());
        }
        let client = builder.build().map_err(|source| Error::Client { source })?;
        let now = Instant::now();
        // A deadline too far to represent is as good as none.
        let deadline = now
            .checked_add(options.timeout)
            .or_else(|| now.checked_add(Duration::from_secs(365 * 24 * 3600)))
            .unwrap_or(now);
        Ok(Self {
            client,
            options,
            started: now,
            deadline,
        })
    }

    fn remaining(&self) -> Option<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }

    async fn register(&self, registration: &NodeRegistration) -> Result<()> {
        let attempts = &Attempts::new(Step::Register);
        let registering = self.retry(attempts, |remaining| async move {
            match tokio::time::timeout(remaining, self.client.register_node(registration)).await {
                Err(_elapsed) => Err(Miss::Deadline),
                Ok(Ok(())) => Ok(()),
                Ok(Err(error)) if error.is_retryable() => Err(attempts.retryable(error)),
                Ok(Err(source)) => Err(Miss::Fail(Error::Server {
                    step: Step::Register,
                    source,
                })),
            }
        });
        self.reporting(registration, attempts, registering).await?;
        tracing::debug!(attempts = attempts.count(), "registered");
        Ok(())
    }

    async fn wait_for_payload(&self, registration: &NodeRegistration) -> Result<ArtifactSet> {
        let attempts = &Attempts::new(Step::Fetch);
        let waiting = self.retry(attempts, |remaining| {
            self.fetch_once(registration, remaining, attempts)
        });
        self.reporting(registration, attempts, waiting).await
    }

    /// Runs a step's `work`, logging at `INFO` every `progress_interval` what
    /// it is waiting for, so a long wait is never silent.
    async fn reporting<T>(
        &self,
        registration: &NodeRegistration,
        attempts: &Attempts,
        work: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let Some(every) = self.options.progress_interval.filter(|d| !d.is_zero()) else {
            return work.await;
        };
        let mut work = std::pin::pin!(work);
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                result = &mut work => return result,
                _ = ticker.tick() => self.report(&registration.identifier, attempts),
            }
        }
    }

    /// One progress line: the step, the last answer, elapsed and left.
    fn report(&self, node: &str, attempts: &Attempts) {
        let elapsed = self.started.elapsed().as_secs();
        let left = self.remaining().unwrap_or_default().as_secs();
        let last = attempts.last_summary().unwrap_or_else(|| {
            if attempts.step == Step::Fetch && self.options.long_poll.is_some() {
                "none yet (the server holds our long-poll until the config is ready)".to_owned()
            } else {
                "none yet".to_owned()
            }
        });
        let tries = attempts.count();
        let server = self.client.base_url();
        match attempts.step {
            Step::Register => tracing::info!(
                step = %attempts.step,
                attempts = tries,
                "{node}: still registering with {server}: last answer {last}; {elapsed} s elapsed, \
                 {left} s left"
            ),
            _ => tracing::info!(
                step = %attempts.step,
                attempts = tries,
                "{node}: registered; waiting for {server} to have our config: last answer \
                 {last}; {elapsed} s elapsed, {left} s left"
            ),
        }
    }

    /// One `POST /node`, as a long-poll when the options ask for one.
    async fn fetch_once(
        &self,
        registration: &NodeRegistration,
        remaining: Duration,
        attempts: &Attempts,
    ) -> std::result::Result<ArtifactSet, Miss> {
        // Whole seconds, as the server counts them; under a second left: no wait.
        let wait = self
            .options
            .long_poll
            .map(|w| Duration::from_secs(w.min(remaining).as_secs()))
            .filter(|w| !w.is_zero());
        let options = FetchOptions {
            if_none_match: None,
            wait,
        };
        let sent = Instant::now();
        let answer = tokio::time::timeout(
            remaining,
            self.client.fetch_node_config_with(registration, &options),
        )
        .await;
        match answer {
            Err(_elapsed) => Err(Miss::Deadline),
            Ok(Ok(FetchOutcome::Updated { payload, etag })) => {
                tracing::debug!(
                    attempts = attempts.count(),
                    files = payload.files.len(),
                    etag = etag.as_deref().unwrap_or(""),
                    "payload received"
                );
                Ok(payload.files)
            }
            Ok(Ok(_not_modified)) => Err(Miss::Fail(Error::Server {
                step: Step::Fetch,
                source: cfgsync_core::Error::InvalidResponse {
                    route: "/node",
                    reason: "304 Not Modified to a request without If-None-Match".into(),
                },
            })),
            Ok(Err(error)) if error.is_retryable() => {
                let held = wait.is_some_and(|w| sent.elapsed() >= w);
                match attempts.retryable(error) {
                    Miss::Retry if held => Err(Miss::Held),
                    miss => Err(miss),
                }
            }
            Ok(Err(source)) => Err(Miss::Fail(Error::Server {
                step: Step::Fetch,
                source,
            })),
        }
    }

    /// Runs `attempt` (given the time left) until it succeeds, fails for good,
    /// or the step runs out of time or attempts. backon drives the retries:
    /// it sleeps [`Self::delays`] between retryable answers. A long-poll the
    /// server held for its whole wait is asked again at once, with a fresh
    /// backoff (a new backon retry), as the wait itself was the delay.
    async fn retry<T, F, Fut>(&self, attempts: &Attempts, mut attempt: F) -> Result<T>
    where
        F: FnMut(Duration) -> Fut,
        Fut: Future<Output = std::result::Result<T, Miss>>,
    {
        loop {
            if attempts.count() >= self.options.max_attempts {
                return Err(attempts.exhausted(self.started.elapsed()));
            }
            let outcome = (|| {
                let next = self.remaining().map(|remaining| {
                    attempts.count.fetch_add(1, Ordering::Relaxed);
                    attempt(remaining)
                });
                async move {
                    match next {
                        Some(attempt) => attempt.await,
                        None => Err(Miss::Deadline),
                    }
                }
            })
            .retry(self.delays(attempts))
            .sleep(tokio::time::sleep)
            .when(|miss| matches!(miss, Miss::Retry))
            .notify(|_, delay| {
                tracing::debug!(step = %attempts.step, ?delay, "retrying after backoff");
            })
            .await;
            match outcome {
                Ok(value) => return Ok(value),
                Err(Miss::Held) => {}
                Err(Miss::Fail(error)) => return Err(error),
                Err(Miss::Deadline) => return Err(attempts.give_up(self.options.timeout)),
                // The delays ended: the deadline passed or the attempts are used up.
                Err(Miss::Retry) if self.remaining().is_none() => {
                    return Err(attempts.give_up(self.options.timeout));
                }
                Err(Miss::Retry) => return Err(attempts.exhausted(self.started.elapsed())),
            }
        }
    }

    /// The delays between attempts: backon's exponential sequence
    /// (`initial_backoff` doubling up to `max_backoff`), each replaced by a
    /// random time between zero and itself (full jitter), never past the
    /// deadline; the sequence ends once the deadline has passed or the step
    /// has used its attempts.
    fn delays<'s>(
        &'s self,
        attempts: &'s Attempts,
    ) -> impl Iterator<Item = Duration> + Send + Sync + Unpin + 's {
        let max = self.options.max_backoff;
        ExponentialBuilder::new()
            .with_min_delay(self.options.initial_backoff.min(max))
            .with_max_delay(max)
            .without_max_times()
            .build()
            .map_while(move |cap| {
                if attempts.count() >= self.options.max_attempts {
                    return None;
                }
                let left = self.remaining()?;
                let cap_nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
                Some(Duration::from_nanos(fastrand::u64(0..=cap_nanos)).min(left))
            })
    }
}

impl Attempts {
    fn new(step: Step) -> Self {
        Self {
            step,
            count: AtomicU32::new(0),
            last: Mutex::new(None),
        }
    }

    fn count(&self) -> u32 {
        self.count.load(Ordering::Relaxed)
    }

    /// Keeps a retryable answer as the last one.
    fn retryable(&self, error: cfgsync_core::Error) -> Miss {
        tracing::debug!(step = %self.step, attempt = self.count(), answer = %answer_summary(&error), "not there yet; retrying");
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(error);
        Miss::Retry
    }

    /// The last retryable answer, summarized, keeping it.
    fn last_summary(&self) -> Option<String> {
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(answer_summary)
    }

    fn last(&self) -> (String, Option<cfgsync_core::Error>) {
        let last = self
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let summary = last
            .as_ref()
            .map_or_else(|| "none before the deadline".to_owned(), answer_summary);
        (summary, last)
    }

    fn give_up(&self, waited: Duration) -> Error {
        let (last_answer, source) = self.last();
        Error::DeadlineExceeded {
            step: self.step,
            waited,
            attempts: self.count(),
            last_answer,
            source,
        }
    }

    fn exhausted(&self, elapsed: Duration) -> Error {
        let (last_answer, source) = self.last();
        Error::AttemptsExhausted {
            step: self.step,
            attempts: self.count(),
            elapsed,
            last_answer,
            source,
        }
    }
}

/// Checks that `url` can address a cfgsync server: `http` or `https`, a host, no
/// query or fragment. A malformed URL fails at once instead of being retried.
pub(crate) fn check_server_url(url: &str) -> std::result::Result<(), String> {
    crate::settings::parse_http_url(url)?;
    let parsed = reqwest::Url::parse(url.trim()).map_err(|e| format!("not a URL: {e}"))?;
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err("the URL cannot have a query or fragment".into());
    }
    Ok(())
}

/// A short form of a server answer: `425 not_ready`, `503 unavailable: ...`,
/// `no answer (...)`.
fn answer_summary(error: &cfgsync_core::Error) -> String {
    use cfgsync_core::Error as E;
    match error {
        E::NotReady { .. } => "425 not_ready".to_owned(),
        E::MissingConfig { .. } => "404 missing_config".to_owned(),
        E::Unauthorized { message, .. } => format!("401 unauthorized: {message}"),
        E::Forbidden { message, .. } => format!("403 forbidden: {message}"),
        E::Rejected {
            status,
            code,
            message,
            ..
        } => match (code.is_empty(), message.is_empty()) {
            (true, _) => format!("{status}: {message}"),
            (false, true) => format!("{status} {code}"),
            (false, false) => format!("{status} {code}: {message}"),
        },
        E::Transport { .. } => format!("no answer ({error})"),
        other => other.to_string(),
    }
}
