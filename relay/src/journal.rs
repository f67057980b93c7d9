//! The relay's journal (redb, one file): every mail it saw, by the SHA-256 of its bytes and by
//! its Message-ID, and how far it got. Each change is its own committed (fsynced) transaction,
//! so after a crash the journal says exactly what was uploaded; one relay process holds the file
//! (a second one is refused).
//!
//! A mail goes `uploading` (before its first byte leaves) → `uploaded` (after S3 took it, or the
//! API said the file is there already). One that is `uploading` after a crash is asked about
//! again: the API answers `exists` when the upload had gone through, so nothing goes twice.

use std::path::Path;

use anyhow::Context;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

/// sha256 → [`Entry`] as JSON.
const BY_SHA: TableDefinition<&str, &str> = TableDefinition::new("mail_by_sha256");
/// Message-ID → sha256 of the first mail uploaded with it.
const BY_MESSAGE_ID: TableDefinition<&str, &str> = TableDefinition::new("sha256_by_message_id");
/// A source's cursor (an IMAP folder's `{uidvalidity} {uid}`), by the source's name for it.
const CURSORS: TableDefinition<&str, &str> = TableDefinition::new("cursors");
/// Outbox mail the relay's SMTP server took: Message-ID → "{when} {its reply}".
const SENT: TableDefinition<&str, &str> = TableDefinition::new("outbox_sent");
/// Mails that failed where the source cannot keep them aside (IMAP): origin → reason.
const FAILED: TableDefinition<&str, &str> = TableDefinition::new("failed");
/// Items a source settled that it cannot mark itself (Outlook's, read-only): origin → when.
const SEEN: TableDefinition<&str, &str> = TableDefinition::new("seen");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Uploading,
    Uploaded,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub state: State,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// Where the relay found it (a file name, an IMAP UID).
    pub origin: String,
    /// The S3 key it went to.
    pub key: String,
    pub first_seen: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uploaded_at: Option<String>,
}

pub struct Journal {
    db: Database,
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Journal {
    /// Opens (or creates) the journal at `path`.
    pub fn open(path: &Path) -> anyhow::Result<Journal> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the journal's folder {}", dir.display()))?;
        }
        let db = Database::create(path).with_context(|| {
            format!(
                "opening the journal {} (is another charlie-relay running with it?)",
                path.display()
            )
        })?;
        let txn = db.begin_write()?;
        txn.open_table(BY_SHA)?;
        txn.open_table(BY_MESSAGE_ID)?;
        txn.open_table(CURSORS)?;
        txn.open_table(FAILED)?;
        txn.open_table(SENT)?;
        txn.open_table(SEEN)?;
        txn.commit()?;
        Ok(Journal { db })
    }

    pub fn get(&self, sha256: &str) -> anyhow::Result<Option<Entry>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(BY_SHA)?;
        let Some(v) = table.get(sha256)? else {
            return Ok(None);
        };
        Ok(Some(
            serde_json::from_str(v.value()).context("a journal entry is not readable")?,
        ))
    }

    /// The SHA-256 of the mail uploaded first with this Message-ID.
    pub fn by_message_id(&self, message_id: &str) -> anyhow::Result<Option<String>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(BY_MESSAGE_ID)?;
        Ok(table.get(message_id)?.map(|v| v.value().to_owned()))
    }

    /// Notes a mail about to be uploaded (kept as it was when it is there already).
    pub fn begin(
        &self,
        sha256: &str,
        message_id: Option<&str>,
        origin: &str,
        key: &str,
    ) -> anyhow::Result<Entry> {
        let txn = self.db.begin_write()?;
        let entry = {
            let mut table = txn.open_table(BY_SHA)?;
            let existing = table
                .get(sha256)?
                .map(|v| serde_json::from_str::<Entry>(v.value()))
                .transpose()?;
            match existing {
                Some(e) => e,
                None => {
                    let e = Entry {
                        state: State::Uploading,
                        message_id: message_id.map(str::to_owned),
                        origin: origin.to_owned(),
                        key: key.to_owned(),
                        first_seen: now(),
                        uploaded_at: None,
                    };
                    table.insert(sha256, serde_json::to_string(&e)?.as_str())?;
                    e
                }
            }
        };
        txn.commit()?;
        Ok(entry)
    }

    /// Notes a mail as uploaded (and its Message-ID as taken, unless taken before).
    pub fn uploaded(&self, sha256: &str) -> anyhow::Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(BY_SHA)?;
            let mut entry: Entry = match table.get(sha256)? {
                Some(v) => serde_json::from_str(v.value())?,
                None => anyhow::bail!("journal: {sha256} was never begun"),
            };
            entry.state = State::Uploaded;
            entry.uploaded_at.get_or_insert_with(now);
            table.insert(sha256, serde_json::to_string(&entry)?.as_str())?;
            if let Some(id) = &entry.message_id {
                let mut ids = txn.open_table(BY_MESSAGE_ID)?;
                if ids.get(id.as_str())?.is_none() {
                    ids.insert(id.as_str(), sha256)?;
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    pub fn cursor(&self, name: &str) -> anyhow::Result<Option<String>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(CURSORS)?;
        Ok(table.get(name)?.map(|v| v.value().to_owned()))
    }

    pub fn set_cursor(&self, name: &str, value: &str) -> anyhow::Result<()> {
        let txn = self.db.begin_write()?;
        txn.open_table(CURSORS)?.insert(name, value)?;
        txn.commit()?;
        Ok(())
    }

    /// The SMTP server's reply to an outbox mail sent before, if it was.
    pub fn sent(&self, message_id: &str) -> anyhow::Result<Option<String>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SENT)?;
        Ok(table
            .get(message_id)?
            .map(|v| v.value().split_once(' ').map_or("", |(_, r)| r).to_owned()))
    }

    /// Notes an outbox mail the SMTP server took (before it is acknowledged to the API).
    pub fn note_sent(&self, message_id: &str, reply: &str) -> anyhow::Result<()> {
        let txn = self.db.begin_write()?;
        txn.open_table(SENT)?
            .insert(message_id, format!("{} {reply}", now()).as_str())?;
        txn.commit()?;
        Ok(())
    }

    /// Notes a mail that failed where the source has no place to put it aside.
    pub fn note_failed(&self, origin: &str, reason: &str) -> anyhow::Result<()> {
        let txn = self.db.begin_write()?;
        txn.open_table(FAILED)?
            .insert(origin, format!("{} {reason}", now()).as_str())?;
        txn.commit()?;
        Ok(())
    }

    /// Whether a source settled this origin before.
    pub fn seen(&self, origin: &str) -> anyhow::Result<bool> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(SEEN)?.get(origin)?.is_some())
    }

    /// Notes an origin as settled, so its source does not offer it again.
    pub fn note_seen(&self, origin: &str) -> anyhow::Result<()> {
        let txn = self.db.begin_write()?;
        txn.open_table(SEEN)?.insert(origin, now().as_str())?;
        txn.commit()?;
        Ok(())
    }

    /// The mails noted as failed: (origin, "{when} {reason}").
    pub fn failures(&self) -> anyhow::Result<Vec<(String, String)>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(FAILED)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            out.push((k.value().to_owned(), v.value().to_owned()));
        }
        Ok(out)
    }

    /// How many mails are in each state.
    pub fn counts(&self) -> anyhow::Result<(usize, usize)> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(BY_SHA)?;
        let (mut uploading, mut uploaded) = (0, 0);
        for row in table.iter()? {
            let (_, v) = row?;
            match serde_json::from_str::<Entry>(v.value())?.state {
                State::Uploading => uploading += 1,
                State::Uploaded => uploaded += 1,
            }
        }
        Ok((uploading, uploaded))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_a_reopen_and_a_second_process_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j/journal.redb");
        {
            let j = Journal::open(&path).unwrap();
            let e = j.begin("aa", Some("<m@x>"), "a.eml", "k/aa.eml").unwrap();
            assert_eq!(e.state, State::Uploading);
            assert_eq!(
                j.by_message_id("<m@x>").unwrap(),
                None,
                "not taken until uploaded"
            );
            j.uploaded("aa").unwrap();
            // Begun again (the same bytes seen again): kept as it was.
            assert_eq!(
                j.begin("aa", None, "b.eml", "k").unwrap().state,
                State::Uploaded
            );
            j.begin("bb", Some("<m@x>"), "c.eml", "k/bb.eml").unwrap();
            j.uploaded("bb").unwrap();
            let second = Journal::open(&path);
            assert!(second.is_err(), "one process per journal");
        }
        let j = Journal::open(&path).unwrap();
        let e = j.get("aa").unwrap().unwrap();
        assert_eq!((e.state, e.origin.as_str()), (State::Uploaded, "a.eml"));
        assert!(e.uploaded_at.is_some());
        assert_eq!(j.by_message_id("<m@x>").unwrap().as_deref(), Some("aa"));
        assert_eq!(j.counts().unwrap(), (0, 2));
        assert!(j.uploaded("cc").is_err());
        // A source's cursor and its failures are kept too.
        assert_eq!(j.cursor("imap:a").unwrap(), None);
        j.set_cursor("imap:a", "7 12").unwrap();
        j.note_failed("INBOX;UIDVALIDITY=7;UID=3", "cut short")
            .unwrap();
        drop(j);
        let j = Journal::open(&path).unwrap();
        assert_eq!(j.cursor("imap:a").unwrap().as_deref(), Some("7 12"));
        let failed = j.failures().unwrap();
        assert_eq!(failed.len(), 1);
        assert!(failed[0].1.ends_with(" cut short"), "{failed:?}");
        assert!(!j.seen("00000000AB12").unwrap());
        j.note_seen("00000000AB12").unwrap();
        drop(j);
        let j = Journal::open(&path).unwrap();
        assert!(j.seen("00000000AB12").unwrap());
    }
}
