//! charlie-relay: mail that only a machine on-prem can see (a drop folder of `.eml` files, an
//! IMAP folder, a folder of the running Outlook profile on Windows), uploaded to Charlie's
//! `inbox/relay/{relay}/{sha256}.eml`, where an S3 event puts it on ingest's queue and it is
//! treated as Graph mail is.
//!
//! One pass takes each waiting mail in turn:
//! 1. its SHA-256; uploaded before by the journal → settled as such, nothing sent;
//! 2. read with the raw-mail reader ingest uses: not a mail, cut short → `failed` with the
//!    reason; no attachment at all → settled, not sent; a Message-ID the journal has from
//!    another uploaded mail → settled as a duplicate, not sent;
//! 3. noted `uploading`, the API asked where it goes (it answers `exists` when the file is there
//!    already: an upload a crash cut off from its journal entry), sent with one `PUT`, noted
//!    `uploaded`, settled.
//!
//! A crash at any point leaves the mail in the source or the journal saying how far it got, so
//! a restart sends nothing twice and loses nothing. A transient failure leaves the mail for
//! the next pass; the relay refused (key, clock) stops the pass.

pub mod config;
pub mod imap;
pub mod journal;
pub mod keyring;
pub mod outbox;
pub mod outlook;
pub mod source;
pub mod upstream;

use std::time::{Duration, Instant};

use charlie::raw_mail;
use tracing::{info, warn};

use journal::{Journal, State};
use source::{Outcome, Source};
use upstream::{UpError, Upstream};

/// The largest mail the API takes from a relay.
pub const MAX_MAIL_BYTES: u64 = 64 * 1024 * 1024;
/// At most this many mails are taken in one pass.
pub const PASS_LIMIT: usize = 500;

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    pub uploaded: usize,
    pub already_uploaded: usize,
    pub duplicates: usize,
    pub not_sent: usize,
    pub failed: usize,
    /// Left for the next pass (a transient failure).
    pub left: usize,
    /// The pass stopped because the API refuses the relay (why).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

pub struct Relay<'a> {
    pub relay: String,
    pub source: &'a mut dyn Source,
    pub upstream: &'a dyn Upstream,
    pub journal: &'a Journal,
    /// At most this many uploads a second (0: no limit).
    pub max_per_second: u32,
}

enum Step {
    Settled(Outcome),
    Left(String),
    Refused(String),
}

impl Relay<'_> {
    /// One pass over what the source has waiting; stops early when `stop` says so.
    pub async fn pass(&mut self, stop: &dyn Fn() -> bool) -> anyhow::Result<Summary> {
        let mut summary = Summary::default();
        let pending = self.source.pending(PASS_LIMIT).await?;
        let spacing =
            (self.max_per_second > 0).then(|| Duration::from_secs(1) / self.max_per_second);
        let mut last_upload: Option<Instant> = None;
        for origin in pending {
            if stop() {
                break;
            }
            if let (Some(spacing), Some(last)) = (spacing, last_upload) {
                tokio::time::sleep(spacing.saturating_sub(last.elapsed())).await;
            }
            match self.one(&origin, &mut last_upload).await? {
                Step::Settled(outcome) => {
                    match &outcome {
                        Outcome::Uploaded { key } => {
                            info!(origin, key, "uploaded");
                            summary.uploaded += 1;
                        }
                        Outcome::AlreadyUploaded { key } => {
                            info!(origin, key, "uploaded before: not sent again");
                            summary.already_uploaded += 1;
                        }
                        Outcome::Duplicate { message_id, of } => {
                            info!(
                                origin,
                                message_id, of, "same Message-ID as a mail sent before: not sent"
                            );
                            summary.duplicates += 1;
                        }
                        Outcome::NotSent { reason } => {
                            info!(origin, reason, "not sent");
                            summary.not_sent += 1;
                        }
                        Outcome::Failed { reason } => {
                            warn!(origin, reason, "failed");
                            summary.failed += 1;
                        }
                    }
                    self.source.settle(&origin, &outcome).await?;
                }
                Step::Left(why) => {
                    warn!(origin, error = why, "left for the next pass");
                    summary.left += 1;
                }
                Step::Refused(why) => {
                    warn!(
                        origin,
                        error = why,
                        "the control API refuses this relay: pass stopped"
                    );
                    summary.refused = Some(why);
                    break;
                }
            }
        }
        Ok(summary)
    }

    async fn one(
        &mut self,
        origin: &str,
        last_upload: &mut Option<Instant>,
    ) -> anyhow::Result<Step> {
        let size = self.source.size(origin).await?;
        if size > MAX_MAIL_BYTES {
            return Ok(Step::Settled(Outcome::Failed {
                reason: format!(
                    "{size} bytes: larger than the {MAX_MAIL_BYTES} bytes a relay may send; export the attachment alone or send it through Graph"
                ),
            }));
        }
        let bytes = self.source.read(origin).await?;
        let sha = raw_mail::content_id(&bytes);
        let key = charlie::object_keys::relay_inbox(&self.relay, &sha);
        if let Some(e) = self.journal.get(&sha)?
            && e.state == State::Uploaded
        {
            return Ok(Step::Settled(Outcome::AlreadyUploaded { key: e.key }));
        }
        let mail = match raw_mail::parse(&bytes, chrono::Utc::now()) {
            Ok(m) => m,
            Err(unusable) => {
                return Ok(Step::Settled(Outcome::Failed {
                    reason: format!("{unusable}; nothing was sent"),
                }));
            }
        };
        if mail.attachments.is_empty() && mail.unreadable.is_empty() {
            return Ok(Step::Settled(Outcome::NotSent {
                reason: "the mail has no attachment".into(),
            }));
        }
        let message_id = mail.message.internet_message_id.clone();
        if let Some(id) = &message_id
            && let Some(of) = self.journal.by_message_id(id)?
            && of != sha
        {
            return Ok(Step::Settled(Outcome::Duplicate {
                message_id: id.clone(),
                of,
            }));
        }
        drop(mail);
        self.journal
            .begin(&sha, message_id.as_deref(), origin, &key)?;
        let answer = match self.upstream.upload_url(&sha, size).await {
            Ok(a) => a,
            Err(e) => return Ok(self.failed(e)),
        };
        let outcome = if answer.exists {
            Outcome::AlreadyUploaded { key: answer.key }
        } else {
            *last_upload = Some(Instant::now());
            if let Err(e) = self.upstream.put(&answer, bytes).await {
                return Ok(self.failed(e));
            }
            Outcome::Uploaded { key: answer.key }
        };
        self.journal.uploaded(&sha)?;
        Ok(Step::Settled(outcome))
    }

    fn failed(&self, e: UpError) -> Step {
        match e {
            // Uploads never defer; were one to, it is left for the next pass.
            UpError::Transient(why) | UpError::Deferred(why) => Step::Left(why),
            UpError::Refused(why) => Step::Refused(why),
            UpError::Permanent(why) => Step::Settled(Outcome::Failed {
                reason: format!("{why}; nothing was sent"),
            }),
        }
    }
}

#[cfg(test)]
mod tests;
