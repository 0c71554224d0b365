//! The crate's [`Error`] (each client error names its [`Step`]) and [`Result`].

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// The step of the client flow an [`Error`] comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Step {
    /// `POST /register`.
    Register,
    /// `POST /node`: waiting for the payload.
    Fetch,
    /// Writing the payload's files.
    Write,
}

impl Step {
    /// `register`, `fetch` or `write`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Register => "register",
            Self::Fetch => "fetch",
            Self::Write => "write",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Errors of `cfgsync-runtime`: of the client flow (each says which step failed
/// and on which input) and of the config-driven server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server gave an answer that waiting will not change (missing config,
    /// unauthorized, forbidden, a 4xx rejection, an invalid payload).
    #[error("{step}: {source}")]
    Server {
        /// `register` or `fetch`.
        step: Step,
        /// The client's typed error.
        #[source]
        source: cfgsync_core::Error,
    },

    /// The overall deadline passed while the step kept getting retryable answers.
    #[error(
        "{step}: gave up after {waited:?} and {attempts} attempt(s); last answer: {last_answer}"
    )]
    DeadlineExceeded {
        /// `register` or `fetch`.
        step: Step,
        /// The overall deadline.
        waited: Duration,
        /// Requests sent in this step.
        attempts: u32,
        /// The last answer, e.g. `425 not_ready` or `no answer (connection refused ...)`.
        last_answer: String,
        /// The last error, if a request had completed with one.
        #[source]
        source: Option<cfgsync_core::Error>,
    },

    /// The step sent as many requests as it may
    /// ([`ClientOptions::max_attempts`](crate::ClientOptions::max_attempts)),
    /// all answered retryably, before the deadline.
    #[error(
        "{step}: gave up after {attempts} attempt(s) in {elapsed:?}, the most allowed; last answer: {last_answer}"
    )]
    AttemptsExhausted {
        /// `register` or `fetch`.
        step: Step,
        /// Requests sent in this step.
        attempts: u32,
        /// Time since the run started.
        elapsed: Duration,
        /// The last answer, e.g. `425 not_ready`.
        last_answer: String,
        /// The last error.
        #[source]
        source: Option<cfgsync_core::Error>,
    },

    /// The server URL is not usable (checked before any request).
    #[error("invalid server URL {url:?}: {reason}")]
    InvalidServerUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The HTTP client could not be set up.
    #[error("client setup: {source}")]
    Client {
        /// The client's error.
        #[source]
        source: cfgsync_core::Error,
    },

    /// An artifact's path is refused: nothing of the payload was written.
    #[error("write: refusing artifact path {path:?}: {reason}; nothing was written")]
    UnsafePath {
        /// The artifact's path as the server sent it.
        path: String,
        /// Why it is refused.
        reason: String,
    },

    /// An artifact's content does not decode (bad base64): nothing was written.
    #[error("write: {source}; nothing was written")]
    Content {
        /// The artifact error, naming the path.
        #[source]
        source: cfgsync_artifacts::Error,
    },

    /// The output root cannot be resolved (e.g. a permission error on the way).
    #[error("write: cannot resolve the output root {}: {source}", .path.display())]
    OutputRoot {
        /// The output root.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// Writing a file failed.
    #[error("write: cannot {action} {} (artifact {artifact:?}): {source}", .path.display())]
    Io {
        /// The artifact's path as the server sent it.
        artifact: String,
        /// The local path involved.
        path: PathBuf,
        /// What was being done, e.g. `create directory`, `rename temp file onto`.
        action: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The blocking writer task did not complete.
    #[error("write: the writer task failed: {source}")]
    WriterTask {
        /// The join error.
        #[source]
        source: tokio::task::JoinError,
    },

    /// A configuration variable (or its flag) has an invalid value.
    #[error("invalid {var}={value:?}: {reason}")]
    InvalidVar {
        /// What the user typed: the variable, e.g. `CFG_HOST_IP`, or the
        /// flag, e.g. `--ip`.
        var: &'static str,
        /// The value as given (`***` for secrets).
        value: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The server config file is not valid.
    #[error("config {}: {message}", .path.display())]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong, naming the key.
        message: String,
    },

    /// The registration store URL cannot be opened.
    #[error("registration store {url}: {message}")]
    RegistrationStore {
        /// The store URL.
        url: String,
        /// What failed.
        message: String,
    },

    /// A `registration_log` key is set, but the registration store is not an
    /// object store (memory and file stores have no log to name or compact).
    #[error(
        "{key} is set, but registration_store is {store}: only an object store registration_store \
         has a log with a writer id and compaction; unset it or use an object store URL"
    )]
    RegistrationLogUnused {
        /// The key, with its variable.
        key: &'static str,
        /// The registration store as configured.
        store: String,
    },

    /// A signal handler (e.g. `SIGHUP` for reload) could not be installed.
    #[error("cannot listen for {signal}: {source}")]
    Signal {
        /// The signal.
        signal: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// An error of the core crate while serving (bundle files, binding).
    #[error(transparent)]
    Core(#[from] cfgsync_core::Error),

    /// An error of the adapter crate (registration stores, materializers).
    #[error(transparent)]
    Adapter(#[from] cfgsync_adapter::Error),

    /// A file or value a config key names failed (e.g. the file
    /// `source.artifacts_path` names cannot be read).
    #[error("{key}: {source}")]
    ConfigKey {
        /// The key path, e.g. `source.artifacts_path`.
        key: &'static str,
        /// What failed.
        #[source]
        source: Box<Error>,
    },

    /// A required configuration variable is not set and has no default.
    #[error("{var} is not set: {reason}")]
    MissingVar {
        /// The variable.
        var: &'static str,
        /// Why no default applies.
        reason: String,
    },
}

impl Error {
    /// This error, said to come from the config key `key`.
    pub(crate) fn at_key(self, key: &'static str) -> Self {
        Self::ConfigKey {
            key,
            source: Box::new(self),
        }
    }
}

impl From<crate::settings::SettingError> for Error {
    fn from(e: crate::settings::SettingError) -> Self {
        Self::InvalidVar {
            var: e.name,
            value: e.value,
            reason: e.reason,
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The client step this error comes from, if it comes from one.
    pub fn step(&self) -> Option<Step> {
        match self {
            Self::Server { step, .. }
            | Self::DeadlineExceeded { step, .. }
            | Self::AttemptsExhausted { step, .. } => Some(*step),
            Self::UnsafePath { .. }
            | Self::Content { .. }
            | Self::OutputRoot { .. }
            | Self::Io { .. }
            | Self::WriterTask { .. } => Some(Step::Write),
            _ => None,
        }
    }

    /// Whether running the same client again later may succeed: the deadline
    /// passed (or the attempts ran out) while the server was not ready or not
    /// reachable, or the server's
    /// answer is itself retryable. Refused paths, bad content, bad variables and
    /// rejections are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::DeadlineExceeded { .. } | Self::AttemptsExhausted { .. } => true,
            Self::Server { source, .. } => source.is_retryable(),
            _ => false,
        }
    }
}
