//! Where things are: the workspace root, its target folder, the project-local Python.

use std::path::{Path, PathBuf};

/// The workspace root (`CHARLIE_ROOT`, else the folder this crate was built in).
pub fn root() -> PathBuf {
    if let Ok(r) = std::env::var("CHARLIE_ROOT") {
        return PathBuf::from(r);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("localstack/ sits in the workspace root")
        .to_path_buf()
}

/// Cargo's target folder (`CARGO_TARGET_DIR`, else `<root>/target`).
pub fn target_dir() -> PathBuf {
    std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join("target"))
}

/// The Python that runs the emulator: `CHARLIE_PYTHON`, else the project's `.venv`.
pub fn python() -> PathBuf {
    std::env::var("CHARLIE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join(".venv/bin/python"))
}

/// The port of a URL (`http://127.0.0.1:4566/…`), 0 when it names none.
pub fn port_of(url: &str) -> u16 {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.port())
        .unwrap_or(0)
}
