//! mailer: for each `mail` message, sends the run's workbook to its recipients through SES,
//! exactly once per run and recipient group. The words come from the report's templates
//! (`mail_template`); a mail over the size limit carries a presigned download link instead of
//! the workbook.
//!
//! A delivery record (`DLV#{run}#{group}`) is claimed before sending and completed after, with
//! SES's message id; a retried message for a completed delivery sends nothing. The one window
//! left: a crash after SES accepted the mail and before the record completes sends it again on
//! retry. It is kept small by doing nothing between the two steps.

use anyhow::{Context, bail};
use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use chrono::{Duration, Utc};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::adapters::aws::AwsClients;
use crate::adapters::object_store::ObjectStore;
use crate::adapters::ses::SesTransport;
use crate::adapters::state::{Claim, StateStore};
use crate::definitions::Definitions;
use crate::env::Env;
use crate::mail_template::{self, MailFacts};
use crate::messages::MailRequest;
use crate::report_mail::{ReportMail, render};
use crate::sqs_batch;

pub struct Mailer {
    definitions: Definitions,
    objects: ObjectStore,
    state: StateStore,
    ses: SesTransport,
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
        Ok(Mailer {
            definitions: super::load_definitions(env, &objects).await?,
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
        let groups = recipient_groups(&req.recipients)
            .with_context(|| format!("mail request for run {}", req.run_id))?;
        // Each group of at most 50 is its own message and delivery: a retry sends only the
        // groups not yet delivered.
        let mut failed = Vec::new();
        for to in &groups {
            if let Err(e) = self.deliver_group(&req, to).await {
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
    async fn deliver_group(&self, req: &MailRequest, to: &[String]) -> anyhow::Result<()> {
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
            Ok((message_id, size)) => {
                let result = serde_json::json!({
                    "status": "sent", "ses_message_id": message_id, "recipients": to,
                    "run_id": req.run_id, "sent_at": Utc::now().to_rfc3339(), "mime_bytes": size,
                });
                info!(
                    run_id = req.run_id,
                    ses_message_id = message_id,
                    recipients = to.len(),
                    "report mailed"
                );
                self.state
                    .complete(&pk, &result.to_string(), Utc::now())
                    .await?;
                // SES events name the message id: this leads them to the delivery. The mail is
                // out whatever happens here, so a failure is logged, not retried.
                if let Err(e) = self
                    .state
                    .put_record(
                        &format!("SESMSG#{message_id}"),
                        "delivery",
                        &serde_json::json!({ "delivery": pk, "run_id": req.run_id }),
                        None,
                    )
                    .await
                {
                    warn!(error = %format!("{e:#}"), ses_message_id = message_id, "could not index the message for SES events");
                }
                Ok(())
            }
            Err(e) => {
                if let Err(release) = self.state.release(&pk).await {
                    warn!(error = %format!("{release:#}"), "could not release the delivery claim; it expires by itself");
                }
                Err(e)
            }
        }
    }

    async fn deliver(
        &self,
        req: &MailRequest,
        to: &[String],
        group: &str,
    ) -> anyhow::Result<(String, usize)> {
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
        let domain = self.sender.rsplit('@').next().unwrap_or("charlie.local");
        let message_id = format!(
            "{}.{group}@{domain}",
            req.run_id.replace(
                |c: char| !c.is_ascii_alphanumeric() && c != '.' && c != '-',
                "_"
            )
        );
        let report = self
            .definitions
            .reports
            .get(&req.report)
            .with_context(|| format!("report {} is not defined (any more)", req.report))?;
        let compose = |link: Option<(&str, &str)>| -> anyhow::Result<Vec<u8>> {
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
            render(&ReportMail {
                from: &self.sender,
                to,
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
            .context("rendering the report mail")
        };
        let mut mime = compose(None)?;
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
            mime = compose(Some((&url, &expires)))?;
        }
        let size = mime.len();
        let id = self.ses.send_raw(&self.sender, to, mime).await?;
        Ok((id, size))
    }
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

/// SES accepts at most 50 recipients per message.
pub const MAX_RECIPIENTS: usize = 50;

/// The recipients, checked and without repeats (ignoring case), in groups of at most
/// [`MAX_RECIPIENTS`], each sent as its own message.
fn recipient_groups(recipients: &[String]) -> anyhow::Result<Vec<Vec<String>>> {
    let mut seen = std::collections::HashSet::new();
    let mut unique = Vec::new();
    for r in recipients {
        let r = r.trim();
        if !crate::definitions::looks_like_address(r) {
            bail!("recipient {r:?} is not a mail address");
        }
        if seen.insert(r.to_ascii_lowercase()) {
            unique.push(r.to_owned());
        }
    }
    if unique.is_empty() {
        bail!("no recipients");
    }
    Ok(unique
        .chunks(MAX_RECIPIENTS)
        .map(<[String]>::to_vec)
        .collect())
}

/// A stable id for a set of recipients, whatever their order or case.
fn recipient_group(recipients: &[String]) -> String {
    let mut sorted: Vec<String> = recipients
        .iter()
        .map(|r| r.trim().to_ascii_lowercase())
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
        let groups = recipient_groups(&with_repeats).unwrap();
        assert_eq!(
            groups.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![50, 50, 20]
        );
        assert_eq!(groups.concat(), many, "every recipient once, in order");
        let err =
            recipient_groups(&["ok@contoso.example".into(), "not an address".into()]).unwrap_err();
        assert!(
            err.to_string()
                .contains("\"not an address\" is not a mail address")
        );
        assert!(recipient_groups(&[]).is_err());
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
        let a = recipient_group(&["B@x.example".into(), "a@x.example".into()]);
        let b = recipient_group(&["a@x.example".into(), "b@x.example".into()]);
        assert_eq!(a, b);
        assert_ne!(a, recipient_group(&["a@x.example".into()]));
    }
}
