//! The crate error: one variant per stage, each naming the lablet and keeping its
//! source; and [`Failure`], what a stage fails with before the stage helper names
//! the lablet.

use crate::catalog::CatalogError;
use crate::config::ConfigError;
use crate::fanout::QueueError;
use crate::inspect::InspectError;
use crate::lease::LeaseError;
use crate::mosaic::DownloadError;
use crate::resolver::ResolveError;
use crate::store::StoreError;

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The stages of one sync, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Stage {
    /// Resolver query: name -> env vars incl. `MOSAIC_BASE_URL`.
    Resolve,
    /// Package download from Mosaic.
    Download,
    /// Package inspection.
    Inspect,
    /// Upload to the store.
    Store,
    /// LDS / SE refresh.
    FanOut,
    /// Catalog record.
    Record,
}

impl Stage {
    /// All stages in order.
    pub const ALL: [Stage; 6] = [
        Stage::Resolve,
        Stage::Download,
        Stage::Inspect,
        Stage::Store,
        Stage::FanOut,
        Stage::Record,
    ];

    /// `resolve`, `download`, `inspect`, `store`, `fan_out`, `record`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Resolve => "resolve",
            Self::Download => "download",
            Self::Inspect => "inspect",
            Self::Store => "store",
            Self::FanOut => "fan_out",
            Self::Record => "record",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Configuration cannot be used.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// The lablet name cannot be used (it becomes part of keys and file names).
    #[error("invalid lablet name {name:?}: {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// Stage resolve failed.
    #[error("cannot resolve content for lablet {lablet}: {source}")]
    Resolve {
        /// Lablet name.
        lablet: String,
        /// Cause.
        #[source]
        source: ResolveError,
    },
    /// Stage download failed.
    #[error("package not available for lablet {lablet}: {source}")]
    Download {
        /// Lablet name.
        lablet: String,
        /// Cause.
        #[source]
        source: DownloadError,
    },
    /// Stage inspect rejected the package.
    #[error("package invalid for lablet {lablet}: {source}")]
    Inspect {
        /// Lablet name.
        lablet: String,
        /// Cause.
        #[source]
        source: InspectError,
    },
    /// Stage store failed.
    #[error("blob upload failed for lablet {lablet}: {source}")]
    Store {
        /// Lablet name.
        lablet: String,
        /// Cause.
        #[source]
        source: StoreError,
    },
    /// The retry queue failed (stage fan-out).
    #[error("fan-out retry queue failed for lablet {lablet}: {source}")]
    Queue {
        /// Lablet name (or `*` when draining).
        lablet: String,
        /// Cause.
        #[source]
        source: QueueError,
    },
    /// The catalog-record outbox failed (stage store: the record is written
    /// down there before the upload).
    #[error("record outbox failed for lablet {lablet}: {source}")]
    Outbox {
        /// Lablet name (or `*` when draining).
        lablet: String,
        /// Cause.
        #[source]
        source: QueueError,
    },
    /// Stage record failed.
    #[error("record failed for lablet {lablet}: {source}")]
    Record {
        /// Lablet name.
        lablet: String,
        /// Cause.
        #[source]
        source: CatalogError,
    },
    /// Another sync held the lablet's storage key for longer than the wait
    /// (`LABLET_LOCK_WAIT_SECS`).
    #[error(
        "lablet {lablet} is busy: its storage key {key} is held by {holder} (syncing lablet {holder_lablet}); gave up after waiting {waited_secs} s (LABLET_LOCK_WAIT_SECS)"
    )]
    Busy {
        /// Lablet name.
        lablet: String,
        /// The storage key (URL).
        key: String,
        /// Who holds it.
        holder: String,
        /// The lablet the holder syncs.
        holder_lablet: String,
        /// Seconds waited.
        waited_secs: u64,
    },
    /// The lablet's storage key belongs to another lablet: refused before
    /// anything was downloaded or stored.
    #[error(
        "storage key {key} already belongs to lablet {owner}; lablet {lablet} maps to the same key under LABLET_LOCATION {template:?}: refused, nothing stored"
    )]
    KeyTaken {
        /// Lablet name.
        lablet: String,
        /// The storage key (URL).
        key: String,
        /// The lablet the key belongs to.
        owner: String,
        /// The location template in effect.
        template: String,
    },
    /// Locking or claiming the lablet's storage key in the store failed (the
    /// store is down, or refuses): stage store, before anything was
    /// downloaded.
    #[error(
        "blob upload failed for lablet {lablet}: cannot lock or claim its storage key {key}: {source}"
    )]
    Lease {
        /// Lablet name.
        lablet: String,
        /// The storage key (URL).
        key: String,
        /// Cause.
        #[source]
        source: LeaseError,
    },
    /// The lease of the lablet's storage key was lost mid-sync.
    #[error(
        "lablet {lablet}: the lease of storage key {key} was lost (taken over by another replica, or not renewable in time); the sync stopped before its next visible step"
    )]
    LeaseLost {
        /// Lablet name.
        lablet: String,
        /// The storage key (URL).
        key: String,
    },
    /// A catalog query (outside a sync) failed.
    #[error("catalog query failed: {0}")]
    Catalog(#[source] CatalogError),
    /// Local state (work directory, locks) failed.
    #[error("{what}: {source}")]
    Local {
        /// What was being done.
        what: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// The sync stage that failed, if the error belongs to one. A name that
    /// cannot be used belongs to none: it is refused before any stage runs.
    pub fn stage(&self) -> Option<Stage> {
        match self {
            Self::Resolve { .. } => Some(Stage::Resolve),
            Self::Download { .. } => Some(Stage::Download),
            Self::Inspect { .. } => Some(Stage::Inspect),
            Self::Store { .. } | Self::Outbox { .. } | Self::Lease { .. } => Some(Stage::Store),
            Self::Queue { .. } => Some(Stage::FanOut),
            Self::Record { .. } => Some(Stage::Record),
            Self::InvalidName { .. }
            | Self::Config(_)
            | Self::Catalog(_)
            | Self::Local { .. }
            | Self::Busy { .. }
            | Self::KeyTaken { .. }
            | Self::LeaseLost { .. } => None,
        }
    }

    /// Whether running the same sync again may succeed without any change.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Resolve { source, .. } => source.is_retryable(),
            Self::Download { source, .. } => source.is_retryable(),
            Self::Store { source, .. } => source.is_retryable(),
            Self::Record { source, .. } | Self::Catalog(source) => source.is_retryable(),
            Self::Lease { source, .. } => source.is_retryable(),
            Self::Queue { .. }
            | Self::Outbox { .. }
            | Self::Local { .. }
            | Self::Busy { .. }
            | Self::LeaseLost { .. } => true,
            Self::Config(_)
            | Self::InvalidName { .. }
            | Self::Inspect { .. }
            | Self::KeyTaken { .. } => false,
        }
    }
}

/// What a stage fails with, before [`Failure::named`] names the lablet: the
/// stage helper does that once for every stage.
#[derive(Debug)]
pub(crate) enum Failure {
    Resolve(ResolveError),
    Download(DownloadError),
    Inspect(InspectError),
    Store(StoreError),
    Outbox(QueueError),
    Queue(QueueError),
    Record(CatalogError),
    Config(ConfigError),
    Local {
        what: String,
        source: std::io::Error,
    },
}

impl Failure {
    /// The crate error for lablet `lablet`.
    pub(crate) fn named(self, lablet: &str) -> Error {
        let lablet = lablet.to_owned();
        match self {
            Self::Resolve(source) => Error::Resolve { lablet, source },
            Self::Download(source) => Error::Download { lablet, source },
            Self::Inspect(source) => Error::Inspect { lablet, source },
            Self::Store(source) => Error::Store { lablet, source },
            Self::Outbox(source) => Error::Outbox { lablet, source },
            Self::Queue(source) => Error::Queue { lablet, source },
            Self::Record(source) => Error::Record { lablet, source },
            Self::Config(source) => Error::Config(source),
            Self::Local { what, source } => Error::Local { what, source },
        }
    }
}

macro_rules! failure_from {
    ($($source:ty => $variant:ident),* $(,)?) => {
        $(impl From<$source> for Failure {
            fn from(source: $source) -> Self {
                Self::$variant(source)
            }
        })*
    };
}

failure_from! {
    ResolveError => Resolve,
    DownloadError => Download,
    InspectError => Inspect,
    StoreError => Store,
    CatalogError => Record,
    ConfigError => Config,
}
