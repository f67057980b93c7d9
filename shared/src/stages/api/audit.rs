//! Keys, the audit trail, and the hourly bounds on a key's state-changing calls.

use super::*;

impl Api {
    pub(super) async fn list_keys(&self) -> Result<Reply, ApiError> {
        let found = self
            .records
            .query_index(state::API_KEYS_INDEX, None, None, 1000)
            .await?;
        let keys = found
            .iter()
            .filter_map(|r| serde_json::from_str::<ApiKeyRecord>(&r.data).ok())
            .map(|k| contract::KeyInfo::from(&k))
            .collect();
        Reply::typed(200, &contract::KeyList { keys })
    }

    pub(super) async fn create_key(
        &self,
        req: &Request,
        by: &ApiKeyRecord,
    ) -> Result<Reply, ApiError> {
        let ask: contract::NewKey = req.json()?;
        let name = ask.name.trim();
        if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
            return Err(ApiError::bad(
                "name",
                "name is 1 to 64 printable characters",
            ));
        }
        let scopes = ask
            .scopes
            .iter()
            .map(|s| {
                Scope::parse(s).ok_or_else(|| {
                    ApiError::bad(
                        "scopes",
                        format!("scope {s:?} is not one of {:?}", Scope::NAMES),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if scopes.is_empty() {
            return Err(ApiError::bad("scopes", "give at least one scope"));
        }
        let (record, key) = keys::create(self.records.as_ref(), name, &scopes, &by.name).await?;
        // Shown this once; only its hash is kept.
        let created = contract::CreatedKey {
            info: contract::KeyInfo::from(&record),
            key: key.expose().to_owned(),
        };
        Ok(Reply::typed(201, &created)?.said(format!(
            "create key {} ({})",
            record.name,
            record.scopes.join(",")
        )))
    }

    pub(super) async fn revoke_key(&self, id: &KeyId) -> Result<Reply, ApiError> {
        let key = RecordKey::api_key(id);
        let Some(mut record) = self.records.get_record(&key).await? else {
            return Err(ApiError::not_found(format!("no key {id:?}")));
        };
        if record.revoked_at.is_none() {
            record.revoked_at = Some(Utc::now().to_rfc3339());
            let index = format!("{}#{}", record.created_at, record.id);
            self.records
                .put_record(&key, &record, Some((state::API_KEYS_INDEX, &index)))
                .await?;
        }
        Ok(Reply::typed(200, &contract::KeyInfo::from(&record))?
            .said(format!("revoke key {} ({})", record.name, record.id)))
    }

    pub(super) async fn audit_trail(&self, req: &Request) -> Result<Reply, ApiError> {
        let limit = req.count("limit", 50, 500)?;
        let found = self
            .records
            .query_index(AUDIT_INDEX, None, None, limit)
            .await?;
        let mut entries = Vec::with_capacity(found.len());
        for r in &found {
            match serde_json::from_str::<AuditRecord>(&r.data) {
                Ok(entry) => entries.push(entry),
                Err(e) => {
                    warn!(pk = r.pk, sk = r.sk, error = %e, "an audit record that cannot be read is left out")
                }
            }
        }
        Reply::typed(200, &contract::AuditTrail { entries })
    }

    /// Counts a state-changing call against its key's bounds for this hour (a conditional
    /// write per bound, so concurrent calls count exactly); a 429 naming the bound and when to
    /// try again once one is reached.
    pub(super) async fn within_limits(
        &self,
        req: &Request,
        segments: &[&str],
        key: &ApiKeyRecord,
    ) -> Result<(), ApiError> {
        let now = Utc::now();
        let hour = now.format("%Y-%m-%dT%H").to_string();
        let next_hour = now.timestamp() - now.timestamp().rem_euclid(3600) + 3600;
        let retry_after = u64::try_from(next_hour - now.timestamp())
            .unwrap_or(3600)
            .max(1);
        // What mails recipients: a run started (the body's report) or rerun (the run id's
        // report), and a redrive (per queue).
        let sends = match segments {
            // A body that is no run request is refused (400) before it could mail anyone.
            ["runs"] => serde_json::from_slice::<contract::StartRun>(&req.body)
                .ok()
                .map(|b| format!("report {}", b.report)),
            ["runs", run, "rerun"] => {
                Some(format!("report {}", run.split('.').next().unwrap_or(run)))
            }
            ["dead-letters", queue, "redrive"] => Some(format!("redrive {queue}")),
            _ => None,
        };
        let mut bounds = vec![(
            "calls".to_owned(),
            self.limits.calls_per_hour,
            "state-changing calls".to_owned(),
        )];
        if let Some(what) = sends {
            bounds.push((
                what.clone(),
                self.limits.sends_per_report_per_hour,
                format!("{what} calls"),
            ));
        }
        for (bucket, limit, what) in bounds {
            // IAM callers share the record id `iam`: each is bounded by its principal.
            let who = if key.id == "iam" {
                format!("iam:{}", key.name)
            } else {
                key.id.clone()
            };
            let pk = format!("LIMIT#{who}#{hour}");
            let mut tries = 0;
            loop {
                tries += 1;
                let current = self.records.get_versioned(&pk, &bucket).await?;
                let (count, version) = match &current {
                    Some((data, v)) => (data.parse::<u32>().unwrap_or(0), Some(*v)),
                    None => (0, None),
                };
                if count >= limit {
                    warn!(
                        key = key.name,
                        bound = what,
                        limit,
                        "a key's hourly bound reached: 429"
                    );
                    return Err(ApiError {
                        retry_after: Some(retry_after),
                        ..ApiError::new(
                            429,
                            "too_many_requests",
                            format!(
                                "key {} made {limit} {what} this hour, its bound (CHARLIE_KEY_CALLS_PER_HOUR / CHARLIE_KEY_SENDS_PER_REPORT_PER_HOUR); try again in {retry_after} s",
                                key.name
                            ),
                        )
                    });
                }
                if self
                    .records
                    .put_versioned(&pk, &bucket, (count + 1).to_string(), version)
                    .await?
                {
                    break;
                }
                if tries >= 10 {
                    return Err(anyhow::anyhow!(
                        "the hourly bound {pk}/{bucket} kept changing under 10 tries"
                    )
                    .into());
                }
            }
        }
        Ok(())
    }

    /// Records a state-changing call (or a refusal, a download); a failure to record is
    /// logged, not hidden.
    pub(super) async fn audit(
        &self,
        call: (&str, &str, &str),
        key: &ApiKeyRecord,
        result: &Result<Reply, ApiError>,
    ) {
        let (_, method, path) = call;
        let (status, summary) = match result {
            Ok(r) if r.summary.is_empty() => (r.status, format!("{method} {path}")),
            Ok(r) => (r.status, r.summary.clone()),
            Err(e) => (e.status, format!("refused: {}", e.message)),
        };
        self.audit_as(call, (&key.id, &key.name), status, summary)
            .await;
    }

    /// Records what `who` (an id and a name; never a secret) did or was refused.
    pub(super) async fn audit_as(
        &self,
        (request_id, method, path): (&str, &str, &str),
        (who_id, who_name): (&str, &str),
        status: u16,
        summary: String,
    ) {
        let at = Utc::now();
        let record = AuditRecord {
            at: at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            request_id: request_id.to_owned(),
            key_id: who_id.to_owned(),
            key_name: who_name.to_owned(),
            method: method.to_owned(),
            path: path.to_owned(),
            status,
            summary,
        };
        let rk = RecordKey::audit(&at, request_id);
        let index = rk.sk.clone();
        if let Err(e) = self
            .records
            .put_record(&rk, &record, Some((AUDIT_INDEX, &index)))
            .await
        {
            error!(error = %format!("{e:#}"), path, key = who_name, "could not write the audit record");
        }
    }
}
