//! Summary tables: a dataset's rows grouped by columns, with measures per group and a total.

use std::collections::{BTreeMap, HashSet};

use crate::definitions::{ChartKind, Dataset, MeasureFn, Summary};
use crate::value::{Row, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeasureKind {
    /// A whole count (rows, present values, distinct values).
    Count,
    /// A number in the measured column's units.
    Number,
    /// A fraction, shown as a percentage.
    Ratio,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SummaryRow {
    pub group: Vec<String>,
    /// One per measure; `None` where it has no value (average of nothing, ratio over zero).
    pub values: Vec<Option<f64>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SummaryTable {
    pub title: String,
    pub group_headers: Vec<String>,
    pub measure_headers: Vec<String>,
    pub kinds: Vec<MeasureKind>,
    pub color_scale: Vec<bool>,
    pub rows: Vec<SummaryRow>,
    pub total: SummaryRow,
    pub chart: Option<TableChart>,
}

/// A chart over a table's groups: which measures (by index) are drawn.
#[derive(Debug, Clone, PartialEq)]
pub struct TableChart {
    pub kind: ChartKind,
    pub measures: Vec<usize>,
    pub title: String,
}

#[derive(Default, Clone)]
struct Acc {
    rows: u64,
    present: u64,
    sum: f64,
    numeric: u64,
    min: Option<f64>,
    max: Option<f64>,
    distinct: HashSet<String>,
}

impl Acc {
    fn add(&mut self, v: Option<&Value>, func: MeasureFn) {
        self.rows += 1;
        let Some(v) = v else { return };
        self.present += 1;
        if func == MeasureFn::Distinct {
            self.distinct.insert(v.display());
            return;
        }
        if let Some(x) = v.as_f64() {
            self.sum += x;
            self.numeric += 1;
            self.min = Some(self.min.map_or(x, |m| m.min(x)));
            self.max = Some(self.max.map_or(x, |m| m.max(x)));
        }
    }

    fn value(&self, func: MeasureFn) -> Option<f64> {
        match func {
            MeasureFn::Count => Some(self.rows as f64),
            MeasureFn::CountPresent => Some(self.present as f64),
            MeasureFn::Sum => Some(self.sum),
            MeasureFn::Avg => (self.numeric > 0).then(|| self.sum / self.numeric as f64),
            MeasureFn::Min => self.min,
            MeasureFn::Max => self.max,
            MeasureFn::Distinct => Some(self.distinct.len() as f64),
            MeasureFn::Ratio => None, // computed from other measures
        }
    }
}

/// Builds one summary table. `summary` comes from validated definitions, so its columns exist.
pub fn summarise(dataset: &Dataset, summary: &Summary, rows: &[Row]) -> SummaryTable {
    let mut s = Summariser::new(dataset, summary);
    for row in rows {
        s.add(row);
    }
    s.finish()
}

/// A summary table built a row at a time, so that rows need not be kept.
pub struct Summariser<'a> {
    summary: &'a Summary,
    group_idx: Vec<usize>,
    measure_idx: Vec<Option<usize>>,
    groups: BTreeMap<Vec<String>, Vec<Acc>>,
    total: Vec<Acc>,
    /// The current row's group, reused: a known group costs no allocation.
    key: Vec<String>,
}

impl<'a> Summariser<'a> {
    /// `summary` comes from validated definitions of `dataset`, so its columns exist.
    pub fn new(dataset: &Dataset, summary: &'a Summary) -> Self {
        let column = |c: &str| dataset.column(c).map(|(i, _)| i);
        Summariser {
            summary,
            group_idx: summary
                .group_by
                .iter()
                .map(|g| column(g).expect("validated group column"))
                .collect(),
            measure_idx: summary
                .measures
                .iter()
                .map(|m| m.column.as_deref().and_then(column))
                .collect(),
            groups: BTreeMap::new(),
            total: vec![Acc::default(); summary.measures.len()],
            key: vec![String::new(); summary.group_by.len()],
        }
    }

    pub fn add(&mut self, row: &Row) {
        let summary = self.summary;
        for (k, &i) in self.key.iter_mut().zip(&self.group_idx) {
            k.clear();
            match &row[i] {
                Some(v) => v.write_display(k),
                None => k.push_str(&summary.missing_group),
            }
        }
        if !self.groups.contains_key(self.key.as_slice()) {
            self.groups.insert(
                self.key.clone(),
                vec![Acc::default(); summary.measures.len()],
            );
        }
        let accs = self
            .groups
            .get_mut(self.key.as_slice())
            .expect("inserted above");
        for (m, (measure, idx)) in summary.measures.iter().zip(&self.measure_idx).enumerate() {
            let v = idx.and_then(|i| row[i].as_ref());
            accs[m].add(v, measure.func);
            self.total[m].add(v, measure.func);
        }
    }

    pub fn finish(self) -> SummaryTable {
        let summary = self.summary;
        let finish = |group: Vec<String>, accs: &[Acc]| {
            let mut values: Vec<Option<f64>> = summary
                .measures
                .iter()
                .zip(accs)
                .map(|(m, a)| a.value(m.func))
                .collect();
            for (i, m) in summary.measures.iter().enumerate() {
                if m.func != MeasureFn::Ratio {
                    continue;
                }
                let at = |label: &Option<String>| {
                    label
                        .as_ref()
                        .and_then(|l| summary.measures.iter().position(|x| &x.label == l))
                        .and_then(|j| values[j])
                };
                values[i] = match (at(&m.numerator), at(&m.denominator)) {
                    (Some(n), Some(d)) if d != 0.0 => Some(n / d),
                    _ => None,
                };
            }
            SummaryRow { group, values }
        };

        let mut total_label = vec![String::new(); self.group_idx.len()];
        if let Some(first) = total_label.first_mut() {
            *first = "Total".to_owned();
        }
        // Groups with no value (e.g. calls never routed to an agent) go last.
        let (missing, known): (Vec<_>, Vec<_>) = self
            .groups
            .into_iter()
            .partition(|(k, _)| k.iter().all(|v| *v == summary.missing_group));
        SummaryTable {
            title: summary.title.clone(),
            group_headers: summary.group_by.clone(),
            measure_headers: summary.measures.iter().map(|m| m.label.clone()).collect(),
            kinds: summary
                .measures
                .iter()
                .map(|m| match m.func {
                    MeasureFn::Count | MeasureFn::CountPresent | MeasureFn::Distinct => {
                        MeasureKind::Count
                    }
                    MeasureFn::Ratio => MeasureKind::Ratio,
                    _ => MeasureKind::Number,
                })
                .collect(),
            color_scale: summary.measures.iter().map(|m| m.color_scale).collect(),
            chart: summary.chart.as_ref().map(|c| TableChart {
                kind: c.kind,
                measures: c
                    .measures
                    .iter()
                    .filter_map(|l| summary.measures.iter().position(|m| &m.label == l))
                    .collect(),
                title: c.title.clone().unwrap_or_else(|| summary.title.clone()),
            }),
            rows: known
                .into_iter()
                .chain(missing)
                .map(|(k, a)| finish(k, &a))
                .collect(),
            total: finish(total_label, &self.total),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csv_ingest::parse_attachment;
    use crate::definitions::Definitions;

    #[test]
    fn groups_count_ratio_and_average_as_defined() {
        let defs = Definitions::parse(include_str!("../../reports.toml")).unwrap();
        let ds = &defs.datasets["ib_calls"];
        let text = "call_id,agent_id,queue,started_at,answered_at,wait_seconds\n\
            c1,A1,Sales,2024-03-14T09:00:00,2024-03-14T09:00:10,10\n\
            c2,A2,Sales,2024-03-14T09:05:00,,30\n\
            c3,A1,Billing,2024-03-14T09:06:00,2024-03-14T09:06:20,20\n\
            c4,,Billing,2024-03-14T09:07:00,,\n";
        let rows: Vec<Row> = parse_attachment(ds, text.as_bytes())
            .unwrap()
            .rows
            .into_iter()
            .map(|r| r.values)
            .collect();
        let report = &defs.reports["call_centre_daily"];
        let table = summarise(ds, &report.summaries[0], &rows);
        assert_eq!(table.rows.len(), 2);
        let billing = &table.rows[0];
        assert_eq!(billing.group, vec!["Billing"]);
        // Calls, Answered, Answer rate, Avg wait, Max wait, Agents
        assert_eq!(
            billing.values,
            vec![
                Some(2.0),
                Some(1.0),
                Some(0.5),
                Some(20.0),
                Some(20.0),
                Some(1.0)
            ]
        );
        assert_eq!(table.total.group, vec!["Total"]);
        assert_eq!(table.total.values[0], Some(4.0));
        assert_eq!(table.total.values[2], Some(0.5));
        assert_eq!(table.total.values[3], Some(20.0));
        assert_eq!(table.kinds[2], MeasureKind::Ratio);

        let per_agent = summarise(ds, &report.summaries[1], &rows);
        assert_eq!(per_agent.rows.last().unwrap().group[0], "(unrouted)");
    }
}
