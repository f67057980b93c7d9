use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use futures::FutureExt;
use serde_json::{Value, json};

use super::*;
use crate::source::DropFolder;
use crate::upstream::UploadAnswer;

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
    async fn whoami(&self) -> Result<Value, UpError> {
        Ok(json!({"relay": "branch-1"}))
    }

    async fn upload_url(&self, sha256: &str, size: u64) -> Result<UploadAnswer, UpError> {
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
        Ok(UploadAnswer {
            key,
            exists,
            url: (!exists).then(|| format!("https://inbox.invalid/{sha256}?ask={ask}")),
            headers: BTreeMap::from([("content-length".into(), size.to_string())]),
        })
    }

    async fn put(&self, answer: &UploadAnswer, bytes: Vec<u8>) -> Result<(), UpError> {
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
    let mut relay = Relay {
        relay: "branch-1".into(),
        source: &mut source,
        upstream: inbox,
        journal: &journal,
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
        .map(Result::unwrap)
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
