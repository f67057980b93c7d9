//! mailer: for each `mail` message, sends the run's workbook to its recipients (to, cc, bcc)
//! through SES, or through Microsoft Graph `sendMail` as a mailbox user for reports whose
//! `transport = "graph"`, exactly once per run and recipient group. The words come from the report's templates
//! (`mail_template`); a mail over the size limit carries a presigned download link instead of
//! the workbook.
//!
//! A delivery record (`DLV#{run}#{group}`) is claimed before sending and completed after, with
//! the transport and the provider's message id (SES's id; for Graph, the `internetMessageId`
//! Charlie set, as `sendMail` returns none); a retried message for a completed delivery sends
//! nothing. The provider's answer is recorded beside the claim (`sent`) the moment it comes,
//! so a retry after a lost completion or index sends nothing either. The window left, a crash
//! between the provider's answer and that write, is described in docs/architecture.md.

use std::sync::Arc;

use anyhow::Context;
use async_trait::async_trait;
use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use chrono::{Duration, Utc};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::contract::DeliveryStatus;
use crate::definitions::{Definitions, TransportKind};
use crate::failure::{OrPermanent, permanent};
use crate::idempotency::{IdempotencyKey, Once, once, persist};
use crate::invocation::Invocation;
use crate::mail_template::{self, MailFacts};
use crate::messages::MailRequest;
use crate::ports::{
    Claims, DeadLetters, MailTransport, Objects, OutgoingAttachment, OutgoingMail, StateRecords,
};
use crate::report_mail::{Field, Recipients, ReportMail, XLSX_CONTENT_TYPE, render};
use crate::state::{
    self, DeliveryEvent, DeliveryNews, DeliveryResult, RecordKey, RunDelivery, SesMessage,
};

/// How long a delivery's claim is kept: the same mail request within this time sends nothing.
const KEEP_DELIVERIES: Duration = Duration::days(400);

/// How long a download link works unless `CHARLIE_LINK_DAYS` says otherwise.
pub const DEFAULT_LINK_DAYS: u32 = 3;

pub struct Mailer {
    pub definitions: Arc<Definitions>,
    pub objects: Arc<dyn Objects>,
    pub claims: Arc<dyn Claims>,
    pub records: Arc<dyn StateRecords>,
    /// One transport per kind a report may name (SES always; Graph when a report uses it).
    pub transports: Vec<Arc<dyn MailTransport>>,
    pub dead_letters: Arc<dyn DeadLetters>,
    pub sender: String,
    /// Size policy: a mail over this many bytes (MIME, attachment encoded) carries a download
    /// link instead of the workbook. SES v2 accepts 40 MB; `CHARLIE_MAX_MAIL_BYTES` lowers it.
    pub max_mail_bytes: usize,
    /// How long such a link works (`CHARLIE_LINK_DAYS`: 1–90 through the API, 1–7 as a bare
    /// presigned URL, SigV4's limit).
    pub link_days: u32,
    /// Signs links to the control API's download route, which outlive the mailer's
    /// credentials; without it the mail carries a presigned URL (which dies with the role
    /// session that signed it, hours later).
    pub links: Option<LinkSigner>,
}

/// The key and the API's base URL of the mails' download links.
pub struct LinkSigner {
    pub key: crate::secret::Secret,
    /// `https://…` without a trailing `/`.
    pub api_base_url: String,
}

/// SES v2's limit for a whole message, attachments encoded.
pub const SES_MAX_MAIL_BYTES: usize = 40 * 1024 * 1024;

#[cfg(feature = "mailer")]
impl Mailer {
    pub async fn from_env(env: &crate::env::Env) -> anyhow::Result<Self> {
        use super::wiring;
        let aws = crate::adapters::aws::AwsConfig::from_env(env).await;
        let objects = wiring::objects(&aws, env)?;
        let definitions = super::load_definitions(env, objects.as_ref()).await?;
        let mut transports: Vec<Arc<dyn MailTransport>> =
            vec![Arc::new(crate::adapters::aws::ses::SesTransport::new(
                aws_sdk_sesv2::Client::new(&aws.sdk),
                env.get("CHARLIE_SES_CONFIG_SET").map(str::to_owned),
            ))];
        if definitions
            .reports
            .values()
            .any(|r| r.transport == TransportKind::Graph)
        {
            transports.push(wiring::graph(&aws, env).await?);
        }
        let state = wiring::state(&aws, env)?;
        let links = match (
            env.get("CHARLIE_LINK_SECRET"),
            env.get("CHARLIE_API_BASE_URL"),
        ) {
            (Some(id), Some(base)) => {
                let secrets = aws_sdk_secretsmanager::Client::new(&aws.sdk);
                let key = crate::adapters::aws::secrets::read_secret(&secrets, id).await?;
                crate::links::check_keys(&key).map_err(anyhow::Error::msg)?;
                Some(LinkSigner {
                    key,
                    api_base_url: base.trim_end_matches('/').to_owned(),
                })
            }
            (None, None) => None,
            _ => anyhow::bail!("set both CHARLIE_LINK_SECRET and CHARLIE_API_BASE_URL, or neither"),
        };
        let max_days = if links.is_some() { 90 } else { 7 };
        Ok(Mailer {
            definitions: Arc::new(definitions),
            objects,
            claims: state.clone(),
            records: state,
            transports,
            dead_letters: wiring::dead_letters(&aws, env)?,
            sender: env.required("CHARLIE_SENDER")?.to_owned(),
            max_mail_bytes: env.in_range_or(
                "CHARLIE_MAX_MAIL_BYTES",
                SES_MAX_MAIL_BYTES,
                1..=SES_MAX_MAIL_BYTES,
            )?,
            // Three days by default: a link is a bearer credential (whoever has the mail has the
            // workbook), a report is read within a day or two, and every day more widens what
            // a forwarded or leaked mail opens; CHARLIE_LINK_DAYS gives longer.
            link_days: env.in_range_or("CHARLIE_LINK_DAYS", DEFAULT_LINK_DAYS, 1..=max_days)?,
            links,
        })
    }
}

#[async_trait]
impl super::Handler for Mailer {
    async fn invoke(
        &self,
        event: serde_json::Value,
        invocation: &Invocation,
    ) -> anyhow::Result<serde_json::Value> {
        super::invoke_batch(self, event, invocation).await
    }
}

#[async_trait]
impl super::MessageHandler for Mailer {
    const STAGE: &'static str = "mailer";

    fn dead_letters(&self) -> &dyn DeadLetters {
        self.dead_letters.as_ref()
    }

    fn records(&self) -> &dyn StateRecords {
        self.records.as_ref()
    }

    async fn handle_message(&self, msg: SqsMessage, invocation: &Invocation) -> anyhow::Result<()> {
        self.deliver_message(msg, invocation).await
    }
}

impl Mailer {
    pub async fn handle(&self, event: SqsEvent, invocation: &Invocation) -> SqsBatchResponse {
        super::handle_batch(self, event, invocation).await
    }

    async fn deliver_message(
        &self,
        msg: SqsMessage,
        invocation: &Invocation,
    ) -> anyhow::Result<()> {
        let body = msg.body.as_deref().unwrap_or_default();
        // The ses_events queue carries SNS notifications; the mail queue, mail requests.
        if let Ok(note) = serde_json::from_str::<SnsNotification>(body)
            && note.kind == "Notification"
        {
            return self.record_ses_event(&note.message).await;
        }
        let req: MailRequest = serde_json::from_str(body)
            .context("not a mail request")
            .or_permanent()?;
        let groups = recipient_groups(&req.recipients, &req.cc, &req.bcc)
            .with_context(|| format!("mail request for run {}", req.run_id))
            .or_permanent()?;
        // Each group of at most 50 is its own message and delivery: a retry sends only the
        // groups not yet delivered.
        let mut failed = Vec::new();
        for group in &groups {
            if let Err(e) = self.deliver_group(&req, group, invocation).await {
                warn!(run_id = %req.run_id, error = %format!("{e:#}"), "a recipient group failed");
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
            .context("an SNS notification that is not an SES event")
            .or_permanent()?;
        let Some(status) = delivery_status(&event.event_type) else {
            info!(event_type = event.event_type, "SES event ignored");
            return Ok(());
        };
        let ses_id = &event.mail.message_id;
        let Some(link) = self
            .records
            .get_record(&RecordKey::ses_message(ses_id))
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
        let delivery = link.delivery.as_str();
        let detail = event.bounce.or(event.complaint).unwrap_or_default();
        let now = Utc::now().to_rfc3339();
        self.records
            .put_record(
                &RecordKey::delivery_event(delivery, &event.event_type, ses_id),
                &DeliveryEvent {
                    event_type: event.event_type.clone(),
                    detail: detail.clone(),
                    at: now.clone(),
                },
                None,
            )
            .await?;
        // One conditional write: of two events racing, the higher status stays.
        let rank = status.rank();
        let record = DeliveryNews {
            status,
            rank,
            ses_message_id: ses_id.clone(),
            detail,
            at: now,
        };
        let raised = self
            .records
            .put_ranked_record(&RecordKey::delivery_status(delivery), &record, rank)
            .await?;
        if !raised {
            info!(
                delivery,
                %status, "a higher status is recorded already: kept"
            );
        }
        info!(delivery, %status, "SES event recorded on the delivery");
        // `ses_{event}/{report}`, once per message and event type (as the event's record).
        let report = self
            .records
            .get_record(&RecordKey::run(&link.run_id))
            .await?
            .map_or_else(|| "unknown".to_owned(), |r| r.report);
        let mut counts = crate::counters::Counts::default();
        let kind = crate::counters::Kind::Ses(event.event_type.to_ascii_lowercase());
        counts.add(kind, &report, 1);
        let counted = format!("ses/{ses_id}/{}", event.event_type);
        crate::counters::count(self.records.as_ref(), &counted, Utc::now(), &counts).await?;
        Ok(())
    }

    /// Sends one message to `to` unless that delivery is already complete.
    async fn deliver_group(
        &self,
        req: &MailRequest,
        to: &Recipients,
        invocation: &Invocation,
    ) -> anyhow::Result<()> {
        let group = recipient_group(to);
        let pk = state::delivery_claim(&req.run_id, &group);
        // The payload: what this delivery sends; the same key for another workbook is refused.
        let key = IdempotencyKey::new(
            pk.clone(),
            &(
                &req.report,
                &req.period,
                &req.workbook_key,
                &req.workbook_version,
            ),
        );
        let work = async {
            // Sent before, by an attempt whose completion was lost: not again.
            let sent_key = RecordKey::delivery_sent(&pk);
            let earlier = self
                .records
                .get_record(&sent_key)
                .await?
                .filter(|s| s.payload_hash == key.payload_hash);
            let result = match earlier {
                Some(earlier) => {
                    info!(
                        run_id = %req.run_id,
                        provider_message_id = earlier.result.provider_message_id,
                        "sent before and not recorded as complete: not sent again"
                    );
                    earlier.result
                }
                None => {
                    let sent = self.deliver(req, to, &group).await?;
                    info!(
                        run_id = %req.run_id,
                        transport = sent.transport,
                        provider_message_id = sent.provider_message_id,
                        recipients = to.len(),
                        "report mailed"
                    );
                    // The mail is out: from here on nothing may send it again. The provider's
                    // id is kept at once, beside the claim, and that write is retried; only
                    // if it never lands can a retry send again (docs/architecture.md, "the
                    // mailer's window").
                    let record = state::DeliverySent {
                        payload_hash: key.payload_hash.clone(),
                        result: sent,
                    };
                    persist(invocation, "recording the sent mail", || {
                        self.records.put_record(&sent_key, &record, None)
                    })
                    .await?;
                    record.result
                }
            };
            // Indexes before the completion: the run lists its deliveries, and SES events,
            // which name SES's message id, find theirs. A failure is retried here and then by
            // the message's retry, which finds the mail sent and sends nothing.
            persist(invocation, "indexing the delivery", || {
                self.index_delivery(req, &group, &pk, &result)
            })
            .await?;
            anyhow::Ok(result)
        };
        match once(
            self.claims.as_ref(),
            &key,
            invocation,
            KEEP_DELIVERIES,
            work,
        )
        .await?
        {
            Once::AlreadyDone(result) => {
                info!(
                    run_id = %req.run_id,
                    provider_message_id = result.provider_message_id,
                    "already delivered: nothing sent"
                );
            }
            Once::Ran(_) => {}
        }
        // Counted once per delivery; a retry after a failed count sends nothing and counts.
        self.count_sent(req, &pk).await
    }

    /// The run's entry for the delivery, and for SES the message id's link to it.
    async fn index_delivery(
        &self,
        req: &MailRequest,
        group: &str,
        delivery: &str,
        result: &DeliveryResult,
    ) -> anyhow::Result<()> {
        self.records
            .put_record(
                &RecordKey::run_delivery(&req.run_id, group),
                &RunDelivery {
                    delivery: delivery.to_owned(),
                    result: result.clone(),
                },
                None,
            )
            .await?;
        if result.transport == TransportKind::Ses.name() {
            self.records
                .put_record(
                    &RecordKey::ses_message(&result.provider_message_id),
                    &SesMessage {
                        delivery: delivery.to_owned(),
                        run_id: req.run_id.to_string(),
                    },
                    None,
                )
                .await?;
        }
        Ok(())
    }

    /// Counts a delivery (`mails_sent/{report}`, once per delivery: `crate::counters`).
    async fn count_sent(&self, req: &MailRequest, delivery: &str) -> anyhow::Result<()> {
        let mut counts = crate::counters::Counts::default();
        counts.add(crate::counters::Kind::MailsSent, &req.report, 1);
        let event = format!("sent/{delivery}");
        crate::counters::count(self.records.as_ref(), &event, Utc::now(), &counts).await?;
        Ok(())
    }

    async fn deliver(
        &self,
        req: &MailRequest,
        to: &Recipients,
        group: &str,
    ) -> anyhow::Result<DeliveryResult> {
        let report =
            self.definitions.reports.get(&req.report).ok_or_else(|| {
                permanent(format!("report {} is not defined (any more)", req.report))
            })?;
        let from = match (report.transport, report.send_as.as_deref()) {
            (TransportKind::Graph | TransportKind::Relay, Some(user)) => user,
            (TransportKind::Graph | TransportKind::Relay, None) => {
                return Err(permanent(format!(
                    "report {}: transport {} without send_as",
                    req.report,
                    report.transport.name()
                )));
            }
            (TransportKind::Ses, _) => self.sender.as_str(),
        };
        // A request without a workbook is a "no data" notice.
        let name = req
            .workbook_key
            .as_deref()
            .map(|key| key.rsplit('/').next().unwrap_or("report.xlsx"));
        let domain = from.rsplit('@').next().unwrap_or("charlie.local");
        let message_id = format!(
            "{}.{group}@{domain}",
            req.run_id.replace(
                |c: char| !c.is_ascii_alphanumeric() && c != '.' && c != '-',
                "_"
            )
        );
        let compose = |link: Option<(&str, &str)>,
                       workbook: Option<&[u8]>|
         -> anyhow::Result<(Vec<u8>, String)> {
            let words = mail_template::render(
                &report.templates(),
                &MailFacts {
                    report: &req.report,
                    period: &req.period,
                    rows: req.rows,
                    warnings: &req.warnings,
                    link,
                    no_data: req.workbook_key.is_none(),
                },
                false,
            )
            .map_err(permanent)?;
            let mime = render(&ReportMail {
                from,
                to: &to.to,
                cc: &to.cc,
                subject: &req.subject,
                text: &words.text,
                html: &words.html,
                workbook: name.zip(workbook),
                message_id: &message_id,
                date: Utc::now(),
            })
            .context("rendering the report mail")?;
            Ok((mime, words.html))
        };
        // The size policy is decided from the run's recorded workbook size before anything is
        // downloaded, so a workbook too large to attach never has to fit in memory. The MIME's
        // size is the mail's size for either transport (Graph's JSON carries the file
        // base64-encoded too).
        let (mut mime, mut html) = compose(None, None)?;
        let mut workbook = None;
        let mut too_large = false;
        if let Some(key) = &req.workbook_key {
            let estimate = mime.len() + attachment_mime_bytes(req.workbook_size, name);
            too_large = estimate > self.max_mail_bytes;
            if !too_large {
                let bytes = self
                    .objects
                    .get(key, req.workbook_version.as_deref())
                    .await?;
                (mime, html) = compose(None, Some(&bytes))?;
                // A recorded size that was wrong: the mail as built decides.
                too_large = mime.len() > self.max_mail_bytes;
                workbook = Some(bytes);
            }
        }
        let mut link = None;
        if too_large && let Some(key) = &req.workbook_key {
            // Too large to attach: a link that works for `link_days`, and the mail says so.
            workbook = None;
            let days = self.link_days;
            let until = Utc::now() + Duration::days(i64::from(days));
            let url = match &self.links {
                Some(signer) => {
                    let claims = crate::links::LinkClaims {
                        run_id: req.run_id.to_string(),
                        workbook_key: key.clone(),
                        workbook_version: req.workbook_version.clone(),
                        expires: until.timestamp(),
                    };
                    format!(
                        "{}/v1/links/{}",
                        signer.api_base_url,
                        crate::links::sign(&signer.key, &claims)
                    )
                }
                None => {
                    self.objects
                        .presigned_get(
                            key,
                            req.workbook_version.as_deref(),
                            std::time::Duration::from_secs(u64::from(days.min(7)) * 86_400),
                        )
                        .await?
                }
            };
            let expires = until.format("%Y-%m-%d %H:%M UTC").to_string();
            info!(
                run_id = %req.run_id,
                workbook_bytes = req.workbook_size,
                limit = self.max_mail_bytes,
                "workbook too large to attach: sending a download link"
            );
            (mime, html) = compose(Some((&url, &expires)), None)?;
            link = Some(expires);
        }
        let attachment = match (name, &workbook) {
            (Some(name), Some(bytes)) => Some(OutgoingAttachment {
                name,
                content_type: XLSX_CONTENT_TYPE,
                bytes,
            }),
            _ => None,
        };
        let mime_bytes = mime.len();
        let (status, provider_message_id, graph_draft_id) =
            if report.transport == TransportKind::Relay {
                let queued = self
                    .queue_for_relay(req, report, to, group, from, &message_id, mime)
                    .await?;
                (DeliveryStatus::Queued, queued, None)
            } else {
                let transport = self
                    .transports
                    .iter()
                    .find(|t| t.kind() == report.transport)
                    .ok_or_else(|| {
                        permanent(format!(
                            "no {} transport (the definitions loaded at start named none)",
                            report.transport.name()
                        ))
                    })?;
                let sent = transport
                    .send(&OutgoingMail {
                        from,
                        recipients: to,
                        subject: &req.subject,
                        html: &html,
                        mime: &mime,
                        internet_message_id: &format!("<{message_id}>"),
                        attachment,
                    })
                    .await?;
                (
                    DeliveryStatus::Sent,
                    sent.provider_message_id,
                    sent.draft_id,
                )
            };
        Ok(DeliveryResult {
            status,
            transport: report.transport.name().to_owned(),
            provider_message_id,
            graph_draft_id,
            to: to.to.clone(),
            cc: to.cc.clone(),
            bcc: to.bcc.clone(),
            link,
            run_id: req.run_id.to_string(),
            sent_at: Utc::now().to_rfc3339(),
            mime_bytes,
        })
    }
}

impl Mailer {
    /// `transport = "relay"`: the mail goes to the relay's outbox (`crate::relay_outbox`); the
    /// relay sends it through its SMTP server and acknowledges it, which marks the delivery
    /// `relayed`. Answers the queued mail's Message-ID.
    #[allow(clippy::too_many_arguments)]
    async fn queue_for_relay(
        &self,
        req: &MailRequest,
        report: &crate::definitions::Report,
        to: &Recipients,
        group: &str,
        from: &str,
        message_id: &str,
        mime: Vec<u8>,
    ) -> anyhow::Result<String> {
        let relay = report.relay.as_deref().ok_or_else(|| {
            permanent(format!(
                "report {}: transport relay without relay",
                req.report
            ))
        })?;
        let queued = crate::relay_outbox::queue(
            self.objects.as_ref(),
            self.records.as_ref(),
            relay,
            crate::relay_outbox::OutboxRecord {
                message_id: format!("<{message_id}>"),
                delivery: state::delivery_claim(&req.run_id, group),
                run_id: req.run_id.to_string(),
                from: from.to_owned(),
                recipients: to.to.iter().chain(&to.cc).chain(&to.bcc).cloned().collect(),
                key: String::new(),
                size: 0,
                queued_at: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                ..Default::default()
            },
            mime,
        )
        .await?;
        info!(
            run_id = %req.run_id,
            relay,
            key = queued.key,
            "queued for the relay"
        );
        Ok(queued.message_id)
    }
}

/// What attaching a workbook of `bytes` adds to a mail: its base64 in 76-character lines and
/// the part's headers (generous: 512 bytes, with the file name).
fn attachment_mime_bytes(bytes: u64, name: Option<&str>) -> usize {
    let encoded = usize::try_from(bytes.div_ceil(3) * 4).unwrap_or(usize::MAX);
    let lines = encoded.div_ceil(76);
    encoded
        .saturating_add(lines * 2)
        .saturating_add(512 + 3 * name.map_or(0, str::len))
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

/// An SES event as read: its SES message id, and the delivery status (and rank) it gives.
pub type SesEventRead = (String, Option<DeliveryStatus>);

/// What a body on the mailer's queue is, as the mailer reads it before anything else: an SES
/// event in an SNS notification (the SES message id, the delivery status it gives, if any), or
/// something else (a mail request, to be read as one). Pure: a fuzz target drives it.
pub fn ses_event_of(body: &str) -> Option<Result<SesEventRead, String>> {
    let note = serde_json::from_str::<SnsNotification>(body).ok()?;
    if note.kind != "Notification" {
        return None;
    }
    Some(
        serde_json::from_str::<SesEvent>(&note.message)
            .map(|e| {
                let status = delivery_status(&e.event_type);
                (e.mail.message_id, status)
            })
            .map_err(|e| e.to_string()),
    )
}

/// A delivery's status from an SES event type; a later event never lowers it (a bounce stays a
/// bounce when the other recipients' deliveries arrive).
fn delivery_status(event_type: &str) -> Option<DeliveryStatus> {
    match event_type {
        "Delivery" => Some(DeliveryStatus::Delivered),
        "Bounce" => Some(DeliveryStatus::Bounced),
        "Complaint" => Some(DeliveryStatus::Complained),
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
                anyhow::bail!("{} recipient {r:?} is not a mail address", field.name());
            }
            if seen.insert(r.to_ascii_lowercase()) {
                unique.push((field, r.to_owned()));
            }
        }
    }
    if unique.is_empty() {
        anyhow::bail!("no recipients");
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
    use crate::adapters::memory::{
        MemoryClaims, MemoryDeadLetters, MemoryObjects, MemoryState, MemoryTransport,
    };
    use crate::stages::testkit::{self, failures, invocation, sqs_event};

    struct World {
        objects: Arc<MemoryObjects>,
        claims: Arc<MemoryClaims>,
        records: Arc<MemoryState>,
        ses: Arc<MemoryTransport>,
        graph: Arc<MemoryTransport>,
        dead_letters: Arc<MemoryDeadLetters>,
        mailer: Mailer,
    }

    fn world(max_mail_bytes: usize) -> World {
        let (objects, claims, records, dead_letters) = (
            Arc::default(),
            Arc::default(),
            Arc::default(),
            Arc::default(),
        );
        let ses = Arc::new(MemoryTransport::new(TransportKind::Ses));
        let graph = Arc::new(MemoryTransport::new(TransportKind::Graph));
        let mailer = Mailer {
            definitions: testkit::definitions(),
            objects: Arc::clone(&objects) as _,
            claims: Arc::clone(&claims) as _,
            records: Arc::clone(&records) as _,
            transports: vec![Arc::clone(&ses) as _, Arc::clone(&graph) as _],
            dead_letters: Arc::clone(&dead_letters) as _,
            sender: "reports@charlie.example".into(),
            max_mail_bytes,
            link_days: 7,
            links: None,
        };
        World {
            objects,
            claims,
            records,
            ses,
            graph,
            dead_letters,
            mailer,
        }
    }

    /// A request for a workbook stored in the world's bucket.
    async fn request(w: &World, run_id: &str, report: &str, bytes: Vec<u8>) -> MailRequest {
        let key = format!("reports/{report}/2024-03-14/{report}-2024-03-14.xlsx");
        let size = bytes.len() as u64;
        let stored = w.objects.put(&key, bytes, XLSX_CONTENT_TYPE).await.unwrap();
        MailRequest {
            v: 1,
            run_id: crate::contract::RunId::parse(run_id).unwrap(),
            report: report.into(),
            title: "Call-centre daily report".into(),
            period: "2024-03-14".into(),
            workbook_key: Some(key),
            workbook_version: stored.version_id,
            workbook_size: size,
            recipients: vec!["ops-leads@contoso.example".into()],
            cc: vec!["wfm-analysts@contoso.example".into()],
            bcc: vec!["reports-archive@contoso.example".into()],
            subject: format!("Report {run_id}"),
            rows: 42,
            time_zone: "Europe/London".into(),
            warnings: vec![],
        }
    }

    fn body(r: &MailRequest) -> String {
        serde_json::to_string(r).unwrap()
    }

    #[tokio::test]
    async fn a_mail_request_delivered_twice_is_sent_once_and_indexed() {
        let w = world(SES_MAX_MAIL_BYTES);
        let req = request(&w, "r-1", "call_centre_daily", b"workbook".to_vec()).await;
        let resp = w
            .mailer
            .handle(sqs_event(&[body(&req), body(&req)]), &invocation())
            .await;
        assert!(failures(&resp).is_empty());
        let sent = w.ses.sent();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].from, "reports@charlie.example");
        assert_eq!(
            sent[0].recipients.bcc,
            vec!["reports-archive@contoso.example".to_owned()]
        );
        let mime = String::from_utf8_lossy(&sent[0].mime);
        assert!(
            !mime.contains("reports-archive@"),
            "bcc only in the envelope"
        );
        assert!(w.graph.sent().is_empty());
        let records: &dyn StateRecords = w.records.as_ref();
        let deliveries = records.deliveries_of_run("r-1").await.unwrap();
        assert_eq!(deliveries.len(), 1);
        assert_eq!(deliveries[0].result.transport, "ses");
        assert_eq!(
            deliveries[0].result.provider_message_id,
            sent[0].provider_message_id
        );
        let link = records
            .get_record(&RecordKey::ses_message(&sent[0].provider_message_id))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(link.delivery, deliveries[0].delivery);
    }

    #[tokio::test]
    async fn a_graph_report_goes_as_its_mailbox_user_with_the_workbook() {
        let w = world(SES_MAX_MAIL_BYTES);
        let req = request(&w, "r-w", "call_centre_weekly", b"weekly".to_vec()).await;
        let resp = w
            .mailer
            .handle(sqs_event(&[body(&req)]), &invocation())
            .await;
        assert!(failures(&resp).is_empty());
        assert!(w.ses.sent().is_empty());
        let sent = w.graph.sent();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].from, "ops-reports@contoso.example");
        assert_eq!(
            sent[0].attachment,
            Some((
                "call_centre_weekly-2024-03-14.xlsx".into(),
                b"weekly".to_vec()
            ))
        );
        assert!(sent[0].internet_message_id.starts_with("<r-w."));
    }

    #[tokio::test]
    async fn a_workbook_over_the_size_limit_goes_as_a_download_link() {
        let w = world(4_000);
        let req = request(&w, "r-big", "call_centre_daily", vec![7u8; 20_000]).await;
        w.mailer
            .handle(sqs_event(&[body(&req)]), &invocation())
            .await;
        let sent = w.ses.sent();
        assert_eq!(sent.len(), 1);
        assert!(sent[0].mime.len() < 4_000, "{} bytes", sent[0].mime.len());
        assert!(sent[0].attachment.is_none());
        let mime = String::from_utf8_lossy(&sent[0].mime);
        assert!(mime.contains("too large to attach"), "{mime}");
        let records: &dyn StateRecords = w.records.as_ref();
        let d = &records.deliveries_of_run("r-big").await.unwrap()[0];
        assert!(
            d.result.link.is_some(),
            "the delivery says it went as a link"
        );
    }

    #[tokio::test]
    async fn a_workbook_recorded_as_too_large_is_never_downloaded() {
        let w = world(4_000);
        let req = request(&w, "r-huge", "call_centre_daily", vec![7u8; 20_000]).await;
        // Any read of the bucket fails: the link must come from the recorded size alone.
        w.objects.fault.set("the workbook must not be read");
        let resp = w
            .mailer
            .handle(sqs_event(&[body(&req)]), &invocation())
            .await;
        assert!(failures(&resp).is_empty());
        let sent = w.ses.sent();
        assert_eq!(sent.len(), 1);
        assert!(sent[0].attachment.is_none());
        assert!(String::from_utf8_lossy(&sent[0].mime).contains("too large to attach"));
    }

    #[test]
    fn the_attachment_estimate_covers_the_encoded_workbook() {
        for size in [0usize, 1, 57, 20_000, 1_000_003] {
            let bytes = vec![0xA5u8; size];
            let mail = |workbook| {
                render(&ReportMail {
                    from: "reports@charlie.example",
                    to: &["a@contoso.example".to_owned()],
                    cc: &[],
                    subject: "s",
                    text: "t",
                    html: "<p>t</p>",
                    workbook,
                    message_id: "m@charlie.example",
                    date: Utc::now(),
                })
                .unwrap()
                .len()
            };
            let name = "call_centre_daily-2024-03-14.xlsx";
            let added = mail(Some((name, bytes.as_slice()))) - mail(None);
            let estimate = attachment_mime_bytes(size as u64, Some(name));
            assert!(
                estimate >= added,
                "{size} bytes: estimate {estimate} < {added}"
            );
            assert!(
                estimate <= added + 1024,
                "{size} bytes: estimate {estimate} ≫ {added}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_sent_mail_whose_completion_is_lost_is_not_sent_again() {
        let w = world(SES_MAX_MAIL_BYTES);
        let req = request(&w, "r-lost", "call_centre_daily", b"x".to_vec()).await;
        // The provider accepts; every write to the claims fails from then on, so the claim is
        // neither completed nor released and the message fails.
        w.ses.on_send(Box::new({
            let claims = Arc::clone(&w.claims);
            move || claims.fault.set("RequestLimitExceeded")
        }));
        let resp = w
            .mailer
            .handle(sqs_event(&[body(&req)]), &invocation())
            .await;
        assert_eq!(failures(&resp), vec!["m0"]);
        assert_eq!(w.ses.sent().len(), 1);
        // The retry, after the claim's holder is gone, finds the sent record: nothing sent.
        w.claims.fault.clear();
        let later = Invocation::new("retry", Utc::now() + Duration::seconds(60));
        let group =
            recipient_group(&recipient_groups(&req.recipients, &req.cc, &req.bcc).unwrap()[0]);
        let key = state::delivery_claim("r-lost", &group);
        w.claims.expire_in_progress(&key);
        let resp = w.mailer.handle(sqs_event(&[body(&req)]), &later).await;
        assert!(failures(&resp).is_empty());
        assert_eq!(w.ses.sent().len(), 1, "sent once");
        let done: DeliveryResult = serde_json::from_str(&w.claims.result(&key).unwrap()).unwrap();
        assert_eq!(
            done.provider_message_id,
            w.ses.sent()[0].provider_message_id
        );
        let records: &dyn StateRecords = w.records.as_ref();
        assert!(
            records
                .get_record(&RecordKey::ses_message(&done.provider_message_id))
                .await
                .unwrap()
                .is_some(),
            "bounces find the delivery"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn writes_after_the_send_that_fail_for_a_while_are_retried_and_the_delivery_indexed() {
        let w = world(SES_MAX_MAIL_BYTES);
        let req = request(&w, "r-idx", "call_centre_daily", b"x".to_vec()).await;
        // Right after the send, the next two writes to the state table fail.
        w.ses.on_send(Box::new({
            let records = Arc::clone(&w.records);
            move || records.fault.fail_next(2, "ThrottlingException")
        }));
        let resp = w
            .mailer
            .handle(sqs_event(&[body(&req)]), &invocation())
            .await;
        assert!(failures(&resp).is_empty());
        let sent = w.ses.sent();
        assert_eq!(sent.len(), 1);
        let records: &dyn StateRecords = w.records.as_ref();
        assert!(
            records
                .get_record(&RecordKey::ses_message(&sent[0].provider_message_id))
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(records.deliveries_of_run("r-idx").await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn with_a_link_key_the_link_is_the_api_route_signed_for_the_run_and_version() {
        let mut w = world(4_000);
        w.mailer.link_days = 30;
        w.mailer.links = Some(LinkSigner {
            key: crate::secret::Secret::new("k".repeat(40)),
            api_base_url: "https://api.charlie.example".into(),
        });
        let req = request(&w, "r-link", "call_centre_daily", vec![7u8; 20_000]).await;
        w.mailer
            .handle(sqs_event(&[body(&req)]), &invocation())
            .await;
        let sent = w.ses.sent();
        let msg = mail_parser::MessageParser::default()
            .parse(&sent[0].mime)
            .unwrap();
        let text = msg.body_text(0).unwrap();
        let start = text
            .find("https://api.charlie.example/v1/links/")
            .expect("the API link");
        let url: String = text[start..]
            .chars()
            .take_while(|c| !c.is_whitespace())
            .collect();
        let token = url.rsplit('/').next().unwrap();
        let claims = crate::links::verify(
            &crate::secret::Secret::new("k".repeat(40)),
            token,
            Utc::now() + Duration::days(29),
        )
        .expect("valid for the link days");
        assert_eq!(claims.run_id, "r-link");
        assert_eq!(claims.workbook_version, req.workbook_version);
        assert!(
            crate::links::verify(
                &crate::secret::Secret::new("k".repeat(40)),
                token,
                Utc::now() + Duration::days(31)
            )
            .is_err()
        );
    }

    #[tokio::test]
    async fn recipients_over_fifty_go_in_groups_each_delivered_once() {
        let w = world(SES_MAX_MAIL_BYTES);
        let mut req = request(&w, "r-many", "call_centre_daily", b"x".to_vec()).await;
        req.recipients = (0..60).map(|i| format!("p{i}@contoso.example")).collect();
        req.cc.clear();
        req.bcc.clear();
        w.mailer
            .handle(sqs_event(&[body(&req)]), &invocation())
            .await;
        w.mailer
            .handle(sqs_event(&[body(&req)]), &invocation())
            .await;
        let sizes: Vec<usize> = w.ses.sent().iter().map(|m| m.recipients.len()).collect();
        assert_eq!(sizes, vec![50, 10]);
    }

    #[tokio::test]
    async fn a_failed_send_releases_the_delivery_and_the_retry_sends_it() {
        let w = world(SES_MAX_MAIL_BYTES);
        let req = request(&w, "r-f", "call_centre_daily", b"x".to_vec()).await;
        w.ses.fault.set("Throttling: Maximum sending rate exceeded");
        let resp = w
            .mailer
            .handle(sqs_event(&[body(&req)]), &invocation())
            .await;
        assert_eq!(failures(&resp), vec!["m0"]);
        assert!(w.dead_letters.letters().is_empty());
        w.ses.fault.clear();
        let resp = w
            .mailer
            .handle(sqs_event(&[body(&req)]), &invocation())
            .await;
        assert!(failures(&resp).is_empty());
        assert_eq!(w.ses.sent().len(), 1);
        let group =
            recipient_group(&recipient_groups(&req.recipients, &req.cc, &req.bcc).unwrap()[0]);
        assert!(
            w.claims
                .result(&state::delivery_claim("r-f", &group))
                .is_some()
        );
    }

    #[tokio::test]
    async fn a_bad_recipient_or_an_unknown_report_is_dead_lettered_at_once() {
        let w = world(SES_MAX_MAIL_BYTES);
        let mut bad = request(&w, "r-bad", "call_centre_daily", b"x".to_vec()).await;
        bad.recipients = vec!["not an address".into()];
        let mut gone = request(&w, "r-gone", "call_centre_daily", b"x".to_vec()).await;
        gone.report = "retired_report".into();
        let resp = w
            .mailer
            .handle(sqs_event(&[body(&bad), body(&gone)]), &invocation())
            .await;
        assert!(failures(&resp).is_empty(), "not retried");
        let causes: Vec<String> = w
            .dead_letters
            .letters()
            .into_iter()
            .map(|l| l.cause)
            .collect();
        assert_eq!(causes.len(), 2);
        assert!(causes[0].contains("is not a mail address"), "{}", causes[0]);
        assert!(causes[1].contains("retired_report"), "{}", causes[1]);
        assert!(w.ses.sent().is_empty());
    }

    fn ses_notification(event_type: &str, ses_id: &str) -> String {
        let mut event = serde_json::json!({"eventType": event_type, "mail": {"messageId": ses_id}});
        if event_type == "Bounce" {
            event["bounce"] = serde_json::json!({"bounceType": "Permanent"});
        }
        serde_json::json!({"Type": "Notification", "Message": event.to_string()}).to_string()
    }

    #[tokio::test]
    async fn a_bounce_marks_the_delivery_and_a_later_delivery_event_does_not_lower_it() {
        let w = world(SES_MAX_MAIL_BYTES);
        let req = request(&w, "r-b", "call_centre_daily", b"x".to_vec()).await;
        w.mailer
            .handle(sqs_event(&[body(&req)]), &invocation())
            .await;
        let ses_id = w.ses.sent()[0].provider_message_id.clone();
        let events = [
            ses_notification("Bounce", &ses_id),
            ses_notification("Delivery", &ses_id),
            ses_notification("Bounce", "someone-elses-message"),
        ];
        let resp = w.mailer.handle(sqs_event(&events), &invocation()).await;
        assert!(
            failures(&resp).is_empty(),
            "an unknown message's event is ignored"
        );
        let records: &dyn StateRecords = w.records.as_ref();
        let delivery = records.deliveries_of_run("r-b").await.unwrap()[0]
            .delivery
            .clone();
        let status = records
            .get_record(&RecordKey::delivery_status(&delivery))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status.status, DeliveryStatus::Bounced);
        assert_eq!(status.detail["bounceType"], "Permanent");
        let logged = records.query(&delivery, "event#").await.unwrap();
        assert_eq!(logged.len(), 2, "each event as it came");
        // The same events again (SNS delivers at least once) and the mail again count nothing.
        w.mailer.handle(sqs_event(&events), &invocation()).await;
        w.mailer
            .handle(sqs_event(&[body(&req)]), &invocation())
            .await;
        let now = Utc::now();
        let (counts, _) = crate::counters::since(records, now - chrono::Duration::hours(1), now)
            .await
            .unwrap();
        let totals = counts.totals();
        assert_eq!(
            (
                totals["mails_sent"],
                totals["ses_bounce"],
                totals["ses_delivery"]
            ),
            (1, 1, 1),
            "{counts:?}"
        );
    }

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
        let rank = |t| delivery_status(t).unwrap().rank();
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
