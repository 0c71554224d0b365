//! A real browser for tests of HTML pages: headless Chromium, when installed.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long one Chromium run may take before it is killed.
const BROWSER_DEADLINE: Duration = Duration::from_secs(90);

/// Headless Chromium (the Debian package `chromium`; `.ci/run` installs it).
#[derive(Debug, Clone)]
pub struct Chromium {
    program: PathBuf,
}

impl Chromium {
    /// Chromium from `$CFGSYNC_CHROMIUM`, or `chromium` / `chromium-browser` on
    /// `PATH`; `None` (after saying loudly on stderr that `test` is skipped)
    /// when there is none.
    pub fn find(test: &str) -> Option<Self> {
        let found = std::env::var_os("CFGSYNC_CHROMIUM")
            .map(PathBuf::from)
            .filter(|p| p.is_file())
            .or_else(|| {
                let path = std::env::var_os("PATH")?;
                std::env::split_paths(&path)
                    .flat_map(|dir| ["chromium", "chromium-browser"].map(|name| dir.join(name)))
                    .find(|candidate| candidate.is_file())
            });
        if found.is_none() {
            eprintln!(
                "\n*** SKIPPED {test}: no `chromium` on PATH (apt-get install chromium, or set CFGSYNC_CHROMIUM) ***\n"
            );
        }
        found.map(|program| Self { program })
    }

    fn run(&self, args: &[&str], url: &str) -> std::io::Result<String> {
        let profile = tempfile::tempdir()?;
        let mut child = Command::new(&self.program)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(args)
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let mut stdout = child
            .stdout
            .take()
            .ok_or_else(|| std::io::Error::other("no stdout"))?;
        let reader = std::thread::spawn(move || {
            let mut out = String::new();
            stdout.read_to_string(&mut out).map(|_| out)
        });
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if started.elapsed() > BROWSER_DEADLINE {
                let _ = child.kill();
                let _ = child.wait();
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("chromium did not finish within {BROWSER_DEADLINE:?}"),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let out = reader
            .join()
            .map_err(|_| std::io::Error::other("stdout reader panicked"))??;
        if !status.success() {
            return Err(std::io::Error::other(format!(
                "chromium exited with {status}"
            )));
        }
        Ok(out)
    }

    /// The DOM of `url` after the page loaded and its scripts (if any) ran, as
    /// HTML (`--dump-dom`). Blocking: call it through `spawn_blocking` when the
    /// server under test runs in the same runtime.
    pub fn dump_dom(&self, url: &str) -> std::io::Result<String> {
        self.run(&["--dump-dom"], url)
    }

    /// A PNG screenshot of `url` at `width`×`height` written to `png`.
    pub fn screenshot(
        &self,
        url: &str,
        png: &Path,
        width: u32,
        height: u32,
    ) -> std::io::Result<()> {
        let shot = format!("--screenshot={}", png.display());
        let size = format!("--window-size={width},{height}");
        self.run(&[&shot, &size], url)?;
        if png.is_file() {
            Ok(())
        } else {
            Err(std::io::Error::other(format!(
                "chromium wrote no screenshot to {}",
                png.display()
            )))
        }
    }
}

/// Asserts that nothing a peer sent ran or became markup in a page Chromium
/// rendered: the hostile payload the page tests register
/// (`<script>document.title='pwned';…id:'injected'…</script>`, `<img …>`) left
/// the title alone, injected no element, and shows as escaped text.
pub fn assert_inert(page: &str) {
    assert!(!page.contains("pwned</title>"), "a script ran:\n{page}");
    assert!(!page.contains("id=\"injected\""), "a script ran:\n{page}");
    assert!(!page.contains("<script"), "a script element:\n{page}");
    assert!(!page.contains("<img"), "an img element:\n{page}");
    assert!(
        page.contains("&lt;script&gt;document.title='pwned'"),
        "{page}"
    );
}
