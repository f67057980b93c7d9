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
            max_mail_bytes: match env.get("CHARLIE_MAX_MAIL_BYTES") {
                None => SES_MAX_MAIL_BYTES,
                Some(v) => v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=SES_MAX_MAIL_BYTES).contains(n))
                    .with_context(|| {
                        format!(
                            "CHARLIE_MAX_MAIL_BYTES={v:?}: expected 1 to {SES_MAX_MAIL_BYTES} bytes"
                        )
                    })?,
            },
            link_days: match env.get("CHARLIE_LINK_DAYS") {
                None => 7,
                Some(v) => v
                    .parse::<u32>()
                    .ok()
                    .filter(|d| (1..=7).contains(d))
                    .with_context(|| format!("CHARLIE_LINK_DAYS={v:?}: expected 1 to 7"))?,
            },
        })
    }

    pub async fn handle(&self, event: SqsEvent) -> SqsBatchResponse {
        sqs_batch::process(event, |m| self.handle_message(m)).await
    }

    async fn handle_message(&self, msg: SqsMessage) -> anyhow::Result<()> {
        let body = msg.body.as_deref().unwrap_or_default();
        let req: MailRequest = serde_json::from_str(body).context("not a mail request")?;
        if req.recipients.is_empty() {
            bail!("mail request for run {} has no recipients", req.run_id);
        }
        let group = recipient_group(&req.recipients);
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
        match self.deliver(&req, &group).await {
            Ok((message_id, size)) => {
                let result = serde_json::json!({
                    "status": "sent", "ses_message_id": message_id, "recipients": req.recipients,
                    "run_id": req.run_id, "sent_at": Utc::now().to_rfc3339(), "mime_bytes": size,
                });
                info!(
                    run_id = req.run_id,
                    ses_message_id = message_id,
                    recipients = req.recipients.len(),
                    "report mailed"
                );
                self.state
                    .complete(&pk, &result.to_string(), Utc::now())
                    .await
            }
            Err(e) => {
                if let Err(release) = self.state.release(&pk).await {
                    warn!(error = %format!("{release:#}"), "could not release the delivery claim; it expires by itself");
                }
                Err(e)
            }
        }
    }

    async fn deliver(&self, req: &MailRequest, group: &str) -> anyhow::Result<(String, usize)> {
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
                to: &req.recipients,
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
        let id = self
            .ses
            .send_raw(&self.sender, &req.recipients, mime)
            .await?;
        Ok((id, size))
    }
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
    fn recipient_groups_ignore_order_and_case() {
        let a = recipient_group(&["B@x.example".into(), "a@x.example".into()]);
        let b = recipient_group(&["a@x.example".into(), "b@x.example".into()]);
        assert_eq!(a, b);
        assert_ne!(a, recipient_group(&["a@x.example".into()]));
    }
}
