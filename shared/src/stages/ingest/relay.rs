//! Raw mail a relay uploaded: S3 says `inbox/relay/{relay}/{sha256}.eml` was created, the
//! stage reads and parses it (`crate::raw_mail`) and ingests it like Graph mail, claimed under
//! the relay's mailbox and the file's SHA-256, so two copies of one file, or the same mail by
//! relay and by Graph (one Message-ID in one mailbox), are ingested once. A file that is no
//! readable mail is kept whole in `quarantine/mail/relay/…` with its reason.

use chrono::{DateTime, Utc};
use tracing::{info, warn};

use super::{Ingest, KEEP_CLAIMS, MailSummary, put_json};
use crate::failure::permanent;
use crate::idempotency::{IdempotencyKey, once};
use crate::invocation::Invocation;
use crate::messages::CreatedObject;
use crate::object_keys;
use crate::ports::{AttachmentInfo, ByteChunks, MailMessage};
use crate::raw_mail::{self, RawMail};
use crate::state::{self, RecordKey};

/// Where the mail being ingested is read from.
pub(super) enum Letter {
    /// Graph (through [`Ingest::mail`]).
    Graph,
    /// A raw mail a relay uploaded, parsed whole, with the authserv-ids its relay trusts.
    Raw {
        relay: String,
        mail: Box<RawMail>,
        trusted: Vec<String>,
    },
}

impl Letter {
    /// Which `Authentication-Results` header of the mail may be believed.
    pub(super) fn trust(&self) -> crate::sender_auth::Trust<'_> {
        match self {
            Letter::Graph => crate::sender_auth::Trust::ReceivingServer,
            Letter::Raw { trusted, .. } => crate::sender_auth::Trust::AuthservIds(trusted),
        }
    }

    pub(super) fn relay(&self) -> Option<&str> {
        match self {
            Letter::Graph => None,
            Letter::Raw { relay, .. } => Some(relay),
        }
    }
}

impl Ingest {
    pub(super) async fn message_of(
        &self,
        letter: &Letter,
        mailbox: &str,
        id: &str,
    ) -> anyhow::Result<MailMessage> {
        Ok(match letter {
            Letter::Graph => self.mail.message(mailbox, id).await?,
            Letter::Raw { mail, .. } => mail.message.clone(),
        })
    }

    pub(super) async fn attachments_of(
        &self,
        letter: &Letter,
        mailbox: &str,
        id: &str,
    ) -> anyhow::Result<Vec<AttachmentInfo>> {
        Ok(match letter {
            Letter::Graph => self.mail.attachment_list(mailbox, id).await?,
            Letter::Raw { mail, .. } => mail.attachments.iter().map(|(i, _)| i.clone()).collect(),
        })
    }

    pub(super) async fn content_of(
        &self,
        letter: &Letter,
        mailbox: &str,
        message_id: &str,
        info: &AttachmentInfo,
    ) -> anyhow::Result<Vec<u8>> {
        match letter {
            Letter::Graph => Ok(self
                .mail
                .attachment_content(mailbox, message_id, &info.id)
                .await?),
            Letter::Raw { mail, .. } => raw_part(mail, info).map(<[u8]>::to_vec),
        }
    }

    pub(super) async fn stream_of(
        &self,
        letter: &Letter,
        mailbox: &str,
        message_id: &str,
        info: &AttachmentInfo,
    ) -> anyhow::Result<ByteChunks> {
        match letter {
            Letter::Graph => Ok(self
                .mail
                .attachment_stream(mailbox, message_id, &info.id)
                .await?),
            Letter::Raw { mail, .. } => {
                // Held whole already (the mail was parsed whole): one piece.
                let bytes = bytes::Bytes::copy_from_slice(raw_part(mail, info)?);
                Ok(Box::pin(futures::stream::once(async move { Ok(bytes) })))
            }
        }
    }

    /// One created object of an S3 event: a relay upload, ingested once.
    pub(super) async fn relay_upload(
        &self,
        object: &CreatedObject,
        correlation: &str,
        invocation: &Invocation,
    ) -> anyhow::Result<()> {
        let Some((relay, sha)) = object_keys::relay_upload(&object.key) else {
            return Err(permanent(format!(
                "an S3 event for {:?} in {}, which is not a relay upload \
                 (inbox/relay/{{relay}}/{{sha256}}.eml): check the bucket's notification filter",
                object.key, object.bucket
            )));
        };
        let record = self.records.get_record(&RecordKey::relay(relay)).await?;
        let mailbox = match record.as_ref().and_then(|r| r.mailbox.as_deref()) {
            // Graph's path claims mail under the mailbox's directory object id: the same here,
            // so one mail found by both is ingested once.
            Some(address) if address.contains('@') => {
                self.mail.mailbox_id(address).await.map_err(|e| {
                    anyhow::Error::new(e).context(format!(
                        "resolving relay {relay}'s mailbox {address} through Graph (a relay whose \
                         mailbox Graph cannot see is made without --mailbox)"
                    ))
                })?
            }
            Some(id) => id.to_owned(),
            None => format!("relay/{relay}"),
        };
        let refused = match &record {
            None => Some(format!(
                "no relay {relay:?} is on record (relays are made with `charlie relay create`)"
            )),
            Some(r) => r
                .revoked_at
                .as_deref()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .filter(|t| object.at > *t)
                .map(|t| format!("relay {relay:?} was revoked at {t}, before this upload"))
                .or_else(|| {
                    // Stored while an earlier life of the relay was revoked (an upload URL of
                    // the revoked key), read after it was made again.
                    r.revoked_windows.iter().find_map(|(from, to)| {
                        let from = DateTime::parse_from_rfc3339(from).ok()?;
                        let to = DateTime::parse_from_rfc3339(to).ok()?;
                        (object.at > from && object.at < to).then(|| {
                            format!(
                                "relay {relay:?} was revoked at {from} and made again at {to}: this upload came in between, with the revoked key's URL"
                            )
                        })
                    })
                }),
        };
        let key = IdempotencyKey::new(state::mail_claim(&mailbox, sha), &(&mailbox, sha));
        let work = async {
            if let Some(why) = refused {
                return self
                    .quarantine_mail(relay, sha, &mailbox, why, object.at)
                    .await;
            }
            let bytes = self
                .objects
                .get(&object_keys::relay_inbox(relay, sha), None)
                .await?;
            let actual = raw_mail::content_id(&bytes);
            if actual != sha {
                let why = format!(
                    "its content's SHA-256 is {actual}, not the {sha} its name says: the upload was changed or cut short"
                );
                return self
                    .quarantine_mail(relay, sha, &mailbox, why, object.at)
                    .await;
            }
            match raw_mail::parse(&bytes, object.at) {
                Err(unusable) => {
                    self.quarantine_mail(relay, sha, &mailbox, unusable.to_string(), object.at)
                        .await
                }
                Ok(mail) => {
                    let letter = Letter::Raw {
                        relay: relay.to_owned(),
                        mail: Box::new(mail),
                        trusted: record
                            .as_ref()
                            .map(|r| r.trusted_authserv_ids.clone())
                            .unwrap_or_default(),
                    };
                    self.start_mail(&mailbox, sha, &letter, correlation, invocation)
                        .await
                }
            }
        };
        let done = once(self.claims.as_ref(), &key, invocation, KEEP_CLAIMS, work).await?;
        info!(relay, key = object.key, "relay upload");
        self.ingested(&mailbox, sha, 0, None, done).await
    }

    /// A continuation of a relay's mail: the file again from `inbox/relay/`.
    pub(super) async fn reread_relay_mail(&self, relay: &str, sha: &str) -> anyhow::Result<Letter> {
        let bytes = self
            .objects
            .get(&object_keys::relay_inbox(relay, sha), None)
            .await?;
        // It parsed when the mail started; the upload time only stands in for a missing date,
        // which the progress record's outcomes already used.
        let mail = raw_mail::parse(&bytes, Utc::now()).map_err(|e| {
            permanent(format!(
                "relay mail {relay}/{sha} no longer reads as it did when its ingest started: {e}"
            ))
        })?;
        let trusted = self
            .records
            .get_record(&RecordKey::relay(relay))
            .await?
            .map(|r| r.trusted_authserv_ids)
            .unwrap_or_default();
        Ok(Letter::Raw {
            relay: relay.to_owned(),
            mail: Box::new(mail),
            trusted,
        })
    }

    /// Keeps a raw mail whole in quarantine with its reason; the mail counts as handled.
    pub(super) async fn quarantine_mail(
        &self,
        relay: &str,
        sha: &str,
        mailbox: &str,
        reason: String,
        now: DateTime<Utc>,
    ) -> anyhow::Result<MailSummary> {
        warn!(
            relay,
            mailbox,
            message_id = sha,
            reason,
            "relay mail unusable: quarantined"
        );
        let inbox = object_keys::relay_inbox(relay, sha);
        let q = object_keys::quarantined_mail(relay, sha);
        self.objects.copy(&inbox, &q).await?;
        let why = crate::contract::QuarantineReason {
            reason: reason.clone(),
            dataset: None,
            relay: Some(relay.to_owned()),
            mailbox: Some(mailbox.to_owned()),
            message_id: sha.to_owned(),
            attachment: None,
            raw_key: Some(inbox.clone()),
            downloaded: true,
            quarantined_at: now.to_rfc3339(),
        };
        put_json(self.objects.as_ref(), &format!("{q}.reason.json"), &why).await?;
        Ok(MailSummary {
            status: "quarantined".into(),
            outcomes: Vec::new(),
            ignored: vec![reason],
        })
    }
}

fn raw_part<'m>(mail: &'m RawMail, info: &AttachmentInfo) -> anyhow::Result<&'m [u8]> {
    mail.attachments
        .iter()
        .find(|(i, _)| i.id == info.id)
        .map(|(_, bytes)| bytes.as_slice())
        .ok_or_else(|| {
            permanent(format!(
                "relay mail {} has no part {} ({}) any more",
                mail.message.id, info.id, info.name
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::{Objects, StateRecords};
    use crate::stages::ingest::tests::{World, counted, world};
    use crate::stages::testkit::{self, MAILBOX, failures, inbound, invocation, sqs_event};
    use crate::state::RelayRecord;

    const SAMPLE: &[u8] = include_bytes!("../../../../events/relay/ib_calls_2024-03-14_sample.csv");

    fn corpus(name: &str) -> Vec<u8> {
        let path = format!("{}/../events/relay/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn day() -> chrono::NaiveDate {
        "2024-03-14".parse().unwrap()
    }

    /// S3's notification of one upload, as it lands on `inbound`.
    fn created(key: &str) -> String {
        serde_json::json!({"Records": [{
            "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "eu-west-2",
            "eventTime": "2024-03-14T13:00:00.000Z", "eventName": "ObjectCreated:Put",
            "s3": {"bucket": {"name": "charlie"}, "object": {"key": key, "size": 1}},
        }]})
        .to_string()
    }

    async fn relay(w: &World, id: &str, mailbox: Option<&str>) {
        let record = RelayRecord {
            created_at: "2024-03-01T00:00:00Z".into(),
            trusted_authserv_ids: vec![BRANCH_MX.into()],
            ..RelayRecord::new(
                crate::contract::RelayId::parse(id).unwrap(),
                mailbox,
                "test",
            )
        };
        let records: &dyn StateRecords = w.records.as_ref();
        records
            .put_record(&RecordKey::relay(id), &record, None)
            .await
            .unwrap();
    }

    /// The `.reason.json` beside a mail quarantined whole, as text.
    fn quarantine_reason(w: &World, quarantined: &str) -> String {
        let reason = w.objects.current(&format!("{quarantined}.reason.json"));
        String::from_utf8(reason.expect("a reason beside the quarantined mail")).unwrap()
    }

    /// The branch's own mail server, whose Authentication-Results its relay trusts.
    const BRANCH_MX: &str = "mx.branch.example";

    /// `bytes` as the branch's mail server keeps it: its Authentication-Results on top (a pass
    /// for the dialer, as the genuine exports get).
    fn received(bytes: &[u8]) -> Vec<u8> {
        let mut out = format!(
            "Authentication-Results: {BRANCH_MX}; dmarc=pass (p=reject) header.from=dialer.example\r\n"
        )
        .into_bytes();
        out.extend_from_slice(bytes);
        out
    }

    /// Uploads a raw mail as the relay would (as its server received it); its S3 event.
    async fn upload(w: &World, relay: &str, bytes: &[u8]) -> (String, String) {
        upload_as_is(w, relay, &received(bytes)).await
    }

    /// Uploads these exact bytes as the relay would; its S3 event.
    async fn upload_as_is(w: &World, relay: &str, bytes: &[u8]) -> (String, String) {
        let sha = raw_mail::content_id(bytes);
        let key = object_keys::relay_inbox(relay, &sha);
        let objects: &dyn Objects = w.objects.as_ref();
        objects
            .put(&key, bytes.to_vec(), "message/rfc822")
            .await
            .unwrap();
        (sha, created(&key))
    }

    #[tokio::test]
    async fn every_good_file_of_the_corpus_stores_the_rows_graph_mail_with_the_plain_csv_stores() {
        // The plain CSV by Graph: the rows to expect.
        let graph = world();
        graph.mail.deliver(testkit::mail(
            "m-1",
            "2024-03-14T12:05:13Z",
            "IB calls export 2024-03-14 (00:00-12:00)",
            "ib_calls_2024-03-14_morning.csv",
            SAMPLE,
        ));
        let resp = graph
            .ingest
            .handle(sqs_event(&[inbound("m-1")]), &invocation())
            .await;
        assert!(failures(&resp).is_empty());
        let expected = graph.rows.rows_of("ib_calls", day());
        assert_eq!(expected.len(), 23);
        let good = [
            "plain.eml",
            "octet-stream.eml",
            "vnd-ms-excel-inline.eml",
            "rfc2231-continuations.eml",
            "rfc2047-name.eml",
            "quoted-printable.eml",
            "8bit.eml",
            "single-part.eml",
            "forwarded-rfc822.eml",
            "smime-signed.eml",
            "alternative-and-two-files.eml",
        ];
        for file in good {
            let w = world();
            relay(&w, "branch-1", None).await;
            let (sha, event) = upload(&w, "branch-1", &corpus(file)).await;
            let resp = w.ingest.handle(sqs_event(&[event]), &invocation()).await;
            assert!(failures(&resp).is_empty(), "{file}");
            assert!(w.dead_letters.letters().is_empty(), "{file}");
            assert_eq!(w.rows.rows_of("ib_calls", day()), expected, "{file}");
            let records: &dyn StateRecords = w.records.as_ref();
            let outcomes = records
                .outcomes_of_mail("relay/branch-1", &sha)
                .await
                .unwrap();
            assert_eq!(outcomes.len(), 1, "{file}");
            assert_eq!(
                (outcomes[0].rows_new, outcomes[0].rows_rejected),
                (23, 1),
                "{file}"
            );
            assert!(
                outcomes[0]
                    .raw_key
                    .starts_with(&format!("raw/ib_calls/2024-03-14/{sha}/")),
                "{file}"
            );
        }
    }

    #[tokio::test]
    async fn the_same_mail_twice_by_relay_or_by_relay_and_graph_is_ingested_once() {
        let w = world();
        relay(&w, "branch-1", Some(MAILBOX)).await;
        let plain = corpus("plain.eml");
        let (_, event) = upload(&w, "branch-1", &plain).await;
        // One file announced twice, and a second copy whose bytes differ (a header the relay's
        // server added) but whose Message-ID is the same.
        let copy = [b"X-Spam-Score: 0\r\n".as_slice(), &plain].concat();
        let (copy_sha, copy_event) = upload(&w, "branch-1", &copy).await;
        let resp = w
            .ingest
            .handle(
                sqs_event(&[event.clone(), event, copy_event]),
                &invocation(),
            )
            .await;
        assert!(failures(&resp).is_empty());
        assert_eq!(w.rows.count("ib_calls", day()), 23);
        let records: &dyn StateRecords = w.records.as_ref();
        assert!(
            records
                .outcomes_of_mail(MAILBOX, &copy_sha)
                .await
                .unwrap()
                .is_empty()
        );
        // Graph finds the same mail in the same mailbox later: nothing to do.
        let mut by_graph = testkit::mail(
            "AAMk-graph-id",
            "2024-03-14T12:05:13Z",
            "IB calls export 2024-03-14 (00:00-12:00)",
            "ib_calls_2024-03-14_morning.csv",
            SAMPLE,
        );
        by_graph.message.internet_message_id = Some("<plain@dialer.example>".into());
        w.mail.deliver(by_graph);
        let resp = w
            .ingest
            .handle(sqs_event(&[inbound("AAMk-graph-id")]), &invocation())
            .await;
        assert!(failures(&resp).is_empty());
        assert!(
            records
                .outcomes_of_mail(MAILBOX, "AAMk-graph-id")
                .await
                .unwrap()
                .is_empty()
        );
        let counts = counted(&w).await.totals();
        assert_eq!(
            (counts["mails_processed"], counts["mails_duplicate"]),
            (1, 2)
        );
        assert_eq!(w.outbound.sent().len(), 1, "one outcome forwarded");
    }

    #[tokio::test]
    async fn a_file_that_is_no_readable_mail_is_quarantined_whole_with_its_reason() {
        let w = world();
        relay(&w, "branch-1", None).await;
        let cases = [
            ("bad-truncated.eml", "cut short"),
            ("bad-not-mail.eml", "no From header"),
            ("bad-tnef-winmail.eml", "winmail.dat is TNEF"),
        ];
        for (file, why) in cases {
            let (sha, event) = upload_as_is(&w, "branch-1", &corpus(file)).await;
            let resp = w.ingest.handle(sqs_event(&[event]), &invocation()).await;
            assert!(failures(&resp).is_empty(), "{file}");
            let q = object_keys::quarantined_mail("branch-1", &sha);
            assert_eq!(
                w.objects.current(&q),
                Some(corpus(file)),
                "{file}: kept whole"
            );
            let reason: serde_json::Value =
                serde_json::from_slice(&w.objects.current(&format!("{q}.reason.json")).unwrap())
                    .unwrap();
            assert!(
                reason["reason"].as_str().unwrap().contains(why),
                "{file}: {reason}"
            );
            assert_eq!(reason["mailbox"], "relay/branch-1");
        }
        assert!(w.dead_letters.letters().is_empty());
        assert_eq!(w.rows.count("ib_calls", day()), 0);
        let counts = counted(&w).await.totals();
        assert_eq!(counts["mails_quarantined"], 3);
    }

    #[tokio::test]
    async fn uploads_of_unknown_or_revoked_relays_and_changed_files_are_quarantined() {
        let w = world();
        // No record of branch-9.
        let (sha, event) = upload(&w, "branch-9", &corpus("plain.eml")).await;
        let resp = w.ingest.handle(sqs_event(&[event]), &invocation()).await;
        assert!(failures(&resp).is_empty());
        let q = object_keys::quarantined_mail("branch-9", &sha);
        let reason = quarantine_reason(&w, &q);
        assert!(
            reason.contains("no relay \\\"branch-9\\\" is on record"),
            "{reason}"
        );
        // Revoked before the upload.
        let mut revoked = RelayRecord {
            created_at: "2024-03-01T00:00:00Z".into(),
            revoked_at: Some("2024-03-14T12:00:00Z".into()),
            trusted_authserv_ids: vec![BRANCH_MX.into()],
            ..RelayRecord::new(
                crate::contract::RelayId::parse("branch-2").unwrap(),
                None,
                "test",
            )
        };
        let records: &dyn StateRecords = w.records.as_ref();
        records
            .put_record(&RecordKey::relay("branch-2"), &revoked, None)
            .await
            .unwrap();
        let (sha, event) = upload(&w, "branch-2", &corpus("8bit.eml")).await;
        w.ingest.handle(sqs_event(&[event]), &invocation()).await;
        let q = object_keys::quarantined_mail("branch-2", &sha);
        let reason = quarantine_reason(&w, &q);
        assert!(reason.contains("was revoked"), "{reason}");
        // Revoked after the upload (signed before): ingested.
        revoked.revoked_at = Some("2024-03-14T14:00:00Z".into());
        records
            .put_record(&RecordKey::relay("branch-2"), &revoked, None)
            .await
            .unwrap();
        let (_, event) = upload(&w, "branch-2", &corpus("plain.eml")).await;
        w.ingest.handle(sqs_event(&[event]), &invocation()).await;
        assert_eq!(w.rows.count("ib_calls", day()), 23);
        // A file whose bytes are not those its name says.
        relay(&w, "branch-1", None).await;
        let wrong = object_keys::relay_inbox("branch-1", &"0".repeat(64));
        let objects: &dyn Objects = w.objects.as_ref();
        objects
            .put(&wrong, corpus("plain.eml"), "message/rfc822")
            .await
            .unwrap();
        w.ingest
            .handle(sqs_event(&[created(&wrong)]), &invocation())
            .await;
        let q = object_keys::quarantined_mail("branch-1", &"0".repeat(64));
        let reason = quarantine_reason(&w, &q);
        assert!(reason.contains("not the 0000"), "{reason}");
        assert!(w.dead_letters.letters().is_empty());
    }

    #[tokio::test]
    async fn s3s_test_event_does_nothing_and_an_event_outside_the_relay_inbox_is_dead_lettered() {
        let w = world();
        let test = r#"{"Service":"Amazon S3","Event":"s3:TestEvent","Time":"2024-03-14T12:00:00.000Z","Bucket":"charlie","RequestId":"R","HostId":"H"}"#;
        let resp = w
            .ingest
            .handle(sqs_event(&[test.to_owned()]), &invocation())
            .await;
        assert!(failures(&resp).is_empty());
        assert!(w.dead_letters.letters().is_empty());
        let resp = w
            .ingest
            .handle(sqs_event(&[created("raw/ib_calls/x.csv")]), &invocation())
            .await;
        assert!(failures(&resp).is_empty(), "permanent: not retried");
        let letters = w.dead_letters.letters();
        assert_eq!(letters.len(), 1);
        assert!(
            letters[0].cause.contains("not a relay upload"),
            "{}",
            letters[0].cause
        );
    }

    #[tokio::test]
    async fn a_large_relay_attachment_is_archived_by_stream_and_continues_across_invocations() {
        let mut w = world();
        w.ingest.tuning = super::super::IngestTuning {
            chunk_rows: 5,
            stream_above: 1_000,
            checkpoint_margin: chrono::Duration::days(1),
        };
        relay(&w, "branch-1", None).await;
        let (sha, event) = upload(&w, "branch-1", &corpus("plain.eml")).await;
        let resp = w.ingest.handle(sqs_event(&[event]), &invocation()).await;
        assert!(failures(&resp).is_empty());
        // Every chunk pauses: continuations carry the relay and finish the file.
        let mut rounds = 0;
        loop {
            let queued = w.inbound.sent();
            let Some(next) = queued.get(rounds) else {
                break;
            };
            assert!(
                next.body.contains("\"relay\":\"branch-1\""),
                "{}",
                next.body
            );
            let resp = w
                .ingest
                .handle(sqs_event(std::slice::from_ref(&next.body)), &invocation())
                .await;
            assert!(failures(&resp).is_empty());
            rounds += 1;
            assert!(rounds < 20, "continuations do not end");
        }
        assert!(rounds >= 3, "{rounds} continuations");
        assert_eq!(w.rows.count("ib_calls", day()), 23);
        let records: &dyn StateRecords = w.records.as_ref();
        let outcomes = records
            .outcomes_of_mail("relay/branch-1", &sha)
            .await
            .unwrap();
        assert_eq!((outcomes.len(), outcomes[0].rows_new), (1, 23));
    }

    /// Relay mail carries whatever headers its file holds: a sender-written `dmarc=pass` on
    /// top is not believed, only the relay's trusted server's verdict; a relay that trusts no
    /// server has its mail ignored for datasets that require an authenticated sender.
    #[tokio::test]
    async fn relay_mail_is_authenticated_only_by_the_server_its_relay_trusts() {
        let w = world();
        relay(&w, "branch-1", None).await;
        let plain = corpus("plain.eml");
        let forged = |on_top: &str, server: &str| {
            let mut out = format!(
                "Authentication-Results: {on_top}\r\nAuthentication-Results: {BRANCH_MX}; {server}\r\n"
            )
            .into_bytes();
            out.extend_from_slice(&plain);
            out
        };
        let summary = |w: &World, sha: &str| -> MailSummary {
            serde_json::from_str(
                &w.claims
                    .result(&state::mail_claim("relay/branch-1", sha))
                    .unwrap(),
            )
            .unwrap()
        };
        // The sender's own pass on top, the branch server's fail below: ignored.
        let bytes = forged(
            "dmarc=pass header.from=dialer.example",
            "spf=fail smtp.mailfrom=dialer.example; dmarc=fail header.from=dialer.example",
        );
        let (sha, event) = upload_as_is(&w, "branch-1", &bytes).await;
        w.ingest.handle(sqs_event(&[event]), &invocation()).await;
        let s = summary(&w, &sha);
        assert_eq!(s.status, "ignored");
        assert!(s.ignored[0].contains("dmarc=fail"), "{:?}", s.ignored);
        assert_eq!(w.rows.count("ib_calls", day()), 0);
        // Another server claiming a pass: not believed either.
        let bytes = forged(
            "mx.elsewhere.example; dmarc=pass header.from=dialer.example",
            "dmarc=none header.from=dialer.example",
        );
        let (sha, event) = upload_as_is(&w, "branch-1", &bytes).await;
        w.ingest.handle(sqs_event(&[event]), &invocation()).await;
        assert_eq!(summary(&w, &sha).status, "ignored");
        // A relay that trusts no server: its mail is unauthenticated.
        let untrusting = RelayRecord {
            created_at: "2024-03-01T00:00:00Z".into(),
            ..RelayRecord::new(
                crate::contract::RelayId::parse("branch-3").unwrap(),
                None,
                "test",
            )
        };
        let records: &dyn StateRecords = w.records.as_ref();
        records
            .put_record(&RecordKey::relay("branch-3"), &untrusting, None)
            .await
            .unwrap();
        let (sha, event) = upload(&w, "branch-3", &plain).await;
        w.ingest.handle(sqs_event(&[event]), &invocation()).await;
        let s: MailSummary = serde_json::from_str(
            &w.claims
                .result(&state::mail_claim("relay/branch-3", &sha))
                .unwrap(),
        )
        .unwrap();
        assert_eq!(s.status, "ignored");
        assert!(
            s.ignored[0].contains("trusts no authserv-id"),
            "{:?}",
            s.ignored
        );
        // The trusted server's pass: ingested.
        let (_, event) = upload(&w, "branch-1", &plain).await;
        w.ingest.handle(sqs_event(&[event]), &invocation()).await;
        assert_eq!(w.rows.count("ib_calls", day()), 23);
    }

    /// An upload stored while the relay was revoked (with an upload URL issued to the revoked
    /// key) and read after the relay was made again is refused: the revoked stretch is kept.
    #[tokio::test]
    async fn an_upload_from_a_revoked_stretch_is_refused_after_the_relay_is_made_again() {
        let w = world();
        let record = RelayRecord {
            created_at: "2024-03-14T13:30:00Z".into(),
            trusted_authserv_ids: vec![BRANCH_MX.into()],
            // Revoked 12:50, made again 13:30; the upload below is stored at 13:00.
            revoked_windows: vec![("2024-03-14T12:50:00Z".into(), "2024-03-14T13:30:00Z".into())],
            ..RelayRecord::new(
                crate::contract::RelayId::parse("branch-5").unwrap(),
                None,
                "test",
            )
        };
        let records: &dyn StateRecords = w.records.as_ref();
        records
            .put_record(&RecordKey::relay("branch-5"), &record, None)
            .await
            .unwrap();
        let (sha, event) = upload(&w, "branch-5", &corpus("plain.eml")).await;
        w.ingest.handle(sqs_event(&[event]), &invocation()).await;
        let reason = quarantine_reason(&w, &object_keys::quarantined_mail("branch-5", &sha));
        assert!(
            reason.contains("made again") && reason.contains("revoked key"),
            "{reason}"
        );
        assert_eq!(w.rows.count("ib_calls", day()), 0);
    }
}
