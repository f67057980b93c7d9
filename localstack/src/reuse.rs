//! Reusing an earlier `terraform apply` in `charlie-local up` when nothing it depends on changed.
//!
//! Applying `infra/envs/local` to the emulator takes about a minute and a half, nearly all of it
//! Terraform waiting on the provider, not the emulator working. So `up` applies with moto's
//! recorder on (its random ids seeded first) and keeps the recording with a key of everything
//! the apply read: the Terraform files, the definitions and what Terraform reads of them (reports.infra.json), the Lambda zips and the
//! variables (which hold the emulator's, the fake Graph's and the API's ports). The next `up`
//! starts on the same ports; when the key is the same it seeds the emulator alike and replays
//! the recording, which makes the same resources with the same ids in seconds, and reads the
//! deployment back as after an apply. A port taken, a changed file or a replay that does not give
//! the deployment recorded: a full apply (and a new recording). `--fresh` asks for one.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::project;

/// What the last recorded apply was made from, and what it made.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Recorded {
    pub key: String,
    pub emulator_port: u16,
    pub graph_port: u16,
    /// The fake downstream API's (0 in recordings made before it existed: never reused).
    #[serde(default)]
    pub downstream_port: u16,
    pub api_port: u16,
    /// `terraform output deployment`.
    pub outputs: serde_json::Value,
    /// Functions, queue mappings, schedules and API routes the deployment had.
    pub shape: [usize; 4],
    pub recorded_at: String,
}

pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    pub fn new(dir: PathBuf) -> Self {
        Cache { dir }
    }

    pub fn recording(&self) -> PathBuf {
        self.dir.join("recording.jsonl")
    }

    fn meta(&self) -> PathBuf {
        self.dir.join("recorded.json")
    }

    /// The last recorded apply, when there is one with its recording.
    pub fn load(&self) -> Option<Recorded> {
        if !self.recording().exists() {
            return None;
        }
        serde_json::from_slice(&std::fs::read(self.meta()).ok()?).ok()
    }

    pub fn prepare(&self) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))
    }

    pub fn save(&self, recorded: &Recorded) -> anyhow::Result<()> {
        std::fs::write(self.meta(), serde_json::to_vec_pretty(recorded)?)
            .with_context(|| format!("writing {}", self.meta().display()))
    }

    /// Forgets the recorded apply (it did not replay as recorded).
    pub fn forget(&self) {
        let _ = std::fs::remove_file(self.meta());
    }
}

/// The key of an apply: every input file's path and bytes, and the variables, hashed.
pub fn key(vars: &[(String, String)], zip_dir: &Path) -> anyhow::Result<String> {
    let root = project::root();
    let mut files = Vec::new();
    collect(&root.join("infra"), &mut files)?;
    collect(zip_dir, &mut files)?;
    files.push(root.join("reports.toml"));
    files.push(root.join("reports.infra.json"));
    files.sort();
    let mut hash = Sha256::new();
    for f in &files {
        hash.update(f.display().to_string().as_bytes());
        hash.update([0]);
        hash.update(std::fs::read(f).with_context(|| format!("reading {}", f.display()))?);
        hash.update([0]);
    }
    let mut vars = vars.to_vec();
    vars.sort();
    for (k, v) in vars {
        hash.update(format!("{k}={v}\n").as_bytes());
    }
    Ok(hex::encode(hash.finalize()))
}

/// Every file under `dir` but Terraform's own working files.
fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with(".terraform") || name.ends_with(".tfstate") || name.ends_with(".tmp") {
            continue;
        }
        if path.is_dir() {
            collect(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_changes_with_a_variable_or_a_file_and_only_then() {
        let dir = std::env::temp_dir().join(format!("charlie-reuse-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("api.zip"), b"one").unwrap();
        let vars = vec![("endpoint".to_owned(), "http://127.0.0.1:5000".to_owned())];
        let a = key(&vars, &dir).unwrap();
        assert_eq!(a, key(&vars, &dir).unwrap());
        let other = vec![("endpoint".to_owned(), "http://127.0.0.1:5001".to_owned())];
        assert_ne!(a, key(&other, &dir).unwrap(), "another port");
        std::fs::write(dir.join("api.zip"), b"two").unwrap();
        assert_ne!(a, key(&vars, &dir).unwrap(), "another zip");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
