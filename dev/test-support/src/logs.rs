//! Log lines a test captures from `tracing`, to assert on what was (or was
//! never) logged.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tracing::subscriber::DefaultGuard;

/// The text every event passing a filter formats to (no ANSI codes), while
/// the guard [`CapturedLogs::start`] returns is alive.
///
/// The subscriber is the current thread's default, not the process's: tests
/// sharing a test binary do not see each other's lines. A `#[tokio::test]`
/// (current-thread runtime) runs every task it spawns on this thread, so a
/// server, a client and background tasks started by the test are captured;
/// work on other threads (`spawn_blocking`, a multi-thread runtime) is not.
#[derive(Debug, Clone, Default)]
pub struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl CapturedLogs {
    /// Captures the events `filter` lets through (an `EnvFilter` directive:
    /// `info`, `trace`, `cfgsync_lablet=debug`) until the guard is dropped.
    ///
    /// # Panics
    /// When `filter` is not a valid directive.
    pub fn start(filter: &str) -> (Self, DefaultGuard) {
        let logs = Self::default();
        #[allow(clippy::expect_used)] // a test's own constant
        let filter = tracing_subscriber::EnvFilter::try_new(filter).expect("a valid log filter");
        let subscriber = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .with_env_filter(filter)
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    /// Everything captured so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes()).into_owned()
    }

    /// The captured lines.
    pub fn lines(&self) -> Vec<String> {
        self.text().lines().map(str::to_owned).collect()
    }

    fn bytes(&self) -> MutexGuard<'_, Vec<u8>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl std::io::Write for CapturedLogs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.bytes().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for CapturedLogs {
    type Writer = CapturedLogs;

    fn make_writer(&'a self) -> CapturedLogs {
        self.clone()
    }
}
