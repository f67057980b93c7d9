//! The reports the definitions name: their schedules, recipients and the definitions' versions.

use super::*;

impl Api {
    pub(super) fn report_info(&self, name: &str) -> contract::ReportInfo {
        let r = &self.definitions.reports[name];
        let zone = r.time_zone.0;
        let next = crate::schedule::Expression::parse(&r.schedule)
            .ok()
            .and_then(|e| e.next_after(Utc::now(), zone));
        contract::ReportInfo {
            name: name.to_owned(),
            title: r.title.clone(),
            datasets: r.datasets.clone(),
            schedule: r.schedule.clone(),
            time_zone: zone.name().to_owned(),
            period: r.period,
            next_run_at: next.map(|t| t.to_rfc3339()),
            next_run_local: next.map(|t| {
                t.with_timezone(&zone)
                    .format("%Y-%m-%d %H:%M %Z")
                    .to_string()
            }),
            recipients: r.recipients.clone(),
            cc: r.cc.clone(),
            bcc: r.bcc.clone(),
            transport: r.transport,
            relay: r.relay.clone(),
            on_empty: r.on_empty,
            retain_days: r.retain_days,
            datasets_retain_days: r
                .datasets
                .iter()
                .map(|d| {
                    let days = self.definitions.datasets.get(d).and_then(|d| d.retain_days);
                    (d.clone(), days)
                })
                .collect(),
        }
    }

    pub(super) fn report(&self, name: &str) -> Result<Reply, ApiError> {
        if !self.definitions.reports.contains_key(name) {
            return Err(ApiError::not_found(format!("no report {name:?}")));
        }
        Reply::typed(200, &self.report_info(name))
    }

    pub(super) async fn versions(&self, req: &Request, name: &str) -> Result<Reply, ApiError> {
        if !self.definitions.reports.contains_key(name) {
            return Err(ApiError::not_found(format!("no report {name:?}")));
        }
        let period = parse_period(req.query("period").ok_or_else(|| {
            ApiError::bad(
                "period",
                "give ?period= (2024-03-14, 2024-W11, 2024-03 or a range a..b)",
            )
        })?)?;
        let key = crate::object_keys::workbook(name, &period.to_string());
        let versions = self.objects.versions(&key).await?;
        Reply::typed(
            200,
            &contract::WorkbookVersions {
                report: name.to_owned(),
                period: period.to_string(),
                key,
                versions,
            },
        )
    }

    pub(super) fn reports(&self) -> Result<Reply, ApiError> {
        let reports = self
            .definitions
            .reports
            .keys()
            .map(|name| self.report_info(name))
            .collect();
        Reply::typed(200, &contract::ReportList { reports })
    }
}
