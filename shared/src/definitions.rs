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

/// A column: where its value comes from (a header of the file, or derived from another column),
/// how the text is cleaned up (trim, lookup table, default), and its type.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ColumnType,
    #[serde(default)]
    pub required: bool,
    /// chrono format for date and datetime columns; ISO 8601 (with or without offset) when absent.
    #[serde(default)]
    pub format: Option<String>,
    /// The file's header for this column when it differs from `name` (a rename).
    #[serde(default)]
    pub source: Option<String>,
    /// Strip surrounding white space before anything else.
    #[serde(default)]
    pub trim: bool,
    /// Lookup table applied to the text before typing; text not in it is kept as it is.
    #[serde(default)]
    pub map: Option<BTreeMap<String, String>>,
    /// Text used when the field is empty (or the file lacks the column).
    #[serde(default)]
    pub default: Option<String>,
    /// Computed from another column instead of read from the file.
    #[serde(default)]
    pub derive: Option<Derive>,
}

impl Column {
    /// The header this column is read from (its `source`, else its name).
    pub fn header(&self) -> &str {
        self.source.as_deref().unwrap_or(&self.name)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Derive {
    pub from: String,
    #[serde(rename = "fn")]
    pub func: DeriveFn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeriveFn {
    /// Hour of day (0–23) of a datetime: type integer.
    Hour,
    /// The day of a datetime: type date.
    Date,
    /// Monday … Sunday of a date or datetime: type text.
    Weekday,
    /// Whether the source is not empty: type boolean.
    Present,
    /// The hour of a datetime as `09:00`: type text (sorts and reads as a time of day).
    HourOfDay,
}

impl DeriveFn {
    /// The type a derived column must be declared with.
    pub fn result_type(self) -> ColumnType {
        match self {
            DeriveFn::Hour => ColumnType::Integer,
            DeriveFn::Date => ColumnType::Date,
            DeriveFn::Weekday | DeriveFn::HourOfDay => ColumnType::Text,
            DeriveFn::Present => ColumnType::Boolean,
        }
    }
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
    /// Copied (`Cc`, visible) and blind-copied (`Bcc`, envelope only) recipients.
    #[serde(default)]
    pub cc: Vec<String>,
    #[serde(default)]
    pub bcc: Vec<String>,
    /// How the mail goes out: SES (default) or Microsoft Graph `sendMail` as the mailbox
    /// user `send_as`, for teams that must send from Outlook.
    #[serde(default)]
    pub transport: TransportKind,
    #[serde(default)]
    pub send_as: Option<String>,
    /// The mail's subject, a MiniJinja template (see `mail_template` for the variables), e.g.
    /// `{{ title }} for {{ period }}`.
    pub subject: String,
    /// The mail's plain-text and HTML bodies (MiniJinja templates; defaults when absent).
    #[serde(default)]
    pub body_text: Option<String>,
    #[serde(default)]
    pub body_html: Option<String>,
    /// What a scheduled run covers: the last complete day (default), ISO week or month, in
    /// the report's time zone. Run requests name any period.
    #[serde(default)]
    pub period: crate::period::PeriodKind,
    #[serde(default)]
    pub on_empty: OnEmpty,
    #[serde(default)]
    pub summaries: Vec<Summary>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TransportKind {
    /// SES v2 raw send from the mailer's verified identity (`CHARLIE_SENDER`).
    #[default]
    Ses,
    /// Microsoft Graph `sendMail` as the report's `send_as` mailbox user.
    Graph,
}

impl Report {
    /// The mail templates, as `mail_template` renders them.
    pub fn templates(&self) -> crate::mail_template::Templates<'_> {
        crate::mail_template::Templates {
            title: &self.title,
            time_zone: self.time_zone.0.name(),
            subject: &self.subject,
            body_text: self.body_text.as_deref(),
            body_html: self.body_html.as_deref(),
        }
    }
}

impl TransportKind {
    pub fn name(self) -> &'static str {
        match self {
            TransportKind::Ses => "ses",
            TransportKind::Graph => "graph",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnEmpty {
    /// Build nothing, send nothing; the run records `skipped_empty`.
    #[default]
    Skip,
    /// Send the recipients a short "no data for this period" mail without a workbook; the run
    /// records `notice_sent`.
    #[serde(alias = "send")]
    Notice,
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
    /// Groups always listed, in this order and before any other, even without rows (e.g.
    /// every hour of the day); only with a single `group_by` column.
    #[serde(default)]
    pub include: Vec<String>,
    /// A chart beside the table, over its groups (the totals row is left out).
    #[serde(default)]
    pub chart: Option<ChartDef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChartDef {
    pub kind: ChartKind,
    /// Labels of the measures drawn, one series each (a pie takes exactly one).
    pub measures: Vec<String>,
    /// The chart's title; the table's title when absent.
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub x_title: Option<String>,
    #[serde(default)]
    pub y_title: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChartKind {
    Column,
    Line,
    Pie,
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
    /// The dataset measured, when not the summary's: a summary joins its datasets' rows on the
    /// `group_by` columns, which each of them must have.
    #[serde(default)]
    pub dataset: Option<String>,
    /// The column measured (every fn but `count` and `ratio`).
    #[serde(default)]
    pub column: Option<String>,
    /// Only rows where this holds are measured.
    #[serde(default, rename = "where")]
    pub filter: Option<Filter>,
    /// For `ratio`: labels of two earlier measures.
    #[serde(default)]
    pub numerator: Option<String>,
    #[serde(default)]
    pub denominator: Option<String>,
    /// Adds a red-yellow-green colour scale over the measure's cells.
    #[serde(default)]
    pub color_scale: bool,
}

/// `where = { column = "answered_at" }` (the column is not empty) or
/// `where = { column = "result", equals = "CONNECTED" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    pub column: String,
    #[serde(default)]
    pub equals: Option<String>,
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
    /// The group's first non-empty value of `column`, as text (e.g. an agent's name).
    First,
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

/// One thing wrong with a definitions file, and the line where it is (1-based) when known.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "line {l}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// Everything wrong with a definitions file, one problem a line.
#[derive(Debug, thiserror::Error)]
#[error("invalid definitions:\n{}", .problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct DefinitionsError {
    pub problems: Vec<Problem>,
}

impl Definitions {
    /// Parses and checks the file: the result is safe to run with.
    pub fn parse(text: &str) -> Result<Self, DefinitionsError> {
        let defs: Definitions = toml::from_str(text).map_err(|e| DefinitionsError {
            problems: vec![Problem {
                line: e.span().map(|s| line_at(text, s.start)),
                message: e.message().trim_end().to_owned(),
            }],
        })?;
        let problems: Vec<Problem> = defs
            .problems()
            .into_iter()
            .map(|(at, message)| Problem {
                line: at.line(text),
                message,
            })
            .collect();
        if problems.is_empty() {
            Ok(defs)
        } else {
            Err(DefinitionsError { problems })
        }
    }

    fn problems(&self) -> Vec<(Where, String)> {
        let mut out: Vec<(Where, String)> = Vec::new();
        for (name, ds) in &self.datasets {
            let table = format!("datasets.{name}");
            let columns = format!("{table}.columns");
            let mut seen = HashSet::new();
            for (i, c) in ds.columns.iter().enumerate() {
                let at = || Where::key(&columns, i, "name");
                if !seen.insert(c.name.trim().to_ascii_lowercase()) {
                    out.push((
                        at(),
                        format!("dataset {name}: column {:?} is declared twice", c.name),
                    ));
                }
                if c.format.is_some() && !matches!(c.kind, ColumnType::Date | ColumnType::Datetime)
                {
                    out.push((Where::key(&columns, i, "format"), format!("dataset {name}: column {:?} has a format but is not a date or datetime", c.name)));
                }
                if let Some(d) = &c.derive {
                    let at = || Where::key(&columns, i, "derive");
                    match ds.column(&d.from) {
                        None => out.push((
                            at(),
                            format!(
                                "dataset {name}: column {:?} derives from unknown column {:?}",
                                c.name, d.from
                            ),
                        )),
                        Some((_, src)) if src.derive.is_some() => out.push((
                            at(),
                            format!(
                                "dataset {name}: column {:?} derives from {:?}, itself derived",
                                c.name, d.from
                            ),
                        )),
                        Some((_, src)) => {
                            let needs_time = matches!(d.func, DeriveFn::Hour | DeriveFn::Date);
                            if needs_time && src.kind != ColumnType::Datetime
                                || d.func == DeriveFn::Weekday
                                    && !matches!(src.kind, ColumnType::Date | ColumnType::Datetime)
                            {
                                out.push((at(), format!("dataset {name}: column {:?}: {:?} needs a date/datetime column, {:?} is {:?}", c.name, d.func, d.from, src.kind)));
                            }
                        }
                    }
                    if c.kind != d.func.result_type() {
                        out.push((
                            at(),
                            format!(
                                "dataset {name}: column {:?} derived with {:?} must have type {:?}",
                                c.name,
                                d.func,
                                d.func.result_type()
                            ),
                        ));
                    }
                    if c.source.is_some() {
                        out.push((at(), format!("dataset {name}: column {:?} is derived, so it cannot also have a source header", c.name)));
                    }
                }
            }
            if ds.key.is_empty() {
                out.push((
                    Where::key(&table, 0, "key"),
                    format!("dataset {name}: key needs at least one column"),
                ));
            }
            for k in &ds.key {
                if ds.column(k).is_none() {
                    out.push((
                        Where::key(&table, 0, "key"),
                        format!("dataset {name}: key column {k:?} is not declared in columns"),
                    ));
                }
            }
            match ds.column(&ds.date_column) {
                None => out.push((
                    Where::key(&table, 0, "date_column"),
                    format!(
                        "dataset {name}: date_column {:?} is not declared in columns",
                        ds.date_column
                    ),
                )),
                Some((_, c)) if !matches!(c.kind, ColumnType::Date | ColumnType::Datetime) => out
                    .push((
                        Where::key(&table, 0, "date_column"),
                        format!(
                            "dataset {name}: date_column {:?} must be of type date or datetime",
                            ds.date_column
                        ),
                    )),
                Some(_) => {}
            }
        }
        for (name, r) in &self.reports {
            let table = format!("reports.{name}");
            if r.datasets.is_empty() {
                out.push((
                    Where::key(&table, 0, "datasets"),
                    format!("report {name}: datasets is empty"),
                ));
            }
            for d in &r.datasets {
                if !self.datasets.contains_key(d) {
                    out.push((
                        Where::key(&table, 0, "datasets"),
                        format!("report {name}: unknown dataset {d:?}"),
                    ));
                }
            }
            if r.recipients.is_empty() {
                out.push((
                    Where::key(&table, 0, "recipients"),
                    format!("report {name}: recipients is empty"),
                ));
            }
            for (field, list) in [
                ("recipients", &r.recipients),
                ("cc", &r.cc),
                ("bcc", &r.bcc),
            ] {
                for rcpt in list {
                    if !looks_like_address(rcpt) {
                        out.push((
                            Where::key(&table, 0, field),
                            format!("report {name}: {field} entry {rcpt:?} is not a mail address"),
                        ));
                    }
                }
            }
            match (r.transport, r.send_as.as_deref()) {
                (TransportKind::Graph, None) => out.push((
                    Where::key(&table, 0, "transport"),
                    format!("report {name}: transport = \"graph\" needs send_as, the mailbox user to send as"),
                )),
                (TransportKind::Graph, Some(user)) if !looks_like_address(user) => out.push((
                    Where::key(&table, 0, "send_as"),
                    format!("report {name}: send_as {user:?} is not a mail address"),
                )),
                (TransportKind::Ses, Some(_)) => out.push((
                    Where::key(&table, 0, "send_as"),
                    format!("report {name}: send_as is only for transport = \"graph\" (SES sends from the deployment's sender)"),
                )),
                _ => {}
            }
            if let Err(e) = crate::mail_template::check(name, &r.templates()) {
                out.push((Where::key(&table, 0, e.part), e.to_string()));
            }
            let summaries = format!("{table}.summaries");
            for (si, s) in r.summaries.iter().enumerate() {
                let Some(ds) = self.datasets.get(&s.dataset) else {
                    out.push((
                        Where::key(&summaries, si, "dataset"),
                        format!(
                            "report {name}: summary {:?} uses unknown dataset {:?}",
                            s.title, s.dataset
                        ),
                    ));
                    continue;
                };
                if !r.datasets.contains(&s.dataset) {
                    out.push((
                        Where::key(&summaries, si, "dataset"),
                        format!("report {name}: summary {:?} uses dataset {:?} which the report does not list", s.title, s.dataset),
                    ));
                }
                // Every dataset the summary draws on must have the group columns.
                let mut used: Vec<&str> = vec![s.dataset.as_str()];
                for m in &s.measures {
                    if let Some(d) = &m.dataset
                        && !used.contains(&d.as_str())
                    {
                        used.push(d);
                    }
                }
                for g in &s.group_by {
                    for d in &used {
                        if self
                            .datasets
                            .get(*d)
                            .is_some_and(|ds| ds.column(g).is_none())
                        {
                            out.push((
                                Where::key(&summaries, si, "group_by"),
                                format!(
                                    "report {name}: summary {:?} groups by column {g:?}, which dataset {d} does not have",
                                    s.title
                                ),
                            ));
                        }
                    }
                }
                if !s.include.is_empty() && s.group_by.len() != 1 {
                    out.push((
                        Where::key(&summaries, si, "include"),
                        format!("report {name}: summary {:?} lists groups to include, which needs exactly one group_by column", s.title),
                    ));
                }
                let mut labels = HashSet::new();
                for m in &s.measures {
                    let at = || Where::value(&summaries, si, &m.label);
                    let ds = match &m.dataset {
                        None => ds,
                        Some(d) => match self.datasets.get(d) {
                            Some(other) if r.datasets.contains(d) => other,
                            _ => {
                                out.push((at(), format!("report {name}: measure {:?} uses dataset {d:?}, which the report does not list", m.label)));
                                continue;
                            }
                        },
                    };
                    let needs_column = !matches!(m.func, MeasureFn::Count | MeasureFn::Ratio);
                    match (&m.column, needs_column) {
                        (None, true) => out.push((
                            at(),
                            format!("report {name}: measure {:?} needs a column", m.label),
                        )),
                        (Some(c), _) if ds.column(c).is_none() => out.push((
                            at(),
                            format!(
                                "report {name}: measure {:?} uses unknown column {c:?}",
                                m.label
                            ),
                        )),
                        _ => {}
                    }
                    if let Some(f) = &m.filter
                        && ds.column(&f.column).is_none()
                    {
                        out.push((
                            at(),
                            format!(
                                "report {name}: measure {:?} filters on unknown column {:?}",
                                m.label, f.column
                            ),
                        ));
                    }
                    if m.func == MeasureFn::Ratio {
                        for part in [&m.numerator, &m.denominator] {
                            match part {
                                Some(l) if labels.contains(l.as_str()) => {}
                                Some(l) => out.push((at(), format!("report {name}: ratio {:?} refers to {l:?}, which is not an earlier measure", m.label))),
                                None => out.push((at(), format!("report {name}: ratio {:?} needs numerator and denominator", m.label))),
                            }
                        }
                    }
                    if !labels.insert(m.label.as_str()) {
                        out.push((
                            at(),
                            format!("report {name}: two measures are labelled {:?}", m.label),
                        ));
                    }
                }
                if let Some(chart) = &s.chart {
                    let at = || Where::key(&summaries, si, "chart");
                    let pie_ok = chart.kind != ChartKind::Pie || chart.measures.len() == 1;
                    if chart.measures.is_empty() || !pie_ok {
                        out.push((at(), format!("report {name}: the chart of {:?} needs measures (a pie exactly one)", s.title)));
                    }
                    for m in &chart.measures {
                        if !labels.contains(m.as_str()) {
                            out.push((
                                at(),
                                format!(
                                    "report {name}: the chart of {:?} draws unknown measure {m:?}",
                                    s.title
                                ),
                            ));
                        }
                    }
                }
            }
        }
        out
    }
}

pub(crate) fn looks_like_address(s: &str) -> bool {
    match s.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !s.contains(char::is_whitespace)
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        }
        None => false,
    }
}

/// The 1-based line holding byte `offset` of `text`.
fn line_at(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Where a problem is: the `nth` table with header path `table` (`[a.b]` or `[[a.b]]`), and in it
/// the line of `key = …` or the first line quoting `"value"`; the table's header line otherwise.
struct Where {
    table: String,
    nth: usize,
    key: Option<String>,
    value: Option<String>,
}

impl Where {
    fn key(table: &str, nth: usize, key: &str) -> Self {
        Where {
            table: table.to_owned(),
            nth,
            key: Some(key.to_owned()),
            value: None,
        }
    }

    fn value(table: &str, nth: usize, value: &str) -> Self {
        Where {
            table: table.to_owned(),
            nth,
            key: None,
            value: Some(value.to_owned()),
        }
    }

    fn line(&self, text: &str) -> Option<usize> {
        let mut occurrence = 0usize;
        let mut header_line = None;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.starts_with('[') {
                if header_line.is_some() {
                    break; // the next table starts: the key was not in ours
                }
                let path: String = line
                    .trim_start_matches('[')
                    .split(']')
                    .next()
                    .unwrap_or_default()
                    .chars()
                    .filter(|c| !c.is_whitespace() && *c != '"')
                    .collect();
                if path == self.table {
                    if occurrence == self.nth {
                        header_line = Some(i + 1);
                    }
                    occurrence += 1;
                }
                continue;
            }
            if header_line.is_none() || line.starts_with('#') {
                continue;
            }
            if let Some(k) = &self.key
                && line
                    .strip_prefix(k.as_str())
                    .is_some_and(|rest| rest.trim_start().starts_with('='))
            {
                return Some(i + 1);
            }
            if let Some(v) = &self.value
                && line.contains(&format!("\"{v}\""))
            {
                return Some(i + 1);
            }
        }
        header_line
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
            .replace(
                "datasets = [\"ib_calls\", \"dials\"]",
                "datasets = [\"ib_call\", \"dials\"]",
            );
        let err = Definitions::parse(&text).unwrap_err();
        let all = err.to_string();
        assert!(
            all.contains("key column \"call_uuid\" is not declared"),
            "{all}"
        );
        assert!(all.contains("unknown dataset \"ib_call\""), "{all}");
    }

    #[test]
    fn problems_name_their_line() {
        let text = SHIPPED.replace("key = [\"call_id\"]", "key = [\"call_uuid\"]");
        let line = SHIPPED
            .lines()
            .position(|l| l.starts_with("key = [\"call_id\"]"))
            .unwrap()
            + 1;
        let err = Definitions::parse(&text).unwrap_err();
        assert_eq!(err.problems[0].line, Some(line), "{err}");
        let bad_type = SHIPPED.replacen("type = \"integer\"", "type = \"int\"", 1);
        let err = Definitions::parse(&bad_type).unwrap_err();
        let line = SHIPPED
            .lines()
            .position(|l| l.contains("type = \"integer\""))
            .unwrap()
            + 1;
        assert_eq!(err.problems[0].line, Some(line), "{err}");
        assert!(err.to_string().contains("int"), "{err}");
    }

    #[test]
    fn a_bad_regex_is_reported() {
        let text = SHIPPED.replacen("^ib_calls.*\\\\.csv$", "^ib_calls(.csv", 1);
        let err = Definitions::parse(&text).unwrap_err().to_string();
        assert!(err.contains("bad regex"), "{err}");
    }

    #[test]
    fn derived_columns_must_fit_their_source() {
        let text = format!(
            "{SHIPPED}\n[[datasets.ib_calls.columns]]\nname = \"call_hour\"\ntype = \"integer\"\nderive = {{ from = \"queue\", fn = \"hour\" }}\n"
        );
        let err = Definitions::parse(&text).unwrap_err().to_string();
        assert!(err.contains("call_hour") && err.contains("Hour"), "{err}");
    }

    #[test]
    fn a_chart_must_draw_known_measures() {
        let text = SHIPPED.replacen(
            "measures = [\"Inbound calls\", \"Outbound dials\"]",
            "measures = [\"Inbound calls\", \"Outbound dial\"]",
            1,
        );
        assert_ne!(text, SHIPPED, "the shipped file charts calls and dials");
        let err = Definitions::parse(&text).unwrap_err().to_string();
        assert!(
            err.contains("draws unknown measure \"Outbound dial\""),
            "{err}"
        );
    }

    #[test]
    fn measures_from_other_datasets_are_checked_against_them() {
        let errors = |from: &str, to: &str| {
            let text = SHIPPED.replacen(from, to, 1);
            assert_ne!(text, SHIPPED, "{from}");
            Definitions::parse(&text).unwrap_err().to_string()
        };
        // Dials have no queue: a per-queue table cannot count them.
        let err = errors(
            "{ label = \"Max wait (s)\", fn = \"max\", column = \"wait_seconds\" },",
            "{ label = \"Max wait (s)\", fn = \"count\", dataset = \"dials\" },",
        );
        assert!(
            err.contains("groups by column \"queue\", which dataset dials does not have"),
            "{err}"
        );
        let err = errors(
            "where = { column = \"result\"",
            "where = { column = \"outcome\"",
        );
        assert!(
            err.contains("filters on unknown column \"outcome\""),
            "{err}"
        );
        // The weekly report does not list dials.
        let err = errors(
            "  { label = \"Avg wait (s)\", fn = \"avg\", column = \"wait_seconds\" },\n]\n",
            "  { label = \"Avg wait (s)\", fn = \"avg\", column = \"wait_seconds\" },\n  { label = \"Dials\", fn = \"count\", dataset = \"dials\" },\n]\n",
        );
        assert!(
            err.contains(
                "measure \"Dials\" uses dataset \"dials\", which the report does not list"
            ),
            "{err}"
        );
        let err = errors(
            "group_by = [\"hour\"]",
            "group_by = [\"hour\", \"agent_id\"]",
        );
        assert!(err.contains("needs exactly one group_by column"), "{err}");
    }

    #[test]
    fn a_bad_time_zone_names_itself() {
        let text = SHIPPED.replacen("Europe/London", "Europe/Londn", 1);
        let err = Definitions::parse(&text).unwrap_err().to_string();
        assert!(err.contains("Europe/Londn"), "{err}");
    }
}
