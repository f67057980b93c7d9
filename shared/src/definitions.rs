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
    /// Defaults for every dataset's `limits`.
    #[serde(default)]
    pub limits: LimitSettings,
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
    /// The datetime (or date) column that decides which day a row belongs to; or, instead,
    /// `date` (see [`DateSetting`]).
    #[serde(default)]
    pub date_column: Option<String>,
    /// Where a row's day comes from when it is not a column: `date = "received"` (the mail's
    /// received time, in the dataset's time zone) or
    /// `date = { from = "file_name", pattern = "(\\d{4}-\\d{2}-\\d{2})" }`.
    #[serde(default)]
    pub date: Option<DateSetting>,
    /// Bounds on what one attachment may hold; unset ones come from the top-level `[limits]`.
    #[serde(default)]
    pub limits: LimitSettings,
    /// The limits in force (this dataset's, else the file's, else the defaults); set by
    /// [`Definitions::parse`].
    #[serde(skip)]
    pub effective_limits: Limits,
    #[serde(default)]
    pub on_duplicate: OnDuplicate,
    #[serde(rename = "match")]
    pub matcher: MatchRule,
    /// Accept a mail only when its `Authentication-Results` show DMARC (or SPF and DKIM) pass
    /// for the sender's domain (see `sender_auth`); others are recorded as ignored, with why.
    #[serde(default)]
    pub require_authenticated_sender: bool,
    #[serde(default)]
    pub csv: CsvOptions,
    pub columns: Vec<Column>,
    /// Days a row, its raw file and a quarantined file are kept after the row's day (absent:
    /// kept until deleted by hand). Rows expire by DynamoDB's TTL (`expires_at`, written with
    /// each row) or the daily retention sweep (PostgreSQL); files by the bucket's lifecycle
    /// rules on `raw/{dataset}/` and `quarantine/{dataset}/`, which Terraform reads from
    /// `charlie config infra`.
    #[serde(default)]
    pub retain_days: Option<u32>,
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
    /// One ASCII character; sniffed among `,` `;` tab `|` when absent.
    #[serde(default)]
    pub delimiter: Option<char>,
    /// A WHATWG encoding label (`windows-1252`, `iso-8859-15`, `shift_jis`, `utf-16le`, …) for
    /// files without a byte-order mark; when absent, UTF-8 if the file is, else Windows-1252.
    #[serde(default)]
    pub encoding: Option<EncodingLabel>,
    /// Accept a record with fewer fields than the header (the missing ones are empty). By
    /// default it is rejected: "4 fields, the header has 5".
    #[serde(default)]
    pub pad: bool,
    /// Accept a record with more fields than the header (the extra ones are dropped). By
    /// default it is rejected.
    #[serde(default)]
    pub ignore_extra: bool,
}

/// An encoding named in the file, by any WHATWG label.
#[derive(Clone, Copy)]
pub struct EncodingLabel(pub &'static encoding_rs::Encoding);

impl fmt::Debug for EncodingLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.name())
    }
}

impl<'de> Deserialize<'de> for EncodingLabel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        encoding_rs::Encoding::for_label(raw.trim().as_bytes())
            .map(EncodingLabel)
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "unknown encoding {raw:?}: use a WHATWG label such as \"windows-1252\", \"iso-8859-15\", \"shift_jis\" or \"utf-16le\""
                ))
            })
    }
}

/// `date = "received"` or `date = { from = "…", … }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum DateSetting {
    Named(String),
    Table(DateTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DateTable {
    pub from: DateFrom,
    /// For `from = "column"`: the column.
    #[serde(default)]
    pub column: Option<String>,
    /// For `from = "file_name"`: a regex whose first capture group (or group named `date`) is
    /// the date.
    #[serde(default)]
    pub pattern: Option<Pattern>,
    /// For `from = "file_name"`: the chrono format of the captured date (`%Y-%m-%d` when absent).
    #[serde(default)]
    pub format: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DateFrom {
    Column,
    FileName,
    Received,
}

/// Where a row's day comes from, resolved from `date_column` / `date`.
#[derive(Debug, Clone, Copy)]
pub enum DateSource<'d> {
    Column(&'d str),
    FileName { pattern: &'d Regex, format: &'d str },
    Received,
}

/// Per-attachment bounds as written in the file (any may be left out).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    #[serde(default)]
    pub max_attachment_bytes: Option<u64>,
    #[serde(default)]
    pub max_rows: Option<u64>,
    #[serde(default)]
    pub max_columns: Option<usize>,
    #[serde(default)]
    pub max_field_bytes: Option<usize>,
}

/// The bounds one attachment is read within. Over one, the attachment is quarantined with the
/// limit named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_attachment_bytes: u64,
    pub max_rows: u64,
    pub max_columns: usize,
    pub max_field_bytes: usize,
}

impl Default for Limits {
    /// Generous for exports (a million-row call log is about 150 MB), tight enough that one
    /// file cannot exhaust a function: fields stay well under DynamoDB's 400 KB item.
    fn default() -> Self {
        Limits {
            max_attachment_bytes: 1 << 30,
            max_rows: 10_000_000,
            max_columns: 500,
            max_field_bytes: 64 * 1024,
        }
    }
}

impl LimitSettings {
    fn over(&self, base: Limits) -> Limits {
        Limits {
            max_attachment_bytes: self
                .max_attachment_bytes
                .unwrap_or(base.max_attachment_bytes),
            max_rows: self.max_rows.unwrap_or(base.max_rows),
            max_columns: self.max_columns.unwrap_or(base.max_columns),
            max_field_bytes: self.max_field_bytes.unwrap_or(base.max_field_bytes),
        }
    }
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
    /// How the mail goes out: SES (default), Microsoft Graph `sendMail` as the mailbox
    /// user `send_as`, for teams that must send from Outlook, or the on-prem relay `relay`
    /// (its SMTP server, as `send_as`).
    #[serde(default)]
    pub transport: TransportKind,
    #[serde(default)]
    pub send_as: Option<String>,
    /// The relay whose outbox the mail goes to (`transport = "relay"`).
    #[serde(default)]
    pub relay: Option<String>,
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
    /// Days a run's workbook (`reports/{report}/…`) is kept after it was built (absent: kept).
    /// A workbook replaced by a re-run is kept as a noncurrent version for the deployment's
    /// `report_versions_days` (Terraform), whatever this says.
    #[serde(default)]
    pub retain_days: Option<u32>,
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum TransportKind {
    /// SES v2 raw send from the mailer's verified identity (`CHARLIE_SENDER`).
    #[default]
    Ses,
    /// Microsoft Graph `sendMail` as the report's `send_as` mailbox user.
    Graph,
    /// Queued for the on-prem relay `relay`, which sends it through its SMTP server.
    Relay,
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
            TransportKind::Relay => "relay",
        }
    }
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize, schemars::JsonSchema,
)]
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

/// Longest retention accepted: a hundred years (a longer one is a typo, not a policy).
pub const MAX_RETAIN_DAYS: u32 = 36_500;

fn retention_problem(what: &str, days: Option<u32>) -> Option<String> {
    match days {
        Some(0) => Some(format!(
            "{what}: retain_days must be at least 1 (leave it out to keep everything)"
        )),
        Some(d) if d > MAX_RETAIN_DAYS => Some(format!(
            "{what}: retain_days {d} is over {MAX_RETAIN_DAYS} (a hundred years)"
        )),
        _ => None,
    }
}

/// Everything wrong with a definitions file, one problem a line.
#[derive(Debug, thiserror::Error)]
#[error("invalid definitions:\n{}", .problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct DefinitionsError {
    pub problems: Vec<Problem>,
}

impl Definitions {
    /// What is valid but risky, one line each naming its dataset: a dataset that trusts its
    /// `sender` pattern without `require_authenticated_sender` takes rows from anyone who
    /// writes that From (with `keep_first`, theirs win over the real export's).
    pub fn warnings(&self) -> Vec<String> {
        self.datasets
            .iter()
            .filter(|(_, ds)| ds.matcher.sender.is_some() && !ds.require_authenticated_sender)
            .map(|(name, _)| {
                format!(
                    "dataset {name}: matches by sender without require_authenticated_sender = true: anyone can forge that From address and have their rows stored"
                )
            })
            .collect()
    }

    /// What Terraform reads from the definitions (`infra_file`), written by `charlie config
    /// infra` so that `reports.toml` stays their one source: each report's schedule and
    /// workbook retention, each dataset's retention (`null`: kept). Pretty-printed with a final
    /// newline, in name order:
    /// `{"datasets": {"d": {"retain_days": 400}}, "reports": {"r": {"cron": "…", "timezone": "…", "retain_days": null}}}`.
    pub fn infra_json(&self) -> String {
        let reports: BTreeMap<&str, serde_json::Value> = self
            .reports
            .iter()
            .map(|(name, r)| {
                (
                    name.as_str(),
                    serde_json::json!({
                        "cron": r.schedule,
                        "timezone": r.time_zone.0.name(),
                        "retain_days": r.retain_days,
                    }),
                )
            })
            .collect();
        let datasets: BTreeMap<&str, serde_json::Value> = self
            .datasets
            .iter()
            .map(|(name, d)| {
                (
                    name.as_str(),
                    serde_json::json!({"retain_days": d.retain_days}),
                )
            })
            .collect();
        let all = serde_json::json!({"datasets": datasets, "reports": reports});
        let mut text = serde_json::to_string_pretty(&all).unwrap_or_default();
        text.push('\n');
        text
    }

    /// Parses and checks the file: the result is safe to run with.
    pub fn parse(text: &str) -> Result<Self, DefinitionsError> {
        let mut defs: Definitions = toml::from_str(text).map_err(|e| DefinitionsError {
            problems: vec![Problem {
                line: e.span().map(|s| line_at(text, s.start)),
                message: e.message().trim_end().to_owned(),
            }],
        })?;
        let base = defs.limits.over(Limits::default());
        for ds in defs.datasets.values_mut() {
            ds.effective_limits = ds.limits.over(base);
        }
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
            if crate::ids::DatasetName::parse(name).is_err() {
                // Names are part of storage keys (`{dataset}#{day}`): nothing that could make
                // one dataset's key another's.
                out.push((
                    Where::table(&table),
                    format!(
                        "dataset {name:?}: a dataset's name is {}",
                        crate::ids::DatasetName::RULE
                    ),
                ));
            }
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
            out.extend(date_problems(name, &table, ds));
            if let Some(d) = ds.csv.delimiter
                && !(d.is_ascii() && !d.is_ascii_alphanumeric() && !matches!(d, '"' | '\r' | '\n'))
            {
                out.push((
                    Where::key(&format!("{table}.csv"), 0, "delimiter"),
                    format!("dataset {name}: delimiter {d:?} must be one ASCII character other than a letter, digit, quote or line break"),
                ));
            }
            if let Some(p) = retention_problem(&format!("dataset {name}"), ds.retain_days) {
                out.push((Where::key(&table, 0, "retain_days"), p));
            }
            for (limits, at) in [
                (&self.limits, "limits".to_owned()),
                (&ds.limits, format!("{table}.limits")),
            ] {
                for (key, zero) in [
                    (
                        "max_attachment_bytes",
                        limits.max_attachment_bytes == Some(0),
                    ),
                    ("max_rows", limits.max_rows == Some(0)),
                    ("max_columns", limits.max_columns == Some(0)),
                    ("max_field_bytes", limits.max_field_bytes == Some(0)),
                ] {
                    if zero {
                        out.push((
                            Where::key(&at, 0, key),
                            format!("{at}.{key} must be above 0"),
                        ));
                    }
                }
            }
        }
        for (name, r) in &self.reports {
            let table = format!("reports.{name}");
            if crate::ids::ReportName::parse(name).is_err() {
                // Part of run ids (`{report}.{period}…`), object keys and schedule names.
                out.push((
                    Where::table(&table),
                    format!(
                        "report {name:?}: a report's name is {}",
                        crate::ids::ReportName::RULE
                    ),
                ));
            }
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
                (TransportKind::Relay, None) => out.push((
                    Where::key(&table, 0, "transport"),
                    format!("report {name}: transport = \"relay\" needs send_as, the address the relay's SMTP server sends from"),
                )),
                (TransportKind::Relay, Some(user)) if !looks_like_address(user) => out.push((
                    Where::key(&table, 0, "send_as"),
                    format!("report {name}: send_as {user:?} is not a mail address"),
                )),
                (TransportKind::Ses, Some(_)) => out.push((
                    Where::key(&table, 0, "send_as"),
                    format!("report {name}: send_as is only for transport = \"graph\" or \"relay\" (SES sends from the deployment's sender)"),
                )),
                _ => {}
            }
            match (r.transport, r.relay.as_deref()) {
                (TransportKind::Relay, None) => out.push((
                    Where::key(&table, 0, "transport"),
                    format!("report {name}: transport = \"relay\" needs relay, the id of the relay that sends it (charlie relay list)"),
                )),
                (TransportKind::Relay, Some(id)) if crate::ids::RelayId::parse(id).is_err() => out.push((
                    Where::key(&table, 0, "relay"),
                    format!("report {name}: relay {id:?} is not a relay id (a-z, 0-9, -)"),
                )),
                (TransportKind::Ses | TransportKind::Graph, Some(_)) => out.push((
                    Where::key(&table, 0, "relay"),
                    format!("report {name}: relay is only for transport = \"relay\""),
                )),
                _ => {}
            }
            if let Err(e) = crate::mail_template::check(name, &r.templates()) {
                out.push((Where::key(&table, 0, e.part), e.to_string()));
            }
            if let Some(p) = retention_problem(&format!("report {name}"), r.retain_days) {
                out.push((Where::key(&table, 0, "retain_days"), p));
            }
            if let Err(e) = crate::schedule::Expression::parse(&r.schedule) {
                out.push((
                    Where::key(&table, 0, "schedule"),
                    format!("report {name}: schedule {e}"),
                ));
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

/// Whether `name` may name a dataset: 1 to 64 ASCII letters, digits, `_` and `-`, so that it can
/// never hold the separators of the keys it is part of (`#`, `/`, `@`).
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
    /// The table's header line.
    fn table(table: &str) -> Self {
        Where {
            table: table.to_owned(),
            nth: 0,
            key: None,
            value: None,
        }
    }

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
        let table: String = self
            .table
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '"')
            .collect();
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
                if path == table {
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
    /// When a row of `day` expires under `retain_days` (none without it): the start of the day
    /// after `day` plus `retain_days`, in the dataset's zone. A row is kept `retain_days` whole
    /// days after its own.
    pub fn row_expiry(&self, day: chrono::NaiveDate) -> Option<chrono::DateTime<chrono::Utc>> {
        let days = self.retain_days?;
        let first_day_gone = day.checked_add_days(chrono::Days::new(u64::from(days) + 1))?;
        Some(crate::period::start_of_day(
            first_day_gone,
            self.time_zone.0,
        ))
    }

    /// The first day whose rows are still kept at `now` (rows of earlier days have expired);
    /// none without `retain_days`. Agrees with [`Dataset::row_expiry`]: a row of day `d` is gone
    /// exactly when `d` is before this day.
    pub fn retention_cutoff(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Option<chrono::NaiveDate> {
        let days = self.retain_days?;
        let today = now.with_timezone(&self.time_zone.0).date_naive();
        today.checked_sub_days(chrono::Days::new(u64::from(days)))
    }

    /// The declared column named `name` (ignoring case and surrounding spaces) and its index.
    pub fn column(&self, name: &str) -> Option<(usize, &Column)> {
        let wanted = name.trim();
        self.columns
            .iter()
            .enumerate()
            .find(|(_, c)| c.name.trim().eq_ignore_ascii_case(wanted))
    }

    /// Where a row's day comes from; `None` only for definitions [`Definitions::parse`] refused.
    pub fn date_source(&self) -> Option<DateSource<'_>> {
        match (&self.date_column, &self.date) {
            (Some(c), None) => Some(DateSource::Column(c)),
            (None, Some(DateSetting::Named(n))) if n == "received" => Some(DateSource::Received),
            (None, Some(DateSetting::Table(t))) => match t.from {
                DateFrom::Column => t.column.as_deref().map(DateSource::Column),
                DateFrom::Received => Some(DateSource::Received),
                DateFrom::FileName => t.pattern.as_ref().map(|p| DateSource::FileName {
                    pattern: &p.0,
                    format: t.format.as_deref().unwrap_or("%Y-%m-%d"),
                }),
            },
            _ => None,
        }
    }

    /// Why none of a mail's attachments belongs to this dataset: the first of its rules the mail
    /// fails (sender, subject, then the attachment names); `None` when one does belong.
    pub fn mismatch(&self, sender: &str, subject: &str, attachments: &[&str]) -> Option<String> {
        if let Some(p) = self.matcher.sender.as_ref().filter(|p| !p.is_match(sender)) {
            return Some(format!(
                "sender {sender:?} does not match {:?}",
                p.0.as_str()
            ));
        }
        if let Some(p) = self
            .matcher
            .subject
            .as_ref()
            .filter(|p| !p.is_match(subject))
        {
            return Some(format!(
                "subject {subject:?} does not match {:?}",
                p.0.as_str()
            ));
        }
        if attachments
            .iter()
            .any(|a| self.matcher.attachment.is_match(a))
        {
            return None;
        }
        Some(if attachments.is_empty() {
            "the mail has no attachment".to_owned()
        } else {
            format!(
                "no attachment name ({}) matches {:?}",
                attachments
                    .iter()
                    .map(|a| format!("{a:?}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                self.matcher.attachment.0.as_str()
            )
        })
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

/// What is wrong with a dataset's `date_column` / `date`.
fn date_problems(name: &str, table: &str, ds: &Dataset) -> Vec<(Where, String)> {
    let at = |key: &str| Where::key(table, 0, key);
    let mut out = Vec::new();
    let tz = ds.time_zone.0.name();
    match (&ds.date_column, &ds.date) {
        (Some(_), Some(_)) => out.push((at("date"), format!("dataset {name}: give date_column or date, not both"))),
        (None, None) => out.push((at("key"), format!("dataset {name}: say where a row's day comes from: date_column = \"<column>\", date = \"received\" (the mail's received time in {tz}) or date = {{ from = \"file_name\", pattern = \"…(\\\\d{{4}}-\\\\d{{2}}-\\\\d{{2}})…\" }}"))),
        (None, Some(DateSetting::Named(n))) if n != "received" => out.push((at("date"), format!("dataset {name}: date = {n:?} is not a date source: use date = \"received\", date = {{ from = \"file_name\", pattern = \"…\" }}, or date_column = {n:?} for a column"))),
        (None, Some(DateSetting::Table(t))) => {
            let stray = |key: &str, set: bool| set.then(|| (at("date"), format!("dataset {name}: date.{key} does not apply to from = {:?}", t.from)));
            match t.from {
                DateFrom::Column => {
                    if t.column.is_none() {
                        out.push((at("date"), format!("dataset {name}: date from = \"column\" needs column = \"<column>\"")));
                    }
                    out.extend(stray("pattern", t.pattern.is_some()));
                    out.extend(stray("format", t.format.is_some()));
                }
                DateFrom::Received => {
                    out.extend(stray("column", t.column.is_some()));
                    out.extend(stray("pattern", t.pattern.is_some()));
                    out.extend(stray("format", t.format.is_some()));
                }
                DateFrom::FileName => {
                    out.extend(stray("column", t.column.is_some()));
                    match &t.pattern {
                        None => out.push((at("date"), format!("dataset {name}: date from = \"file_name\" needs pattern, a regex whose first group is the date"))),
                        Some(p) if p.0.captures_len() < 2 => out.push((at("date"), format!("dataset {name}: date pattern {:?} has no capture group for the date", p.0.as_str()))),
                        Some(_) => {}
                    }
                    let format = t.format.as_deref().unwrap_or("%Y-%m-%d");
                    let sample = chrono::NaiveDate::from_ymd_opt(2024, 3, 14).expect("a date");
                    let shown = chrono::format::StrftimeItems::new(format);
                    if shown.clone().any(|i| matches!(i, chrono::format::Item::Error))
                        || chrono::NaiveDate::parse_from_str(&sample.format_with_items(shown).to_string(), format).ok() != Some(sample)
                    {
                        out.push((at("date"), format!("dataset {name}: date format {format:?} does not name a whole date (year, month and day)")));
                    }
                }
            }
        }
        _ => {}
    }
    if let Some(DateSource::Column(col)) = ds.date_source() {
        let key = if ds.date_column.is_some() {
            "date_column"
        } else {
            "date"
        };
        match ds.column(col) {
            None => out.push((
                at(key),
                format!("dataset {name}: date column {col:?} is not declared in columns"),
            )),
            Some((_, c)) if !matches!(c.kind, ColumnType::Date | ColumnType::Datetime) => {
                out.push((
                    at(key),
                    format!("dataset {name}: date column {col:?} must be of type date or datetime"),
                ))
            }
            Some(_) => {}
        }
    }
    out
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

    /// Datasets' and reports' names that could be part of another name's key are refused, each
    /// on the line of its table.
    #[test]
    fn a_name_that_could_be_part_of_another_key_is_refused_with_its_line() {
        let cases = [
            (
                "datasets",
                "dials",
                "a dataset's name",
                ["ib@rebuild", "ib#2024-03-14", "ib/x", "ib calls"],
            ),
            (
                "reports",
                "call_centre_daily",
                "a report's name is 1 to 64",
                ["daily.v2", "daily/x", "daily #2", "d@y"],
            ),
        ];
        for (table, name, message, bads) in cases {
            for bad in bads {
                let mut text = SHIPPED
                    .replace(
                        &format!("[{table}.{name}]"),
                        &format!("[{table}.\"{bad}\"]"),
                    )
                    .replace(
                        &format!("[{table}.{name}."),
                        &format!("[{table}.\"{bad}\"."),
                    );
                if table == "datasets" {
                    // The reports that name it.
                    text = text.replace(&format!("\"{name}\"]"), &format!("\"{bad}\"]"));
                }
                let err = Definitions::parse(&text).unwrap_err();
                let problem = err
                    .problems
                    .iter()
                    .find(|p| p.message.contains(message))
                    .unwrap_or_else(|| panic!("{bad}: {err}"));
                let line = text.lines().nth(problem.line.unwrap() - 1).unwrap();
                assert!(line.starts_with(&format!("[{table}.")), "{bad}: {line}");
            }
        }
        assert!(crate::ids::DatasetName::parse("ib_calls-2").is_ok());
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

    fn problems_of(old: &str, new: &str) -> String {
        assert!(SHIPPED.contains(old), "{old}");
        match Definitions::parse(&SHIPPED.replacen(old, new, 1)) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_relay_report_needs_its_relay_and_sender_and_relay_is_for_it_only() {
        assert_eq!(
            problems_of("relay = \"branch-out\"\n", "relay = \"branch-out\"\n"),
            ""
        );
        let none = problems_of("relay = \"branch-out\"\n", "");
        assert!(none.contains("needs relay"), "{none}");
        let bad = problems_of("relay = \"branch-out\"", "relay = \"Branch Out\"");
        assert!(bad.contains("not a relay id"), "{bad}");
        let no_sender = problems_of("send_as = \"reports@branch.example\"\n", "");
        assert!(no_sender.contains("needs send_as"), "{no_sender}");
        let elsewhere = problems_of(
            "send_as = \"ops-reports@contoso.example\"",
            "send_as = \"ops-reports@contoso.example\"\nrelay = \"branch-out\"",
        );
        assert!(
            elsewhere.contains("relay is only for transport = \"relay\""),
            "{elsewhere}"
        );
    }

    #[test]
    fn a_delimiter_must_be_one_ascii_character() {
        for bad in ["§", "€", "a", "\\\""] {
            let err = problems_of(
                "[datasets.ib_calls.match]",
                &format!(
                    "[datasets.ib_calls.csv]\ndelimiter = \"{bad}\"\n\n[datasets.ib_calls.match]"
                ),
            );
            assert!(err.contains("must be one ASCII character"), "{bad}: {err}");
        }
        let ok = problems_of(
            "[datasets.ib_calls.match]",
            "[datasets.ib_calls.csv]\ndelimiter = \";\"\n\n[datasets.ib_calls.match]",
        );
        assert_eq!(ok, "");
        let two = problems_of(
            "[datasets.ib_calls.match]",
            "[datasets.ib_calls.csv]\ndelimiter = \";;\"\n\n[datasets.ib_calls.match]",
        );
        assert!(two.contains("line "), "{two}");
    }

    #[test]
    fn retention_is_at_least_a_day_and_at_most_a_hundred_years() {
        let zero = problems_of("retain_days = 730", "retain_days = 0");
        assert!(
            zero.contains("line ")
                && zero.contains("dataset ib_calls: retain_days must be at least 1"),
            "{zero}"
        );
        let long = problems_of(
            "after it was built.\nretain_days = 400",
            "after it was built.\nretain_days = 36501",
        );
        assert!(
            long.contains("report call_centre_daily: retain_days 36501 is over 36500"),
            "{long}"
        );
        let negative = problems_of("retain_days = 730", "retain_days = -1");
        // serde names the line and the type; the line is retain_days'.
        assert!(
            negative.contains("line ") && negative.contains("integer `-1`, expected u32"),
            "{negative}"
        );
        assert_eq!(problems_of("retain_days = 730", "retain_days = 1"), "");
        // Without it, nothing expires.
        let kept = Definitions::parse(&SHIPPED.replacen("retain_days = 730", "", 1)).unwrap();
        let ds = &kept.datasets["ib_calls"];
        assert_eq!(ds.row_expiry("2024-03-14".parse().unwrap()), None);
        assert_eq!(ds.retention_cutoff(chrono::Utc::now()), None);
    }

    #[test]
    fn an_unknown_encoding_label_is_refused() {
        let err = problems_of(
            "[datasets.ib_calls.match]",
            "[datasets.ib_calls.csv]\nencoding = \"klingon\"\n\n[datasets.ib_calls.match]",
        );
        assert!(err.contains("unknown encoding \"klingon\""), "{err}");
    }

    #[test]
    fn each_date_source_is_checked() {
        let col = "date_column = \"started_at\"";
        for (new, expect) in [
            ("date = \"received\"", ""),
            (
                "date = { from = \"file_name\", pattern = \"(\\\\d{4}-\\\\d{2}-\\\\d{2})\" }",
                "",
            ),
            ("date = { from = \"column\", column = \"started_at\" }", ""),
            ("date = \"started_at\"", "is not a date source"),
            ("date = { from = \"file_name\" }", "needs pattern"),
            (
                "date = { from = \"file_name\", pattern = \"\\\\d{8}\" }",
                "no capture group",
            ),
            (
                "date = { from = \"file_name\", pattern = \"(\\\\d{6})\", format = \"%Y%m\" }",
                "does not name a whole date",
            ),
            (
                "date = { from = \"received\", pattern = \"(x)\" }",
                "does not apply",
            ),
            (
                "date = { from = \"column\", column = \"queue\" }",
                "must be of type date or datetime",
            ),
            ("date = { from = \"column\" }", "needs column"),
            ("", "say where a row's day comes from"),
            (
                "date_column = \"started_at\"\ndate = \"received\"",
                "not both",
            ),
        ] {
            let err = problems_of(col, new);
            if expect.is_empty() {
                assert_eq!(err, "", "{new}");
            } else {
                assert!(err.contains(expect), "{new}: {err}");
            }
        }
    }

    #[test]
    fn limits_apply_per_dataset_over_the_file_defaults() {
        let text = format!(
            "[limits]\nmax_rows = 5\nmax_columns = 7\n\n{}",
            SHIPPED.replacen(
                "[datasets.ib_calls.match]",
                "[datasets.ib_calls.limits]\nmax_rows = 9\n\n[datasets.ib_calls.match]",
                1,
            )
        );
        let d = Definitions::parse(&text).unwrap();
        let ib = d.datasets["ib_calls"].effective_limits;
        assert_eq!(
            (ib.max_rows, ib.max_columns, ib.max_field_bytes),
            (9, 7, 64 * 1024)
        );
        let dials = d.datasets["dials"].effective_limits;
        assert_eq!((dials.max_rows, dials.max_columns), (5, 7));
        let zero = problems_of(
            "[datasets.ib_calls.match]",
            "[datasets.ib_calls.limits]\nmax_rows = 0\n\n[datasets.ib_calls.match]",
        );
        assert!(zero.contains("max_rows must be above 0"), "{zero}");
    }
}
