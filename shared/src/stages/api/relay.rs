//! Relays (`charlie-relay`, the on-prem binary): the admin routes that create, list and revoke
//! them (`/v1/relays`), and the routes a relay calls with its signed requests
//! (`/v1/relay/…`, [`crate::relay_auth`]; no API key).
//!
//! - `GET /v1/relay`: who the API takes the caller for, and its clock (`charlie-relay check`).
//! - `GET /v1/relay/outbox`: the report mail queued for this relay (`transport = "relay"`),
//!   oldest first, each with a presigned `GET` of its MIME; `POST /v1/relay/outbox/ack`
//!   `{message_id, smtp_reply}` once its SMTP server took one (`crate::relay_outbox`), `POST
//!   /v1/relay/outbox/deferred` `{message_id, answer}` when it could not take one now.
//! - `POST /v1/relay/uploads` `{sha256, size}`: a presigned `PUT` of the raw mail to
//!   `inbox/relay/{relay}/{sha256}.eml` (its SHA-256, length and type signed, so S3 takes those
//!   bytes only), or `exists: true` when that file is already there: a relay that crashed after
//!   its upload and before its journal noted it asks again and sends nothing twice.

use base64::Engine;
use chrono::{DateTime, Utc};
use tracing::{info, warn};

use super::{Api, ApiError, Reply, Request, Route};
use crate::contract::{self, RelayId};
use crate::idempotency::IdempotencyKey;
use crate::ports::Claim;
use crate::relay_auth::{self, NONCE_TTL_SECONDS, Refused};
use crate::state::{ApiKeyRecord, RELAYS_INDEX, RecordKey, RelayRecord};

/// The largest raw mail a relay may upload: ingest holds a relay's mail whole in memory.
pub const MAX_RELAY_MAIL_BYTES: u64 = 64 * 1024 * 1024;
/// How long a presigned upload lasts.
const UPLOAD_MINUTES: u64 = 15;
/// A relay's `last_seen_at` is rewritten at most this often.
const SEEN_EVERY_SECONDS: i64 = 60;

fn index_sk(r: &RelayRecord) -> String {
    r.id.to_string()
}

impl Api {
    pub(super) async fn list_relays(&self) -> Result<Reply, ApiError> {
        let relays = crate::relay_outbox::overview(self.records.as_ref()).await?;
        let relays = relays
            .iter()
            .map(|(r, w)| contract::RelayOverview::new(r, w))
            .collect();
        Reply::typed(200, &contract::RelayList { relays })
    }

    /// The relays for the health check: report mail waiting longer than
    /// `relay_outbox_stale` is a problem (the relay is not sending it: stopped, no `[outbox]`,
    /// or failing); mail waiting for a revoked relay is a warning (it is never sent).
    pub(super) async fn relays_health(
        &self,
        now: DateTime<Utc>,
        problems: &mut Vec<String>,
        warnings: &mut Vec<String>,
    ) -> Option<Vec<contract::RelayOverview>> {
        match crate::relay_outbox::overview(self.records.as_ref()).await {
            Ok(relays) => {
                for (r, w) in &relays {
                    if let Some(m) = &w.stuck {
                        warnings.push(format!(
                            "relay {}: mail {} deferred {} time(s) by its sender, last at {}: {}",
                            r.id,
                            m.message_id,
                            m.attempts,
                            m.last_attempt_at.as_deref().unwrap_or("?"),
                            m.last_answer.as_deref().unwrap_or("no answer")
                        ));
                    }
                    let waiting = w.count;
                    let Some(oldest) = &w.oldest else { continue };
                    let seen = r.last_seen_at.as_deref().unwrap_or("never");
                    if r.revoked_at.is_some() {
                        warnings.push(format!(
                            "relay {}: {waiting} report mail(s) wait for it, but it is revoked: make it again (charlie relay create) or change the reports' relay",
                            r.id
                        ));
                    } else if now - *oldest > self.relay_outbox_stale {
                        problems.push(format!(
                            "relay {}: {waiting} report mail(s) not sent, the oldest queued at {} (over {} minutes; last seen {seen}): is charlie-relay running, with an [outbox]?",
                            r.id,
                            oldest.to_rfc3339(),
                            self.relay_outbox_stale.num_minutes()
                        ));
                    }
                }
                Some(
                    relays
                        .iter()
                        .map(|(r, w)| contract::RelayOverview::new(r, w))
                        .collect(),
                )
            }
            Err(e) => {
                warnings.push(super::cause("the relays' outboxes", &e));
                None
            }
        }
    }

    fn relay_master(&self) -> Result<&crate::secret::Secret, ApiError> {
        self.relay_key.as_ref().ok_or_else(|| {
            ApiError::new(
                503,
                "unavailable",
                "this deployment has no relay secret (CHARLIE_RELAY_SECRET): relays are off",
            )
        })
    }

    /// `{id, mailbox?, trusted_authserv_ids?}`: a new relay, or a revoked one again with a new
    /// key. Answers the key once.
    pub(super) async fn create_relay(
        &self,
        req: &Request,
        by: &ApiKeyRecord,
    ) -> Result<Reply, ApiError> {
        let ask: contract::NewRelay = req.json()?;
        let hostname = |h: &str| {
            (1..=253).contains(&h.len())
                && h.split('.').all(|l| {
                    (1..=63).contains(&l.len())
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                })
        };
        if ask.trusted_authserv_ids.len() > 10
            || !ask.trusted_authserv_ids.iter().all(|h| hostname(h))
        {
            return Err(ApiError::bad(
                "trusted_authserv_ids",
                "trusted_authserv_ids are the host names (at most 10) your mail servers write first in their Authentication-Results headers, e.g. mx.branch.example",
            ));
        }
        let id = RelayId::parse(&ask.id).map_err(|e| ApiError::bad("id", e.to_string()))?;
        let mailbox = ask.mailbox.as_deref().map(str::trim);
        if let Some(m) = mailbox
            && (m.is_empty() || m.len() > 320 || m.chars().any(|c| c.is_control() || c == '#'))
        {
            return Err(ApiError::bad(
                "mailbox",
                "mailbox is the address (or Graph object id) of the mailbox the relay reads: 1 to 320 characters, no control characters or #",
            ));
        }
        let master = self.relay_master()?;
        let key = RecordKey::relay(&ask.id);
        let existing = self.records.get_record(&key).await?;
        let mut revoked_windows = Vec::new();
        if let Some(existing) = existing {
            let Some(revoked_at) = existing.revoked_at.clone() else {
                return Err(ApiError::conflict(format!(
                    "relay {:?} exists (created {} by {}): revoke it first to give it a new key",
                    ask.id, existing.created_at, existing.created_by
                )));
            };
            // Upload URLs issued to the old key live UPLOAD_MINUTES: made again before they
            // have all expired, the relay would take uploads signed for the revoked key.
            let usable_from = DateTime::parse_from_rfc3339(&revoked_at)
                .map(|t| t.with_timezone(&Utc) + chrono::Duration::minutes(UPLOAD_MINUTES as i64))
                .unwrap_or_else(|_| Utc::now());
            if Utc::now() < usable_from {
                return Err(ApiError::conflict(format!(
                    "relay {:?} was revoked at {revoked_at}: it can be made again from {}, when every upload URL issued to its revoked key has expired",
                    ask.id,
                    usable_from.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                )));
            }
            revoked_windows = existing.revoked_windows;
            revoked_windows.push((
                revoked_at,
                Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            ));
        }
        let record = RelayRecord {
            revoked_windows,
            trusted_authserv_ids: ask
                .trusted_authserv_ids
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            ..RelayRecord::new(id.clone(), mailbox, &by.name)
        };
        self.records
            .put_record(&key, &record, Some((RELAYS_INDEX, &index_sk(&record))))
            .await?;
        // Shown this once: the API keeps the salt it is derived from, never the key.
        let created = contract::CreatedRelay {
            relay: contract::RelayInfo::from(&record),
            key: relay_auth::relay_key(master, &record.id, &record.salt)
                .expose()
                .to_owned(),
        };
        info!(relay = %record.id, by = by.name, "relay created");
        Ok(Reply::typed(201, &created)?.said(format!("create relay {}", record.id)))
    }

    pub(super) async fn revoke_relay(&self, id: &RelayId) -> Result<Reply, ApiError> {
        let key = RecordKey::relay(id);
        let Some(mut record) = self.records.get_record(&key).await? else {
            return Err(ApiError::not_found(format!("no relay {id:?}")));
        };
        if record.revoked_at.is_none() {
            record.revoked_at =
                Some(Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
            self.records
                .put_record(&key, &record, Some((RELAYS_INDEX, &index_sk(&record))))
                .await?;
        }
        Ok(Reply::typed(200, &contract::RelayInfo::from(&record))?
            .said(format!("revoke relay {id}")))
    }

    /// A relay's signed call: checked ([`relay_auth`]), answered, and written to the audit
    /// trail as the relay's.
    pub(super) async fn relay_call(&self, req: &Request, route: Route) -> Result<Reply, ApiError> {
        let relay = match self.relay_caller(req).await {
            Ok(relay) => relay,
            Err(e) => {
                // Who it claimed to be (unverified), never what it signed with.
                let claimed = req
                    .headers
                    .get(relay_auth::RELAY_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .filter(|r| RelayId::parse(r).is_ok())
                    .map_or_else(|| "relay/?".to_owned(), |r| format!("relay/{r}"));
                self.audit_as(
                    req.call(),
                    (&claimed, "unverified relay"),
                    e.status,
                    format!("refused: {}", e.message),
                )
                .await;
                return Err(e);
            }
        };
        let caller = ApiKeyRecord {
            id: format!("relay/{}", relay.id),
            name: format!("relay {}", relay.id),
            scopes: Vec::new(),
            secret_sha256: String::new(),
            created_at: relay.created_at.clone(),
            created_by: relay.created_by.clone(),
            revoked_at: None,
        };
        let result = match route {
            Route::RelayHello => Reply::typed(
                200,
                &contract::RelayHello {
                    relay: relay.id.clone(),
                    mailbox: relay.mailbox.clone(),
                    time: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                },
            ),
            Route::RelayUpload => self.relay_upload(req, &relay).await,
            Route::RelayOutbox => self.relay_outbox(&relay).await,
            Route::RelayAck => self.relay_ack(req, &relay).await,
            Route::RelayRefused => self.relay_refused(req, &relay).await,
            Route::RelayDeferred => self.relay_deferred(req, &relay).await,
            _ => Err(ApiError::not_found(format!(
                "no route {} {} (see /v1/openapi.json)",
                req.method, req.path
            ))),
        };
        // Its fetches of report mail too: they hand out the mail's MIME.
        if req.method != "GET" || route == Route::RelayOutbox {
            self.audit(req.call(), &caller, &result).await;
        }
        result
    }

    /// The relay that signed this request, or a 401 saying what is wrong with it.
    async fn relay_caller(&self, req: &Request) -> Result<RelayRecord, ApiError> {
        let refused = |r: Refused| ApiError::new(401, "unauthorized", r.to_string());
        let master = self.relay_master()?;
        let header = |name: &str| req.headers.get(name).and_then(|v| v.to_str().ok());
        let presented = relay_auth::presented(header).map_err(refused)?;
        // Whether the relay is known or revoked is said only to a caller whose signature
        // verifies: anyone else gets the same answer as a wrong key (an unknown relay's
        // request is checked against a key no relay has), so relay ids cannot be enumerated.
        let record = self
            .records
            .get_record(&RecordKey::relay(presented.relay))
            .await?;
        let secret = match &record {
            Some(r) => relay_auth::relay_secret(master, &r.id, &r.salt),
            None => relay_auth::relay_secret(master, presented.relay, "no such relay"),
        };
        let signed_path = match req.raw_query.as_deref().filter(|q| !q.is_empty()) {
            Some(q) => format!("{}?{q}", req.path),
            None => req.path.clone(),
        };
        let now = Utc::now();
        relay_auth::verify(
            &presented,
            &secret,
            &req.method,
            &signed_path,
            &req.body,
            now.timestamp(),
        )
        .map_err(|r| {
            warn!(
                relay = presented.relay,
                known = record.is_some(),
                revoked = record.as_ref().is_some_and(|r| r.revoked_at.is_some()),
                refused = %r,
                "relay request refused"
            );
            refused(r)
        })?;
        let Some(mut relay) = record else {
            // Unreachable without the key of a relay that never existed; kept for safety.
            warn!(
                relay = presented.relay,
                "relay request from an unknown relay refused"
            );
            return Err(refused(Refused::BadSignature));
        };
        if relay.revoked_at.is_some() {
            warn!(relay = %relay.id, "request from a revoked relay refused");
            return Err(refused(Refused::Revoked(relay.id.to_string())));
        }
        // Only now is the nonce spent: a forged request cannot use up a relay's nonces.
        let nonce = IdempotencyKey::new(
            format!("NONCE#{}#{}", relay.id, presented.nonce),
            &presented.signature,
        );
        let expires = now + chrono::Duration::seconds(NONCE_TTL_SECONDS);
        match self
            .claims
            .claim(&nonce.key, &nonce.payload_hash, now, expires, expires)
            .await?
        {
            Claim::Acquired => {}
            Claim::AlreadyDone { .. } | Claim::InProgressElsewhere => {
                warn!(relay = %relay.id, "replayed relay request refused");
                return Err(refused(Refused::Replayed));
            }
        }
        let stale = relay
            .last_seen_at
            .as_deref()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .is_none_or(|t| (now - t.with_timezone(&Utc)).num_seconds() >= SEEN_EVERY_SECONDS);
        if stale {
            relay.last_seen_at = Some(now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
            let index = index_sk(&relay);
            self.records
                .put_record(
                    &RecordKey::relay(&relay.id),
                    &relay,
                    Some((RELAYS_INDEX, &index)),
                )
                .await?;
        }
        Ok(relay)
    }

    async fn relay_outbox(&self, relay: &RelayRecord) -> Result<Reply, ApiError> {
        let waiting =
            crate::relay_outbox::pending(self.records.as_ref(), &relay.id, 20, Utc::now()).await?;
        let mut mails = Vec::with_capacity(waiting.len());
        for m in waiting {
            let url = self
                .objects
                .presigned_get(
                    &m.key,
                    None,
                    std::time::Duration::from_secs(UPLOAD_MINUTES * 60),
                )
                .await?;
            mails.push(contract::OutboxMail {
                message_id: m.message_id,
                from: m.from,
                recipients: m.recipients,
                size: m.size,
                queued_at: m.queued_at,
                url,
            });
        }
        Reply::typed(200, &contract::Outbox { mails })
    }

    async fn relay_ack(&self, req: &Request, relay: &RelayRecord) -> Result<Reply, ApiError> {
        let ack: contract::MailSent = req.json()?;
        check_message_id(&ack.message_id)?;
        let reply = said_text(&ack.smtp_reply, 512);
        let Some(sent) = crate::relay_outbox::acknowledge(
            self.records.as_ref(),
            &relay.id,
            &ack.message_id,
            &reply,
        )
        .await?
        else {
            return Err(not_in_outbox(&ack.message_id, relay));
        };
        if let Some(at) = &sent.refused_at {
            return Err(ApiError::conflict(format!(
                "mail {} was refused at {at} ({}): it cannot be acknowledged as sent",
                sent.message_id,
                sent.refusal.as_deref().unwrap_or("no reason")
            )));
        }
        let answer = contract::SentRecorded {
            message_id: sent.message_id.clone(),
            sent_at: sent.sent_at,
            smtp_reply: sent.smtp_reply,
        };
        Ok(
            Reply::typed(200, &answer)?
                .said(format!("relay {} sent {}", relay.id, sent.message_id)),
        )
    }

    /// `{message_id, answer}`: the relay's sender could not take a queued mail now (an SMTP
    /// 4xx): it stays queued, not offered again before its backoff, and shows as stuck with the
    /// answer in `charlie relay list` and health.
    async fn relay_deferred(&self, req: &Request, relay: &RelayRecord) -> Result<Reply, ApiError> {
        let said: contract::MailDeferred = req.json()?;
        check_message_id(&said.message_id)?;
        let answer = said_text(&said.answer, 2000);
        if answer.trim().is_empty() {
            return Err(ApiError::bad(
                "answer",
                "answer is what the relay's sender said (an SMTP reply, Outlook's error)",
            ));
        }
        let Some(record) = crate::relay_outbox::defer(
            self.records.as_ref(),
            &relay.id,
            &said.message_id,
            &answer,
            Utc::now(),
        )
        .await?
        else {
            return Err(not_in_outbox(&said.message_id, relay));
        };
        if record.settled() {
            return Err(ApiError::conflict(format!(
                "mail {} is settled (sent or refused): it cannot be deferred",
                record.message_id
            )));
        }
        warn!(
            relay = %relay.id,
            message_id = record.message_id,
            attempts = record.attempts,
            answer,
            "relay mail deferred by the relay's sender"
        );
        let answer = contract::DeferralRecorded {
            message_id: record.message_id.clone(),
            attempts: record.attempts,
            next_attempt_at: record.next_attempt_at.clone(),
        };
        Ok(Reply::typed(200, &answer)?.said(format!(
            "relay {} deferred {} ({} attempt(s))",
            relay.id, record.message_id, record.attempts
        )))
    }

    /// `{message_id, reason}`: the relay's sender refused a queued mail for good (an SMTP 5xx,
    /// an address Outlook cannot resolve): off the outbox, its delivery `refused` with the
    /// reason, counted once (`RelayMailsRefused`, alarmed on).
    async fn relay_refused(&self, req: &Request, relay: &RelayRecord) -> Result<Reply, ApiError> {
        let said: contract::MailRefused = req.json()?;
        check_message_id(&said.message_id)?;
        let reason = said_text(&said.reason, 2000);
        if reason.trim().is_empty() {
            return Err(ApiError::bad(
                "reason",
                "reason is what the relay's sender answered (an SMTP reply, Outlook's error)",
            ));
        }
        let Some((record, now)) = crate::relay_outbox::refuse(
            self.records.as_ref(),
            &relay.id,
            &said.message_id,
            &reason,
        )
        .await?
        else {
            return Err(not_in_outbox(&said.message_id, relay));
        };
        if let Some(at) = &record.sent_at {
            return Err(ApiError::conflict(format!(
                "mail {} was acknowledged as sent at {at}: it cannot be refused after",
                record.message_id
            )));
        }
        if now {
            let report = self
                .records
                .get_record(&RecordKey::run(&record.run_id))
                .await?
                .map_or_else(|| "unknown".to_owned(), |r| r.report);
            warn!(
                relay = %relay.id,
                run_id = record.run_id,
                report,
                message_id = record.message_id,
                reason,
                "a relay's sender refused a report mail"
            );
            let mut counts = crate::counters::Counts::default();
            counts.add(crate::counters::Kind::RelayRefused, &report, 1);
            crate::counters::count(
                self.records.as_ref(),
                &format!("relay-refused/{}", record.delivery),
                Utc::now(),
                &counts,
            )
            .await?;
        }
        let answer = contract::RefusalRecorded {
            message_id: record.message_id.clone(),
            refused_at: record.refused_at.clone(),
            refusal: record.refusal.clone(),
        };
        Ok(Reply::typed(200, &answer)?
            .said(format!("relay {} refused {}", relay.id, record.message_id)))
    }

    async fn relay_upload(&self, req: &Request, relay: &RelayRecord) -> Result<Reply, ApiError> {
        let ask: contract::UploadRequest = req.json()?;
        let sha = ask.sha256.to_ascii_lowercase();
        let Some(digest) = hex::decode(&sha).ok().filter(|d| d.len() == 32) else {
            return Err(ApiError::bad(
                "sha256",
                "sha256 is the raw mail's SHA-256, 64 hex digits",
            ));
        };
        if ask.size == 0 || ask.size > MAX_RELAY_MAIL_BYTES {
            return Err(ApiError::bad(
                "size",
                format!(
                    "size is the raw mail's length in bytes, 1 to {MAX_RELAY_MAIL_BYTES} (a larger mail cannot go through the relay)"
                ),
            ));
        }
        let key = crate::object_keys::relay_inbox(&relay.id, &sha);
        if !self.objects.versions(&key).await?.is_empty() {
            let there = contract::UploadTicket {
                key,
                exists: true,
                url: None,
                method: None,
                headers: Default::default(),
                expires_at: None,
            };
            return Ok(Reply::typed(200, &there)?
                .said(format!("relay {} upload {sha}: there already", relay.id)));
        }
        let checksum = base64::engine::general_purpose::STANDARD.encode(&digest);
        let url = self
            .objects
            .presigned_put(
                &key,
                crate::object_keys::RELAY_CONTENT_TYPE,
                &checksum,
                ask.size,
                std::time::Duration::from_secs(UPLOAD_MINUTES * 60),
            )
            .await?;
        let expires_at = Utc::now() + chrono::Duration::minutes(UPLOAD_MINUTES as i64);
        let ticket = contract::UploadTicket {
            key,
            exists: false,
            url: Some(url),
            method: Some("PUT".into()),
            headers: [
                (
                    "content-type",
                    crate::object_keys::RELAY_CONTENT_TYPE.to_owned(),
                ),
                ("content-length", ask.size.to_string()),
                ("x-amz-checksum-sha256", checksum),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
            expires_at: Some(expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        };
        Ok(Reply::typed(200, &ticket)?.said(format!(
            "relay {} upload {sha} ({} bytes)",
            relay.id, ask.size
        )))
    }
}

fn check_message_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > 512 {
        return Err(ApiError::bad(
            "message_id",
            "message_id is a queued mail's <…@…>",
        ));
    }
    Ok(())
}

/// What a sender said, without control characters, at most `max` characters.
fn said_text(text: &str, max: usize) -> String {
    text.chars().filter(|c| !c.is_control()).take(max).collect()
}

fn not_in_outbox(message_id: &str, relay: &RelayRecord) -> ApiError {
    ApiError::not_found(format!(
        "no mail {message_id:?} in relay {}'s outbox",
        relay.id
    ))
}
