//! mailer: for each `mail` message, sends the run's workbook to its recipients (to, cc, bcc)
//! through SES, or through Microsoft Graph `sendMail` as a mailbox user for reports whose
//! `transport = "graph"`, exactly once per run and recipient group. The words come from the report's templates
//! (`mail_template`); a mail over the size limit carries a presigned download link instead of
//! the workbook.
//!
//! A delivery record (`DLV#{run}#{group}`) is claimed before sending and completed after, with
//! the transport and the provider's message id (SES's id; for Graph, the `internetMessageId`
//! Charlie set, as `sendMail` returns none); a retried message for a completed delivery sends
//! nothing. The one window left: a crash after the provider accepted the mail and before the
//! record completes sends it again on retry. It is kept small by doing nothing between the
//! two steps; the mail's Message-ID is the same on both sends, so receiving systems that
//! de-duplicate by it show one.

use anyhow::{Context, bail};
use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use chrono::{Duration, Utc};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::adapters::aws::AwsClients;
use crate::adapters::graph::{Mailbox, OutgoingAttachment, OutgoingMail};
use crate::adapters::object_store::ObjectStore;
use crate::adapters::ses::SesTransport;
use crate::adapters::state::{Claim, StateStore};
use crate::definitions::{Definitions, MailTransport};
use crate::env::Env;
use crate::mail_template::{self, MailFacts};
use crate::messages::MailRequest;
use crate::report_mail::{Field, Recipients, ReportMail, XLSX_CONTENT_TYPE, render};
use crate::sqs_batch;

pub struct Mailer {
    definitions: Definitions,
    objects: ObjectStore,
    state: StateStore,
    ses: SesTransport,
    /// Present when a report sends through Graph.
    graph: Option<std::sync::Arc<Mailbox>>,
    sender: String,
    /// Size policy: a mail over this many bytes (MIME, attachment encoded) carries a download
    /// link instead of the workbook. SES v2 accepts 40 MB; `CHARLIE_MAX_MAIL_BYTES` lowers it.
    max_mail_bytes: usize,
    /// How long such a link works (`CHARLIE_LINK_DAYS`, 1–7: SigV4's limit).
    link_days: u32,
}

/// SES v2's limit for a whole message, attachments encoded.
pub const SES_MAX_MAIL_BYTES: usize = 40 * 1024 * 1024;

impl Mailer {
    pub async fn from_env(env: &Env, clients: &AwsClients) -> anyhow::Result<Self> {
        let objects = ObjectStore::new(clients.s3.clone(), env.required("CHARLIE_BUCKET")?);
        let definitions = super::load_definitions(env, &objects).await?;
        let graph = if definitions
            .reports
            .values()
            .any(|r| r.transport == MailTransport::Graph)
        {
            Some(super::mailbox_from_env(env, clients).await?)
        } else {
            None
        };
        Ok(Mailer {
            definitions,
            graph,
            objects,
            state: StateStore::new(
                clients.dynamodb.clone(),
                env.required("CHARLIE_STATE_TABLE")?,
            ),
            ses: SesTransport::new(
                clients.sesv2.clone(),
                env.get("CHARLIE_SES_CONFIG_SET").map(str::to_owned),
            ),
            sender: env.required("CHARLIE_SENDER")?.to_owned(),
            max_mail_bytes: env.in_range_or(
                "CHARLIE_MAX_MAIL_BYTES",
                SES_MAX_MAIL_BYTES,
                1..=SES_MAX_MAIL_BYTES,
            )?,
            link_days: env.in_range_or("CHARLIE_LINK_DAYS", 7, 1..=7)?,
        })
    }

    pub async fn handle(&self, event: SqsEvent) -> SqsBatchResponse {
        sqs_batch::process(event, |m| self.handle_message(m)).await
    }

    async fn handle_message(&self, msg: SqsMessage) -> anyhow::Result<()> {
        let body = msg.body.as_deref().unwrap_or_default();
        // The ses_events queue carries SNS notifications; the mail queue, mail requests.
        if let Ok(note) = serde_json::from_str::<SnsNotification>(body)
            && note.kind == "Notification"
        {
            return self.record_ses_event(&note.message).await;
        }
        let req: MailRequest = serde_json::from_str(body).context("not a mail request")?;
        let groups = recipient_groups(&req.recipients, &req.cc, &req.bcc)
            .with_context(|| format!("mail request for run {}", req.run_id))?;
        // Each group of at most 50 is its own message and delivery: a retry sends only the
        // groups not yet delivered.
        let mut failed = Vec::new();
        for group in &groups {
            if let Err(e) = self.deliver_group(&req, group).await {
                warn!(run_id = req.run_id, error = %format!("{e:#}"), "a recipient group failed");
                failed.push(e);
            }
        }
        match failed.into_iter().next() {
            Some(first) => Err(first.context(format!(
                "run {}: not every recipient group was delivered",
                req.run_id
            ))),
            None => Ok(()),
        }
    }

    /// Records an SES event on the delivery it concerns: every event as it came, and the
    /// delivery's status (`delivered`, `bounced`, `complained`).
    async fn record_ses_event(&self, message: &str) -> anyhow::Result<()> {
        let event: SesEvent = serde_json::from_str(message)
            .context("an SNS notification that is not an SES event")?;
        let Some((status, rank)) = delivery_status(&event.event_type) else {
            info!(event_type = event.event_type, "SES event ignored");
            return Ok(());
        };
        let ses_id = &event.mail.message_id;
        let Some(link) = self
            .state
            .get_record(&format!("SESMSG#{ses_id}"), "delivery")
            .await?
        else {
            // Not a message this mailer sent (or its record expired): nothing to update, and
            // retrying would not change that.
            warn!(
                ses_message_id = ses_id,
                "SES event for an unknown message: ignored"
            );
            return Ok(());
        };
        let delivery = link["delivery"]
            .as_str()
            .context("SESMSG record without its delivery")?;
        let detail = event.bounce.or(event.complaint).unwrap_or_default();
        let now = Utc::now().to_rfc3339();
        self.state
            .put_record(
                delivery,
                &format!("event#{}#{ses_id}", event.event_type.to_ascii_lowercase()),
                &serde_json::json!({ "type": event.event_type, "detail": detail, "at": now }),
                None,
            )
            .await?;
        let current = self.state.get_record(delivery, "status").await?;
        let current_rank = current
            .as_ref()
            .and_then(|c| c["rank"].as_u64())
            .unwrap_or(0);
        if u64::from(rank) >= current_rank {
            self.state
                .put_record(
                    delivery,
                    "status",
                    &serde_json::json!({
                        "status": status, "rank": rank, "ses_message_id": ses_id,
                        "detail": detail, "at": now,
                    }),
                    None,
                )
                .await?;
        }
        info!(delivery, status, "SES event recorded on the delivery");
        Ok(())
    }

    /// Sends one message to `to` unless that delivery is already complete.
    async fn deliver_group(&self, req: &MailRequest, to: &Recipients) -> anyhow::Result<()> {
        let group = recipient_group(to);
        let pk = format!("DLV#{}#{group}", req.run_id);
        match self
            .state
            .claim(&pk, Utc::now(), Duration::minutes(10), Duration::days(400))
            .await?
        {
            Claim::AlreadyDone(result) => {
                info!(
                    run_id = req.run_id,
                    result, "already delivered: nothing sent"
                );
                return Ok(());
            }
            Claim::InProgressElsewhere => {
                bail!("delivery {pk} is being sent by another invocation")
            }
            Claim::Acquired => {}
        }
        match self.deliver(req, to, &group).await {
            Ok(sent) => {
                let result = serde_json::json!({
                    "status": "sent", "transport": sent.transport.name(),
                    "provider_message_id": sent.provider_id, "graph_draft_id": sent.graph_draft_id,
                    "to": to.to, "cc": to.cc, "bcc": to.bcc, "link": sent.link,
                    "run_id": req.run_id, "sent_at": Utc::now().to_rfc3339(), "mime_bytes": sent.size,
                });
                info!(
                    run_id = req.run_id,
                    transport = sent.transport.name(),
                    provider_message_id = sent.provider_id,
                    recipients = to.len(),
                    "report mailed"
                );
                self.state
                    .complete(&pk, &result.to_string(), Utc::now())
                    .await?;
                // Indexes: the run lists its deliveries (`RUN#{run}` / `delivery#{group}`), and
                // SES events, which name SES's message id, find theirs. The mail is out whatever
                // happens here, so a failure is logged, not retried.
                let mut indexes = vec![(
                    format!("RUN#{}", req.run_id),
                    format!("delivery#{group}"),
                    serde_json::json!({ "delivery": pk, "result": result }),
                )];
                if sent.transport == MailTransport::Ses {
                    indexes.push((
                        format!("SESMSG#{}", sent.provider_id),
                        "delivery".to_owned(),
                        serde_json::json!({ "delivery": pk, "run_id": req.run_id }),
                    ));
                }
                for (ipk, isk, data) in indexes {
                    if let Err(e) = self.state.put_record(&ipk, &isk, &data, None).await {
                        warn!(error = %format!("{e:#}"), index = ipk, "could not index the delivery");
                    }
                }
                Ok(())
            }
            Err(e) => {
                self.state.release_or_let_expire(&pk).await;
                Err(e)
            }
        }
    }

    async fn deliver(
        &self,
        req: &MailRequest,
        to: &Recipients,
        group: &str,
    ) -> anyhow::Result<Sent> {
        // A request without a workbook is a "no data" notice.
        let workbook = match &req.workbook_key {
            Some(key) => Some((
                key.rsplit('/').next().unwrap_or("report.xlsx"),
                self.objects
                    .get(key, req.workbook_version.as_deref())
                    .await?,
            )),
            None => None,
        };
        let report = self
            .definitions
            .reports
            .get(&req.report)
            .with_context(|| format!("report {} is not defined (any more)", req.report))?;
        let from = match (report.transport, report.send_as.as_deref()) {
            (MailTransport::Graph, Some(user)) => user,
            (MailTransport::Graph, None) => {
                bail!("report {}: transport graph without send_as", req.report)
            }
            (MailTransport::Ses, _) => self.sender.as_str(),
        };
        let domain = from.rsplit('@').next().unwrap_or("charlie.local");
        let message_id = format!(
            "{}.{group}@{domain}",
            req.run_id.replace(
                |c: char| !c.is_ascii_alphanumeric() && c != '.' && c != '-',
                "_"
            )
        );
        let compose = |link: Option<(&str, &str)>| -> anyhow::Result<(Vec<u8>, String)> {
            let words = mail_template::render(
                report,
                &MailFacts {
                    report: &req.report,
                    period: &req.period,
                    rows: req.rows,
                    warnings: &req.warnings,
                    link,
                    no_data: workbook.is_none(),
                },
                false,
            )?;
            let mime = render(&ReportMail {
                from,
                to: &to.to,
                cc: &to.cc,
                subject: &req.subject,
                text: &words.text,
                html: &words.html,
                workbook: match link {
                    Some(_) => None,
                    None => workbook
                        .as_ref()
                        .map(|(name, bytes)| (*name, bytes.as_slice())),
                },
                message_id: &message_id,
                date: Utc::now(),
            })
            .context("rendering the report mail")?;
            Ok((mime, words.html))
        };
        // The MIME's size is the mail's size for either transport (Graph's JSON carries the
        // file base64-encoded too).
        let (mut mime, mut html) = compose(None)?;
        let mut link = None;
        if mime.len() > self.max_mail_bytes
            && let Some(key) = &req.workbook_key
        {
            // Too large to attach: a link that works for `link_days`, and the mail says so.
            let days = self.link_days;
            let url = self
                .objects
                .presigned_get(
                    key,
                    req.workbook_version.as_deref(),
                    std::time::Duration::from_secs(u64::from(days) * 86_400),
                )
                .await?;
            let expires = (Utc::now() + Duration::days(i64::from(days)))
                .format("%Y-%m-%d %H:%M UTC")
                .to_string();
            info!(
                run_id = req.run_id,
                mail_bytes = mime.len(),
                limit = self.max_mail_bytes,
                "workbook too large to attach: sending a download link"
            );
            (mime, html) = compose(Some((&url, &expires)))?;
            link = Some(expires);
        }
        let size = mime.len();
        match report.transport {
            MailTransport::Ses => {
                let id = self.ses.send_raw(from, to, mime).await?;
                Ok(Sent {
                    transport: MailTransport::Ses,
                    provider_id: id,
                    graph_draft_id: None,
                    size,
                    link,
                })
            }
            MailTransport::Graph => {
                let graph = self.graph.as_ref().context(
                    "no Graph client (the definitions loaded at start had no Graph report)",
                )?;
                let attachment = match (&link, &workbook) {
                    (None, Some((name, bytes))) => Some(OutgoingAttachment {
                        name,
                        content_type: XLSX_CONTENT_TYPE,
                        bytes,
                    }),
                    _ => None,
                };
                let sent = graph
                    .send_mail(
                        from,
                        &OutgoingMail {
                            subject: &req.subject,
                            html: &html,
                            recipients: to,
                            internet_message_id: &format!("<{message_id}>"),
                            attachment,
                        },
                    )
                    .await
                    .with_context(|| format!("sending through Graph as {from}"))?;
                Ok(Sent {
                    transport: MailTransport::Graph,
                    provider_id: sent.internet_message_id,
                    graph_draft_id: sent.draft_id,
                    size,
                    link,
                })
            }
        }
    }
}

/// What a transport did with one message.
struct Sent {
    transport: MailTransport,
    /// SES's message id, or the `internetMessageId` of a Graph send.
    provider_id: String,
    graph_draft_id: Option<String>,
    size: usize,
    /// The link's expiry when the workbook went as a link.
    link: Option<String>,
}

/// An SNS notification as SNS delivers it to SQS (raw delivery off).
#[derive(serde::Deserialize)]
struct SnsNotification {
    #[serde(rename = "Type")]
    kind: String,
    #[serde(rename = "Message")]
    message: String,
}

/// The parts of an SES event (configuration-set event publishing, `eventType`) or notification
/// (identity notifications, `notificationType`) a delivery's status needs.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct SesEvent {
    #[serde(alias = "notificationType")]
    event_type: String,
    mail: SesMail,
    #[serde(default)]
    bounce: Option<serde_json::Value>,
    #[serde(default)]
    complaint: Option<serde_json::Value>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct SesMail {
    message_id: String,
}

/// A delivery's status from an SES event type; a later event never lowers it (a bounce stays a
/// bounce when the other recipients' deliveries arrive).
fn delivery_status(event_type: &str) -> Option<(&'static str, u8)> {
    match event_type {
        "Delivery" => Some(("delivered", 1)),
        "Bounce" => Some(("bounced", 2)),
        "Complaint" => Some(("complained", 3)),
        _ => None,
    }
}

/// SES and Graph accept at most 50 recipients (to, cc and bcc together) per message.
pub const MAX_RECIPIENTS: usize = 50;

/// The recipients, checked and without repeats (ignoring case; an address in `to` is not
/// copied again), in groups of at most [`MAX_RECIPIENTS`], each sent as its own message.
fn recipient_groups(
    to: &[String],
    cc: &[String],
    bcc: &[String],
) -> anyhow::Result<Vec<Recipients>> {
    let mut seen = std::collections::HashSet::new();
    let mut unique = Vec::new();
    for (field, list) in [(Field::To, to), (Field::Cc, cc), (Field::Bcc, bcc)] {
        for r in list {
            let r = r.trim();
            if !crate::definitions::looks_like_address(r) {
                bail!("{} recipient {r:?} is not a mail address", field.name());
            }
            if seen.insert(r.to_ascii_lowercase()) {
                unique.push((field, r.to_owned()));
            }
        }
    }
    if unique.is_empty() {
        bail!("no recipients");
    }
    Ok(unique
        .chunks(MAX_RECIPIENTS)
        .map(|chunk| {
            let mut group = Recipients::default();
            for (field, address) in chunk {
                group.push(*field, address.clone());
            }
            group
        })
        .collect())
}

/// A stable id for a set of recipients, whatever their order or case (a plain `to` list keeps
/// the id it had before cc and bcc existed).
fn recipient_group(recipients: &Recipients) -> String {
    let mut sorted: Vec<String> = recipients
        .all()
        .map(|(field, r)| {
            let r = r.trim().to_ascii_lowercase();
            match field {
                Field::To => r,
                other => format!("{}:{r}", other.name()),
            }
        })
        .collect();
    sorted.sort();
    sorted.dedup();
    hex::encode(&Sha256::digest(sorted.join(",").as_bytes())[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_are_checked_deduplicated_and_split_by_fifty() {
        let many: Vec<String> = (0..120)
            .map(|i| format!("person{i}@contoso.example"))
            .collect();
        let mut with_repeats = many.clone();
        with_repeats.push("PERSON3@contoso.example".into());
        let groups = recipient_groups(&with_repeats, &[], &[]).unwrap();
        assert_eq!(
            groups.iter().map(Recipients::len).collect::<Vec<_>>(),
            vec![50, 50, 20]
        );
        let all: Vec<String> = groups.iter().flat_map(|g| g.to.clone()).collect();
        assert_eq!(all, many, "every recipient once, in order");
        let err = recipient_groups(
            &["ok@contoso.example".into(), "not an address".into()],
            &[],
            &[],
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("to recipient \"not an address\" is not a mail address")
        );
        assert!(recipient_groups(&[], &[], &[]).is_err());
    }

    #[test]
    fn cc_and_bcc_count_against_the_fifty_and_are_not_repeated() {
        let to: Vec<String> = (0..45).map(|i| format!("to{i}@contoso.example")).collect();
        let cc: Vec<String> = (0..10).map(|i| format!("cc{i}@contoso.example")).collect();
        let bcc = vec![
            "TO1@contoso.example".to_owned(),
            "audit@contoso.example".to_owned(),
        ];
        let groups = recipient_groups(&to, &cc, &bcc).unwrap();
        assert_eq!(groups.len(), 2);
        assert_eq!((groups[0].to.len(), groups[0].cc.len()), (45, 5));
        assert_eq!(
            groups[1],
            Recipients {
                to: vec![],
                cc: cc[5..].to_vec(),
                bcc: vec!["audit@contoso.example".into()],
            },
            "the bcc already in to is not sent twice"
        );
        let err = recipient_groups(&to, &[], &["nope".into()]).unwrap_err();
        assert!(
            err.to_string().starts_with("bcc recipient \"nope\""),
            "{err}"
        );
    }

    #[test]
    fn ses_events_parse_in_both_published_forms_and_never_lower_a_status() {
        // Configuration-set event publishing names the type `eventType`; identity
        // notifications, `notificationType` (AWS's documented examples, trimmed).
        let published: SesEvent = serde_json::from_str(
            r#"{"eventType":"Bounce","bounce":{"bounceType":"Permanent"},"mail":{"messageId":"EXAMPLE7c191be45-e9aedb9a-02f9-4d12-a87d-dd0099a07f8a-000000"}}"#,
        )
        .unwrap();
        assert_eq!(published.event_type, "Bounce");
        assert!(published.bounce.is_some());
        let notified: SesEvent = serde_json::from_str(
            r#"{"notificationType":"Complaint","complaint":{"complaintFeedbackType":"abuse"},"mail":{"messageId":"0000014644fe5ef6-9a483358-9170-4cb4-a269-f5dcdf415321-000000"}}"#,
        )
        .unwrap();
        assert_eq!(notified.event_type, "Complaint");
        let rank = |t| delivery_status(t).unwrap().1;
        assert!(rank("Delivery") < rank("Bounce") && rank("Bounce") < rank("Complaint"));
        assert_eq!(
            delivery_status("Send"),
            None,
            "other event types are ignored"
        );
    }

    #[test]
    fn recipient_groups_ignore_order_and_case() {
        let to = |list: &[&str]| Recipients {
            to: list.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let a = recipient_group(&to(&["B@x.example", "a@x.example"]));
        let b = recipient_group(&to(&["a@x.example", "b@x.example"]));
        assert_eq!(a, b);
        assert_ne!(a, recipient_group(&to(&["a@x.example"])));
        let mut copied = to(&["a@x.example"]);
        copied.cc.push("b@x.example".into());
        assert_ne!(a, recipient_group(&copied), "a cc is not a to");
    }
}
