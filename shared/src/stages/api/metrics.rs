//! The metrics the stages emit, as the API reads them back.

use super::*;

impl Api {
    pub(super) async fn metrics(&self, req: &Request) -> Result<Reply, ApiError> {
        let now = Utc::now();
        let since = req.since(now, now - chrono::Duration::days(1))?;
        let (counts, start) = crate::counters::since(self.records.as_ref(), since, now).await?;
        let mut runs: BTreeMap<String, u64> = BTreeMap::new();
        let from = since.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        for r in self
            .records
            .query_index(RUNS_INDEX, None, Some(&from), 1000)
            .await?
        {
            if let Ok(run) = serde_json::from_str::<RunRecord>(&r.data) {
                *runs.entry(run.status.to_string()).or_default() += 1;
            }
        }
        let mut queues = BTreeMap::new();
        for (name, has_source) in self.queues.queues() {
            let depth = if has_source {
                Some(self.queues.depth(&name, false).await?.visible)
            } else {
                None
            };
            let dead = self.queues.depth(&name, true).await?.visible;
            queues.insert(
                name,
                contract::QueueCounts {
                    depth,
                    dead_letters: dead,
                },
            );
        }
        Reply::typed(
            200,
            &contract::Metrics {
                since: since.to_rfc3339(),
                runs_by_status: runs,
                queues,
                counters: counts.answer(start),
            },
        )
    }
}
