//! The state table's keys and typed records, in one place.
//!
//! Claim keys (idempotency records and locks, see `idempotency`):
//! - `MSG#{mailbox}#{message id}`: a mail's ingest; `…#STEP#{n}` each continuation of it.
//! - `RUN#{run id}`: a report run.
//! - `LOCK#{report}#{period}`: held while a run of that report and period builds.
//! - `DLV#{run id}#{recipient group}`: a delivery of a run to one recipient group.
//! - `LOCK#POLL#{mailbox}#{folder}`: one invocation works on a folder at a time.
//! - `LOCK#CLIENTSTATES`: held while the client-state secret is read, changed and written.
//!
//! Records (pk / sk → type): see the constructors of [`RecordKey`]. Every record is read
//! and written through its type: a key fixes the type of what it holds.

use std::marker::PhantomData;

use anyhow::Context;
use chrono::{DateTime, NaiveDate, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::messages::IngestOutcome;
use crate::ports::StateRecords;

pub fn mail_claim(mailbox: &str, message_id: &str) -> String {
    format!("MSG#{mailbox}#{message_id}")
}

/// The `step`-th continuation of a mail's ingest.
pub fn continuation_claim(mailbox: &str, message_id: &str, step: u32) -> String {
    format!("{}#STEP#{step}", mail_claim(mailbox, message_id))
}

/// A mail by its RFC 5322 Message-ID and sender (lower case), holding the Graph id it was first
/// ingested under. The sender is part of it so another sender's mail cannot take the id first.
pub fn internet_message_claim(mailbox: &str, sender: &str, internet_message_id: &str) -> String {
    format!("MAILID#{mailbox}#{sender}#{internet_message_id}")
}

pub fn run_claim(run_id: &str) -> String {
    format!("RUN#{run_id}")
}

pub fn period_lock(report: &str, period: &str) -> String {
    format!("LOCK#{report}#{period}")
}

pub fn delivery_claim(run_id: &str, group: &str) -> String {
    format!("DLV#{run_id}#{group}")
}

pub fn poll_lock(mailbox: &str, folder: &str) -> String {
    format!("LOCK#POLL#{mailbox}#{folder}")
}

pub const CLIENT_STATES_LOCK: &str = "LOCK#CLIENTSTATES";

/// Where a record of type `R` lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordKey<R> {
    pub pk: String,
    pub sk: String,
    record: PhantomData<fn() -> R>,
}

impl<R> RecordKey<R> {
    /// A record's key; each record kind has its named constructor (beside the kind, where it
    /// lives elsewhere: `relay_outbox`).
    pub(crate) fn new(pk: String, sk: impl Into<String>) -> Self {
        RecordKey {
            pk,
            sk: sk.into(),
            record: PhantomData,
        }
    }
}

impl RecordKey<IngestOutcome> {
    /// `MSG#{mailbox}#{message}` / `OUTCOME#{dataset}#{attachment}`.
    pub fn outcome(o: &IngestOutcome) -> Self {
        Self::new(
            mail_claim(&o.mailbox, &o.message_id),
            // By the archived file, unique per attachment even when two share a name.
            format!("OUTCOME#{}#{}", o.dataset, o.raw_key),
        )
    }
}

impl RecordKey<MailProgress> {
    /// `MSG#{mailbox}#{message}` / `progress#{step}`: one record per continuation, so a retry
    /// of a step reads the position that step started from.
    pub fn mail_progress(mailbox: &str, message_id: &str, step: u32) -> Self {
        Self::new(
            mail_claim(mailbox, message_id),
            format!("progress#{step:06}"),
        )
    }
}

impl RecordKey<RunRecord> {
    /// `RUN#{run id}` / `run`, on the index as [`RUNS_INDEX`] / [`run_index_sk`].
    pub fn run(run_id: &str) -> Self {
        Self::new(run_claim(run_id), "run")
    }
}

/// The index partition listing each folder's subscription (`SUB#…`) and delta link
/// (`DELTA#…`), for the control API's health.
pub const FOLDERS_INDEX: &str = "FOLDERS";

/// A folder record's place on [`FOLDERS_INDEX`]: `{kind}#{mailbox}#{folder}`.
pub fn folder_index_sk(kind: &str, mailbox: &str, folder: &str) -> String {
    format!("{kind}#{mailbox}#{folder}")
}

/// `APIKEY#{id}` / `key`: a control API key. Only the SHA-256 of its secret is kept.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ApiKeyRecord {
    pub id: String,
    pub name: String,
    /// `read`, `operate` (includes read), `admin` (includes both: keys).
    pub scopes: Vec<String>,
    /// SHA-256 (hex) of the key's secret part.
    pub secret_sha256: String,
    pub created_at: String,
    pub created_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
}

impl RecordKey<ApiKeyRecord> {
    pub fn api_key(id: &str) -> Self {
        Self::new(format!("APIKEY#{id}"), "key")
    }
}

/// Every API key on the index, by creation time.
pub const API_KEYS_INDEX: &str = "APIKEYS";

/// An on-prem relay allowed to upload mail (`RELAY#{id}` / `relay`, on [`RELAYS_INDEX`]). Its
/// signing key is derived from the deployment's relay secret and `salt`
/// (`crate::relay_auth`): rotating the key is a new salt, revoking it sets `revoked_at`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RelayRecord {
    pub id: crate::ids::RelayId,
    /// The mailbox the relay reads, when Graph may read it too (its address, resolved through
    /// Graph to the directory object id Graph's path claims mail under, or that id): the same
    /// mail by both paths is then ingested once. Without one, mail is claimed under
    /// `relay/{id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mailbox: Option<String>,
    pub salt: String,
    pub created_at: String,
    pub created_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
    /// When the relay last made a signed call (at most a minute stale): is it alive?
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_at: Option<String>,
    /// The authserv-ids (its own Exchange, its MTA) whose `Authentication-Results` headers
    /// are believed in the mail it uploads (`crate::sender_auth`); none: its mail counts as
    /// unauthenticated for datasets that require it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_authserv_ids: Vec<String>,
    /// Earlier lives of this relay id that were revoked, `(revoked_at, made again at)`: an
    /// upload stored within one is refused whatever the relay's state when ingest reads it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoked_windows: Vec<(String, String)>,
}

impl RelayRecord {
    /// A new relay with a fresh salt (and so a fresh key), created now.
    pub fn new(id: crate::ids::RelayId, mailbox: Option<&str>, created_by: &str) -> Self {
        RelayRecord {
            id,
            mailbox: mailbox.map(str::to_owned),
            salt: hex::encode(rand::random::<[u8; 16]>()),
            created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            created_by: created_by.to_owned(),
            revoked_at: None,
            last_seen_at: None,
            trusted_authserv_ids: Vec::new(),
            revoked_windows: Vec::new(),
        }
    }
}

impl RecordKey<RelayRecord> {
    pub fn relay(id: &str) -> Self {
        Self::new(format!("RELAY#{id}"), "relay")
    }
}

/// Every relay on the index, by id.
pub const RELAYS_INDEX: &str = "RELAYS";

/// `AUDIT#{day}` / `{at}#{request id}`: one state-changing API call (on the index as
/// [`AUDIT_INDEX`], newest first).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[schemars(rename = "Audit")]
pub struct AuditRecord {
    pub at: String,
    pub request_id: String,
    pub key_id: String,
    pub key_name: String,
    pub method: String,
    pub path: String,
    pub status: u16,
    /// What was asked, in a line (`run call_centre_daily 2024-03-14`).
    pub summary: String,
}

impl RecordKey<AuditRecord> {
    pub fn audit(at: &DateTime<Utc>, request_id: &str) -> Self {
        Self::new(
            format!("AUDIT#{}", at.format("%Y-%m-%d")),
            format!(
                "{}#{request_id}",
                at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            ),
        )
    }
}

pub const AUDIT_INDEX: &str = "AUDIT";

/// What a reprocess did; also the counts of its record (`state::ReprocessRecord`), all zero
/// until it is done (and when it failed: nothing of the day was touched).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct ReprocessOutcome {
    /// Rows the day held before, each replaced by its rebuilt copy or removed.
    #[serde(default)]
    pub rows_deleted: u64,
    #[serde(default)]
    pub attachments: u64,
    /// Rows the rebuild stored.
    #[serde(default)]
    pub rows_stored: u64,
    /// Of the rows before, those whose key no archived file holds any more.
    #[serde(default)]
    pub rows_removed: u64,
    /// Rows an ingest stored while the rebuild ran, kept as they were.
    #[serde(default)]
    pub rows_kept: u64,
    /// Archived files that were unusable part way: their rows before that point were taken.
    #[serde(default)]
    pub partly_read: u64,
}

/// `REPROCESS#{id}` / `status`: a reprocess asked for through the API and how it went
/// (`queued`, `running`, `done` or `failed`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[schemars(rename = "Reprocess")]
pub struct ReprocessRecord {
    pub request_id: String,
    pub dataset: String,
    pub date: NaiveDate,
    pub status: crate::status::ReprocessStatus,
    pub requested_at: String,
    pub requested_by: String,
    #[serde(default)]
    pub finished_at: Option<String>,
    /// What it did (rows deleted, stored, removed, kept; files read and read part way), at
    /// the record's top level.
    #[serde(flatten)]
    pub counts: ReprocessOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl RecordKey<ReprocessRecord> {
    pub fn reprocess(request_id: &str) -> Self {
        Self::new(format!("REPROCESS#{request_id}"), "status")
    }
}

/// `INTAKE#control` / `state`: whether intake is paused (`crate::intake_control`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntakeControl {
    pub paused: bool,
    pub since: String,
    pub by: String,
}

impl RecordKey<IntakeControl> {
    pub fn intake_control() -> Self {
        Self::new("INTAKE#control".into(), "state")
    }
}

/// `PARKED#{id}` / `message`: one inbound message that arrived while intake was paused; on the
/// index as [`PARKED_INDEX`] / `{parked at}#{id}` until resumed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParkedMessage {
    /// The `inbound` message, as it would have been queued.
    pub message: serde_json::Value,
    pub parked_at: String,
    /// `webhook` or `poller`.
    pub by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_at: Option<String>,
}

impl RecordKey<ParkedMessage> {
    pub fn parked(id: &str) -> Self {
        Self::new(format!("PARKED#{id}"), "message")
    }
}

pub const PARKED_INDEX: &str = "PARKED";

/// The index partition listing every run, newest first by request time.
pub const RUNS_INDEX: &str = "RUNS";

/// A run's place on the runs index: `{requested_at}#{run id}` (RFC 3339 UTC with `Z`, so
/// text order is time order).
pub fn run_index_sk(requested_at: &str, run_id: &str) -> String {
    format!("{requested_at}#{run_id}")
}

/// An operator's request to cancel a run (the control API writes it; the builder honours it
/// before it starts and between pages, never after the workbook is stored).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunCancel {
    pub requested_at: String,
    /// Who asked (the API key's name).
    pub by: String,
}

impl RecordKey<RunCancel> {
    /// `RUN#{run id}` / `cancel`.
    pub fn run_cancel(run_id: &str) -> Self {
        Self::new(run_claim(run_id), "cancel")
    }
}

impl RecordKey<RunDelivery> {
    /// `RUN#{run id}` / `delivery#{group}`: a run lists its deliveries with one query.
    pub fn run_delivery(run_id: &str, group: &str) -> Self {
        Self::new(run_claim(run_id), format!("delivery#{group}"))
    }
}

impl RecordKey<SesMessage> {
    /// `SESMSG#{SES message id}` / `delivery`: leads an SES event to its delivery.
    pub fn ses_message(ses_message_id: &str) -> Self {
        Self::new(format!("SESMSG#{ses_message_id}"), "delivery")
    }
}

/// `DLV#…` / `sent`: the provider accepted this delivery's mail, written as soon as it is
/// known and before the claim completes, so a retry after a lost completion sends nothing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeliverySent {
    /// The delivery claim's payload hash: a record for another payload is not this one's.
    pub payload_hash: String,
    pub result: DeliveryResult,
}

impl RecordKey<DeliverySent> {
    /// `DLV#…` / `sent`.
    pub fn delivery_sent(delivery: &str) -> Self {
        Self::new(delivery.to_owned(), "sent")
    }
}

/// `SESSION#{sha256(token)}` / `session`: a dashboard sign-in (`stages::api::dashboard`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SessionRecord {
    pub key_id: String,
    /// The CSRF token of the session's forms (random, 32 bytes hex).
    pub csrf: String,
    pub created_at: String,
    pub expires_at: String,
}

impl RecordKey<SessionRecord> {
    pub fn session(token: &str) -> Self {
        use sha2::Digest;
        Self::new(
            format!(
                "SESSION#{}",
                hex::encode(sha2::Sha256::digest(token.as_bytes()))
            ),
            "session",
        )
    }
}

impl RecordKey<DeliveryNews> {
    /// `DLV#…` / `status`.
    pub fn delivery_status(delivery: &str) -> Self {
        Self::new(delivery.to_owned(), "status")
    }
}

impl RecordKey<DeliveryEvent> {
    /// `DLV#…` / `event#{type}#{SES message id}`: each SES event as it came.
    pub fn delivery_event(delivery: &str, event_type: &str, ses_message_id: &str) -> Self {
        Self::new(
            delivery.to_owned(),
            format!("event#{}#{ses_message_id}", event_type.to_ascii_lowercase()),
        )
    }
}

impl RecordKey<DeltaLink> {
    /// `DELTA#{mailbox}#{folder}` / `link`.
    pub fn delta(mailbox: &str, folder: &str) -> Self {
        Self::new(format!("DELTA#{mailbox}#{folder}"), "link")
    }
}

impl RecordKey<SubscriptionRecord> {
    /// `SUB#{mailbox}#{folder}` / `subscription`.
    pub fn subscription(mailbox: &str, folder: &str) -> Self {
        Self::new(format!("SUB#{mailbox}#{folder}"), "subscription")
    }
}

impl RecordKey<SubscribedFolder> {
    /// `SUBID#{subscription id}` / `folder`: maps a subscription back to its folder.
    pub fn subscribed_folder(subscription_id: &str) -> Self {
        Self::new(format!("SUBID#{subscription_id}"), "folder")
    }
}

/// `DAY#{dataset}#{day}`: the archived attachments that held rows of a day.
pub fn day_index(dataset: &str, date: NaiveDate) -> String {
    format!("DAY#{dataset}#{date}")
}

impl RecordKey<DayAttachment> {
    /// `DAY#{dataset}#{day}` / `RAW#{received}#{raw key}`: sorts in receiving order.
    pub fn day_attachment(dataset: &str, date: NaiveDate, a: &DayAttachment) -> Self {
        Self::new(
            day_index(dataset, date),
            format!(
                "RAW#{}#{}",
                a.received.format("%Y%m%dT%H%M%S%.3fZ"),
                a.raw_key
            ),
        )
    }
}

/// What a run did; its record `RUN#{run id}` / `run`, and the run claim's result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct RunRecord {
    pub run_id: crate::ids::RunId,
    pub report: String,
    pub period: String,
    /// `queued` (requested through the API), `building` (an attempt is at work, until
    /// `deadline`), `retrying` (an attempt failed: `error` says why, the queue tries again),
    /// then one of `built`, `skipped_empty`, `notice_sent` (empty period, "no data" mail
    /// queued), `cancelled` or `failed` (for good: `error`, and the message is in the runs
    /// DLQ); a repeated trigger returns the earlier run's record.
    pub status: crate::status::RunStatus,
    pub rows: u64,
    #[serde(default)]
    pub sheets: Vec<String>,
    #[serde(default)]
    pub workbook_key: Option<String>,
    #[serde(default)]
    pub workbook_version: Option<String>,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub warnings: Vec<String>,
    /// When the run was asked for: the schedule's firing time, or the API request's time
    /// (RFC 3339, UTC).
    #[serde(default)]
    pub requested_at: String,
    /// Who asked: `schedule`, or the API key's name.
    #[serde(default)]
    pub requested_by: String,
    pub started_at: String,
    pub finished_at: String,
    /// True when this invocation found the run already done and did nothing.
    #[serde(default)]
    pub repeated: bool,
    /// Why a failed run failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Attempts so far (the run message's receive count).
    #[serde(default)]
    pub attempts: u32,
    /// While `building`: the attempt's deadline; past it, that attempt is dead (it timed out
    /// or crashed) and the queue delivers the run again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<String>,
}

impl RunRecord {
    /// A run of `report` for `period` with nothing done yet (no times).
    pub fn new(
        run_id: &crate::ids::RunId,
        report: &str,
        period: &str,
        status: crate::status::RunStatus,
    ) -> Self {
        RunRecord {
            run_id: run_id.clone(),
            report: report.to_owned(),
            period: period.to_owned(),
            status,
            rows: 0,
            sheets: vec![],
            workbook_key: None,
            workbook_version: None,
            size: 0,
            sha256: None,
            warnings: vec![],
            requested_at: String::new(),
            requested_by: String::new(),
            started_at: String::new(),
            finished_at: String::new(),
            repeated: false,
            error: None,
            attempts: 0,
            deadline: None,
        }
    }
}

/// A delivery's result: the delivery claim's result and part of its run's index entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeliveryResult {
    /// `sent`, or `queued` for a relay.
    pub status: crate::status::DeliveryStatus,
    pub transport: String,
    pub provider_message_id: String,
    #[serde(default)]
    pub graph_draft_id: Option<String>,
    pub to: Vec<String>,
    #[serde(default)]
    pub cc: Vec<String>,
    #[serde(default)]
    pub bcc: Vec<String>,
    /// The link's expiry when the workbook went as a download link.
    #[serde(default)]
    pub link: Option<String>,
    pub run_id: String,
    pub sent_at: String,
    pub mime_bytes: usize,
}

/// `RUN#…` / `delivery#{group}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunDelivery {
    /// The delivery's claim key (`DLV#…`).
    pub delivery: String,
    pub result: DeliveryResult,
}

/// `SESMSG#…` / `delivery`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SesMessage {
    pub delivery: String,
    pub run_id: String,
}

/// `DLV#…` / `status`: what the receiver said of a delivery (`delivered` < `bounced` <
/// `complained`, `relayed` < `refused`), never lowered: `rank` is the status's.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeliveryNews {
    pub status: crate::status::DeliveryStatus,
    pub rank: u8,
    pub ses_message_id: String,
    #[serde(default)]
    pub detail: serde_json::Value,
    pub at: String,
}

/// `DLV#…` / `event#…`: an SES event as it came.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct DeliveryEvent {
    #[serde(rename = "type")]
    pub event_type: String,
    #[serde(default)]
    pub detail: serde_json::Value,
    pub at: String,
}

/// `DELTA#…` / `link`: the whole `@odata.deltaLink` of a folder's last round.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeltaLink {
    pub delta_link: String,
    pub saved_at: String,
}

/// `SUB#…` / `subscription`: a folder's Graph subscription.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SubscriptionRecord {
    pub id: String,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub renewed_at: Option<DateTime<Utc>>,
}

/// `SUBID#…` / `folder`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SubscribedFolder {
    pub mailbox: String,
    pub folder: String,
}

/// `MSG#…` / `progress#{step}`: how far the ingest of a mail too large for one invocation got,
/// written before its continuation `step` is queued.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MailProgress {
    /// The continuation that carries on from here.
    pub step: u32,
    /// When the mail's ingest started: every row of it is stamped with this time.
    pub started: DateTime<Utc>,
    pub correlation_id: String,
    /// The attachments as listed when the ingest started; their order fixes the work's.
    pub attachments: Vec<crate::ports::AttachmentInfo>,
    /// The outcomes of the (attachment, dataset) pairs finished, in order.
    pub done: Vec<IngestOutcome>,
    /// Where the pair in work stopped (`None`: at its start).
    pub at: Option<FilePosition>,
}

/// How far into one attachment's rows (for one dataset) an ingest got.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct FilePosition {
    /// Chunks of rows stored (a re-read of the file skips this many).
    pub chunks_done: u64,
    /// What the store said of them.
    pub rows_new: u64,
    pub rows_duplicate: u64,
    /// Rows the store could not hold, and the first of them in detail.
    pub store_rejected: u64,
    pub store_rejects: Vec<crate::csv_ingest::Reject>,
}

/// `DAY#…` / `RAW#…`: an archived attachment that held rows of a day.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DayAttachment {
    pub raw_key: String,
    /// `{mailbox}/{message id}` (a relay's mailbox, `relay/{relay}`, holds a `/` itself).
    pub source: String,
    /// The mailbox of `source`; absent on records of before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mailbox: Option<String>,
    pub received: DateTime<Utc>,
    /// The attachment's name as the mail gave it (the archive's key may differ: characters
    /// dropped, a `#n` for a second file of the same name); absent on records of before it
    /// was kept, where the key's last part stands in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl DayAttachment {
    /// The (mailbox, message id) the attachment came in: from the record's mailbox, or for an
    /// older record from `source`, whose relay mailboxes (`relay/{relay}`) hold a `/`.
    pub fn mail(&self) -> Option<(&str, &str)> {
        if let Some(mailbox) = &self.mailbox {
            let id = self
                .source
                .strip_prefix(mailbox.as_str())?
                .strip_prefix('/')?;
            return Some((mailbox, id));
        }
        if let Some(rest) = self.source.strip_prefix("relay/") {
            let (relay, id) = rest.split_once('/')?;
            return Some((&self.source[..6 + relay.len()], id));
        }
        self.source.split_once('/')
    }
}

/// A mail no dataset took (it matched none, or failed a dataset's sender check): what it was
/// and why, for operators (`GET /v1/intake/outcomes`, the dashboard's intake page).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnmatchedMail {
    pub mailbox: String,
    pub message_id: String,
    pub sender: String,
    pub subject: String,
    pub received: DateTime<Utc>,
    pub attachments: Vec<String>,
    /// Per dataset, the rule the mail failed (`ib_calls: sender "x" does not match "…"`), or
    /// why its sender was not believed.
    pub reasons: Vec<String>,
}

impl RecordKey<UnmatchedMail> {
    /// `UNMATCHED#{received day, UTC}` / `{received}#{mailbox}#{message id}`.
    pub fn unmatched(m: &UnmatchedMail) -> Self {
        Self::new(
            unmatched_day(m.received.date_naive()),
            format!(
                "{}#{}#{}",
                m.received
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                m.mailbox,
                m.message_id
            ),
        )
    }
}

/// The partition of the mails received on `day` (UTC) that no dataset took.
pub fn unmatched_day(day: NaiveDate) -> String {
    format!("UNMATCHED#{day}")
}

impl<'a> dyn StateRecords + 'a {
    /// Writes `record` where `key` says; `index` puts it on the secondary index.
    pub async fn put_record<R: Serialize>(
        &self,
        key: &RecordKey<R>,
        record: &R,
        index: Option<(&str, &str)>,
    ) -> anyhow::Result<()> {
        self.put(&key.pk, &key.sk, serde_json::to_string(record)?, index)
            .await
    }

    /// Writes `record` unless the one stored has a higher `rank` (`StateRecords::put_ranked`).
    pub async fn put_ranked_record<R: Serialize>(
        &self,
        key: &RecordKey<R>,
        record: &R,
        rank: u8,
    ) -> anyhow::Result<bool> {
        self.put_ranked(&key.pk, &key.sk, serde_json::to_string(record)?, rank)
            .await
    }

    pub async fn get_record<R: DeserializeOwned>(
        &self,
        key: &RecordKey<R>,
    ) -> anyhow::Result<Option<R>> {
        let Some(text) = self.get(&key.pk, &key.sk).await? else {
            return Ok(None);
        };
        let record = serde_json::from_str(&text).with_context(|| {
            format!(
                "state record {}/{} is not a {}",
                key.pk,
                key.sk,
                std::any::type_name::<R>()
            )
        })?;
        Ok(Some(record))
    }

    /// Every record of type `R` under `pk` whose sk starts with `sk_prefix`, in sk order.
    pub async fn records<R: DeserializeOwned>(
        &self,
        pk: &str,
        sk_prefix: &str,
    ) -> anyhow::Result<Vec<(String, R)>> {
        self.query(pk, sk_prefix)
            .await?
            .into_iter()
            .map(|(sk, text)| {
                let r = serde_json::from_str(&text)
                    .with_context(|| format!("state record {pk}/{sk}"))?;
                Ok((sk, r))
            })
            .collect()
    }

    /// The outcomes of one mail's attachments.
    pub async fn outcomes_of_mail(
        &self,
        mailbox: &str,
        message_id: &str,
    ) -> anyhow::Result<Vec<IngestOutcome>> {
        Ok(self
            .records(&mail_claim(mailbox, message_id), "OUTCOME#")
            .await?
            .into_iter()
            .map(|(_, o)| o)
            .collect())
    }

    /// A run's deliveries, one per recipient group.
    pub async fn deliveries_of_run(&self, run_id: &str) -> anyhow::Result<Vec<RunDelivery>> {
        Ok(self
            .records(&run_claim(run_id), "delivery#")
            .await?
            .into_iter()
            .map(|(_, d)| d)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A relay's mailbox holds a `/`: the mail is found whether the record kept its mailbox or
    /// predates it.
    #[test]
    fn a_day_attachment_names_its_mail_for_relay_mailboxes_too() {
        let at = |source: &str, mailbox: Option<&str>| DayAttachment {
            raw_key: "raw/x".into(),
            source: source.into(),
            mailbox: mailbox.map(str::to_owned),
            received: Utc::now(),
            name: None,
        };
        assert_eq!(
            at("relay/branch-1/abc", None).mail(),
            Some(("relay/branch-1", "abc"))
        );
        assert_eq!(
            at("relay/branch-1/abc", Some("relay/branch-1")).mail(),
            Some(("relay/branch-1", "abc"))
        );
        assert_eq!(
            at("ops@contoso.example/AAMk/x=", None).mail(),
            Some(("ops@contoso.example", "AAMk/x="))
        );
        assert_eq!(at("nothing", None).mail(), None);
    }
}
