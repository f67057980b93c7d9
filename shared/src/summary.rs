//! Summary tables: rows grouped by columns, with measures per group and a total. A summary may
//! draw on several datasets, joined on its group columns (calls and dials per agent, say).

use std::collections::{BTreeMap, HashSet};

use crate::definitions::{ChartKind, ColumnType, Dataset, MeasureFn, Summary};
use crate::value::{Row, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeasureKind {
    /// A whole count (rows, present values, distinct values).
    Count,
    /// A number in the measured column's units.
    Number,
    /// A fraction, shown as a percentage.
    Ratio,
    /// Text (`first`).
    Text,
}

#[derive(Debug, Clone, PartialEq)]
pub enum MeasureValue {
    Number(f64),
    Text(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct SummaryRow {
    pub group: Vec<String>,
    /// One per measure; `None` where it has no value (average of nothing, ratio over zero).
    pub values: Vec<Option<MeasureValue>>,
}

impl SummaryRow {
    /// Measure `m` when it is a number.
    pub fn number(&self, m: usize) -> Option<f64> {
        match self.values.get(m)? {
            Some(MeasureValue::Number(x)) => Some(*x),
            _ => None,
        }
    }
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
    pub x_title: Option<String>,
    pub y_title: Option<String>,
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
    first: Option<String>,
}

impl Acc {
    fn add(&mut self, v: Option<&Value>, func: MeasureFn) {
        self.rows += 1;
        let Some(v) = v else { return };
        self.present += 1;
        match func {
            MeasureFn::Distinct => {
                self.distinct.insert(v.display());
            }
            MeasureFn::First => {
                if self.first.is_none() {
                    self.first = Some(v.display());
                }
            }
            _ => {
                if let Some(x) = v.as_f64() {
                    self.sum += x;
                    self.numeric += 1;
                    self.min = Some(self.min.map_or(x, |m| m.min(x)));
                    self.max = Some(self.max.map_or(x, |m| m.max(x)));
                }
            }
        }
    }

    fn value(&self, func: MeasureFn) -> Option<MeasureValue> {
        let n = match func {
            MeasureFn::Count => Some(self.rows as f64),
            MeasureFn::CountPresent => Some(self.present as f64),
            MeasureFn::Sum => Some(self.sum),
            MeasureFn::Avg => (self.numeric > 0).then(|| self.sum / self.numeric as f64),
            MeasureFn::Min => self.min,
            MeasureFn::Max => self.max,
            MeasureFn::Distinct => Some(self.distinct.len() as f64),
            MeasureFn::Ratio => None, // computed from other measures
            MeasureFn::First => return self.first.clone().map(MeasureValue::Text),
        };
        n.map(MeasureValue::Number)
    }
}

/// Builds one summary table over one dataset's rows (every measure must be of that dataset).
pub fn summarise(dataset: &Dataset, summary: &Summary, rows: &[Row]) -> SummaryTable {
    let mut s = Summariser::new(&[(&summary.dataset, dataset)], summary);
    let plan = s
        .plan_for(&summary.dataset)
        .expect("the summary's own dataset");
    for row in rows {
        s.add(plan, row);
    }
    s.finish()
}

/// How a dataset's rows feed a summary: where its group columns are, and which measures it
/// feeds with which column and filter.
struct Plan<'a> {
    dataset: String,
    group_idx: Vec<usize>,
    measures: Vec<MeasurePlan<'a>>,
}

struct MeasurePlan<'a> {
    measure: usize,
    column: Option<usize>,
    /// Column, and the text it must equal (else: must be present).
    filter: Option<(usize, Option<&'a str>)>,
}

/// A summary table built a row at a time, so that rows need not be kept.
pub struct Summariser<'a> {
    summary: &'a Summary,
    plans: Vec<Plan<'a>>,
    kinds: Vec<MeasureKind>,
    groups: BTreeMap<Vec<String>, Vec<Acc>>,
    total: Vec<Acc>,
    /// The current row's group, reused: a known group costs no allocation.
    key: Vec<String>,
}

impl<'a> Summariser<'a> {
    /// `datasets`: the report's datasets (validated definitions: every column named exists).
    pub fn new(datasets: &[(&str, &Dataset)], summary: &'a Summary) -> Self {
        let mut plans = Vec::new();
        for &(name, dataset) in datasets {
            let column = |c: &str| dataset.column(c).map(|(i, _)| i);
            let measures: Vec<MeasurePlan> = summary
                .measures
                .iter()
                .enumerate()
                .filter(|(_, m)| m.dataset.as_deref().unwrap_or(&summary.dataset) == name)
                .map(|(i, m)| MeasurePlan {
                    measure: i,
                    column: m.column.as_deref().and_then(column),
                    filter: m.filter.as_ref().map(|f| {
                        (
                            column(&f.column).expect("validated filter column"),
                            f.equals.as_deref(),
                        )
                    }),
                })
                .collect();
            if measures.is_empty() && name != summary.dataset {
                continue;
            }
            plans.push(Plan {
                dataset: name.to_owned(),
                group_idx: summary
                    .group_by
                    .iter()
                    .map(|g| column(g).expect("validated group column"))
                    .collect(),
                measures,
            });
        }
        // Sums, minima and maxima of whole numbers are whole numbers.
        let kinds = summary
            .measures
            .iter()
            .map(|m| match m.func {
                MeasureFn::Count | MeasureFn::CountPresent | MeasureFn::Distinct => {
                    MeasureKind::Count
                }
                MeasureFn::Ratio => MeasureKind::Ratio,
                MeasureFn::First => MeasureKind::Text,
                MeasureFn::Sum | MeasureFn::Min | MeasureFn::Max => {
                    let dataset = m.dataset.as_deref().unwrap_or(&summary.dataset);
                    let whole = datasets
                        .iter()
                        .find(|(n, _)| *n == dataset)
                        .and_then(|(_, d)| d.column(m.column.as_deref()?))
                        .is_some_and(|(_, c)| {
                            matches!(c.kind, ColumnType::Integer | ColumnType::Duration)
                        });
                    if whole {
                        MeasureKind::Count
                    } else {
                        MeasureKind::Number
                    }
                }
                MeasureFn::Avg => MeasureKind::Number,
            })
            .collect();
        let fresh = || vec![Acc::default(); summary.measures.len()];
        let mut groups = BTreeMap::new();
        for g in &summary.include {
            groups.insert(vec![g.clone()], fresh());
        }
        Summariser {
            summary,
            plans,
            kinds,
            groups,
            total: fresh(),
            key: vec![String::new(); summary.group_by.len()],
        }
    }

    /// The plan for rows of `dataset`, if the summary draws on it.
    pub fn plan_for(&self, dataset: &str) -> Option<usize> {
        self.plans.iter().position(|p| p.dataset == dataset)
    }

    /// Adds a row of the dataset of `plan` (from [`Summariser::plan_for`]).
    pub fn add(&mut self, plan: usize, row: &Row) {
        let summary = self.summary;
        let plan = &self.plans[plan];
        for (k, &i) in self.key.iter_mut().zip(&plan.group_idx) {
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
        for mp in &plan.measures {
            if let Some((col, equals)) = mp.filter {
                let keep = match (&row[col], equals) {
                    (None, _) => false,
                    (Some(_), None) => true,
                    (Some(Value::Text(t)), Some(e)) => t == e,
                    (Some(v), Some(e)) => v.display() == e,
                };
                if !keep {
                    continue;
                }
            }
            let v = mp.column.and_then(|i| row[i].as_ref());
            let func = summary.measures[mp.measure].func;
            accs[mp.measure].add(v, func);
            self.total[mp.measure].add(v, func);
        }
    }

    pub fn finish(self) -> SummaryTable {
        let summary = self.summary;
        let finish = |group: Vec<String>, accs: &[Acc], total: bool| {
            let mut values: Vec<Option<MeasureValue>> = summary
                .measures
                .iter()
                .zip(accs)
                .map(|(m, a)| match m.func {
                    // A total has no "first" value.
                    MeasureFn::First if total => None,
                    f => a.value(f),
                })
                .collect();
            for (i, m) in summary.measures.iter().enumerate() {
                if m.func != MeasureFn::Ratio {
                    continue;
                }
                let at = |label: &Option<String>| {
                    let j = label
                        .as_ref()
                        .and_then(|l| summary.measures.iter().position(|x| &x.label == l))?;
                    match values[j] {
                        Some(MeasureValue::Number(x)) => Some(x),
                        _ => None,
                    }
                };
                values[i] = match (at(&m.numerator), at(&m.denominator)) {
                    (Some(n), Some(d)) if d != 0.0 => Some(MeasureValue::Number(n / d)),
                    _ => None,
                };
            }
            SummaryRow { group, values }
        };

        let mut total_label = vec![String::new(); summary.group_by.len()];
        if let Some(first) = total_label.first_mut() {
            *first = "Total".to_owned();
        }
        // Included groups first, in their order; then the others; groups with no value (e.g.
        // calls never routed to an agent) last.
        let mut groups = self.groups;
        let included: Vec<(Vec<String>, Vec<Acc>)> = summary
            .include
            .iter()
            .filter_map(|g| {
                let k = vec![g.clone()];
                groups.remove(&k).map(|a| (k, a))
            })
            .collect();
        let (missing, known): (Vec<_>, Vec<_>) = groups
            .into_iter()
            .partition(|(k, _)| k.iter().all(|v| *v == summary.missing_group));
        SummaryTable {
            title: summary.title.clone(),
            group_headers: summary.group_by.clone(),
            measure_headers: summary.measures.iter().map(|m| m.label.clone()).collect(),
            kinds: self.kinds,
            color_scale: summary.measures.iter().map(|m| m.color_scale).collect(),
            chart: summary.chart.as_ref().map(|c| TableChart {
                kind: c.kind,
                measures: c
                    .measures
                    .iter()
                    .filter_map(|l| summary.measures.iter().position(|m| &m.label == l))
                    .collect(),
                title: c.title.clone().unwrap_or_else(|| summary.title.clone()),
                x_title: c.x_title.clone(),
                y_title: c.y_title.clone(),
            }),
            rows: included
                .into_iter()
                .chain(known)
                .chain(missing)
                .map(|(k, a)| finish(k, &a, false))
                .collect(),
            total: finish(total_label, &self.total, true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csv_ingest::{Origin, parse_attachment};
    use crate::definitions::Definitions;

    fn rows(defs: &Definitions, dataset: &str, text: &str) -> Vec<Row> {
        parse_attachment(&defs.datasets[dataset], text.as_bytes(), &Origin::default())
            .unwrap()
            .rows
            .into_iter()
            .map(|r| r.values)
            .collect()
    }

    const CALLS: &str = "call_id,agent_id,agent_name,queue,started_at,answered_at,duration_seconds,wait_seconds\n\
        c1,A1,Ann,Sales,2024-03-14T09:00:00,2024-03-14T09:00:10,100,10\n\
        c2,A2,Bob,Sales,2024-03-14T09:05:00,,0,30\n\
        c3,A1,Ann,Billing,2024-03-14T10:06:00,2024-03-14T10:06:20,300,20\n\
        c4,,,Billing,2024-03-14T10:07:00,,0,\n";
    const DIALS: &str = "dial_id,agent_id,campaign,number,dialed_at,result,talk_seconds\n\
        1,A1,Renewals,0049301234567,2024-03-14T10:00:00,CONNECTED,60\n\
        2,A1,Renewals,0049301234568,2024-03-14T10:10:00,NO_ANSWER,\n\
        3,A3,Renewals,0049301234569,2024-03-14T23:10:00,CONNECTED,40\n";

    /// A summary of the shipped report over the sample calls and dials, as the workbook builds it.
    fn table(index: usize) -> SummaryTable {
        let defs = Definitions::parse(include_str!("../../reports.toml")).unwrap();
        let report = &defs.reports["call_centre_daily"];
        let datasets = [
            ("ib_calls", &defs.datasets["ib_calls"]),
            ("dials", &defs.datasets["dials"]),
        ];
        let mut s = Summariser::new(&datasets, &report.summaries[index]);
        for (name, text) in [("ib_calls", CALLS), ("dials", DIALS)] {
            if let Some(plan) = s.plan_for(name) {
                for row in rows(&defs, name, text) {
                    s.add(plan, &row);
                }
            }
        }
        s.finish()
    }

    fn num(x: f64) -> Option<MeasureValue> {
        Some(MeasureValue::Number(x))
    }

    #[test]
    fn every_hour_is_listed_and_calls_and_dials_meet_on_it() {
        let hourly = table(0);
        assert_eq!(hourly.rows.len(), 24, "00:00 to 23:00, empty hours too");
        assert_eq!(hourly.rows[0].group, vec!["00:00"]);
        // Inbound calls, Answered, Answer rate, Avg wait, Outbound dials
        assert_eq!(
            hourly.rows[0].values,
            vec![num(0.0), num(0.0), None, None, num(0.0)]
        );
        assert_eq!(
            hourly.rows[9].values,
            vec![num(2.0), num(1.0), num(0.5), num(20.0), num(0.0)]
        );
        assert_eq!(
            hourly.rows[10].values,
            vec![num(2.0), num(1.0), num(0.5), num(20.0), num(2.0)]
        );
        assert_eq!(hourly.rows[23].number(4), Some(1.0));
        assert_eq!(hourly.total.number(0), Some(4.0));
        assert_eq!(hourly.total.number(4), Some(3.0));
        let chart = hourly.chart.unwrap();
        assert_eq!(chart.measures, vec![0, 4]);
        assert_eq!(chart.x_title.as_deref(), Some("Hour of day"));
    }

    #[test]
    fn agents_join_calls_and_dials_with_filtered_measures_and_unrouted_last() {
        let agents = table(1);
        let groups: Vec<&str> = agents.rows.iter().map(|r| r.group[0].as_str()).collect();
        assert_eq!(groups, vec!["A1", "A2", "A3", "(unrouted)"]);
        let a1 = &agents.rows[0];
        // Agent name, Calls, Answered, Answer rate, Avg wait, Avg duration (answered only),
        // Dials, Connects (result = CONNECTED), Talk time
        assert_eq!(
            a1.values,
            vec![
                Some(MeasureValue::Text("Ann".into())),
                num(2.0),
                num(2.0),
                num(1.0),
                num(15.0),
                num(200.0),
                num(2.0),
                num(1.0),
                num(60.0),
            ]
        );
        let a2 = &agents.rows[1];
        assert_eq!(a2.number(5), None, "no answered call: no average duration");
        assert_eq!(a2.number(6), Some(0.0), "no dials");
        let a3 = &agents.rows[2];
        assert_eq!(a3.values[0], None, "an agent with dials only has no name");
        assert_eq!((a3.number(1), a3.number(7)), (Some(0.0), Some(1.0)));
        assert_eq!(agents.total.values[0], None, "a total has no first name");
        assert_eq!(agents.total.number(7), Some(2.0));
        assert_eq!(agents.kinds[0], MeasureKind::Text);
        assert_eq!(agents.kinds[3], MeasureKind::Ratio);
        assert_eq!(agents.kinds[4], MeasureKind::Number, "an average");
        assert_eq!(
            agents.kinds[8],
            MeasureKind::Count,
            "a sum of whole seconds"
        );
    }

    #[test]
    fn a_single_dataset_summary_groups_counts_and_averages() {
        let defs = Definitions::parse(include_str!("../../reports.toml")).unwrap();
        let ds = &defs.datasets["ib_calls"];
        let report = &defs.reports["call_centre_daily"];
        let queues = summarise(ds, &report.summaries[2], &rows(&defs, "ib_calls", CALLS));
        assert_eq!(queues.rows.len(), 2);
        assert_eq!(queues.rows[0].group, vec!["Billing"]);
        // Calls, Answered, Answer rate, Avg wait, Max wait
        assert_eq!(
            queues.rows[0].values,
            vec![num(2.0), num(1.0), num(0.5), num(20.0), num(20.0)]
        );
        assert_eq!(queues.total.group, vec!["Total"]);
        assert_eq!(queues.total.values[0], num(4.0));
        assert_eq!(queues.total.values[3], num(20.0));
    }
}
