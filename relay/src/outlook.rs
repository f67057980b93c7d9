//! The Outlook source: one folder of the running Outlook profile (Windows). Outlook's object
//! model lives in `charlie_outlook` (the only Windows code); this is everything after it, on
//! every platform and tested with a fake folder:
//!
//! - **one thread owns Outlook**: COM objects stay on the thread that made them, so every call
//!   goes to a worker thread; a call that fails drops the folder and the next one opens it
//!   again (Outlook closed and started again, a profile switched);
//! - **what is new**: the folder's mail items received since the cursor (the oldest
//!   `ReceivedTime` not settled) less `lookback_hours` (mail moved in late by a rule, or synced
//!   late in cached mode, carries an older time), oldest first; an item settled before is known
//!   by its EntryID in the journal and not read again;
//! - **an item as a MIME message**, the bytes the relay uploads: the internet headers it
//!   arrived with (Message-ID, From, Subject, Date, Received) kept as they were, or, for mail
//!   that never crossed SMTP, headers made from its properties; the plain-text body; each
//!   attached file; an attached Outlook item as an attached message (`message/rfc822`, which
//!   ingest follows as forwarded mail). The bytes are the same every time an item is read (the
//!   boundaries come from its EntryID), so a crash between upload and journal sends nothing
//!   twice.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::mpsc;

use anyhow::{Context, anyhow};
use async_trait::async_trait;
use base64::Engine;
use charlie::raw_mail::content_id;
use charlie_outlook::{Content, Error, Folder, FolderPath, Item, Outbox, Outgoing};
use mail_parser::{MessageParser, MimeHeaders};
use tracing::warn;

use crate::journal::Journal;
use crate::outbox::Sender;
use crate::source::{Outcome, Source};
use crate::upstream::UpError;

type Opener<T> = Box<dyn Fn() -> Result<Box<T>, Error> + Send>;
type Job<T> = Box<dyn FnOnce(&mut Slot<T>) + Send>;

/// The worker thread's Outlook object: opened on first use and after a failure.
struct Slot<T: ?Sized> {
    open: Opener<T>,
    held: Option<Box<T>>,
}

impl<T: ?Sized> Slot<T> {
    fn with<R>(&mut self, f: impl FnOnce(&mut T) -> Result<R, Error>) -> Result<R, Error> {
        if self.held.is_none() {
            self.held = Some((self.open)()?);
        }
        let result = f(self.held.as_deref_mut().expect("just opened"));
        if result.is_err() {
            self.held = None;
        }
        result
    }
}

/// The thread an Outlook object (a [`Folder`], an [`Outbox`]) lives and is called on.
pub struct Worker<T: ?Sized + 'static> {
    jobs: mpsc::Sender<Job<T>>,
}

impl<T: ?Sized + 'static> Worker<T> {
    /// Starts the thread; `open` runs on it, when the object is first needed.
    pub fn spawn(
        open: impl Fn() -> Result<Box<T>, Error> + Send + 'static,
    ) -> anyhow::Result<Worker<T>> {
        let (jobs, queue) = mpsc::channel::<Job<T>>();
        let open: Opener<T> = Box::new(open);
        std::thread::Builder::new()
            .name("outlook".into())
            .spawn(move || {
                // The object is made, used and dropped on this thread only.
                let mut slot = Slot { open, held: None };
                for job in queue {
                    job(&mut slot);
                }
            })
            .context("starting the Outlook thread")?;
        Ok(Worker { jobs })
    }

    /// Runs `f` on the object, on its thread.
    pub async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut T) -> Result<R, Error> + Send + 'static,
    ) -> Result<R, Error> {
        let (done, answer) = tokio::sync::oneshot::channel();
        let job: Job<T> = Box::new(move |slot: &mut Slot<T>| {
            // The asker may have given up (the relay stopping): nobody is left to tell.
            let _ = done.send(slot.with(f));
        });
        self.jobs
            .send(job)
            .map_err(|_| Error::new("the Outlook thread has stopped"))?;
        answer
            .await
            .map_err(|_| Error::new("the Outlook thread stopped during a call"))?
    }

    /// [`Worker::call`], its error in words.
    pub async fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut T) -> Result<R, Error> + Send + 'static,
    ) -> anyhow::Result<R> {
        self.call(f).await.map_err(|e| anyhow!("Outlook: {e}"))
    }
}

/// An OLE automation date (days since 1899-12-30) as UTC.
pub fn ole_date(days: f64) -> Option<chrono::DateTime<chrono::Utc>> {
    if !days.is_finite() || days < 0.0 {
        return None;
    }
    let seconds = ((days - 25_569.0) * 86_400.0).round();
    #[expect(
        clippy::cast_possible_truncation,
        reason = "finite, rounded and within a few thousand years"
    )]
    chrono::DateTime::from_timestamp(seconds as i64, 0)
}

const CRLF: &str = "\r\n";

/// Headers the MIME structure replaces: the message is built again around the same content.
const REPLACED: [&str; 6] = [
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "content-disposition",
    "content-id",
    "content-description",
];

/// The internet headers as header fields (name, the field's lines as received, CRLF-ended).
fn header_fields(text: &str) -> Vec<(String, String)> {
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = fields.last_mut() {
                value.push_str(line);
                value.push_str(CRLF);
            }
            continue;
        }
        let Some((name, _)) = line.split_once(':') else {
            continue; // not a header field (Outlook keeps what the server gave, as is)
        };
        fields.push((name.trim().to_owned(), format!("{line}{CRLF}")));
    }
    fields
}

/// A header value in RFC 2047 form when it is not plain ASCII.
fn encoded_word(text: &str) -> String {
    if text.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return text.to_owned();
    }
    // Words of at most 45 bytes (60 in base64), cut between characters.
    let mut words = Vec::new();
    let mut start = 0;
    let mut end = 0;
    for (i, c) in text.char_indices() {
        if i + c.len_utf8() - start > 45 {
            words.push(&text[start..end]);
            start = i;
        }
        end = i + c.len_utf8();
    }
    words.push(&text[start..]);
    words
        .into_iter()
        .map(|w| {
            format!(
                "=?utf-8?B?{}?=",
                base64::engine::general_purpose::STANDARD.encode(w)
            )
        })
        .collect::<Vec<_>>()
        .join("\r\n ")
}

/// A `filename` parameter: quoted when ASCII, else RFC 2231 (`filename*=utf-8''…`).
fn filename_parameter(name: &str) -> String {
    if name.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        let quoted = name.replace('\\', "\\\\").replace('"', "\\\"");
        return format!("filename=\"{quoted}\"");
    }
    let mut encoded = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(char::from(b));
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("filename*=utf-8''{encoded}")
}

fn base64_lines(bytes: &[u8], out: &mut Vec<u8>) {
    let text = base64::engine::general_purpose::STANDARD.encode(bytes);
    for line in text.as_bytes().chunks(76) {
        out.extend_from_slice(line);
        out.extend_from_slice(CRLF.as_bytes());
    }
}

/// The item as a MIME message (the same bytes for the same item, every time).
pub fn compose(item: &Item) -> Vec<u8> {
    compose_at(item, 0)
}

fn compose_at(item: &Item, depth: usize) -> Vec<u8> {
    let boundary = format!(
        "=_charlie_{}",
        &content_id(format!("{depth} {}", item.entry_id).as_bytes())[..32]
    );
    let mut out = Vec::new();
    let mut has_from = false;
    let mut has_message_id = false;
    if let Some(headers) = &item.internet_headers {
        for (name, lines) in header_fields(headers) {
            let lower = name.to_ascii_lowercase();
            if REPLACED.contains(&lower.as_str()) {
                continue;
            }
            has_from |= lower == "from";
            has_message_id |= lower == "message-id";
            out.extend_from_slice(lines.as_bytes());
        }
    }
    let mut header = |text: String| {
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(CRLF.as_bytes());
    };
    if !has_from {
        let address = if item.sender_address.contains('@') {
            item.sender_address.clone()
        } else {
            // An Exchange sender without an SMTP address: said, never guessed.
            "unknown-sender@outlook.invalid".to_owned()
        };
        if item.sender_name.is_empty() {
            header(format!("From: <{address}>"));
        } else {
            let name = encoded_word(&item.sender_name);
            let name = if name.starts_with("=?") {
                name
            } else {
                format!("\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\""))
            };
            header(format!("From: {name} <{address}>"));
        }
        header(format!("Subject: {}", encoded_word(&item.subject)));
        if let Some(date) = item.received_utc.and_then(ole_date) {
            header(format!("Date: {}", date.to_rfc2822()));
        }
    }
    if !has_message_id {
        let id = match &item.message_id {
            Some(id) => id.clone(),
            // Made from the EntryID: the same item gets the same Message-ID.
            None => format!(
                "<outlook.{}@charlie-relay.invalid>",
                &content_id(item.entry_id.as_bytes())[..32]
            ),
        };
        header(format!("Message-ID: {id}"));
    }
    header("MIME-Version: 1.0".into());
    header(format!(
        "Content-Type: multipart/mixed; boundary=\"{boundary}\""
    ));
    out.extend_from_slice(CRLF.as_bytes());
    let open = format!("--{boundary}{CRLF}");
    out.extend_from_slice(open.as_bytes());
    out.extend_from_slice(
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n",
    );
    base64_lines(item.body.as_bytes(), &mut out);
    for a in &item.attachments {
        out.extend_from_slice(open.as_bytes());
        let disposition = format!(
            "Content-Disposition: attachment; {}{CRLF}",
            filename_parameter(&a.name)
        );
        match &a.content {
            Content::File(bytes) => {
                let kind = if a.name.to_ascii_lowercase().ends_with(".csv") {
                    "text/csv"
                } else {
                    "application/octet-stream"
                };
                out.extend_from_slice(format!("Content-Type: {kind}{CRLF}").as_bytes());
                out.extend_from_slice(disposition.as_bytes());
                out.extend_from_slice(b"Content-Transfer-Encoding: base64\r\n\r\n");
                base64_lines(bytes, &mut out);
            }
            Content::Item(inner) => {
                let inner = compose_at(inner, depth + 1);
                let encoding = if inner.is_ascii() { "7bit" } else { "8bit" };
                out.extend_from_slice(
                    format!("Content-Type: message/rfc822{CRLF}Content-Transfer-Encoding: {encoding}{CRLF}")
                        .as_bytes(),
                );
                out.extend_from_slice(disposition.as_bytes());
                out.extend_from_slice(CRLF.as_bytes());
                out.extend_from_slice(&inner);
                out.extend_from_slice(CRLF.as_bytes());
            }
            Content::Msg(bytes) => {
                out.extend_from_slice(b"Content-Type: application/vnd.ms-outlook\r\n");
                out.extend_from_slice(disposition.as_bytes());
                out.extend_from_slice(b"Content-Transfer-Encoding: base64\r\n\r\n");
                base64_lines(bytes, &mut out);
            }
        }
    }
    out.extend_from_slice(format!("--{boundary}--{CRLF}").as_bytes());
    out
}

/// One Outlook folder as a source.
pub struct OutlookSource {
    path: FolderPath,
    worker: Worker<dyn Folder>,
    journal: Arc<Journal>,
    /// How far before the cursor a pass looks again, in days.
    lookback: f64,
    /// This pass's items not settled yet: EntryID → ReceivedTime.
    outstanding: BTreeMap<String, f64>,
    /// The newest ReceivedTime this pass offered.
    offered_to: Option<f64>,
    /// The last item composed (size is asked before read).
    composed: Option<(String, Vec<u8>)>,
}

impl OutlookSource {
    pub fn new(
        path: FolderPath,
        lookback_hours: u32,
        journal: Arc<Journal>,
        open: impl Fn() -> Result<Box<dyn Folder>, Error> + Send + 'static,
    ) -> anyhow::Result<OutlookSource> {
        Ok(OutlookSource {
            path,
            worker: Worker::spawn(open)?,
            journal,
            lookback: f64::from(lookback_hours) / 24.0,
            outstanding: BTreeMap::new(),
            offered_to: None,
            composed: None,
        })
    }

    fn cursor_name(&self) -> String {
        format!("outlook:{}", self.path)
    }

    async fn composed(&mut self, origin: &str) -> anyhow::Result<&[u8]> {
        if self.composed.as_ref().is_none_or(|(o, _)| o != origin) {
            let id = origin.to_owned();
            let item = self.worker.run(move |f| f.item(&id)).await?;
            for why in &item.skipped {
                warn!(origin, why, "an attachment of the item is not sent");
            }
            self.composed = Some((origin.to_owned(), compose(&item)));
        }
        Ok(&self.composed.as_ref().expect("just composed").1)
    }
}

#[async_trait]
impl Source for OutlookSource {
    fn describe(&self) -> String {
        format!("outlook folder {}", self.path)
    }

    async fn check(&self) -> anyhow::Result<String> {
        let (path, count) = self.worker.run(|f| Ok((f.describe(), f.count()?))).await?;
        Ok(format!("outlook folder {path}: {count} item(s)"))
    }

    async fn pending(&mut self, limit: usize) -> anyhow::Result<Vec<String>> {
        let name = self.cursor_name();
        let cursor = match self.journal.cursor(&name)? {
            Some(text) => Some(
                text.parse::<f64>()
                    .with_context(|| format!("the journal's cursor {name} = {text:?}"))?,
            ),
            None => None,
        };
        let not_before = cursor.map(|c| c - self.lookback);
        let listed = self.worker.run(move |f| f.list(not_before)).await?;
        let mut new = Vec::new();
        for l in listed {
            if !self.journal.seen(&l.entry_id)? {
                new.push(l);
            }
        }
        new.sort_by(|a, b| {
            a.received
                .total_cmp(&b.received)
                .then_with(|| a.entry_id.cmp(&b.entry_id))
        });
        new.truncate(limit);
        self.offered_to = new.last().map(|l| l.received).or(cursor);
        self.outstanding = new
            .iter()
            .map(|l| (l.entry_id.clone(), l.received))
            .collect();
        Ok(new.into_iter().map(|l| l.entry_id).collect())
    }

    async fn size(&mut self, origin: &str) -> anyhow::Result<u64> {
        Ok(self.composed(origin).await?.len() as u64)
    }

    async fn read(&mut self, origin: &str) -> anyhow::Result<Vec<u8>> {
        self.composed(origin).await?;
        Ok(self.composed.take().expect("just composed").1)
    }

    async fn settle(&mut self, origin: &str, outcome: &Outcome) -> anyhow::Result<()> {
        if let Outcome::Failed { reason } = outcome {
            self.journal.note_failed(origin, reason)?;
        }
        self.journal.note_seen(origin)?;
        self.outstanding.remove(origin);
        if self.composed.as_ref().is_some_and(|(o, _)| o == origin) {
            self.composed = None;
        }
        // Everything received before the oldest item still outstanding is settled.
        let cursor = self
            .outstanding
            .values()
            .copied()
            .reduce(f64::min)
            .or(self.offered_to);
        match cursor {
            Some(c) => self.journal.set_cursor(&self.cursor_name(), &c.to_string()),
            None => Ok(()),
        }
    }
}

/// The queued report mail as Outlook takes it: Outlook builds its own MIME (its own Message-ID
/// and `From`, the account's), so the mail is taken apart — the envelope decides who gets it
/// (a header recipient not in it is dropped, the rest of it is `bcc`), the subject, the text and
/// HTML bodies as written, each attachment with its name.
pub fn outgoing(mime: &[u8], send_as: &str, envelope: &[String]) -> Result<Outgoing, String> {
    let message = MessageParser::default()
        .parse(mime)
        .filter(|m| m.from().is_some())
        .ok_or("the queued mail has no From header: not a mail the mailer built")?;
    let listed = |a: Option<&mail_parser::Address<'_>>| -> Vec<String> {
        a.map(|a| {
            a.iter()
                .filter_map(|x| x.address())
                .filter(|x| envelope.iter().any(|e| e.eq_ignore_ascii_case(x)))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
    };
    let to = listed(message.to());
    let cc = listed(message.cc());
    let bcc = envelope
        .iter()
        .filter(|e| !to.iter().chain(&cc).any(|a| a.eq_ignore_ascii_case(e)))
        .cloned()
        .collect();
    let is = |part: &&mail_parser::MessagePart<'_>, subtype: &str| {
        part.content_type().is_some_and(|ct| {
            ct.ctype().eq_ignore_ascii_case("text")
                && ct
                    .subtype()
                    .is_some_and(|s| s.eq_ignore_ascii_case(subtype))
        })
    };
    // mail-parser offers a text body made from the HTML (and the reverse): only parts that are
    // what they say count.
    let text = message
        .text_bodies()
        .find(|p| is(p, "plain"))
        .and_then(|p| p.text_contents())
        .map(str::to_owned);
    let html = message
        .html_bodies()
        .find(|p| is(p, "html"))
        .and_then(|p| p.text_contents())
        .map(str::to_owned);
    let attachments = message
        .attachments()
        .enumerate()
        .map(|(i, p)| {
            (
                p.attachment_name()
                    .map_or_else(|| format!("attachment-{}", i + 1), str::to_owned),
                p.contents().to_vec(),
            )
        })
        .collect();
    Ok(Outgoing {
        send_as: send_as.to_owned(),
        to,
        cc,
        bcc,
        subject: message.subject().unwrap_or_default().to_owned(),
        text,
        html,
        attachments,
    })
}

/// Outlook (Windows) as the outbox's sender: each mail sent from the profile's account whose
/// SMTP address is the report's `send_as`. Outlook gives no server reply: it takes the mail
/// into its Outbox and sends it from there, so "relayed" means Outlook has it.
pub struct OutlookSender {
    worker: Worker<dyn Outbox>,
}

impl OutlookSender {
    pub fn new(
        open: impl Fn() -> Result<Box<dyn Outbox>, Error> + Send + 'static,
    ) -> anyhow::Result<OutlookSender> {
        Ok(OutlookSender {
            worker: Worker::spawn(open)?,
        })
    }
}

#[async_trait]
impl Sender for OutlookSender {
    fn describe(&self) -> String {
        "outlook".into()
    }

    async fn check(&self) -> anyhow::Result<String> {
        let (profile, accounts) = self
            .worker
            .run(|o| Ok((o.describe(), o.accounts()?)))
            .await?;
        Ok(format!(
            "{profile} sends as {}",
            if accounts.is_empty() {
                "no account".to_owned()
            } else {
                accounts.join(", ")
            }
        ))
    }

    async fn send(&self, from: &str, to: &[String], mime: &[u8]) -> Result<String, UpError> {
        let mail = outgoing(mime, from, to).map_err(UpError::Permanent)?;
        match self.worker.call(move |o| o.send(&mail)).await {
            Ok(said) => Ok(said),
            Err(e) if e.permanent => Err(UpError::Permanent(format!("Outlook: {e}"))),
            Err(e) => Err(UpError::Transient(format!("Outlook: {e}"))),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use charlie_outlook::Attachment;
    use chrono::TimeZone;

    const CSV: &[u8] = include_bytes!("../../events/relay/ib_calls_2024-03-14_sample.csv");

    pub(crate) fn csv_item(entry_id: &str, name: &str) -> Item {
        Item {
            entry_id: entry_id.into(),
            internet_headers: Some(format!(
                "Received: from mx.dialer.example by mail.branch.example;\r\n Thu, 14 Mar 2024 09:58:01 +0000\r\nFrom: Dialer Exports <exports@dialer.example>\r\nTo: ops@branch.example\r\nSubject: IB calls export\r\nDate: Thu, 14 Mar 2024 09:58:00 +0000\r\nMessage-ID: <{entry_id}@dialer.example>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed;\r\n\tboundary=\"original\"\r\nX-MS-Exchange-Organization-SCL: -1\r\n\r\n"
            )),
            message_id: Some(format!("<{entry_id}@dialer.example>")),
            sender_name: "Dialer Exports".into(),
            sender_address: "exports@dialer.example".into(),
            subject: "IB calls export".into(),
            received_utc: Some(45_365.415_289_352),
            body: "Today's export.\r\n".into(),
            attachments: vec![Attachment {
                name: name.into(),
                content: Content::File(CSV.to_vec()),
            }],
            skipped: vec![],
        }
    }

    fn rows(bytes: &[u8], name: &str) -> Vec<charlie::csv_ingest::KeyedRow> {
        let defs =
            charlie::definitions::Definitions::parse(include_str!("../../reports.toml")).unwrap();
        charlie::csv_ingest::parse_attachment(
            &defs.datasets["ib_calls"],
            bytes,
            &charlie::csv_ingest::Origin::named(name),
        )
        .unwrap()
        .rows
    }

    fn read(bytes: &[u8]) -> charlie::raw_mail::RawMail {
        charlie::raw_mail::parse(bytes, chrono::Utc::now()).unwrap_or_else(|e| {
            panic!("{e}: {}", String::from_utf8_lossy(bytes));
        })
    }

    #[test]
    fn an_ole_date_is_days_since_1899_12_30() {
        assert_eq!(
            ole_date(45365.5),
            Some(chrono::Utc.with_ymd_and_hms(2024, 3, 14, 12, 0, 0).unwrap())
        );
        assert_eq!(ole_date(25569.0), Some(chrono::DateTime::UNIX_EPOCH));
        assert_eq!(ole_date(f64::NAN), None);
        assert_eq!(ole_date(-1.0), None);
    }

    #[test]
    fn an_item_with_internet_headers_keeps_them_and_its_csv_gives_the_rows_of_the_plain_csv() {
        let item = csv_item("AAAA01", "ib_calls_2024-03-14_morning.csv");
        let bytes = compose(&item);
        assert_eq!(bytes, compose(&item), "the same bytes every time");
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(
            text.starts_with("Received: from mx.dialer.example by mail.branch.example;\r\n Thu,"),
            "{text}"
        );
        assert!(text.contains("X-MS-Exchange-Organization-SCL: -1\r\n"));
        assert!(!text.contains("original"), "the old structure is gone");
        assert_eq!(text.matches("Message-ID:").count(), 1);
        let mail = read(&bytes);
        assert_eq!(
            mail.message.internet_message_id.as_deref(),
            Some("<AAAA01@dialer.example>")
        );
        assert_eq!(mail.message.subject.as_deref(), Some("IB calls export"));
        let from = mail.message.from.as_ref().unwrap();
        assert_eq!(
            from.email_address.address.as_deref(),
            Some("exports@dialer.example")
        );
        // Dated by its Received header, as ingest dates raw mail.
        assert_eq!(
            mail.message.received,
            Some(chrono::Utc.with_ymd_and_hms(2024, 3, 14, 9, 58, 1).unwrap())
        );
        assert_eq!(mail.attachments.len(), 1, "the body is not an attachment");
        let (info, content) = &mail.attachments[0];
        assert_eq!(info.name, "ib_calls_2024-03-14_morning.csv");
        assert_eq!(content.as_slice(), CSV, "byte for byte");
        assert_eq!(
            rows(content, &info.name),
            rows(CSV, "ib_calls_2024-03-14_morning.csv")
        );
    }

    #[test]
    fn an_item_that_never_crossed_smtp_gets_headers_from_its_properties() {
        let mut item = csv_item("AAAA02", "ib_calls_2024-03-14_Zürich.csv");
        item.internet_headers = None;
        item.message_id = None;
        item.sender_name = "Zoë \"Ops\" Müller".into();
        item.subject = "Exporte für Zürich – täglich, mit einem recht langen Betreff dazu".into();
        let bytes = compose(&item);
        assert!(bytes.is_ascii(), "headers are encoded");
        let mail = read(&bytes);
        assert_eq!(mail.message.subject.as_deref(), Some(item.subject.as_str()));
        let from = &mail.message.from.as_ref().unwrap().email_address;
        assert_eq!(from.name.as_deref(), Some("Zoë \"Ops\" Müller"));
        assert_eq!(from.address.as_deref(), Some("exports@dialer.example"));
        assert_eq!(
            mail.message.received,
            Some(chrono::Utc.with_ymd_and_hms(2024, 3, 14, 9, 58, 1).unwrap()),
            "dated by ReceivedTime (UTC)"
        );
        // A Message-ID made from the EntryID: the same for the same item.
        let id = mail.message.internet_message_id.clone().unwrap();
        assert!(
            id.starts_with("<outlook.") && id.ends_with("@charlie-relay.invalid>"),
            "{id}"
        );
        assert_eq!(read(&compose(&item)).message.internet_message_id, Some(id));
        assert_ne!(
            read(&compose(&csv_item("AAAA03", "x.csv")))
                .message
                .internet_message_id,
            mail.message.internet_message_id
        );
        let (info, content) = &mail.attachments[0];
        assert_eq!(
            info.name, "ib_calls_2024-03-14_Zürich.csv",
            "RFC 2231 name read back"
        );
        assert_eq!(content.as_slice(), CSV);
        // Its Message-ID from Exchange when it has one (Graph's internetMessageId).
        item.message_id = Some("<exch-1@branch.example>".into());
        assert_eq!(
            read(&compose(&item)).message.internet_message_id.as_deref(),
            Some("<exch-1@branch.example>")
        );
        // An Exchange sender with no SMTP address is not guessed.
        item.sender_address =
            "/O=BRANCH/OU=EXCHANGE ADMINISTRATIVE GROUP/CN=RECIPIENTS/CN=OPS".into();
        let mail = read(&compose(&item));
        assert_eq!(
            mail.message.from.unwrap().email_address.address.as_deref(),
            Some("unknown-sender@outlook.invalid")
        );
    }

    #[test]
    fn an_attached_item_is_an_attached_message_and_its_csv_counts_as_forwarded_mail() {
        let inner = csv_item("INNER1", "ib_calls_2024-03-14_morning.csv");
        let mut outer = csv_item("OUTER1", "notes.txt");
        outer.attachments = vec![
            Attachment {
                name: "notes.txt".into(),
                content: Content::File(b"see the forwarded export".to_vec()),
            },
            Attachment {
                name: "IB calls export.msg".into(),
                content: Content::Item(Box::new(inner)),
            },
            Attachment {
                name: "deep.msg".into(),
                content: Content::Msg(b"\xd0\xcf\x11\xe0 a compound file".to_vec()),
            },
        ];
        let mail = read(&compose(&outer));
        assert_eq!(
            mail.message.internet_message_id.as_deref(),
            Some("<OUTER1@dialer.example>"),
            "the outer mail's headers decide"
        );
        let names: Vec<&str> = mail
            .attachments
            .iter()
            .map(|(i, _)| i.name.as_str())
            .collect();
        assert_eq!(
            names,
            ["notes.txt", "ib_calls_2024-03-14_morning.csv", "deep.msg"]
        );
        assert_eq!(mail.attachments[1].1.as_slice(), CSV);
    }
}
