//! The deployment's health: queues, dead letters, polls, relays, runs.

use super::*;

impl Api {
    pub(super) async fn health(&self) -> Result<Reply, ApiError> {
        let now = Utc::now();
        let mut problems: Vec<String> = Vec::new();
        let mut warnings: Vec<String> = Vec::new();
        let table = match self.records.get("HEALTH", "probe").await {
            Ok(_) => contract::Reachable { ok: true },
            Err(e) => {
                problems.push(cause("the state table", &e));
                contract::Reachable { ok: false }
            }
        };
        let bucket = match self.objects.versions("config/reports.toml").await {
            Ok(_) => contract::Reachable { ok: true },
            Err(e) => {
                problems.push(cause("the bucket", &e));
                contract::Reachable { ok: false }
            }
        };
        let mut queues = Vec::new();
        for (name, has_source) in self.queues.queues() {
            let source = if has_source {
                match self.queues.depth(&name, false).await {
                    Ok(d) => Some(d),
                    Err(e) => {
                        problems.push(cause(&format!("queue {name}"), &e));
                        None
                    }
                }
            } else {
                None
            };
            let dead = match self.queues.depth(&name, true).await {
                Ok(d) => Some(d),
                Err(e) => {
                    problems.push(cause(&format!("{name}'s dead-letter queue"), &e));
                    None
                }
            };
            if let Some(d) = &dead
                && d.visible > 0
            {
                warnings.push(format!(
                    "{} message(s) in {name}'s dead-letter queue",
                    d.visible
                ));
            }
            let oldest = if has_source {
                match self.queues.oldest_age(&name).await {
                    Ok(age) => age,
                    Err(e) => {
                        warnings.push(cause(&format!("queue {name}'s oldest message"), &e));
                        None
                    }
                }
            } else {
                None
            };
            if let Some(age) = oldest
                && age > self.max_message_age.num_seconds() as u64
            {
                problems.push(format!(
                    "queue {name}: its oldest message has waited {} (more than {}, CHARLIE_MAX_MESSAGE_AGE_SECONDS): its consumer is stuck or failing",
                    human_secs(age),
                    human_secs(self.max_message_age.num_seconds() as u64)
                ));
            }
            queues.push(contract::QueueHealth {
                queue: name,
                depth: source,
                dead_letters: dead,
                oldest_message_age_seconds: oldest,
            });
        }
        let mut folders: BTreeMap<String, contract::FolderHealth> = BTreeMap::new();
        match self
            .records
            .query_index(FOLDERS_INDEX, None, None, 1000)
            .await
        {
            Ok(found) => {
                for r in found {
                    let Some((kind, folder)) = r.index_sk.split_once('#') else {
                        continue;
                    };
                    let entry = folders.entry(folder.to_owned()).or_insert_with(|| {
                        contract::FolderHealth {
                            folder: folder.to_owned(),
                            last_poll_at: None,
                            subscription_expires_at: None,
                        }
                    });
                    match kind {
                        "DELTA" => {
                            if let Ok(link) = serde_json::from_str::<state::DeltaLink>(&r.data) {
                                entry.last_poll_at = Some(link.saved_at);
                            }
                        }
                        "SUB" => {
                            if let Ok(sub) =
                                serde_json::from_str::<state::SubscriptionRecord>(&r.data)
                            {
                                entry.subscription_expires_at = Some(sub.expires_at.to_rfc3339());
                                if sub.expires_at <= now {
                                    problems.push(format!(
                                        "{folder}: its Graph subscription expired at {}",
                                        sub.expires_at
                                    ));
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            Err(e) => problems.push(cause("the folders' poll records", &e)),
        }
        for (folder, f) in &folders {
            let last = f
                .last_poll_at
                .as_deref()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.to_utc());
            match last {
                Some(t) if now - t > self.poll_stale => problems.push(format!(
                    "{folder}: no successful poll since {t} (over {} minutes)",
                    self.poll_stale.num_minutes()
                )),
                None => warnings.push(format!("{folder}: never polled")),
                _ => {}
            }
        }
        // The batch sender's circuit breaker, when the deployment has one.
        let downstream = match self.records.get("BREAKER#downstream", "state").await {
            Ok(Some(data)) => match serde_json::from_str::<crate::breaker::BreakerRecord>(&data) {
                Ok(b) => {
                    if b.state != crate::breaker::BreakerState::Closed {
                        warnings.push(format!(
                            "the downstream API's circuit breaker is {} since {}: outcomes wait in outbound{}",
                            if b.state == crate::breaker::BreakerState::Open { "open" } else { "half-open" },
                            b.changed_at.to_rfc3339(),
                            b.last_failure.as_deref().map(|f| format!(" (last failure: {f})")).unwrap_or_default(),
                        ));
                    }
                    Some(contract::DownstreamHealth {
                        breaker: b.state,
                        changed_at: Some(b.changed_at.to_rfc3339()),
                        opened_at: b.opened_at.map(|t| t.to_rfc3339()),
                        recent_failures: b.failures.len() as u64,
                        last_failure: b.last_failure,
                    })
                }
                Err(e) => {
                    warnings.push(format!(
                        "the downstream breaker's record is unreadable: {e}"
                    ));
                    None
                }
            },
            // Closed and never failed (a record is written at the first failure), when the
            // deployment forwards outcomes at all.
            Ok(None) if self.queues.queues().iter().any(|(q, _)| q == "outbound") => {
                Some(contract::DownstreamHealth {
                    breaker: crate::breaker::BreakerState::Closed,
                    changed_at: None,
                    opened_at: None,
                    recent_failures: 0,
                    last_failure: None,
                })
            }
            Ok(None) => None,
            Err(e) => {
                warnings.push(cause("the downstream breaker's record", &e));
                None
            }
        };
        let relays = self.relays_health(now, &mut problems, &mut warnings).await;
        let healthy = problems.is_empty();
        let health = contract::Health {
            status: if healthy {
                contract::HealthStatus::Ok
            } else {
                contract::HealthStatus::Unhealthy
            },
            checked_at: now.to_rfc3339(),
            problems,
            warnings,
            table,
            bucket,
            queues,
            folders: folders.into_values().collect(),
            downstream,
            relays,
        };
        Reply::typed(if healthy { 200 } else { 503 }, &health)
    }
}

/// `90061` → `1d 1h 1m 1s`, leaving out zero parts.
pub(super) fn human_secs(secs: u64) -> String {
    let parts = [
        (secs / 86_400, "d"),
        (secs / 3600 % 24, "h"),
        (secs / 60 % 60, "m"),
        (secs % 60, "s"),
    ];
    let text: Vec<String> = parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, u)| format!("{n}{u}"))
        .collect();
    if text.is_empty() {
        "0s".into()
    } else {
        text.join(" ")
    }
}

/// What `/v1/health` says of a failed check: `what` and a short cause (the AWS error code when
/// there is one), never the raw error, whose ARNs, table and bucket names and request ids go to
/// the log only.
pub(super) fn cause(what: &str, e: &anyhow::Error) -> String {
    let full = format!("{e:#}");
    warn!(check = what, error = %full, "health check failed");
    let code = full.split(|c: char| !c.is_ascii_alphanumeric()).find(|w| {
        w.len() > 9
            && w.starts_with(|c: char| c.is_ascii_uppercase())
            && (w.ends_with("Exception") || w.ends_with("Error") || w.ends_with("Denied"))
    });
    match code {
        Some(code) => format!("{what}: {code} (details in the API's log)"),
        None => format!("{what}: unavailable (details in the API's log)"),
    }
}
