//! Helpers the config tests share: parsing a file's text, and capturing what `tracing` logs.

use super::FileConfig;

/// `text` as a config file; panics when it is not one.
pub(super) fn parse(text: &str) -> FileConfig {
    toml::from_str(text).unwrap()
}

/// A `tracing` writer into memory.
#[derive(Clone, Default)]
pub(super) struct Captured(pub(super) std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
