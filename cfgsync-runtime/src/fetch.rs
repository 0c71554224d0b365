use std::time::{Duration, Instant};

use cfgsync_core::{
    ArtifactSet, CfgsyncClient, FetchOptions, FetchOutcome, NodeRegistration, Secret,
};
use tracing::Instrument as _;

use crate::{ArtifactOutputMap, Error, Result, Step, WrittenFile};

/// Default overall deadline of one client run.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// Default long-poll wait asked of the server per `POST /node`.
pub const DEFAULT_LONG_POLL: Duration = Duration::from_secs(30);

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
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_TIMEOUT,
            token: None,
            request_timeout: Duration::from_secs(10),
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(5),
            long_poll: Some(DEFAULT_LONG_POLL),
            max_payload_bytes: cfgsync_core::DEFAULT_MAX_PAYLOAD_BYTES,
            address_setting: None,
        }
    }
}

impl ClientOptions {
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
    deadline: Instant,
}

/// Retries of one step: attempts, the last retryable answer, the backoff.
struct Attempts {
    step: Step,
    count: u32,
    last: Option<cfgsync_core::Error>,
    round: u32,
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
            deadline,
        })
    }

    fn remaining(&self) -> Option<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }

    async fn register(&self, registration: &NodeRegistration) -> Result<()> {
        let mut attempts = Attempts::new(Step::Register);
        loop {
            let Some(remaining) = self.remaining() else {
                return Err(attempts.give_up(self.options.timeout));
            };
            attempts.count += 1;
            let answer =
                tokio::time::timeout(remaining, self.client.register_node(registration)).await;
            match answer {
                Err(_elapsed) => return Err(attempts.give_up(self.options.timeout)),
                Ok(Ok(())) => {
                    tracing::info!(attempts = attempts.count, "registered");
                    return Ok(());
                }
                Ok(Err(error)) if error.is_retryable() => attempts.retryable(error),
                Ok(Err(source)) => {
                    return Err(Error::Server {
                        step: Step::Register,
                        source,
                    });
                }
            }
            self.back_off(&mut attempts).await;
        }
    }

    async fn wait_for_payload(&self, registration: &NodeRegistration) -> Result<ArtifactSet> {
        let mut attempts = Attempts::new(Step::Fetch);
        loop {
            let Some(remaining) = self.remaining() else {
                return Err(attempts.give_up(self.options.timeout));
            };
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
            attempts.count += 1;
            let sent = Instant::now();
            let answer = tokio::time::timeout(
                remaining,
                self.client.fetch_node_config_with(registration, &options),
            )
            .await;
            match answer {
                Err(_elapsed) => return Err(attempts.give_up(self.options.timeout)),
                Ok(Ok(FetchOutcome::Updated { payload, etag })) => {
                    tracing::info!(
                        attempts = attempts.count,
                        files = payload.files.len(),
                        etag = etag.as_deref().unwrap_or(""),
                        "payload received"
                    );
                    return Ok(payload.files);
                }
                Ok(Ok(_not_modified)) => {
                    return Err(Error::Server {
                        step: Step::Fetch,
                        source: cfgsync_core::Error::InvalidResponse {
                            route: "/node",
                            reason: "304 Not Modified to a request without If-None-Match".into(),
                        },
                    });
                }
                Ok(Err(error)) if error.is_retryable() => {
                    let held = wait.is_some_and(|w| sent.elapsed() >= w);
                    attempts.retryable(error);
                    if held {
                        // The server held the long-poll for the whole wait: ask again.
                        attempts.round = 0;
                        continue;
                    }
                }
                Ok(Err(source)) => {
                    return Err(Error::Server {
                        step: Step::Fetch,
                        source,
                    });
                }
            }
            self.back_off(&mut attempts).await;
        }
    }

    /// Sleeps a full-jitter exponential delay, never past the deadline.
    async fn back_off(&self, attempts: &mut Attempts) {
        let cap = self
            .options
            .initial_backoff
            .saturating_mul(1u32 << attempts.round.min(16))
            .min(self.options.max_backoff);
        attempts.round = attempts.round.saturating_add(1);
        let cap_nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
        let delay = Duration::from_nanos(fastrand::u64(0..=cap_nanos));
        let delay = self
            .remaining()
            .map_or(Duration::ZERO, |left| delay.min(left));
        tracing::debug!(step = %attempts.step, ?delay, "retrying after backoff");
        tokio::time::sleep(delay).await;
    }
}

impl Attempts {
    fn new(step: Step) -> Self {
        Self {
            step,
            count: 0,
            last: None,
            round: 0,
        }
    }

    fn retryable(&mut self, error: cfgsync_core::Error) {
        tracing::info!(step = %self.step, attempt = self.count, answer = %answer_summary(&error), "not there yet; retrying");
        self.last = Some(error);
    }

    fn give_up(self, waited: Duration) -> Error {
        let last_answer = self
            .last
            .as_ref()
            .map_or_else(|| "none before the deadline".to_owned(), answer_summary);
        Error::DeadlineExceeded {
            step: self.step,
            waited,
            attempts: self.count,
            last_answer,
            source: self.last,
        }
    }
}

/// Checks that `url` can address a cfgsync server: `http` or `https`, a host, no
/// query or fragment. A malformed URL fails at once instead of being retried.
pub(crate) fn check_server_url(url: &str) -> std::result::Result<(), String> {
    let parsed = reqwest::Url::parse(url.trim())
        .map_err(|e| format!("not a URL ({e}); expected e.g. http://127.0.0.1:4400"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("the scheme must be http or https; expected e.g. http://127.0.0.1:4400".into());
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("the URL has no host".into());
    }
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
