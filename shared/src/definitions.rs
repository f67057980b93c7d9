//! `reports.toml`: datasets (kinds of CSV export) and reports (workbooks built from them).
//! New kinds of export and new reports are configuration, not code.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use chrono_tz::Tz;
use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Deserializer};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definitions {
    #[serde(default)]
    pub datasets: BTreeMap<String, Dataset>,
    #[serde(default)]
    pub reports: BTreeMap<String, Report>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dataset {
    #[serde(default)]
    pub description: String,
    pub time_zone: TimeZone,
    /// Columns whose values identify a row; a row with the same key is stored once.
    pub key: Vec<String>,
    /// The datetime (or date) column that decides which day a row belongs to.
    pub date_column: String,
    #[serde(default)]
    pub on_duplicate: OnDuplicate,
    #[serde(rename = "match")]
    pub matcher: MatchRule,
    #[serde(default)]
    pub csv: CsvOptions,
    pub columns: Vec<Column>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnDuplicate {
    /// The first stored occurrence of a key wins; later ones count as duplicates.
    #[default]
    KeepFirst,
    /// A later occurrence replaces the stored row.
    Replace,
}

/// How a mail is recognised as carrying this dataset. Patterns are case-insensitive regexes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchRule {
    #[serde(default)]
    pub sender: Option<Pattern>,
    #[serde(default)]
    pub subject: Option<Pattern>,
    pub attachment: Pattern,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvOptions {
    /// One character; sniffed among `,` `;` tab `|` when absent.
    #[serde(default)]
    pub delimiter: Option<char>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ColumnType,
    #[serde(default)]
    pub required: bool,
    /// chrono format for date and datetime columns; ISO 8601 when absent.
    #[serde(default)]
    pub format: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnType {
    Text,
    Integer,
    Decimal,
    Boolean,
    Date,
    Datetime,
    /// Seconds, given as a number or `hh:mm:ss`; stored as whole seconds.
    Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    pub title: String,
    pub datasets: Vec<String>,
    pub time_zone: TimeZone,
    /// EventBridge Scheduler expression (also given to Terraform's `reports` variable).
    pub schedule: String,
    pub recipients: Vec<String>,
    /// `{report}`, `{title}` and `{period}` are replaced.
    pub subject: String,
    #[serde(default)]
    pub on_empty: OnEmpty,
    #[serde(default)]
    pub summaries: Vec<Summary>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnEmpty {
    /// Build nothing, send nothing; the run records that the period was empty.
    #[default]
    Skip,
    /// Send the workbook anyway; its About sheet says the period had no rows.
    Send,
}

/// A summary table: rows grouped by columns, one cell per measure.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Summary {
    pub title: String,
    pub dataset: String,
    pub group_by: Vec<String>,
    pub measures: Vec<Measure>,
    /// Label of the group for rows whose group columns are empty.
    #[serde(default = "default_missing_group")]
    pub missing_group: String,
}

fn default_missing_group() -> String {
    "(none)".to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Measure {
    pub label: String,
    #[serde(rename = "fn")]
    pub func: MeasureFn,
    /// The column measured (every fn but `count` and `ratio`).
    #[serde(default)]
    pub column: Option<String>,
    /// For `ratio`: labels of two earlier measures.
    #[serde(default)]
    pub numerator: Option<String>,
    #[serde(default)]
    pub denominator: Option<String>,
    /// Adds a red-yellow-green colour scale over the measure's cells.
    #[serde(default)]
    pub color_scale: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MeasureFn {
    /// Rows in the group.
    Count,
    /// Rows whose `column` is not empty.
    CountPresent,
    Sum,
    Avg,
    Min,
    Max,
    Distinct,
    /// numerator / denominator, shown as a percentage.
    Ratio,
}

/// A case-insensitive regex from the file.
#[derive(Clone)]
pub struct Pattern(pub Regex);

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}/i", self.0.as_str())
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        RegexBuilder::new(&raw)
            .case_insensitive(true)
            .build()
            .map(Pattern)
            .map_err(|e| serde::de::Error::custom(format!("bad regex {raw:?}: {e}")))
    }
}

impl Pattern {
    pub fn is_match(&self, text: &str) -> bool {
        self.0.is_match(text)
    }
}

/// An IANA time zone name from the file.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimeZone(pub Tz);

impl<'de> Deserialize<'de> for TimeZone {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        raw.parse::<Tz>().map(TimeZone).map_err(|_| {
            serde::de::Error::custom(format!("bad time zone {raw:?}: not an IANA name"))
        })
    }
}

/// Everything wrong with a definitions file, one problem a line.
#[derive(Debug, thiserror::Error)]
#[error("invalid definitions:\n{}", .problems.join("\n"))]
pub struct DefinitionsError {
    pub problems: Vec<String>,
}

impl Definitions {
    /// Parses and checks the file: the result is safe to run with.
    pub fn parse(text: &str) -> Result<Self, DefinitionsError> {
        let defs: Definitions = toml::from_str(text).map_err(|e| DefinitionsError {
            problems: vec![e.to_string().trim_end().to_owned()],
        })?;
        let problems = defs.problems();
        if problems.is_empty() {
            Ok(defs)
        } else {
            Err(DefinitionsError { problems })
        }
    }

    fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (name, ds) in &self.datasets {
            let declared: HashSet<&str> = ds.columns.iter().map(|c| c.name.as_str()).collect();
            if declared.len() != ds.columns.len() {
                out.push(format!("dataset {name}: a column is declared twice"));
            }
            if ds.key.is_empty() {
                out.push(format!("dataset {name}: key needs at least one column"));
            }
            for k in &ds.key {
                if !declared.contains(k.as_str()) {
                    out.push(format!(
                        "dataset {name}: key column {k:?} is not declared in columns"
                    ));
                }
            }
            match ds.column(&ds.date_column) {
                None => out.push(format!(
                    "dataset {name}: date_column {:?} is not declared in columns",
                    ds.date_column
                )),
                Some((_, c)) if !matches!(c.kind, ColumnType::Date | ColumnType::Datetime) => out
                    .push(format!(
                        "dataset {name}: date_column {:?} must be of type date or datetime",
                        ds.date_column
                    )),
                Some(_) => {}
            }
        }
        for (name, r) in &self.reports {
            if r.datasets.is_empty() {
                out.push(format!("report {name}: datasets is empty"));
            }
            for d in &r.datasets {
                if !self.datasets.contains_key(d) {
                    out.push(format!("report {name}: unknown dataset {d:?}"));
                }
            }
            if r.recipients.is_empty() {
                out.push(format!("report {name}: recipients is empty"));
            }
            for s in &r.summaries {
                let Some(ds) = self.datasets.get(&s.dataset) else {
                    out.push(format!(
                        "report {name}: summary {:?} uses unknown dataset {:?}",
                        s.title, s.dataset
                    ));
                    continue;
                };
                if !r.datasets.contains(&s.dataset) {
                    out.push(format!(
                        "report {name}: summary {:?} uses dataset {:?} which the report does not list",
                        s.title, s.dataset
                    ));
                }
                for g in &s.group_by {
                    if ds.column(g).is_none() {
                        out.push(format!(
                            "report {name}: summary {:?} groups by unknown column {g:?}",
                            s.title
                        ));
                    }
                }
                let mut labels = HashSet::new();
                for m in &s.measures {
                    let needs_column = !matches!(m.func, MeasureFn::Count | MeasureFn::Ratio);
                    match (&m.column, needs_column) {
                        (None, true) => out.push(format!(
                            "report {name}: measure {:?} needs a column",
                            m.label
                        )),
                        (Some(c), _) if ds.column(c).is_none() => out.push(format!(
                            "report {name}: measure {:?} uses unknown column {c:?}",
                            m.label
                        )),
                        _ => {}
                    }
                    if m.func == MeasureFn::Ratio {
                        for part in [&m.numerator, &m.denominator] {
                            match part {
                                Some(l) if labels.contains(l.as_str()) => {}
                                Some(l) => out.push(format!(
                                    "report {name}: ratio {:?} refers to {l:?}, which is not an earlier measure",
                                    m.label
                                )),
                                None => out.push(format!(
                                    "report {name}: ratio {:?} needs numerator and denominator",
                                    m.label
                                )),
                            }
                        }
                    }
                    labels.insert(m.label.as_str());
                }
            }
        }
        out
    }
}

impl Dataset {
    /// The declared column named `name` (ignoring case and surrounding spaces) and its index.
    pub fn column(&self, name: &str) -> Option<(usize, &Column)> {
        let wanted = name.trim();
        self.columns
            .iter()
            .enumerate()
            .find(|(_, c)| c.name.trim().eq_ignore_ascii_case(wanted))
    }

    /// Whether a mail's attachment belongs to this dataset.
    pub fn matches(&self, sender: &str, subject: &str, attachment_name: &str) -> bool {
        self.matcher
            .sender
            .as_ref()
            .is_none_or(|p| p.is_match(sender))
            && self
                .matcher
                .subject
                .as_ref()
                .is_none_or(|p| p.is_match(subject))
            && self.matcher.attachment.is_match(attachment_name)
    }
}

impl Report {
    pub fn subject_for(&self, report_name: &str, period: &str) -> String {
        self.subject
            .replace("{report}", report_name)
            .replace("{title}", &self.title)
            .replace("{period}", period)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: &str = include_str!("../../reports.toml");

    #[test]
    fn the_shipped_definitions_are_valid() {
        let defs = Definitions::parse(SHIPPED).unwrap();
        assert!(defs.datasets.contains_key("ib_calls"));
        assert!(defs.reports.contains_key("call_centre_daily"));
    }

    #[test]
    fn attachments_match_case_insensitively_with_several_dots() {
        let defs = Definitions::parse(SHIPPED).unwrap();
        let ib = &defs.datasets["ib_calls"];
        assert!(ib.matches(
            "exports@dialer.example",
            "IB calls export",
            "IB_CALLS_2024.03.14.final.CSV"
        ));
        assert!(!ib.matches("exports@dialer.example", "IB calls export", "notes.txt"));
        assert!(!ib.matches("someone@else.example", "IB calls export", "ib_calls.csv"));
    }

    #[test]
    fn undeclared_key_and_unknown_dataset_are_reported_together() {
        let text = SHIPPED
            .replace("key = [\"call_id\"]", "key = [\"call_uuid\"]")
            .replace("datasets = [\"ib_calls\"]", "datasets = [\"ib_call\"]");
        let err = Definitions::parse(&text).unwrap_err();
        let all = err.problems.join("\n");
        assert!(
            all.contains("key column \"call_uuid\" is not declared"),
            "{all}"
        );
        assert!(all.contains("unknown dataset \"ib_call\""), "{all}");
    }

    #[test]
    fn a_bad_time_zone_names_itself() {
        let text = SHIPPED.replacen("Europe/London", "Europe/Londn", 1);
        let err = Definitions::parse(&text).unwrap_err().to_string();
        assert!(err.contains("Europe/Londn"), "{err}");
    }
}
