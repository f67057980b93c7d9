//! The deployment's health and its metrics.

use super::*;

pub async fn health(c: &Client) -> ExitCode {
    let url = format!("{}/v1/health", c.base);
    let mut req = c.http.get(&url);
    if let Some(k) = &c.key {
        req = req.bearer_auth(k);
    }
    // 503 is an answer here (unhealthy, with the reasons), not a failure to reach the API.
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return Failure(5, format!("cannot reach {url}: {e}")).into(),
    };
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    if status != 200 && status != 503 {
        let message = serde_json::from_str::<Problem>(&text)
            .map_or_else(|_| "(no message)".to_owned(), |p| p.message);
        return Failure(
            if status == 401 || status == 403 { 3 } else { 5 },
            format!("GET /v1/health: {status}: {message}"),
        )
        .into();
    }
    let health: Health = match serde_json::from_str(&text) {
        Ok(h) => h,
        Err(e) => {
            return Failure(
                5,
                format!("GET /v1/health: the answer is not what this CLI knows ({e}); is the CLI as new as the deployment?"),
            )
            .into();
        }
    };
    if c.json {
        c.print(&health);
    } else {
        println!("status: {}", health.status);
        for p in &health.problems {
            println!("  problem: {}", cell(p));
        }
        for w in &health.warnings {
            println!("  warning: {}", cell(w));
        }
        let depth = |d: &Option<QueueDepth>, f: fn(&QueueDepth) -> u64| {
            d.as_ref()
                .map_or_else(|| "-".to_owned(), |d| f(d).to_string())
        };
        let rows: Vec<Vec<String>> = health
            .queues
            .iter()
            .map(|q| {
                let age = q
                    .oldest_message_age_seconds
                    .map_or_else(|| "-".to_owned(), |a| format!("{a} s"));
                vec![
                    cell(&q.queue),
                    depth(&q.depth, |d| d.visible),
                    depth(&q.depth, |d| d.in_flight),
                    age,
                    depth(&q.dead_letters, |d| d.visible),
                ]
            })
            .collect();
        table(
            &["queue", "waiting", "in work", "oldest", "dead letters"],
            &rows,
        );
        for f in &health.folders {
            println!(
                "folder {}: last poll {}, subscription expires {}",
                cell(&f.folder),
                at_opt(&f.last_poll_at),
                at_opt(&f.subscription_expires_at)
            );
        }
    }
    if status == 200 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Counters as a table: one row per kind, its total, and what it is about (datasets, reports,
/// mailboxes, stages) with each one's count.
pub(super) fn print_counters(counters: &Counters) {
    println!("counted since {}:", at(&counters.since));
    if counters.totals.is_empty() {
        println!("  nothing");
        return;
    }
    let rows: Vec<Vec<String>> = counters
        .totals
        .iter()
        .map(|(kind, n)| {
            let parts: Vec<String> = counters
                .by
                .iter()
                .filter_map(|(about, kinds)| Some(format!("{about} {}", kinds.get(kind)?)))
                .collect();
            vec![kind.clone(), n.to_string(), parts.join(", ")]
        })
        .collect();
    table(&["counter", "total", "by"], &rows);
}

pub async fn metrics(c: &Client, since: Option<&str>) -> ExitCode {
    let path = match since {
        Some(since) => format!("/v1/metrics?since={}", charlie::uri::segment(since)),
        None => "/v1/metrics".to_owned(),
    };
    let result = async {
        let Some(m) = c.shown::<Metrics>("GET", &path, None).await? else {
            return Ok::<(), Failure>(());
        };
        print_counters(&m.counters);
        let runs: Vec<Vec<String>> = m
            .runs_by_status
            .iter()
            .map(|(status, n)| vec![status.clone(), n.to_string()])
            .collect();
        println!("runs requested since {}:", at(&m.since));
        if runs.is_empty() {
            println!("  none");
        } else {
            table(&["status", "runs"], &runs);
        }
        let queues: Vec<Vec<String>> = m
            .queues
            .iter()
            .map(|(q, d)| {
                let depth = d.depth.map_or_else(|| "-".into(), |n| n.to_string());
                vec![q.clone(), depth, d.dead_letters.to_string()]
            })
            .collect();
        table(&["queue", "waiting", "dead letters"], &queues);
        Ok(())
    }
    .await;
    exit(result)
}
