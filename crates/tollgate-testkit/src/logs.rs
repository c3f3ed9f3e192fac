//! [`CapturedLogs`]: everything a `tracing` subscriber prints, kept for a
//! test to search (for field names, and for secrets that must not appear).

use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};

/// A shared in-memory writer for `tracing_subscriber::fmt`.
///
/// Install it as the process-wide subscriber in a test binary of its own
/// (callsites cache whether they are enabled, so a subscriber set after other
/// tests ran may see nothing):
///
/// ```
/// use tollgate_testkit::CapturedLogs;
///
/// let logs = CapturedLogs::install_global();
/// tracing::info!(secret = "redacted", "hello");
/// assert!(logs.contents().contains("hello"));
/// ```
#[derive(Clone, Debug, Default)]
pub struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl CapturedLogs {
    /// Installs a TRACE-level, no-colour `fmt` subscriber writing here as the
    /// global default, and returns the handle to read it.
    ///
    /// # Panics
    ///
    /// If a global subscriber is already set (a test set-up error).
    pub fn install_global() -> CapturedLogs {
        let logs = CapturedLogs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_global_default(subscriber)
            .expect("CapturedLogs: a global subscriber is already set");
        logs
    }

    /// Everything written so far, as text.
    pub fn contents(&self) -> String {
        let bytes = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
