//! Where the relay finds mail, behind one trait: a drop folder of `.eml` files (here), IMAP,
//! Outlook. A source lists what is waiting, gives each as the bytes of a MIME message, and is
//! told what became of it; everything after the bytes (journal, upload) is the relay's.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use async_trait::async_trait;

/// What became of one mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Sent to the inbox now.
    Uploaded { key: String },
    /// Sent before (by this relay's journal, or the inbox has the file already).
    AlreadyUploaded { key: String },
    /// Not sent: a mail with the same Message-ID was (its SHA-256).
    Duplicate { message_id: String, of: String },
    /// Not sent: nothing in it to send (why).
    NotSent { reason: String },
    /// Not sent and never will be as it is: why, and what to do.
    Failed { reason: String },
}

#[async_trait]
pub trait Source: Send {
    /// What the source is, for logs (`folder /srv/drop`).
    fn describe(&self) -> String;
    /// Whether the source can be read now (for `charlie-relay check`): what it found.
    async fn check(&self) -> anyhow::Result<String>;
    /// The mails waiting, oldest first, by the source's own reference, at most `limit`.
    async fn pending(&mut self, limit: usize) -> anyhow::Result<Vec<String>>;
    /// The size of one, before it is read (to refuse one too large unread).
    async fn size(&mut self, origin: &str) -> anyhow::Result<u64>;
    /// The bytes of one (a MIME message).
    async fn read(&mut self, origin: &str) -> anyhow::Result<Vec<u8>>;
    /// Records what became of one so it is not offered again.
    async fn settle(&mut self, origin: &str, outcome: &Outcome) -> anyhow::Result<()>;
    /// Waits until there may be new mail, at most `max`, or until `stop` says so.
    async fn wait(
        &mut self,
        max: Duration,
        stop: &(dyn Fn() -> bool + Sync),
    ) -> anyhow::Result<()> {
        sleep(max, stop).await
    }
}

/// Sleeps `max`, looking at `stop` five times a second.
pub async fn sleep(max: Duration, stop: &(dyn Fn() -> bool + Sync)) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + max;
    while tokio::time::Instant::now() < deadline && !stop() {
        tokio::time::sleep(Duration::from_millis(200).min(max)).await;
    }
    Ok(())
}

/// A folder of `.eml` files. A file is taken once it has not changed for `settle` (a writer
/// should write elsewhere and rename it in; a name ending in something else than `.eml`, or
/// starting with `.` or `~`, is never taken); once settled it is moved to `done/` or `failed/`
/// beside it, with `{name}.reason.txt` when it went to `failed/` or was not sent.
pub struct DropFolder {
    root: PathBuf,
    settle: Duration,
}

impl DropFolder {
    pub fn new(root: &Path, settle: Duration) -> anyhow::Result<DropFolder> {
        for sub in ["done", "failed"] {
            let dir = root.join(sub);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        Ok(DropFolder {
            root: root.to_owned(),
            settle,
        })
    }

    fn path(&self, origin: &str) -> anyhow::Result<PathBuf> {
        // An origin is a plain file name this folder listed.
        if origin.contains(['/', '\\']) || origin.starts_with('.') {
            anyhow::bail!("{origin:?} is not a file of the drop folder");
        }
        Ok(self.root.join(origin))
    }

    /// `dir/name`, or `dir/name-2`, `-3`… when taken (an export of the same name before).
    fn free_name(dir: &Path, name: &str) -> PathBuf {
        let first = dir.join(name);
        if !first.exists() {
            return first;
        }
        let (stem, ext) = name.rsplit_once('.').unwrap_or((name, ""));
        (2..)
            .map(|n| dir.join(format!("{stem}-{n}.{ext}")))
            .find(|p| !p.exists())
            .unwrap_or(first)
    }
}

fn is_eml(name: &str) -> bool {
    !name.starts_with('.')
        && !name.starts_with('~')
        && name.len() > 4
        && name[name.len() - 4..].eq_ignore_ascii_case(".eml")
}

#[async_trait]
impl Source for DropFolder {
    fn describe(&self) -> String {
        format!("folder {}", self.root.display())
    }

    async fn check(&self) -> anyhow::Result<String> {
        let waiting = std::fs::read_dir(&self.root)
            .with_context(|| format!("reading {}", self.root.display()))?
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_str().is_some_and(is_eml))
            .filter(|e| e.metadata().is_ok_and(|m| m.is_file()))
            .count();
        // Moving a file to done/ needs the folder writable: try it.
        let probe = self.root.join("done").join(".charlie-relay-check");
        std::fs::write(&probe, b"")
            .with_context(|| format!("{} is not writable", self.root.join("done").display()))?;
        std::fs::remove_file(&probe).ok();
        Ok(format!(
            "{}: {waiting} .eml file(s) waiting",
            self.root.display()
        ))
    }

    async fn pending(&mut self, limit: usize) -> anyhow::Result<Vec<String>> {
        let now = SystemTime::now();
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&self.root)
            .with_context(|| format!("reading {}", self.root.display()))?
        {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let meta = entry.metadata()?;
            if !meta.is_file() || !is_eml(&name) {
                continue;
            }
            let modified = meta.modified().unwrap_or(now);
            if now.duration_since(modified).unwrap_or_default() < self.settle {
                continue;
            }
            found.push((modified, name));
        }
        found.sort();
        Ok(found.into_iter().take(limit).map(|(_, n)| n).collect())
    }

    async fn size(&mut self, origin: &str) -> anyhow::Result<u64> {
        let path = self.path(origin)?;
        Ok(std::fs::metadata(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .len())
    }

    async fn read(&mut self, origin: &str) -> anyhow::Result<Vec<u8>> {
        let path = self.path(origin)?;
        std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
    }

    async fn settle(&mut self, origin: &str, outcome: &Outcome) -> anyhow::Result<()> {
        let from = self.path(origin)?;
        let (dir, reason) = match outcome {
            Outcome::Uploaded { .. } | Outcome::AlreadyUploaded { .. } => ("done", None),
            Outcome::Duplicate { message_id, of } => (
                "done",
                Some(format!(
                    "not sent: a mail with the same Message-ID {message_id} was sent before (SHA-256 {of})\n"
                )),
            ),
            Outcome::NotSent { reason } => ("done", Some(format!("not sent: {reason}\n"))),
            Outcome::Failed { reason } => ("failed", Some(format!("{reason}\n"))),
        };
        let to = Self::free_name(&self.root.join(dir), origin);
        if let Some(reason) = reason {
            let name = to.file_name().and_then(|n| n.to_str()).unwrap_or(origin);
            let note = to.with_file_name(format!("{name}.reason.txt"));
            std::fs::write(&note, reason).with_context(|| format!("writing {}", note.display()))?;
        }
        std::fs::rename(&from, &to)
            .with_context(|| format!("moving {} to {}", from.display(), to.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_settled_eml_files_are_offered_and_each_is_moved_with_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for name in [
            "b.eml",
            "a.EML",
            ".hidden.eml",
            "~lock.eml",
            "notes.txt",
            "x.eml.part",
        ] {
            std::fs::write(root.join(name), b"From: a@b\r\n\r\n").unwrap();
        }
        std::fs::create_dir(root.join("sub.eml")).unwrap();
        let mut f = DropFolder::new(root, Duration::ZERO).unwrap();
        let mut waiting = f.pending(10).await.unwrap();
        waiting.sort();
        assert_eq!(waiting, ["a.EML", "b.eml"]);
        assert!(f.check().await.unwrap().contains("2 .eml file(s) waiting"));
        f.settle("a.EML", &Outcome::Uploaded { key: "k".into() })
            .await
            .unwrap();
        f.settle(
            "b.eml",
            &Outcome::Failed {
                reason: "cut short".into(),
            },
        )
        .await
        .unwrap();
        assert!(root.join("done/a.EML").exists());
        assert_eq!(
            std::fs::read_to_string(root.join("failed/b.eml.reason.txt")).unwrap(),
            "cut short\n"
        );
        // The same name again lands beside the first, which stays.
        std::fs::write(root.join("a.EML"), b"again").unwrap();
        f.settle(
            "a.EML",
            &Outcome::Duplicate {
                message_id: "<m@x>".into(),
                of: "ab".into(),
            },
        )
        .await
        .unwrap();
        assert_eq!(std::fs::read(root.join("done/a-2.EML")).unwrap(), b"again");
        assert!(
            std::fs::read_to_string(root.join("done/a-2.EML.reason.txt"))
                .unwrap()
                .contains("<m@x>")
        );
        assert!(f.pending(10).await.unwrap().is_empty());
        assert!(f.read("../etc/passwd").await.is_err());
        // A file still being written (changed within `settle`) waits.
        let mut slow = DropFolder::new(root, Duration::from_secs(3600)).unwrap();
        std::fs::write(root.join("c.eml"), b"From: a@b\r\n\r\n").unwrap();
        assert!(slow.pending(10).await.unwrap().is_empty());
    }
}
