use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::FutureExt;

use super::*;
use crate::source::DropFolder;
use charlie::contract::{OutboxMail, RelayHello, UploadTicket};

/// Where a fault strikes, on the nth ask for an upload (from 1).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// The process dies before asking.
    DieBeforeAsk,
    /// The process dies after S3 took the bytes, before the journal noted it.
    DieAfterPut,
    Transient,
    Refused,
}

/// The control API and the inbox: what was put, by key, every time.
#[derive(Default)]
struct Inbox {
    puts: Mutex<Vec<(String, Vec<u8>)>>,
    asks: AtomicUsize,
    fault: Mutex<Option<(usize, Fault)>>,
}

impl Inbox {
    fn fault_at(&self, n: usize, fault: Fault) {
        *self.fault.lock().unwrap() = Some((n, fault));
    }

    /// The fault for this ask, once.
    fn strikes(&self, ask: usize, kinds: &[Fault]) -> Option<Fault> {
        let mut f = self.fault.lock().unwrap();
        match *f {
            Some((n, kind)) if n == ask && kinds.contains(&kind) => {
                *f = None;
                Some(kind)
            }
            _ => None,
        }
    }

    fn stored(&self) -> BTreeMap<String, usize> {
        let mut by_key = BTreeMap::new();
        for (k, _) in self.puts.lock().unwrap().iter() {
            *by_key.entry(k.clone()).or_default() += 1;
        }
        by_key
    }
}

#[async_trait]
impl Upstream for Inbox {
    async fn whoami(&self) -> Result<RelayHello, UpError> {
        Ok(hello("branch-1"))
    }

    async fn upload_url(&self, sha256: &str, size: u64) -> Result<UploadTicket, UpError> {
        let ask = self.asks.fetch_add(1, Ordering::SeqCst) + 1;
        match self.strikes(
            ask,
            &[Fault::DieBeforeAsk, Fault::Transient, Fault::Refused],
        ) {
            Some(Fault::DieBeforeAsk) => panic!("killed before asking"),
            Some(Fault::Transient) => return Err(UpError::Transient("503".into())),
            Some(Fault::Refused) => return Err(UpError::Refused("401: clock".into())),
            _ => {}
        }
        let key = charlie::object_keys::relay_inbox("branch-1", sha256);
        let exists = self.puts.lock().unwrap().iter().any(|(k, _)| *k == key);
        Ok(UploadTicket {
            key,
            exists,
            url: (!exists).then(|| format!("https://inbox.invalid/{sha256}?ask={ask}")),
            method: (!exists).then(|| "PUT".into()),
            headers: BTreeMap::from([("content-length".into(), size.to_string())]),
            expires_at: None,
        })
    }

    async fn put(&self, answer: &UploadTicket, bytes: Vec<u8>) -> Result<(), UpError> {
        let ask: usize = answer
            .url
            .as_ref()
            .unwrap()
            .rsplit('=')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(answer.headers["content-length"], bytes.len().to_string());
        self.puts.lock().unwrap().push((answer.key.clone(), bytes));
        if self.strikes(ask, &[Fault::DieAfterPut]).is_some() {
            panic!("killed after the upload");
        }
        Ok(())
    }
}

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../events/relay")
}

/// A drop folder holding these corpus files.
fn drop_folder(files: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("drop")).unwrap();
    for f in files {
        std::fs::copy(corpus().join(f), dir.path().join("drop").join(f)).unwrap();
    }
    dir
}

/// One relay process: opens the journal, runs one pass, and is gone (a panic is its death).
async fn process(dir: &Path, inbox: &Inbox) -> Result<Summary, String> {
    let journal = Journal::open(&dir.join("journal.redb")).unwrap();
    let mut source = DropFolder::new(&dir.join("drop"), Duration::ZERO).unwrap();
    one_pass(&mut source, &journal, inbox).await
}

/// One pass of a relay over `source`; a panic (the process killed) is an error.
async fn one_pass(
    source: &mut dyn Source,
    journal: &Journal,
    inbox: &Inbox,
) -> Result<Summary, String> {
    let mut relay = Relay {
        relay: "branch-1".into(),
        source,
        upstream: inbox,
        journal,
        max_per_second: 0,
    };
    std::panic::AssertUnwindSafe(relay.pass(&|| false))
        .catch_unwind()
        .await
        .map_err(|p| {
            p.downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .unwrap_or_default()
        })
        .and_then(|r| r.map_err(|e| format!("the pass failed: {e:#}")))
}

fn names(dir: &Path) -> Vec<String> {
    let mut n: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.path().is_file())
        .map(|e| e.file_name().into_string().unwrap())
        .collect();
    n.sort();
    n
}

const GOOD: [&str; 4] = [
    "plain.eml",
    "rfc2231-continuations.eml",
    "forwarded-rfc822.eml",
    "smime-signed.eml",
];

#[tokio::test]
async fn good_mail_is_uploaded_once_and_bad_mail_fails_with_its_reason() {
    let mut files = GOOD.to_vec();
    files.extend([
        "bad-truncated.eml",
        "bad-not-mail.eml",
        "bad-tnef-winmail.eml",
    ]);
    let dir = drop_folder(&files);
    let inbox = Inbox::default();
    let summary = process(dir.path(), &inbox).await.unwrap();
    // TNEF goes up: ingest quarantines it centrally, saying what to change at the sender.
    assert_eq!((summary.uploaded, summary.failed), (5, 2), "{summary:?}");
    let stored = inbox.stored();
    assert_eq!(stored.len(), 5);
    assert!(stored.values().all(|n| *n == 1));
    for (key, bytes) in inbox.puts.lock().unwrap().iter() {
        assert!(
            key.ends_with(&format!("{}.eml", raw_mail::content_id(bytes))),
            "{key}"
        );
    }
    let drop = dir.path().join("drop");
    assert!(names(&drop).is_empty(), "every file settled");
    assert_eq!(
        names(&drop.join("failed")),
        [
            "bad-not-mail.eml",
            "bad-not-mail.eml.reason.txt",
            "bad-truncated.eml",
            "bad-truncated.eml.reason.txt"
        ]
    );
    let reason = std::fs::read_to_string(drop.join("failed/bad-truncated.eml.reason.txt")).unwrap();
    assert!(
        reason.contains("cut short") && reason.contains("nothing was sent"),
        "{reason}"
    );
    assert_eq!(names(&drop.join("done")).len(), 5);
}

#[tokio::test]
async fn a_relay_killed_at_any_point_sends_nothing_twice_and_loses_nothing() {
    for (ask, fault) in [
        (1, Fault::DieBeforeAsk),
        (2, Fault::DieAfterPut),
        (4, Fault::DieAfterPut),
        (3, Fault::DieBeforeAsk),
    ] {
        let dir = drop_folder(&GOOD);
        let inbox = Inbox::default();
        inbox.fault_at(ask, fault);
        let died = process(dir.path(), &inbox).await;
        assert!(died.is_err(), "{fault:?} at {ask}: the first process dies");
        let summary = process(dir.path(), &inbox).await.unwrap();
        let stored = inbox.stored();
        assert_eq!(
            stored.len(),
            4,
            "{fault:?} at {ask}: every mail is in the inbox"
        );
        assert!(
            stored.values().all(|n| *n == 1),
            "{fault:?} at {ask}: none twice: {stored:?}"
        );
        let drop = dir.path().join("drop");
        assert!(names(&drop).is_empty(), "{fault:?} at {ask}: nothing left");
        assert_eq!(names(&drop.join("done")).len(), 4);
        if fault == Fault::DieAfterPut {
            assert_eq!(
                summary.already_uploaded, 1,
                "the API said it was there: {summary:?}"
            );
        }
        let journal = Journal::open(&dir.path().join("journal.redb")).unwrap();
        assert_eq!(journal.counts().unwrap(), (0, 4));
    }
}

#[tokio::test]
async fn a_transient_failure_leaves_the_mail_and_a_refusal_stops_the_pass() {
    let dir = drop_folder(&GOOD);
    let inbox = Inbox::default();
    inbox.fault_at(2, Fault::Transient);
    let s = process(dir.path(), &inbox).await.unwrap();
    assert_eq!((s.uploaded, s.left), (3, 1), "{s:?}");
    assert_eq!(
        names(&dir.path().join("drop")).len(),
        1,
        "the one left waits"
    );
    let s = process(dir.path(), &inbox).await.unwrap();
    assert_eq!((s.uploaded, s.left), (1, 0), "{s:?}");

    let dir = drop_folder(&GOOD);
    let inbox = Inbox::default();
    inbox.fault_at(1, Fault::Refused);
    let s = process(dir.path(), &inbox).await.unwrap();
    assert_eq!(s.uploaded, 0);
    assert!(s.refused.as_deref().unwrap().contains("clock"));
    assert_eq!(names(&dir.path().join("drop")).len(), 4, "nothing settled");
}

#[tokio::test]
async fn a_second_copy_and_another_file_of_the_same_message_are_not_sent() {
    let dir = drop_folder(&["plain.eml"]);
    let drop = dir.path().join("drop");
    let plain = std::fs::read(drop.join("plain.eml")).unwrap();
    std::fs::write(drop.join("plain-copy.eml"), &plain).unwrap();
    // The same message exported again by another client: other bytes, the same Message-ID.
    let mut other = b"X-Exported-By: another client\r\n".to_vec();
    other.extend_from_slice(&plain);
    std::fs::write(drop.join("plain-export.eml"), &other).unwrap();
    std::fs::write(
        drop.join("no-attachment.eml"),
        b"From: a@b.example\r\nSubject: hi\r\n\r\nhello\r\n",
    )
    .unwrap();
    let inbox = Inbox::default();
    let s = process(dir.path(), &inbox).await.unwrap();
    assert_eq!(
        (s.uploaded, s.already_uploaded, s.duplicates, s.not_sent),
        (1, 1, 1, 1),
        "{s:?}"
    );
    assert_eq!(inbox.puts.lock().unwrap().len(), 1);
    let reasons: Vec<String> = names(&drop.join("done"))
        .into_iter()
        .filter(|n| n.ends_with(".reason.txt"))
        .map(|n| std::fs::read_to_string(drop.join("done").join(n)).unwrap())
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("same Message-ID")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("no attachment")),
        "{reasons:?}"
    );
}

/// An Outlook folder: its items with their ReceivedTime, how often it was opened, and a failure
/// (Outlook closed under the relay) to strike once.
#[derive(Default)]
struct Mailbox {
    items: Mutex<Vec<(charlie_outlook::Item, f64)>>,
    opens: AtomicUsize,
    fail_next: std::sync::atomic::AtomicBool,
}

impl Mailbox {
    fn add(&self, entry_id: &str, received: f64, with_csv: bool) {
        let mut item = crate::outlook::tests::csv_item(entry_id, "ib_calls_2024-03-14_morning.csv");
        if !with_csv {
            item.attachments.clear();
        }
        self.items.lock().unwrap().push((item, received));
    }
}

struct FakeFolder(Arc<Mailbox>);

impl FakeFolder {
    fn fault(&self) -> Result<(), charlie_outlook::Error> {
        if self.0.fail_next.swap(false, Ordering::SeqCst) {
            return Err(charlie_outlook::Error {
                message: "Outlook's Items: The RPC server is unavailable.".into(),
                hresult: Some(0x800706BA_u32 as i32),
                permanent: false,
            });
        }
        Ok(())
    }
}

impl charlie_outlook::Folder for FakeFolder {
    fn describe(&self) -> String {
        "\\\\ops@branch.example\\Inbox".into()
    }

    fn count(&mut self) -> Result<usize, charlie_outlook::Error> {
        self.fault()?;
        Ok(self.0.items.lock().unwrap().len())
    }

    fn list(
        &mut self,
        not_before: Option<f64>,
    ) -> Result<Vec<charlie_outlook::Listed>, charlie_outlook::Error> {
        self.fault()?;
        let mut listed: Vec<charlie_outlook::Listed> = self
            .0
            .items
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, r)| not_before.is_none_or(|n| *r >= n))
            .map(|(i, r)| charlie_outlook::Listed {
                entry_id: i.entry_id.clone(),
                received: *r,
            })
            .collect();
        listed.sort_by(|a, b| b.received.total_cmp(&a.received));
        Ok(listed)
    }

    fn item(&mut self, entry_id: &str) -> Result<charlie_outlook::Item, charlie_outlook::Error> {
        self.fault()?;
        self.0
            .items
            .lock()
            .unwrap()
            .iter()
            .find(|(i, _)| i.entry_id == entry_id)
            .map(|(i, _)| i.clone())
            .ok_or_else(|| charlie_outlook::Error::new(format!("no item {entry_id}")))
    }
}

fn outlook_source(
    dir: &Path,
    mailbox: &Arc<Mailbox>,
) -> (Arc<Journal>, crate::outlook::OutlookSource) {
    let journal = Arc::new(Journal::open(&dir.join("journal.redb")).unwrap());
    let mb = Arc::clone(mailbox);
    let source = crate::outlook::OutlookSource::new(
        charlie_outlook::FolderPath::parse("Inbox").unwrap(),
        24,
        Arc::clone(&journal),
        move || {
            mb.opens.fetch_add(1, Ordering::SeqCst);
            Ok(Box::new(FakeFolder(Arc::clone(&mb))) as Box<dyn charlie_outlook::Folder>)
        },
    )
    .unwrap();
    (journal, source)
}

/// One relay process on the Outlook folder.
async fn outlook_process(
    dir: &Path,
    inbox: &Inbox,
    mailbox: &Arc<Mailbox>,
) -> Result<Summary, String> {
    let (journal, mut source) = outlook_source(dir, mailbox);
    one_pass(&mut source, &journal, inbox).await
}

/// The Message-IDs in the inbox, in upload order.
fn uploaded_ids(inbox: &Inbox) -> Vec<String> {
    inbox
        .puts
        .lock()
        .unwrap()
        .iter()
        .map(|(_, b)| {
            raw_mail::parse(b, chrono::Utc::now())
                .unwrap()
                .message
                .internet_message_id
                .unwrap()
        })
        .collect()
}

#[tokio::test]
async fn an_outlook_folder_goes_up_oldest_first_once_across_kills_restarts_and_late_mail() {
    let dir = tempfile::tempdir().unwrap();
    let mailbox = Arc::new(Mailbox::default());
    // Days (OLE dates, local time): listed newest first by Outlook, sent oldest first.
    mailbox.add("E3", 45365.43, true);
    mailbox.add("E1", 45365.41, true);
    mailbox.add("E0", 45365.40, true);
    mailbox.add("E2", 45365.42, false);
    let inbox = Inbox::default();
    inbox.fault_at(2, Fault::DieAfterPut);
    assert!(
        outlook_process(dir.path(), &inbox, &mailbox).await.is_err(),
        "killed"
    );
    let s = outlook_process(dir.path(), &inbox, &mailbox).await.unwrap();
    assert_eq!(
        (s.uploaded, s.already_uploaded, s.not_sent),
        (1, 1, 1),
        "the one cut off from its journal entry is there already: {s:?}"
    );
    assert_eq!(
        uploaded_ids(&inbox),
        [
            "<E0@dialer.example>",
            "<E1@dialer.example>",
            "<E3@dialer.example>"
        ]
    );
    assert!(inbox.stored().values().all(|n| *n == 1), "none twice");
    // Nothing new: nothing read, nothing sent.
    let s = outlook_process(dir.path(), &inbox, &mailbox).await.unwrap();
    assert_eq!(s, Summary::default());
    // New mail, and mail moved in late with an older time (within lookback_hours) go up; mail
    // older than the look back is not looked for.
    mailbox.add("E4", 45365.50, true);
    mailbox.add("LATE", 45365.10, true);
    mailbox.add("ANCIENT", 45360.00, true);
    let s = outlook_process(dir.path(), &inbox, &mailbox).await.unwrap();
    assert_eq!(s.uploaded, 2, "{s:?}");
    assert_eq!(
        uploaded_ids(&inbox)[3..],
        ["<LATE@dialer.example>", "<E4@dialer.example>"]
    );
    let (journal, _) = outlook_source(dir.path(), &mailbox);
    assert_eq!(journal.counts().unwrap(), (0, 5));
    assert!(
        journal.seen("E2").unwrap(),
        "the mail without a file is settled too"
    );
    assert!(!journal.seen("ANCIENT").unwrap());
}

#[tokio::test]
async fn a_transient_failure_waits_for_the_next_pass_and_outlook_closed_is_opened_again() {
    let dir = tempfile::tempdir().unwrap();
    let mailbox = Arc::new(Mailbox::default());
    mailbox.add("E0", 45365.40, true);
    mailbox.add("E1", 45365.41, true);
    let inbox = Inbox::default();
    inbox.fault_at(1, Fault::Transient);
    let (journal, mut source) = outlook_source(dir.path(), &mailbox);
    let s = one_pass(&mut source, &journal, &inbox).await.unwrap();
    assert_eq!((s.uploaded, s.left), (1, 1), "{s:?}");
    // Outlook goes away under the relay: the pass fails, says why, and the next one opens it
    // again and takes what was left.
    mailbox.fail_next.store(true, Ordering::SeqCst);
    let e = one_pass(&mut source, &journal, &inbox).await.unwrap_err();
    assert!(
        e.contains("RPC server is unavailable") && e.contains("0x800706BA"),
        "{e}"
    );
    let e = source.check().await;
    assert!(e.is_ok(), "{e:?}");
    assert!(e.unwrap().contains("2 item(s)"));
    let s = one_pass(&mut source, &journal, &inbox).await.unwrap();
    assert_eq!((s.uploaded, s.left), (1, 0), "{s:?}");
    assert_eq!(mailbox.opens.load(Ordering::SeqCst), 2, "opened again once");
    assert_eq!(
        uploaded_ids(&inbox),
        ["<E1@dialer.example>", "<E0@dialer.example>"]
    );
}

/// Outlook as an outbox: what it was given to send, and a failure to strike once.
#[derive(Default)]
struct OutlookSent {
    sent: Mutex<Vec<charlie_outlook::Outgoing>>,
    fail_next: Mutex<Option<charlie_outlook::Error>>,
}

struct FakeOutbox(Arc<OutlookSent>);

impl charlie_outlook::Outbox for FakeOutbox {
    fn describe(&self) -> String {
        "outlook profile \"Outlook\"".into()
    }

    fn accounts(&mut self) -> Result<Vec<String>, charlie_outlook::Error> {
        Ok(vec!["reports@branch.example".into()])
    }

    fn send(&mut self, mail: &charlie_outlook::Outgoing) -> Result<String, charlie_outlook::Error> {
        if let Some(e) = self.0.fail_next.lock().unwrap().take() {
            return Err(e);
        }
        if !mail.send_as.eq_ignore_ascii_case("reports@branch.example") {
            return Err(charlie_outlook::Error::permanent(format!(
                "this Outlook profile has no account {}",
                mail.send_as
            )));
        }
        self.0.sent.lock().unwrap().push(mail.clone());
        Ok("given to Outlook".into())
    }
}

/// The control API's outbox for this relay: queued mail until acknowledged.
#[derive(Default)]
struct Queue {
    mails: Mutex<Vec<(OutboxMail, Vec<u8>)>>,
    acks: Mutex<Vec<(String, String)>>,
    refusals: Mutex<Vec<(String, String)>>,
    deferrals: Mutex<Vec<(String, String)>>,
    ack_fails_once: std::sync::atomic::AtomicBool,
    refuse_fails_once: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl Upstream for Queue {
    async fn outbox(&self) -> Result<Vec<OutboxMail>, UpError> {
        Ok(self
            .mails
            .lock()
            .unwrap()
            .iter()
            .map(|(m, _)| m.clone())
            .collect())
    }

    async fn download(&self, mail: &OutboxMail) -> Result<Vec<u8>, UpError> {
        let mails = self.mails.lock().unwrap();
        Ok(mails
            .iter()
            .find(|(m, _)| m.message_id == mail.message_id)
            .map(|(_, b)| b.clone())
            .unwrap())
    }

    async fn ack(&self, message_id: &str, reply: &str) -> Result<(), UpError> {
        if self.ack_fails_once.swap(false, Ordering::SeqCst) {
            return Err(UpError::Transient("503 from the API".into()));
        }
        self.mails
            .lock()
            .unwrap()
            .retain(|(m, _)| m.message_id != message_id);
        self.acks
            .lock()
            .unwrap()
            .push((message_id.into(), reply.into()));
        Ok(())
    }

    async fn refuse(&self, message_id: &str, reason: &str) -> Result<(), UpError> {
        if self.refuse_fails_once.swap(false, Ordering::SeqCst) {
            return Err(UpError::Transient("the API cannot be reached".into()));
        }
        self.mails
            .lock()
            .unwrap()
            .retain(|(m, _)| m.message_id != message_id);
        self.refusals
            .lock()
            .unwrap()
            .push((message_id.into(), reason.into()));
        Ok(())
    }

    async fn defer(&self, message_id: &str, answer: &str) -> Result<(), UpError> {
        self.deferrals
            .lock()
            .unwrap()
            .push((message_id.into(), answer.into()));
        Ok(())
    }

    async fn whoami(&self) -> Result<RelayHello, UpError> {
        Ok(hello("branch-out"))
    }

    async fn upload_url(&self, _: &str, _: u64) -> Result<UploadTicket, UpError> {
        unreachable!("the outbox uploads nothing")
    }

    async fn put(&self, _: &UploadTicket, _: Vec<u8>) -> Result<(), UpError> {
        unreachable!("the outbox uploads nothing")
    }
}

/// The API's answer to a relay's hello.
fn hello(relay: &str) -> RelayHello {
    RelayHello {
        relay: charlie::contract::RelayId::parse(relay).unwrap(),
        mailbox: None,
        time: "2024-03-15T06:00:00.000Z".into(),
    }
}

fn report_mail(id: &str, from: &str, workbook: &[u8]) -> (OutboxMail, Vec<u8>) {
    let to = vec![
        "lead@branch.example".to_owned(),
        "floor@branch.example".to_owned(),
    ];
    let cc = vec!["ops@branch.example".to_owned()];
    let mime = charlie::report_mail::render(&charlie::report_mail::ReportMail {
        from,
        to: &to,
        cc: &cc,
        subject: "Branch calls — 2024-03-14",
        text: "The report is attached.",
        html: "<p>The report is <b>attached</b>.</p>",
        workbook: Some(("branch_calls_daily-2024-03-14 Zürich.xlsx", workbook)),
        message_id: id,
        date: "2024-03-15T06:00:00Z".parse().unwrap(),
    })
    .unwrap();
    let mail = OutboxMail {
        message_id: format!("<{id}>"),
        from: from.into(),
        recipients: vec![
            "lead@branch.example".into(),
            "floor@branch.example".into(),
            "ops@branch.example".into(),
            "audit@branch.example".into(),
        ],
        size: mime.len() as u64,
        queued_at: "2024-03-15T06:00:00Z".into(),
        url: format!("https://outbox.invalid/{id}"),
    };
    (mail, mime)
}

#[test]
fn a_report_mail_is_taken_apart_for_outlook_as_its_envelope_says() {
    let workbook: Vec<u8> = (0..=255u8).cycle().take(5_000).collect();
    let (mail, mime) = report_mail(
        "run-1.g-1@charlie.example",
        "reports@branch.example",
        &workbook,
    );
    let out = crate::outlook::outgoing(&mime, &mail.from, &mail.recipients).unwrap();
    assert_eq!(out.send_as, "reports@branch.example");
    assert_eq!(out.to, ["lead@branch.example", "floor@branch.example"]);
    assert_eq!(out.cc, ["ops@branch.example"]);
    assert_eq!(out.bcc, ["audit@branch.example"], "in the envelope only");
    assert_eq!(out.subject, "Branch calls — 2024-03-14");
    assert_eq!(out.text.as_deref(), Some("The report is attached."));
    assert_eq!(
        out.html.as_deref(),
        Some("<p>The report is <b>attached</b>.</p>")
    );
    assert_eq!(
        out.attachments,
        [(
            "branch_calls_daily-2024-03-14 Zürich.xlsx".to_owned(),
            workbook
        )]
    );
    // A header recipient the envelope leaves out is not sent to.
    let out = crate::outlook::outgoing(&mime, &mail.from, &mail.recipients[1..2]).unwrap();
    assert_eq!(
        (out.to.as_slice(), out.cc.len(), out.bcc.len()),
        (&["floor@branch.example".to_owned()][..], 0, 0)
    );
    let e = crate::outlook::outgoing(b"\xff\xfe not a mail", "a@b", &[]).unwrap_err();
    assert!(e.contains("not a mail the mailer built"), "{e}");
}

#[tokio::test]
async fn outbox_mail_goes_out_through_outlook_once_and_a_lost_ack_sends_nothing_again() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&dir.path().join("journal.redb")).unwrap();
    let outlook = Arc::new(OutlookSent::default());
    let o = Arc::clone(&outlook);
    let sender = crate::outlook::OutlookSender::new(move || {
        Ok(Box::new(FakeOutbox(Arc::clone(&o))) as Box<dyn charlie_outlook::Outbox>)
    })
    .unwrap();
    assert!(
        crate::outbox::Sender::check(&sender)
            .await
            .unwrap()
            .contains("sends as reports@branch.example")
    );
    let queue = Queue::default();
    queue.mails.lock().unwrap().extend([
        report_mail(
            "run-1.g-1@charlie.example",
            "reports@branch.example",
            b"PK one",
        ),
        report_mail(
            "run-1.g-2@charlie.example",
            "someone@else.example",
            b"PK two",
        ),
    ]);
    // Outlook busy once: transient, the pass stops, nothing is lost.
    *outlook.fail_next.lock().unwrap() = Some(charlie_outlook::Error::new(
        "Outlook's Send: the server is busy",
    ));
    let e = crate::outbox::pass(&queue, &journal, &sender)
        .await
        .unwrap_err();
    assert!(
        matches!(e, UpError::Transient(ref w) if w.contains("busy")),
        "{e:?}"
    );
    // The API loses the first ack: the mail was sent, and is only acknowledged next time.
    queue.ack_fails_once.store(true, Ordering::SeqCst);
    assert!(
        crate::outbox::pass(&queue, &journal, &sender)
            .await
            .is_err()
    );
    // The one Outlook cannot send as is refused for good; the API cannot be told at once, so
    // it is still queued and refused again on the next pass, once told.
    queue.refuse_fails_once.store(true, Ordering::SeqCst);
    let e = crate::outbox::pass(&queue, &journal, &sender)
        .await
        .unwrap_err();
    assert!(matches!(e, UpError::Transient(_)), "{e:?}");
    assert_eq!(
        queue.acks.lock().unwrap().len(),
        1,
        "the lost ack made good"
    );
    let s = crate::outbox::pass(&queue, &journal, &sender)
        .await
        .unwrap();
    assert_eq!((s.sent, s.acknowledged_late, s.refused), (0, 0, 1), "{s:?}");
    assert_eq!(outlook.sent.lock().unwrap().len(), 1, "sent once");
    let sent = outlook.sent.lock().unwrap()[0].clone();
    assert_eq!(sent.bcc, ["audit@branch.example"]);
    assert_eq!(sent.attachments[0].1, b"PK one");
    assert_eq!(queue.acks.lock().unwrap().len(), 1);
    assert_eq!(queue.acks.lock().unwrap()[0].1, "given to Outlook");
    let refusals = queue.refusals.lock().unwrap().clone();
    assert_eq!(refusals.len(), 1);
    assert_eq!(refusals[0].0, "<run-1.g-2@charlie.example>");
    assert!(
        refusals[0].1.contains("someone@else.example"),
        "{refusals:?}"
    );
    // Off the outbox: the next pass has nothing to do.
    let s = crate::outbox::pass(&queue, &journal, &sender)
        .await
        .unwrap();
    assert_eq!(s, crate::outbox::OutboxSummary::default());
    assert!(queue.mails.lock().unwrap().is_empty());
}

/// aiosmtpd (a real SMTP server) on a free loopback port that answers `452 Mailbox full` for
/// `full@…` recipients and keeps the rest in a maildir; stopped when dropped.
struct DeferringSmtp {
    child: std::process::Child,
    port: u16,
    maildir: PathBuf,
}

const DEFERRING_HANDLER: &str = r#"from aiosmtpd.handlers import Mailbox
class DeferFull(Mailbox):
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith('full@'):
            return '452 4.2.2 <%s>: Mailbox full' % address
        envelope.rcpt_tos.append(address)
        return '250 OK'
"#;

impl DeferringSmtp {
    fn start(dir: &Path) -> DeferringSmtp {
        let python = std::env::var("CHARLIE_AIOSMTPD_PYTHON").map_or_else(
            |_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv-smtp/bin/python"),
            PathBuf::from,
        );
        assert!(
            python.exists(),
            "aiosmtpd is not installed at {} (scripts/test installs it)",
            python.display()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let maildir = dir.join("maildir");
        std::fs::write(dir.join("deferring.py"), DEFERRING_HANDLER).unwrap();
        let child = std::process::Command::new(python)
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .args(["-c", "deferring.DeferFull"])
            .arg(&maildir)
            .env("PYTHONPATH", dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed().as_secs() < 20, "aiosmtpd did not start");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        DeferringSmtp {
            child,
            port,
            maildir,
        }
    }
}

impl Drop for DeferringSmtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One mail the SMTP server keeps deferring (452) no longer blocks the outbox: it is reported
/// deferred with the server's answer, and the mail queued after it is sent in the same pass.
#[tokio::test]
async fn a_mail_the_smtp_server_defers_does_not_hold_up_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let server = DeferringSmtp::start(dir.path());
    let config: crate::config::OutboxConfig = toml::from_str(&format!(
        "smtp_host = \"127.0.0.1\"\nsmtp_port = {}\nsmtp_tls = \"none\"\n",
        server.port
    ))
    .unwrap();
    let keyring = crate::keyring::tests::MemoryKeyring::default();
    let smtp = crate::outbox::Smtp::new(&config, &keyring).unwrap();
    let journal = Journal::open(&dir.path().join("journal.redb")).unwrap();
    let queue = Queue::default();
    let (mut stuck, stuck_mime) = report_mail(
        "run-1.g-1@charlie.example",
        "reports@branch.example",
        b"PK one",
    );
    stuck.recipients = vec!["full@branch.example".into()];
    let (mut next, next_mime) = report_mail(
        "run-1.g-2@charlie.example",
        "reports@branch.example",
        b"PK two",
    );
    next.recipients = vec!["lead@branch.example".into()];
    queue
        .mails
        .lock()
        .unwrap()
        .extend([(stuck, stuck_mime), (next, next_mime)]);
    let s = crate::outbox::pass(&queue, &journal, &smtp).await.unwrap();
    assert_eq!((s.sent, s.deferred, s.refused), (1, 1, 0), "{s:?}");
    let deferrals = queue.deferrals.lock().unwrap().clone();
    assert_eq!(deferrals.len(), 1);
    assert_eq!(deferrals[0].0, "<run-1.g-1@charlie.example>");
    assert!(
        deferrals[0].1.contains("452") && deferrals[0].1.contains("Mailbox full"),
        "{deferrals:?}"
    );
    let acks = queue.acks.lock().unwrap().clone();
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].0, "<run-1.g-2@charlie.example>");
    let delivered = std::fs::read_dir(server.maildir.join("new"))
        .unwrap()
        .count();
    assert_eq!(delivered, 1, "the next mail reached the server");
    assert_eq!(
        queue.mails.lock().unwrap().len(),
        1,
        "the deferred one stays queued"
    );
}
