//! CSV attachment → typed, keyed, deduplicated rows, per a dataset's definition. Pure: bytes in,
//! rows and rejects out; storage decides what is new.

use std::borrow::Cow;
use std::io::Read;

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, Timelike, Utc};
use chrono_tz::Tz;
use sha2::{Digest, Sha256};

use crate::csv_records::{RecordError, RecordReader, TextEncoding};
use crate::definitions::{Column, ColumnType, Dataset, DateSource, DeriveFn};
use crate::key_set::KeySet;
use crate::value::{Row, Value};

/// Keys longer than this are stored as their SHA-256 (DynamoDB sort keys are at most 1 KiB).
const MAX_PLAIN_KEY: usize = 512;
/// Rows typed ahead of their dedup, a few at a time (see `next_chunk`).
const TYPING_BATCH: usize = 16;
/// Separates key column values inside a row key; a control character no export uses.
const KEY_SEPARATOR: char = '\u{1f}';

/// A row ready to store: its key within the day, the day, and its values.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyedRow {
    pub key: String,
    pub date: NaiveDate,
    pub values: Row,
    /// 1-based line of the file where its record starts.
    pub line: u64,
}

#[derive(
    Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
pub struct Reject {
    /// 1-based line of the file where the record starts.
    pub line: u64,
    pub reason: String,
}

impl std::fmt::Display for Reject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

/// Every physical line of a file, by what it held:
/// `header + valid + rejected + blank + unread = total` (a record spanning lines counts all of
/// them).
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
pub struct LineCounts {
    pub total: u64,
    pub header: u64,
    pub valid: u64,
    pub rejected: u64,
    pub blank: u64,
    /// Lines from the record where reading stopped to the end of the file, when the file
    /// turned unusable part way (over a limit, unreadable): none of their rows was taken, and
    /// the file is quarantined whole with the reason.
    #[serde(default)]
    pub unread: u64,
}

impl LineCounts {
    /// Whether every line is accounted for.
    pub fn balanced(&self) -> bool {
        self.header + self.valid + self.rejected + self.blank + self.unread == self.total
    }
}

/// Where an attachment came from, for datasets whose rows take their day from it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Origin<'o> {
    pub file_name: &'o str,
    pub received: Option<DateTime<Utc>>,
}

impl<'o> Origin<'o> {
    pub fn named(file_name: &'o str) -> Self {
        Origin {
            file_name,
            received: None,
        }
    }
}

#[derive(Debug)]
pub struct ParsedAttachment {
    pub encoding: &'static str,
    pub delimiter: char,
    /// Data records read (excluding the header and blank lines).
    pub rows_total: u64,
    /// Unique, valid rows in file order (first occurrence of each key).
    pub rows: Vec<KeyedRow>,
    /// Valid rows whose key repeated an earlier row of the same file.
    pub duplicates: u64,
    pub rows_rejected: u64,
    /// The first [`MAX_REJECT_DETAILS`] rejects, in file order.
    pub rejects: Vec<Reject>,
    pub lines: LineCounts,
    /// The day every row took, when it came from the file name or the received time.
    pub fixed_date: Option<NaiveDate>,
    /// Why reading stopped part way, when it did: `rows` are those read before (what ingest
    /// stores of such a file), the rest of the file is `lines.unread`.
    pub stopped: Option<Unusable>,
}

/// Why a whole attachment cannot be used; it goes to quarantine with this reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Unusable {
    #[error("the file is empty")]
    Empty,
    #[error("required columns missing from the header: {}", .0.join(", "))]
    MissingColumns(Vec<String>),
    #[error("not readable as CSV: {0}")]
    Malformed(String),
    #[error("the file cannot be read: {0}")]
    Unreadable(String),
    #[error("over a limit: {0}")]
    OverLimit(String),
    #[error("no date for its rows: {0}")]
    NoDate(String),
}

impl Unusable {
    /// A short name for the kind of problem (`charlie ingest check`, metrics).
    pub fn kind(&self) -> &'static str {
        match self {
            Unusable::Empty => "empty",
            Unusable::MissingColumns(_) => "missing_columns",
            Unusable::Malformed(_) => "malformed",
            Unusable::Unreadable(_) => "unreadable",
            Unusable::OverLimit(_) => "over_limit",
            Unusable::NoDate(_) => "no_date",
        }
    }
}

/// Rejects kept in detail per attachment (all are counted).
pub const MAX_REJECT_DETAILS: usize = 10_000;

/// Parses one attachment for `dataset`, keeping every unique row (see [`AttachmentReader`] to
/// stream instead); a file unusable part way is an error (see [`read_attachment`] for the rows
/// before it).
pub fn parse_attachment(
    dataset: &Dataset,
    bytes: &[u8],
    origin: &Origin<'_>,
) -> Result<ParsedAttachment, Unusable> {
    let mut parsed = read_attachment(dataset, bytes, origin)?;
    match parsed.stopped.take() {
        Some(why) => Err(why),
        None => Ok(parsed),
    }
}

/// Reads one attachment for `dataset` as ingest does: an error when it cannot be used at all;
/// when it turns unusable part way, the rows before, with why it stopped in
/// [`ParsedAttachment::stopped`].
pub fn read_attachment(
    dataset: &Dataset,
    bytes: &[u8],
    origin: &Origin<'_>,
) -> Result<ParsedAttachment, Unusable> {
    let mut reader = AttachmentReader::new(dataset, bytes, origin)?;
    let mut rows = Vec::new();
    let stopped = loop {
        match reader.next_chunk(usize::MAX) {
            Ok(Some(chunk)) => rows.extend(chunk),
            Ok(None) => break None,
            Err(why) => break Some(why),
        }
    };
    let s = reader.finish();
    Ok(ParsedAttachment {
        encoding: s.encoding,
        delimiter: s.delimiter,
        rows_total: s.rows_total,
        rows,
        duplicates: s.duplicates,
        rows_rejected: s.rows_rejected,
        rejects: s.rejects,
        lines: s.lines,
        fixed_date: s.fixed_date,
        stopped,
    })
}

/// What reading a whole attachment found (the rows themselves went out in chunks).
#[derive(Debug, Clone, PartialEq)]
pub struct ReadSummary {
    pub encoding: &'static str,
    pub delimiter: char,
    pub rows_total: u64,
    pub rows_unique: u64,
    pub duplicates: u64,
    pub rows_rejected: u64,
    pub rejects: Vec<Reject>,
    pub lines: LineCounts,
    pub fixed_date: Option<NaiveDate>,
}

/// The day of a row: a column of it, or one day for the whole file.
#[derive(Debug, Clone, Copy)]
enum RowDay {
    Column(usize),
    Fixed(NaiveDate),
}

/// Streams an attachment: unique, valid rows come out in chunks (first occurrence of each key
/// wins across the whole file), so memory stays bounded by the chunk size plus a compact set of
/// the keys seen, whatever the file's size.
pub struct AttachmentReader<'a> {
    dataset: &'a Dataset,
    records: RecordReader<'a>,
    header_len: usize,
    positions: Vec<Option<usize>>,
    /// Each derived column with the column it derives from (looked up once, not per row).
    derived: Vec<(usize, usize)>,
    key_idx: Vec<usize>,
    day: RowDay,
    keys: KeySet,
    /// Typed rows waiting for dedup, with their keys' hashes (kept to reuse its allocation).
    batch: Vec<(u64, KeyedRow)>,
    summary: ReadSummary,
    done: bool,
    /// Why reading stopped part way, held back until the rows read before it went out.
    stopped: Option<Unusable>,
}

/// How much of a file's start is read to choose its encoding, sniff its delimiter and estimate
/// its rows.
const SNIFF_BYTES: usize = 256 * 1024;
/// The key set is sized from an estimate up to this many rows; past it, it grows as it fills,
/// so a bad estimate never reserves much.
const MAX_PRESIZED_ROWS: usize = 2_000_000;

impl<'a> AttachmentReader<'a> {
    /// Reads an attachment held in memory: decodes it, reads the header; fails when the file
    /// cannot be used at all.
    pub fn new(
        dataset: &'a Dataset,
        bytes: &'a [u8],
        origin: &Origin<'_>,
    ) -> Result<Self, Unusable> {
        check_size(dataset, Some(bytes.len() as u64))?;
        let configured = dataset.csv.encoding.map(|e| e.0);
        let encoding = TextEncoding::choose(bytes, true, configured);
        let body = &bytes[encoding.bom..];
        let text: Box<dyn std::io::Read + Send + 'a> = if encoding.is_utf8() {
            Box::new(body)
        } else {
            encoding.decoder(body)
        };
        Self::open(
            dataset,
            body,
            text,
            encoding,
            Some(bytes.len() as u64),
            origin,
        )
    }

    /// Reads an attachment as a stream, so that memory holds a buffer of it, never the whole
    /// file. `size` (when known) is checked against the dataset's `max_attachment_bytes` first.
    /// The encoding is chosen from the first 256 KiB: a UTF-8 start with other bytes later
    /// rejects the records holding them, with a reason that names the `encoding` option.
    pub fn from_reader<R: std::io::Read + Send + 'a>(
        dataset: &'a Dataset,
        mut input: R,
        size: Option<u64>,
        origin: &Origin<'_>,
    ) -> Result<Self, Unusable> {
        check_size(dataset, size)?;
        let mut head = Vec::with_capacity(SNIFF_BYTES.min(size.unwrap_or(u64::MAX) as usize));
        (&mut input)
            .take(SNIFF_BYTES as u64)
            .read_to_end(&mut head)
            .map_err(|e| Unusable::Unreadable(e.to_string()))?;
        let whole = head.len() < SNIFF_BYTES;
        let configured = dataset.csv.encoding.map(|e| e.0);
        let encoding = TextEncoding::choose(&head, whole, configured);
        let rest = std::io::Cursor::new(head.split_off(encoding.bom.min(head.len())));
        let sample = rest.get_ref().clone();
        let text: Box<dyn std::io::Read + Send + 'a> = if encoding.is_utf8() {
            Box::new(rest.chain(input))
        } else {
            encoding.decoder(rest.chain(input))
        };
        Self::open(dataset, &sample, text, encoding, size, origin)
    }

    /// [`AttachmentReader::from_reader`] on a file.
    pub fn from_file(
        dataset: &'a Dataset,
        path: &std::path::Path,
        origin: &Origin<'_>,
    ) -> Result<Self, Unusable> {
        let unreadable = |e: std::io::Error| Unusable::Unreadable(e.to_string());
        let file = std::fs::File::open(path).map_err(unreadable)?;
        let size = file.metadata().map_err(unreadable)?.len();
        Self::from_reader(dataset, file, Some(size), origin)
    }

    /// Reads the header from `text` (decoded), whose first bytes before decoding are `head`.
    fn open(
        dataset: &'a Dataset,
        head: &[u8],
        text: Box<dyn std::io::Read + Send + 'a>,
        encoding: TextEncoding,
        size: Option<u64>,
        origin: &Origin<'_>,
    ) -> Result<Self, Unusable> {
        let limits = dataset.effective_limits;
        let sample = &head[..head.len().min(SNIFF_BYTES)];
        let sample_text = if encoding.is_utf8() {
            String::from_utf8_lossy(sample)
        } else {
            Cow::Owned(text_of(encoding, sample))
        };
        if sample_text.trim().is_empty() {
            return Err(Unusable::Empty);
        }
        let day = row_day(dataset, origin)?;
        let delimiter = match dataset.csv.delimiter {
            Some(d) if d.is_ascii() => d,
            Some(d) => {
                return Err(Unusable::Malformed(format!(
                    "the delimiter {d:?} is not one ASCII character"
                )));
            }
            None => sniff_delimiter(&sample_text),
        };
        let mut records = RecordReader::new(
            text,
            delimiter as u8,
            limits.max_field_bytes,
            limits.max_columns,
        );
        let over = |e: RecordError| match e {
            RecordError::Io(e) => Unusable::Unreadable(e.to_string()),
            other => Unusable::OverLimit(other.to_string()),
        };
        let Some(info) = records.next_record().map_err(over)? else {
            return Err(Unusable::Empty);
        };
        if let Some(open) = info.unterminated_quote {
            return Err(Unusable::Malformed(format!(
                "unterminated quote opened at line {open} in the header"
            )));
        }
        let header_text = records
            .text()
            .ok_or_else(|| Unusable::Malformed("the header is not valid text".into()))?;
        let header: Vec<&str> = (0..records.len())
            .filter_map(|i| records.field_range(i).and_then(|r| header_text.get(r)))
            .collect();
        let header_len = header.len();
        // Position of each read column in the file, matching headers ignoring case and spaces.
        let positions: Vec<Option<usize>> = dataset
            .columns
            .iter()
            .map(|c| {
                if c.derive.is_some() {
                    return None;
                }
                header
                    .iter()
                    .position(|h| h.trim().eq_ignore_ascii_case(c.header().trim()))
            })
            .collect();
        let key_idx: Vec<usize> = dataset
            .key
            .iter()
            .filter_map(|k| dataset.column(k).map(|(i, _)| i))
            .collect();
        let missing: Vec<String> = dataset
            .columns
            .iter()
            .zip(&positions)
            .filter(|(c, p)| {
                p.is_none()
                    && c.derive.is_none()
                    && c.default.is_none()
                    && (c.required
                        || key_idx_contains(dataset, &c.name)
                        || matches!(day, RowDay::Column(i) if dataset.columns[i].name == c.name))
            })
            .map(|(c, _)| c.header().to_owned())
            .collect();
        if !missing.is_empty() {
            return Err(Unusable::MissingColumns(missing));
        }
        let header_lines = records.blank_lines + info.lines;
        records.blank_lines = 0;
        // Sizing the key set once spares its rehashing: records ≈ non-blank lines, estimated
        // from the sample, never more than the row limit or a few million.
        let rows = estimated_rows(sample, size.unwrap_or(sample.len() as u64))
            .min(limits.max_rows.try_into().unwrap_or(usize::MAX))
            .min(MAX_PRESIZED_ROWS);
        let key_bytes = rows.saturating_mul(16);
        Ok(AttachmentReader {
            dataset,
            records,
            header_len,
            positions,
            derived: dataset
                .columns
                .iter()
                .enumerate()
                .filter_map(|(i, c)| {
                    let from = dataset.column(&c.derive.as_ref()?.from)?.0;
                    Some((i, from))
                })
                .collect(),
            key_idx,
            day,
            keys: KeySet::with_capacity(rows, key_bytes),
            batch: Vec::with_capacity(TYPING_BATCH),
            summary: ReadSummary {
                encoding: encoding.name(),
                delimiter,
                rows_total: 0,
                rows_unique: 0,
                duplicates: 0,
                rows_rejected: 0,
                rejects: Vec::new(),
                lines: LineCounts {
                    header: header_lines,
                    ..LineCounts::default()
                },
                fixed_date: match day {
                    RowDay::Fixed(d) => Some(d),
                    RowDay::Column(_) => None,
                },
            },
            done: false,
            stopped: None,
        })
    }

    /// The next unique, valid rows (at most `max`), or `None` at the end of the file; an error
    /// when the file turns out unusable part way (a limit, a read error).
    ///
    /// Rows are typed in small batches, each batch then deduplicated in file order.
    pub fn next_chunk(&mut self, max: usize) -> Result<Option<Vec<KeyedRow>>, Unusable> {
        if let Some(why) = self.stopped.take() {
            return Err(why);
        }
        if self.done {
            return Ok(None);
        }
        let mut rows = Vec::with_capacity(max.min(8192));
        let mut batch = std::mem::take(&mut self.batch);
        while rows.len() < max && !self.done {
            // Each row of the batch adds at most one row to the chunk: it never overflows `max`.
            let room = (max - rows.len()).min(TYPING_BATCH);
            while batch.len() < room {
                match self.next_row() {
                    Ok(Some(row)) => {
                        let hash = self.keys.hash(row.date, &row.key);
                        batch.push((hash, row));
                    }
                    Ok(None) => break,
                    Err(why) => {
                        // The rows read before the error still go out (this chunk); the error
                        // comes with the next call.
                        self.stopped = Some(why);
                        break;
                    }
                }
            }
            for (hash, row) in batch.drain(..) {
                if self.keys.insert_hashed(hash, row.date, &row.key) {
                    self.summary.rows_unique += 1;
                    rows.push(row);
                } else {
                    self.summary.duplicates += 1;
                }
            }
        }
        self.batch = batch;
        if rows.is_empty() && self.done {
            match self.stopped.take() {
                Some(why) => Err(why),
                None => Ok(None),
            }
        } else {
            Ok(Some(rows))
        }
    }

    /// Ends reading part way with `why`: the lines from the record in progress to the end of
    /// the file are counted (not read as records) as `unread`, so every line is accounted for.
    fn stop(&mut self, why: Unusable) -> Unusable {
        self.done = true;
        let limit = self.dataset.effective_limits.max_attachment_bytes;
        let total = self.records.count_rest(limit);
        let lines = &mut self.summary.lines;
        lines.blank += self.records.blank_lines;
        self.records.blank_lines = 0;
        lines.total = total;
        let accounted = lines.header + lines.valid + lines.rejected + lines.blank;
        lines.unread = total.saturating_sub(accounted);
        why
    }

    fn reject(&mut self, line: u64, lines: u64, reason: String) {
        self.summary.rows_rejected += 1;
        self.summary.lines.rejected += lines;
        if self.summary.rejects.len() < MAX_REJECT_DETAILS {
            self.summary.rejects.push(Reject { line, reason });
        }
    }

    /// The next valid row of the file, recording rejects on the way; `None` at its end.
    fn next_row(&mut self) -> Result<Option<KeyedRow>, Unusable> {
        let limits = self.dataset.effective_limits;
        loop {
            let info = match self.records.next_record() {
                Ok(Some(info)) => info,
                Ok(None) => {
                    self.done = true;
                    let lines = &mut self.summary.lines;
                    lines.blank += self.records.blank_lines;
                    self.records.blank_lines = 0;
                    lines.total = self.records.lines_read();
                    return Ok(None);
                }
                Err(RecordError::Io(e)) => {
                    let why = format!("after line {}: {e}", self.records.lines_read());
                    return Err(self.stop(Unusable::Unreadable(why)));
                }
                Err(e) => return Err(self.stop(Unusable::OverLimit(e.to_string()))),
            };
            if self.records.consumed > limits.max_attachment_bytes {
                let why = format!(
                    "line {}: the text is longer than the limit of {} bytes (max_attachment_bytes)",
                    info.line, limits.max_attachment_bytes
                );
                return Err(self.stop(Unusable::OverLimit(why)));
            }
            let Some(text) = self.records.text() else {
                self.summary.rows_total += 1;
                let reason = format!(
                    "not valid {} text: the file's start read as {}; set the dataset's csv encoding (e.g. encoding = \"windows-1252\")",
                    self.summary.encoding, self.summary.encoding
                );
                self.reject(info.line, info.lines, reason);
                continue;
            };
            let fields = Fields {
                text,
                records: &self.records,
            };
            if fields.all_blank() && info.unterminated_quote.is_none() {
                self.summary.lines.blank += info.lines;
                continue; // blank or separator-only line: not a record
            }
            if self.summary.rows_total >= limits.max_rows {
                // This record is not read: its lines count as unread.
                let why = format!(
                    "line {}: more than the limit of {} rows (max_rows)",
                    info.line, limits.max_rows
                );
                return Err(self.stop(Unusable::OverLimit(why)));
            }
            self.summary.rows_total += 1;
            if let Some(open) = info.unterminated_quote {
                let last = info.line + info.lines - 1;
                let reason = format!(
                    "unterminated quote opened at line {open}: lines {open}-{last}, the rest of the file, are inside one field"
                );
                self.reject(info.line, info.lines, reason);
                continue;
            }
            if let Some((open, close)) = info.text_after_quote {
                let reason = if open == close {
                    format!(
                        "text follows the closing quote of a field on line {open}: a quote is stray or missing"
                    )
                } else {
                    format!(
                        "a quoted field opened at line {open} closes at line {close} and text follows its closing quote: a quote is missing or stray (lines {open}-{close} read as one record)"
                    )
                };
                self.reject(info.line, info.lines, reason);
                continue;
            }
            let n = self.records.len();
            let csv = &self.dataset.csv;
            if n < self.header_len && !csv.pad || n > self.header_len && !csv.ignore_extra {
                let reason = format!(
                    "{n} field{}, the header has {}",
                    if n == 1 { "" } else { "s" },
                    self.header_len
                );
                self.reject(info.line, info.lines, reason);
                continue;
            }
            match keyed_row(
                self.dataset,
                &self.positions,
                &self.derived,
                self.day,
                &self.key_idx,
                &fields,
            ) {
                Ok((key, date, values)) => {
                    self.summary.lines.valid += info.lines;
                    return Ok(Some(KeyedRow {
                        key,
                        date,
                        values,
                        line: info.line,
                    }));
                }
                Err(reason) => self.reject(info.line, info.lines, reason),
            }
        }
    }

    /// What was read; call after the last chunk.
    pub fn finish(self) -> ReadSummary {
        self.summary
    }
}

/// The fields of the current record, as text.
struct Fields<'r, 'a> {
    text: &'r str,
    records: &'r RecordReader<'a>,
}

impl Fields<'_, '_> {
    fn get(&self, i: usize) -> Option<&str> {
        self.records.field_range(i).and_then(|r| self.text.get(r))
    }

    fn all_blank(&self) -> bool {
        (0..self.records.len()).all(|i| {
            self.get(i)
                .is_some_and(|f| f.bytes().all(|b| b.is_ascii_whitespace()))
        })
    }
}

/// Refuses an attachment over its dataset's `max_attachment_bytes`.
pub fn check_size(dataset: &Dataset, size: Option<u64>) -> Result<(), Unusable> {
    let limit = dataset.effective_limits.max_attachment_bytes;
    match size {
        Some(size) if size > limit => Err(Unusable::OverLimit(format!(
            "the attachment is {size} bytes, over the limit of {limit} bytes (max_attachment_bytes)"
        ))),
        _ => Ok(()),
    }
}

/// The day every row takes when it does not come from a column.
fn row_day(dataset: &Dataset, origin: &Origin<'_>) -> Result<RowDay, Unusable> {
    match dataset.date_source() {
        Some(DateSource::Column(c)) => dataset
            .column(c)
            .map(|(i, _)| RowDay::Column(i))
            .ok_or_else(|| Unusable::NoDate(format!("the date column {c:?} is not declared"))),
        Some(DateSource::FileName { pattern, format }) => {
            let caps = pattern.captures(origin.file_name).ok_or_else(|| {
                Unusable::NoDate(format!(
                    "the file name {:?} does not match the date pattern {:?}",
                    origin.file_name,
                    pattern.as_str()
                ))
            })?;
            let found = caps
                .name("date")
                .or_else(|| caps.get(1))
                .map_or("", |m| m.as_str());
            NaiveDate::parse_from_str(found, format)
                .map(RowDay::Fixed)
                .map_err(|_| {
                    Unusable::NoDate(format!(
                        "{found:?} in the file name {:?} is not a date of the form {format:?}",
                        origin.file_name
                    ))
                })
        }
        Some(DateSource::Received) => origin
            .received
            .map(|t| RowDay::Fixed(t.with_timezone(&dataset.time_zone.0).date_naive()))
            .ok_or_else(|| Unusable::NoDate("the mail's received time is not known".into())),
        None => Err(Unusable::NoDate("the dataset names no date source".into())),
    }
}

/// `bytes` decoded whole, for sniffing.
fn text_of(encoding: TextEncoding, bytes: &[u8]) -> String {
    let mut text = String::new();
    // A read error cannot happen on a slice; what decoded so far is a fine sample either way.
    let _ = encoding.decoder(bytes).read_to_string(&mut text);
    text
}

/// About how many records a text of `size` bytes has, from a `sample` of its start: its
/// non-blank lines, extrapolated (exact when the sample is the whole text). Counting a large
/// file's every byte would cost 4% of its ingest; a sample of blank lines estimates none.
fn estimated_rows(sample: &[u8], size: u64) -> usize {
    let lines = sample
        .split(|&b| b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .count();
    if size <= sample.len() as u64 {
        lines
    } else {
        (lines as f64 * size as f64 / sample.len().max(1) as f64 * 1.1) as usize
    }
}

/// A record typed, dated and keyed; the reason it is rejected otherwise.
fn keyed_row(
    dataset: &Dataset,
    positions: &[Option<usize>],
    derived: &[(usize, usize)],
    day: RowDay,
    key_idx: &[usize],
    fields: &Fields<'_, '_>,
) -> Result<(String, NaiveDate, Row), String> {
    let values = typed_row(dataset, positions, derived, fields)?;
    let date = match day {
        RowDay::Fixed(d) => d,
        RowDay::Column(i) => row_date(values[i].as_ref())
            .ok_or_else(|| format!("column {} is empty", dataset.columns[i].name))?,
    };
    let key = row_key(dataset, key_idx, &values)?;
    Ok((key, date, values))
}

fn key_idx_contains(dataset: &Dataset, name: &str) -> bool {
    dataset
        .key
        .iter()
        .any(|k| k.trim().eq_ignore_ascii_case(name.trim()))
}

fn typed_row(
    dataset: &Dataset,
    positions: &[Option<usize>],
    derived: &[(usize, usize)],
    fields: &Fields<'_, '_>,
) -> Result<Row, String> {
    let tz = dataset.time_zone.0;
    let mut row = Vec::with_capacity(dataset.columns.len());
    for (col, pos) in dataset.columns.iter().zip(positions) {
        if col.derive.is_some() {
            row.push(None); // filled below, once its source is typed
            continue;
        }
        let raw = pos.and_then(|p| fields.get(p)).unwrap_or("");
        let text = cleaned(col, raw);
        if text.is_empty() {
            if col.required {
                return Err(format!("column {} is required but empty", col.name));
            }
            row.push(None);
            continue;
        }
        let value = parse_value(col.kind, col.format.as_deref(), tz, &text)
            .map_err(|what| format!("column {}: {text:?} is not {what}", col.name))?;
        row.push(Some(value));
    }
    for &(i, from) in derived {
        let col = &dataset.columns[i];
        if let Some(d) = &col.derive {
            row[i] = derive(d.func, row[from].as_ref());
            if row[i].is_none() && col.required {
                return Err(format!(
                    "column {} is required but its source {} is empty",
                    col.name, d.from
                ));
            }
        }
    }
    Ok(row)
}

/// The field's text after the column's clean-up: trim, lookup table, default.
fn cleaned<'a>(col: &'a Column, raw: &'a str) -> std::borrow::Cow<'a, str> {
    let text = if col.trim { trimmed(raw) } else { raw };
    let mapped = col
        .map
        .as_ref()
        .and_then(|m| m.get(text))
        .map(String::as_str)
        .unwrap_or(text);
    if mapped.is_empty() {
        return col.default.as_deref().unwrap_or("").into();
    }
    mapped.into()
}

fn derive(func: DeriveFn, source: Option<&Value>) -> Option<Value> {
    let source = source?;
    let date_time = match source {
        Value::DateTime(t) => Some(*t),
        Value::Date(d) => d.and_hms_opt(0, 0, 0),
        _ => None,
    };
    match func {
        DeriveFn::Present => Some(Value::Bool(true)),
        DeriveFn::Hour => date_time.map(|t| Value::Int(i64::from(t.hour()))),
        DeriveFn::HourOfDay => date_time.map(|t| {
            const HOURS: [&str; 24] = [
                "00:00", "01:00", "02:00", "03:00", "04:00", "05:00", "06:00", "07:00", "08:00",
                "09:00", "10:00", "11:00", "12:00", "13:00", "14:00", "15:00", "16:00", "17:00",
                "18:00", "19:00", "20:00", "21:00", "22:00", "23:00",
            ];
            // A static string: no allocation for a value every row of a large file has.
            Value::Text(compact_str::CompactString::const_new(
                HOURS[t.hour() as usize],
            ))
        }),
        DeriveFn::Date => date_time.map(|t| Value::Date(t.date())),
        DeriveFn::Weekday => date_time.map(|t| Value::Text(format!("{:?}", t.weekday()).into())),
    }
}

/// Parses one non-empty field. Text is kept exactly as received (only an empty field is missing).
/// Date-times with an offset are converted to `tz`, the dataset's time zone; those without are
/// taken as already in it.
#[inline]
pub fn parse_value(
    kind: ColumnType,
    format: Option<&str>,
    tz: Tz,
    raw: &str,
) -> Result<Value, &'static str> {
    if kind == ColumnType::Text {
        return Ok(Value::Text(raw.into()));
    }
    let t = trimmed(raw);
    match kind {
        ColumnType::Text => Ok(Value::Text(raw.into())),
        ColumnType::Integer => t.parse().map(Value::Int).map_err(|_| "an integer"),
        ColumnType::Decimal => t
            .parse::<f64>()
            .ok()
            .filter(|d| d.is_finite())
            .map(Value::Dec)
            .ok_or("a decimal number"),
        ColumnType::Boolean => match t.to_ascii_lowercase().as_str() {
            "true" | "yes" | "y" | "1" => Ok(Value::Bool(true)),
            "false" | "no" | "n" | "0" => Ok(Value::Bool(false)),
            _ => Err("a boolean"),
        },
        ColumnType::Date => NaiveDate::parse_from_str(t, format.unwrap_or("%Y-%m-%d"))
            .map(Value::Date)
            .map_err(|_| "a date"),
        ColumnType::Datetime => parse_datetime(t, format, tz)
            .map(Value::DateTime)
            .ok_or("a date and time"),
        ColumnType::Duration => parse_duration(t).map(Value::Int).ok_or("a duration"),
    }
}

/// `text` without the white space around it; most fields have none, and a field that starts and
/// ends with a visible ASCII character is returned without `str::trim`'s Unicode tables.
#[inline]
fn trimmed(text: &str) -> &str {
    match (text.as_bytes().first(), text.as_bytes().last()) {
        (Some(&a), Some(&z)) if a.is_ascii_graphic() && z.is_ascii_graphic() => text,
        _ => text.trim(),
    }
}

fn parse_datetime(t: &str, format: Option<&str>, tz: Tz) -> Option<NaiveDateTime> {
    if format.is_none()
        && let Some(fast) = iso_datetime(t.as_bytes())
    {
        return Some(fast);
    }
    let local = |d: DateTime<chrono::FixedOffset>| d.with_timezone(&tz).naive_local();
    match format {
        Some(f) if f.contains("%z") || f.contains("%:z") => {
            DateTime::parse_from_str(t, f).ok().map(local)
        }
        Some(f) => NaiveDateTime::parse_from_str(t, f).ok(),
        None => DateTime::parse_from_rfc3339(t).ok().map(local).or_else(|| {
            ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
                .iter()
                .find_map(|f| NaiveDateTime::parse_from_str(t, f).ok())
        }),
    }
}

/// Whole seconds from `123`, `123.0`, `mm:ss` or `hh:mm:ss`.
fn parse_duration(t: &str) -> Option<i64> {
    if let Ok(s) = t.parse::<i64>() {
        return (s >= 0).then_some(s);
    }
    if !t.contains(':') {
        return t
            .parse::<f64>()
            .ok()
            .filter(|s| *s >= 0.0)
            .map(|s| s.round() as i64);
    }
    let parts: Vec<&str> = t.split(':').collect();
    if parts.len() > 3
        || parts
            .iter()
            .any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    parts
        .iter()
        .try_fold(0i64, |acc, p| Some(acc * 60 + p.parse::<i64>().ok()?))
}

/// `YYYY-MM-DD[T ]HH:MM:SS[.fff]` without an offset, parsed by hand: exports write millions of
/// these, and chrono's format-driven parser is several times slower.
fn iso_datetime(b: &[u8]) -> Option<NaiveDateTime> {
    let head: &[u8; 19] = b.first_chunk()?;
    if head[4] != b'-'
        || head[7] != b'-'
        || !matches!(head[10], b'T' | b' ')
        || head[13] != b':'
        || head[16] != b':'
    {
        return None;
    }
    // Each digit's value, or 10 and more for any other byte (wrapping below '0').
    let d = |i: usize| u32::from(head[i].wrapping_sub(b'0'));
    const DIGITS: [usize; 14] = [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18];
    if DIGITS.iter().any(|&i| d(i) > 9) {
        return None;
    }
    let two = |i: usize| d(i) * 10 + d(i + 1);
    let mut nanos = 0u32;
    if b.len() > 19 {
        let frac = b[19..].strip_prefix(b".")?;
        if frac.is_empty() || frac.len() > 9 || !frac.iter().all(u8::is_ascii_digit) {
            return None;
        }
        nanos = frac
            .iter()
            .fold(0u32, |acc, &c| acc * 10 + u32::from(c - b'0'))
            * 10u32.pow(9 - frac.len() as u32);
    }
    let year = (two(0) * 100 + two(2)) as i32;
    let date = NaiveDate::from_ymd_opt(year, two(5), two(8))?;
    date.and_hms_nano_opt(two(11), two(14), two(17), nanos)
}

fn row_date(value: Option<&Value>) -> Option<NaiveDate> {
    match value? {
        Value::DateTime(t) => Some(t.date()),
        Value::Date(d) => Some(*d),
        _ => None,
    }
}

fn row_key(dataset: &Dataset, key_idx: &[usize], values: &Row) -> Result<String, String> {
    let mut key = String::new();
    for (n, &i) in key_idx.iter().enumerate() {
        let v = values[i]
            .as_ref()
            .ok_or_else(|| format!("key column {} is empty", dataset.columns[i].name))?;
        if n > 0 {
            key.push(KEY_SEPARATOR);
        }
        v.write_display(&mut key);
    }
    if key.len() > MAX_PLAIN_KEY {
        key = format!("sha256:{}", hex::encode(Sha256::digest(key.as_bytes())));
    }
    Ok(key)
}

/// The delimiter among `,` `;` tab `|` that occurs most often outside quotes in the header line.
pub fn sniff_delimiter(text: &str) -> char {
    let mut counts = [0usize; 4];
    let candidates = [',', ';', '\t', '|'];
    let mut quoted = false;
    for ch in text.chars() {
        match ch {
            '"' => quoted = !quoted,
            '\n' | '\r' if !quoted => break,
            _ if !quoted => {
                if let Some(i) = candidates.iter().position(|&c| c == ch) {
                    counts[i] += 1;
                }
            }
            _ => {}
        }
    }
    let best = (0..4)
        .max_by_key(|&i| (counts[i], std::cmp::Reverse(i)))
        .unwrap_or(0);
    if counts[best] == 0 {
        ','
    } else {
        candidates[best]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definitions::Definitions;

    fn defs() -> Definitions {
        Definitions::parse(include_str!("../../reports.toml")).unwrap()
    }

    const HEADER: &str = "call_id,agent_id,agent_name,queue,started_at,answered_at,ended_at,duration_seconds,wait_seconds,disposition,caller_number,notes";

    fn csv(rows: &[&str]) -> String {
        let mut s = String::from(HEADER);
        for r in rows {
            s.push_str("\r\n");
            s.push_str(r);
        }
        s.push_str("\r\n");
        s
    }

    #[test]
    fn bom_is_dropped_and_never_reaches_the_first_header() {
        let d = defs();
        let text = format!(
            "\u{feff}{}",
            csv(&["c1,A1,Ann,Sales,2024-03-14T09:00:00,,2024-03-14T09:01:00,0,60,ABANDONED,,"])
        );
        let parsed =
            parse_attachment(&d.datasets["ib_calls"], text.as_bytes(), &Origin::default()).unwrap();
        assert_eq!(parsed.encoding, "utf-8-bom");
        assert_eq!(parsed.rows.len(), 1);
        assert_eq!(parsed.rows[0].key, "c1");
    }

    #[test]
    fn duplicate_keys_in_one_file_keep_the_first_row() {
        let d = defs();
        let text = csv(&[
            "c1,A1,Ann,Sales,2024-03-14T09:00:00,,2024-03-14T09:01:00,0,60,ABANDONED,,first",
            "c2,A1,Ann,Sales,2024-03-14T10:00:00,,2024-03-14T10:01:00,0,60,ABANDONED,,",
            "c1,A1,Ann,Sales,2024-03-14T09:00:00,,2024-03-14T09:01:00,0,60,ABANDONED,,edited later",
        ]);
        let parsed =
            parse_attachment(&d.datasets["ib_calls"], text.as_bytes(), &Origin::default()).unwrap();
        assert_eq!(parsed.rows_total, 3);
        assert_eq!(parsed.rows.len(), 2);
        assert_eq!(parsed.duplicates, 1);
        assert_eq!(parsed.rows[0].values[11], Some(Value::Text("first".into())));
    }

    #[test]
    fn streamed_chunks_keep_the_first_occurrence_across_chunk_boundaries() {
        let d = defs();
        let row =
            |id: &str, note: &str| format!("{id},A1,Ann,Sales,2024-03-14T09:00:00,,,0,1,X,,{note}");
        let text = csv(&[
            &row("c1", "first"),
            &row("c2", ""),
            &row("c1", "later"),
            &row("c3", ""),
        ]);
        let mut reader =
            AttachmentReader::new(&d.datasets["ib_calls"], text.as_bytes(), &Origin::default())
                .unwrap();
        let mut rows = Vec::new();
        while let Some(chunk) = reader.next_chunk(1).unwrap() {
            assert!(chunk.len() <= 1);
            rows.extend(chunk);
        }
        let keys: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys, ["c1", "c2", "c3"]);
        assert_eq!(rows[0].values[11], Some(Value::Text("first".into())));
        let s = reader.finish();
        assert_eq!((s.rows_total, s.rows_unique, s.duplicates), (4, 3, 1));
    }

    #[test]
    fn quoted_fields_keep_delimiters_quotes_and_newlines() {
        let d = defs();
        let text = csv(&[
            "c1,A1,\"O'Brien, Jr.\",Sales,2024-03-14T09:00:00,,,0,1,X,0049 30 1234567,\"said \"\"hi\"\"\r\nthen left\"",
        ]);
        let parsed =
            parse_attachment(&d.datasets["ib_calls"], text.as_bytes(), &Origin::default()).unwrap();
        let row = &parsed.rows[0].values;
        assert_eq!(row[2], Some(Value::Text("O'Brien, Jr.".into())));
        assert_eq!(
            row[10],
            Some(Value::Text("0049 30 1234567".into())),
            "phone numbers stay text"
        );
        assert_eq!(
            row[11],
            Some(Value::Text("said \"hi\"\r\nthen left".into()))
        );
    }

    #[test]
    fn a_value_that_does_not_fit_rejects_its_row_with_line_and_reason() {
        let d = defs();
        let text = csv(&[
            "c1,A1,Ann,Sales,2024-03-14T09:00:00,,,abc,1,X,,",
            "c2,A1,Ann,Sales,2024-03-14T09:00:00,,,5,1,X,,",
        ]);
        let parsed =
            parse_attachment(&d.datasets["ib_calls"], text.as_bytes(), &Origin::default()).unwrap();
        assert_eq!(parsed.rows.len(), 1);
        assert_eq!(parsed.rejects.len(), 1);
        assert_eq!(parsed.rejects[0].line, 2);
        assert!(
            parsed.rejects[0].reason.contains("duration_seconds"),
            "{:?}",
            parsed.rejects
        );
    }

    #[test]
    fn a_missing_required_column_makes_the_file_unusable() {
        let d = defs();
        let text = "agent_id,queue\r\nA1,Sales\r\n";
        let err = parse_attachment(&d.datasets["ib_calls"], text.as_bytes(), &Origin::default())
            .unwrap_err();
        assert_eq!(
            err,
            Unusable::MissingColumns(vec!["call_id".into(), "started_at".into()])
        );
    }

    #[test]
    fn na_looking_text_is_text_and_only_empty_is_missing() {
        let d = defs();
        let text = csv(&["c1,,,Sales,2024-03-14T09:00:00,,,0,1,X,N/A,NULL"]);
        let parsed =
            parse_attachment(&d.datasets["ib_calls"], text.as_bytes(), &Origin::default()).unwrap();
        let row = &parsed.rows[0].values;
        assert_eq!(row[1], None);
        assert_eq!(row[10], Some(Value::Text("N/A".into())));
        assert_eq!(row[11], Some(Value::Text("NULL".into())));
    }

    #[test]
    fn delimiters_are_sniffed_outside_quotes() {
        assert_eq!(sniff_delimiter("a;b;c\n1;2;3"), ';');
        assert_eq!(sniff_delimiter("a\tb\tc"), '\t');
        assert_eq!(sniff_delimiter("\"x,y,z\"|b|c"), '|');
        assert_eq!(sniff_delimiter("single"), ',');
    }

    #[test]
    fn utf16_and_windows_1252_are_decoded() {
        let mut le = vec![0xFF, 0xFE];
        for u in "call_id,started_at,agent_name\r\nc1,2024-03-14T09:00:00,Zoë\r\n".encode_utf16() {
            le.extend_from_slice(&u.to_le_bytes());
        }
        let parsed = ib(&le);
        assert_eq!(parsed.encoding, "utf-16le");
        assert_eq!(parsed.rows[0].values[2], Some(Value::Text("Zoë".into())));
        let parsed = ib(b"call_id,started_at,agent_name\nc1,2024-03-14T09:00:00,caf\xe9 \x80\n");
        assert_eq!(parsed.encoding, "windows-1252");
        assert_eq!(parsed.rows[0].values[2], Some(Value::Text("café €".into())));
    }

    #[test]
    fn datetimes_with_an_offset_land_in_the_datasets_time_zone() {
        let london = chrono_tz::Europe::London;
        // 23:30 UTC on 31 March 2024 is 00:30 BST on 1 April: the row belongs to 1 April.
        let v = parse_value(ColumnType::Datetime, None, london, "2024-03-31T23:30:00Z").unwrap();
        assert_eq!(v, Value::DateTime("2024-04-01T00:30:00".parse().unwrap()));
        let naive = parse_value(ColumnType::Datetime, None, london, "2024-03-31 23:30:00").unwrap();
        assert_eq!(
            naive,
            Value::DateTime("2024-03-31T23:30:00".parse().unwrap())
        );
    }

    #[test]
    fn columns_are_renamed_trimmed_mapped_defaulted_and_derived() {
        let text = r#"
[datasets.t]
time_zone = "UTC"
key = ["id"]
date_column = "at"
[datasets.t.match]
attachment = "x"
[[datasets.t.columns]]
name = "id"
type = "text"
source = "Ticket ID"
[[datasets.t.columns]]
name = "at"
type = "datetime"
[[datasets.t.columns]]
name = "team"
type = "text"
trim = true
map = { "TS2" = "Tech Support" }
default = "(none)"
[[datasets.t.columns]]
name = "hour"
type = "integer"
derive = { from = "at", fn = "hour" }
"#;
        let d = Definitions::parse(text).unwrap();
        let ds = &d.datasets["t"];
        let csv = "Ticket ID,at,team\nT1,2024-03-14T09:15:00,  TS2 \nT2,2024-03-14T17:00:00,\n";
        let parsed = parse_attachment(ds, csv.as_bytes(), &Origin::default()).unwrap();
        assert_eq!(parsed.rows[0].key, "T1");
        assert_eq!(
            parsed.rows[0].values[2],
            Some(Value::Text("Tech Support".into()))
        );
        assert_eq!(parsed.rows[0].values[3], Some(Value::Int(9)));
        assert_eq!(parsed.rows[1].values[2], Some(Value::Text("(none)".into())));
        assert_eq!(parsed.rows[1].values[3], Some(Value::Int(17)));
    }

    #[test]
    fn lf_files_report_the_same_lines_as_crlf_files() {
        let d = defs();
        let rows = [
            "c1,A1,Ann,Sales,2024-03-14T09:00:00,,,x,1,X,,",
            "c2,A1,Ann,Sales,2024-03-14T09:00:00,,,5,1,X,,\"two\nlines\"",
            "c3,A1,Ann,Sales,bad,,,5,1,X,,",
        ];
        let crlf = csv(&rows);
        let lf = crlf.replace("\r\n", "\n");
        for text in [crlf, lf] {
            let parsed =
                parse_attachment(&d.datasets["ib_calls"], text.as_bytes(), &Origin::default())
                    .unwrap();
            let lines: Vec<u64> = parsed.rejects.iter().map(|r| r.line).collect();
            assert_eq!(lines, vec![2, 5], "{:?}", parsed.rejects);
        }
    }

    /// Every row, the rejects and the summary of reading `path` as a stream.
    fn streamed(path: &std::path::Path) -> (Vec<KeyedRow>, ReadSummary) {
        let d = defs();
        let mut reader =
            AttachmentReader::from_file(&d.datasets["ib_calls"], path, &Origin::default()).unwrap();
        let mut rows = Vec::new();
        while let Some(chunk) = reader.next_chunk(2).unwrap() {
            rows.extend(chunk);
        }
        (rows, reader.finish())
    }

    fn temp_file(name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("charlie-{}-{name}", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn a_streamed_file_reads_as_the_same_bytes_in_memory_do() {
        let d = defs();
        let rows = [
            "c1,A1,Seán,Sales,2024-03-14T09:00:00,,,x,1,X,,",
            "c2,A1,Ann,Sales,2024-03-14T09:00:00,,,5,1,X,,\"two\nlines, «quoted»\"",
            "c3,A1,Ann,Sales,bad,,,5,1,X,,",
            "c2,A1,Ann,Sales,2024-03-14T09:00:00,,,5,1,X,,again",
            "c4,A2,Zoë,Billing,2024-03-14T10:00:00,,,7,2,X,,عميل",
        ];
        let crlf = format!("\u{feff}{}", csv(&rows));
        let lf = crlf.replace("\r\n", "\n");
        for (name, text) in [("crlf.csv", crlf), ("lf.csv", lf)] {
            let in_memory =
                parse_attachment(&d.datasets["ib_calls"], text.as_bytes(), &Origin::default())
                    .unwrap();
            let (rows, summary) = streamed(&temp_file(name, text.as_bytes()));
            assert_eq!(rows, in_memory.rows, "{name}");
            assert_eq!(summary.rejects, in_memory.rejects, "{name}");
            assert_eq!(summary.encoding, "utf-8-bom");
            assert_eq!((summary.rows_total, summary.duplicates), (5, 1));
            let lines: Vec<u64> = summary.rejects.iter().map(|r| r.line).collect();
            assert_eq!(lines, vec![2, 5], "{name}: {:?}", summary.rejects);
        }
    }

    #[test]
    fn a_streamed_file_that_is_not_utf8_is_decoded_as_windows_1252() {
        let text = csv(&["c1,A1,Se\u{e1}n,Sales,2024-03-14T09:00:00,,,1,1,X,,caf\u{e9} \u{20ac}5"]);
        let bytes: Vec<u8> = text
            .chars()
            .map(|c| match c {
                '\u{20ac}' => 0x80,
                c => c as u8,
            })
            .collect();
        let (rows, summary) = streamed(&temp_file("1252.csv", &bytes));
        assert_eq!(summary.encoding, "windows-1252");
        assert_eq!(rows[0].values[2], Some(Value::Text("Seán".into())));
        assert_eq!(rows[0].values[11], Some(Value::Text("café €5".into())));
    }

    #[test]
    fn the_fast_datetime_path_agrees_with_chrono() {
        for t in [
            "2024-03-14T09:00:00",
            "2024-03-14 23:59:59",
            "2024-02-29T00:00:00.5",
            "2024-03-14T09:00:00.123456789",
        ] {
            let chrono = ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
                .iter()
                .find_map(|f| NaiveDateTime::parse_from_str(t, f).ok());
            assert_eq!(iso_datetime(t.as_bytes()), chrono, "{t}");
        }
        for bad in [
            "2023-02-29T00:00:00",
            "2024-13-01T00:00:00",
            "2024-03-14T24:00:00",
            "2024-03-14T09:00",
            "2024-03-14T09:00:00Z",
            "2024-03-14T09:00:00.",
            "2O24-03-14T09:00:00",
        ] {
            assert_eq!(iso_datetime(bad.as_bytes()), None, "{bad}");
        }
    }

    fn ib(text: &[u8]) -> ParsedAttachment {
        parse_attachment(&defs().datasets["ib_calls"], text, &Origin::default()).unwrap()
    }

    #[test]
    fn pipe_delimited_files_are_sniffed() {
        let parsed = ib(b"call_id|started_at|queue\nc1|2024-03-14T09:00:00|Sales, EMEA\n");
        assert_eq!(parsed.delimiter, '|');
        assert_eq!(
            parsed.rows[0].values[3],
            Some(Value::Text("Sales, EMEA".into()))
        );
    }

    #[test]
    fn utf16_big_endian_with_bom_is_read() {
        let mut be = vec![0xFE, 0xFF];
        for u in "call_id\tstarted_at\r\nc1\t2024-03-14T09:00:00\r\n".encode_utf16() {
            be.extend_from_slice(&u.to_be_bytes());
        }
        let parsed = ib(&be);
        assert_eq!(
            (parsed.encoding, parsed.delimiter, parsed.rows.len()),
            ("utf-16be", '\t', 1)
        );
    }

    #[test]
    fn trailing_blank_and_separator_only_lines_are_not_records() {
        let parsed = ib(b"call_id,started_at\r\nc1,2024-03-14T09:00:00\r\n\r\n,\r\n  \r\n");
        assert_eq!(
            (parsed.rows_total, parsed.rows.len(), parsed.rejects.len()),
            (1, 1, 0)
        );
    }

    #[test]
    fn records_with_another_field_count_than_the_header_are_rejected_by_default() {
        let text = b"call_id,started_at,queue\nc1,2024-03-14T09:00:00\nc2,2024-03-14T09:01:00,Sales,extra\nc3,2024-03-14T09:02:00,Sales\n";
        let parsed = ib(text);
        assert_eq!(parsed.rows.len(), 1);
        let rejects: Vec<String> = parsed.rejects.iter().map(ToString::to_string).collect();
        assert_eq!(
            rejects,
            [
                "line 2: 2 fields, the header has 3",
                "line 3: 4 fields, the header has 3"
            ]
        );
        assert_eq!(
            parsed.lines,
            LineCounts {
                total: 4,
                header: 1,
                valid: 1,
                rejected: 2,
                blank: 0,
                unread: 0
            }
        );
    }

    #[test]
    fn a_dataset_may_pad_short_records_and_drop_extra_fields() {
        for (options, kept) in [
            ("pad = true", ["c1", "c3"].as_slice()),
            ("ignore_extra = true", &["c2", "c3"]),
            ("pad = true\nignore_extra = true", &["c1", "c2", "c3"]),
        ] {
            let toml = include_str!("../../reports.toml").replace(
                "[datasets.ib_calls.match]",
                &format!("[datasets.ib_calls.csv]\n{options}\n\n[datasets.ib_calls.match]"),
            );
            let d = Definitions::parse(&toml).unwrap();
            let text = b"call_id,started_at,queue\nc1,2024-03-14T09:00:00\nc2,2024-03-14T09:01:00,Sales,extra\nc3,2024-03-14T09:02:00,Sales\n";
            let parsed =
                parse_attachment(&d.datasets["ib_calls"], text, &Origin::default()).unwrap();
            let keys: Vec<&str> = parsed.rows.iter().map(|r| r.key.as_str()).collect();
            assert_eq!(keys, kept, "{options}");
            if let Some(c2) = parsed.rows.iter().find(|r| r.key == "c2") {
                assert_eq!(c2.values[3], Some(Value::Text("Sales".into())));
            }
            if let Some(c1) = parsed.rows.iter().find(|r| r.key == "c1") {
                assert_eq!(c1.values[3], None);
            }
        }
    }

    #[test]
    fn an_unterminated_quote_rejects_its_record_and_the_lines_it_swallowed() {
        let parsed = ib(
            b"call_id,started_at,notes\nc1,2024-03-14T09:00:00,ok\nc2,2024-03-14T09:00:00,\"open\nc3,2024-03-14T09:01:00,x\nc4,2024-03-14T09:02:00,y\n",
        );
        assert_eq!(parsed.rows.len(), 1);
        assert_eq!(parsed.rows_rejected, 1);
        assert_eq!(
            parsed.rejects[0].to_string(),
            "line 3: unterminated quote opened at line 3: lines 3-5, the rest of the file, are inside one field"
        );
        assert_eq!(
            parsed.lines,
            LineCounts {
                total: 5,
                header: 1,
                valid: 1,
                rejected: 3,
                blank: 0,
                unread: 0
            }
        );
    }

    #[test]
    fn headers_match_ignoring_case_and_surrounding_spaces() {
        let parsed = ib(b" CALL_ID ,Started_At\nc1,2024-03-14T09:00:00\n");
        assert_eq!(parsed.rows.len(), 1);
    }

    #[test]
    fn durations_accept_seconds_and_clock_forms() {
        assert_eq!(parse_duration("90"), Some(90));
        assert_eq!(parse_duration("01:02:03"), Some(3723));
        assert_eq!(parse_duration("2:30"), Some(150));
        assert_eq!(parse_duration("1:x"), None);
        assert_eq!(parse_duration("-4"), None);
    }

    #[test]
    fn long_keys_are_hashed() {
        let d = defs();
        let long = "k".repeat(600);
        let text = csv(&[&format!("{long},,,Sales,2024-03-14T09:00:00,,,0,1,X,,")]);
        let parsed =
            parse_attachment(&d.datasets["ib_calls"], text.as_bytes(), &Origin::default()).unwrap();
        assert!(parsed.rows[0].key.starts_with("sha256:"));
        assert_eq!(parsed.rows[0].key.len(), 7 + 64);
    }

    /// A random export: random delimiter and line ends, quoted fields holding delimiters, line
    /// breaks and escaped quotes, stray quotes, blank and separator-only lines, records of the
    /// wrong width, bad values, duplicates, sometimes a quote that never closes, sometimes no
    /// break after the last line.
    fn random_file(rng: &mut rand::rngs::StdRng) -> Vec<u8> {
        use rand::Rng;
        let delim = [",", ";", "\t", "|"][rng.random_range(0..4)];
        let ends = ["\n", "\r\n", "\r"];
        let end = |rng: &mut rand::rngs::StdRng| ends[rng.random_range(0..3)];
        let mut out = format!("call_id{delim}started_at{delim}notes");
        let records = rng.random_range(0..40);
        for n in 0..records {
            out.push_str(end(rng));
            let r = &mut *rng;
            match r.random_range(0..12) {
                0 => {}                                                                        // blank line
                1 => out.push_str(&delim.repeat(2)), // separators only
                2 => out.push_str("   "),            // white space only
                3 => out.push_str(&format!("c{n}{delim}2024-03-14T09:00:00")), // short
                4 => out.push_str(&format!("c{n}{delim}2024-03-14T09:00:00{delim}x{delim}y")), // long
                5 => out.push_str(&format!("c{n}{delim}not a date{delim}z")),
                6 => out.push_str(&format!("c{}{delim}2024-03-14T09:00:00{delim}dup", n % 3)),
                7 => out.push_str(&format!("c{n}{delim}2024-03-14T09:00:00{delim}5\" screen")),
                8 => {
                    let inner = ["a\nb", "a\r\nb", "a\rb", "x\"\"y", "q{delim}r", "", "\n\n"]
                        [r.random_range(0..7)]
                    .replace("{delim}", delim);
                    out.push_str(&format!("c{n}{delim}2024-03-14T09:00:00{delim}\"{inner}\""));
                }
                9 if n + 1 == records => {
                    out.push_str(&format!(
                        "c{n}{delim}2024-03-14T09:00:00{delim}\"never closed"
                    ));
                }
                _ => out.push_str(&format!(
                    "c{n}{delim}2024-03-14T09:{:02}:00{delim}ok",
                    n % 60
                )),
            }
        }
        if rng.random_bool(0.7) {
            out.push_str(end(rng));
        }
        if rng.random_bool(0.2) {
            out.push_str(end(rng));
        }
        out.into_bytes()
    }

    use rand::SeedableRng;

    #[test]
    fn every_physical_line_is_accounted_for_in_any_file() {
        let d = defs();
        let ds = &d.datasets["ib_calls"];
        for seed in 0..2000u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let bytes = random_file(&mut rng);
            let shown = String::from_utf8_lossy(&bytes).into_owned();
            let parsed = parse_attachment(ds, &bytes, &Origin::default())
                .unwrap_or_else(|e| panic!("seed {seed}: {e}\n{shown:?}"));
            let lines = parsed.lines;
            assert_eq!(
                lines.total,
                crate::csv_records::physical_lines(&bytes),
                "seed {seed}: {lines:?}\n{shown:?}"
            );
            assert!(lines.balanced(), "seed {seed}: {lines:?}\n{shown:?}");
            assert_eq!(
                parsed.rows.len() as u64 + parsed.duplicates + parsed.rows_rejected,
                parsed.rows_total,
                "seed {seed}\n{shown:?}"
            );
            assert_eq!(
                parsed.rejects.len() as u64,
                parsed.rows_rejected,
                "seed {seed}"
            );
            for r in &parsed.rejects {
                assert!(
                    r.line >= 2 && r.line <= lines.total,
                    "seed {seed}: {r}\n{shown:?}"
                );
                assert!(!r.reason.is_empty());
            }
            if shown.contains("never closed") {
                assert!(
                    parsed
                        .rejects
                        .iter()
                        .any(|r| r.reason.starts_with("unterminated quote opened at line")),
                    "seed {seed}: {:?}\n{shown:?}",
                    parsed.rejects
                );
            }
        }
    }

    /// ib_calls with `replace` applied to the shipped definitions.
    fn ib_with(old: &str, new: &str) -> Definitions {
        let toml = include_str!("../../reports.toml");
        assert!(toml.contains(old), "{old}");
        Definitions::parse(&toml.replacen(old, new, 1)).unwrap()
    }

    #[test]
    fn a_row_may_take_its_day_from_the_file_name_or_the_received_time() {
        let text = b"call_id,started_at\nc1,2024-03-14T23:30:00\nc2,\n";
        let by_name = ib_with(
            "date_column = \"started_at\"",
            "date = { from = \"file_name\", pattern = \"_(\\\\d{8})\\\\.csv$\", format = \"%Y%m%d\" }",
        );
        let ds = &by_name.datasets["ib_calls"];
        let parsed = parse_attachment(ds, text, &Origin::named("ib_calls_20240316.csv")).unwrap();
        assert_eq!(parsed.fixed_date, Some("2024-03-16".parse().unwrap()));
        assert!(
            parsed
                .rows
                .iter()
                .all(|r| r.date.to_string() == "2024-03-16")
        );
        assert_eq!(
            parsed.rows_rejected, 1,
            "started_at is still required: {:?}",
            parsed.rejects
        );
        let err = parse_attachment(ds, text, &Origin::named("ib_calls.csv")).unwrap_err();
        assert!(
            matches!(err, Unusable::NoDate(ref m) if m.contains("does not match")),
            "{err}"
        );
        let err = parse_attachment(ds, text, &Origin::named("ib_calls_20241399.csv")).unwrap_err();
        assert!(
            err.to_string().contains("\"20241399\" in the file name"),
            "{err}"
        );

        let by_received = ib_with("date_column = \"started_at\"", "date = \"received\"");
        let ds = &by_received.datasets["ib_calls"];
        // 23:30 UTC on 31 March is 00:30 on 1 April in London (summer time).
        let origin = Origin {
            file_name: "x.csv",
            received: Some("2024-03-31T23:30:00Z".parse().unwrap()),
        };
        let parsed = parse_attachment(ds, text, &origin).unwrap();
        assert_eq!(parsed.fixed_date, Some("2024-04-01".parse().unwrap()));
        let err = parse_attachment(ds, text, &Origin::named("x.csv")).unwrap_err();
        assert!(matches!(err, Unusable::NoDate(_)), "{err}");
    }

    #[test]
    fn over_a_limit_the_attachment_is_unusable_and_the_limit_named() {
        let cases = [
            ("max_attachment_bytes = 100", "max_attachment_bytes"),
            ("max_rows = 2", "max_rows"),
            ("max_columns = 2", "max_columns"),
            ("max_field_bytes = 8", "max_field_bytes"),
        ];
        let text = "call_id,started_at,notes\nc1,2024-03-14T09:00:00,short\nc2,2024-03-14T09:00:00,a longer note\nc3,2024-03-14T09:00:00,x\n";
        for (limit, named) in cases {
            // Per dataset, and as the file-wide default.
            for d in [
                ib_with(
                    "[datasets.ib_calls.match]",
                    &format!("[datasets.ib_calls.limits]\n{limit}\n\n[datasets.ib_calls.match]"),
                ),
                Definitions::parse(&format!(
                    "[limits]\n{limit}\n\n{}",
                    include_str!("../../reports.toml")
                ))
                .unwrap(),
            ] {
                let err =
                    parse_attachment(&d.datasets["ib_calls"], text.as_bytes(), &Origin::default())
                        .unwrap_err();
                assert!(
                    matches!(err, Unusable::OverLimit(ref m) if m.contains(named)),
                    "{limit}: {err}"
                );
            }
        }
        let fine = parse_attachment(
            &defs().datasets["ib_calls"],
            text.as_bytes(),
            &Origin::default(),
        )
        .unwrap();
        assert_eq!(fine.rows.len(), 3);
    }

    /// A file unusable part way (here 12,000 good rows, then a quote that never closes and so
    /// runs past `max_field_bytes`): every row before the error comes out, in chunks of 5,000,
    /// and then the error; the failing record counts as no row, its lines as unread.
    #[test]
    fn a_file_unusable_part_way_gives_every_row_before_it() {
        let d = ib_with(
            "[datasets.ib_calls.match]",
            "[datasets.ib_calls.limits]\nmax_field_bytes = 1000\n\n[datasets.ib_calls.match]",
        );
        let mut text = String::from("call_id,started_at,notes\n");
        for i in 0..12_000 {
            text.push_str(&format!("c{i},2024-03-14T09:00:00,ok\n"));
        }
        text.push_str("broken,2024-03-14T09:00:00,\"opened\n");
        for _ in 0..50 {
            text.push_str(&"x".repeat(40));
            text.push('\n');
        }
        for streamed in [false, true] {
            let ds = &d.datasets["ib_calls"];
            let mut reader = if streamed {
                AttachmentReader::from_reader(ds, text.as_bytes(), None, &Origin::default())
            } else {
                AttachmentReader::new(ds, text.as_bytes(), &Origin::default())
            }
            .unwrap();
            let mut rows = 0;
            let err = loop {
                match reader.next_chunk(5_000) {
                    Ok(Some(chunk)) => rows += chunk.len(),
                    Ok(None) => panic!("the file ends in an error"),
                    Err(why) => break why,
                }
            };
            assert!(err.to_string().contains("max_field_bytes"), "{err}");
            assert_eq!(reader.next_chunk(5_000), Ok(None), "done after the error");
            let s = reader.finish();
            assert_eq!(rows, 12_000, "streamed: {streamed}");
            assert_eq!((s.rows_total, s.rows_unique), (12_000, 12_000));
            assert_eq!(s.lines.total, 12_052);
            assert_eq!(s.lines.unread, 51, "{:?}", s.lines);
            assert!(s.lines.balanced(), "{:?}", s.lines);
        }
        let parsed =
            read_attachment(&d.datasets["ib_calls"], text.as_bytes(), &Origin::default()).unwrap();
        assert_eq!(parsed.rows.len(), 12_000);
        assert!(matches!(parsed.stopped, Some(Unusable::OverLimit(_))));
    }

    /// Any file cut at any point, with a tail that stops reading (a field over its limit, one
    /// row too many, too many fields): whatever the chunk size, the rows that come out, the
    /// duplicates and the rejects add up to the records read, and every physical line is
    /// header, valid, rejected, blank or unread.
    #[test]
    fn counts_add_up_whatever_point_a_file_stops_at() {
        use rand::Rng;
        let d = ib_with(
            "[datasets.ib_calls.match]",
            "[datasets.ib_calls.limits]\nmax_field_bytes = 64\nmax_rows = 60\nmax_columns = 8\n\n[datasets.ib_calls.match]",
        );
        let ds = &d.datasets["ib_calls"];
        for seed in 0..1500u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut bytes = random_file(&mut rng);
            let cut = rng.random_range(0..=bytes.len());
            bytes.truncate(cut);
            match rng.random_range(0..4) {
                0 => bytes.extend_from_slice(format!("\n\"{}", "y".repeat(100)).as_bytes()),
                1 => bytes.extend_from_slice("\nc,2024-03-14T09:00:00,ok".repeat(70).as_bytes()),
                2 => bytes.extend_from_slice(b"\na,b,c,d,e,f,g,h,i,j\nz,2024-03-14T09:00:00,ok\n"),
                _ => {}
            }
            let shown = String::from_utf8_lossy(&bytes).into_owned();
            let Ok(mut reader) = AttachmentReader::new(ds, &bytes, &Origin::default()) else {
                continue; // unusable from the start: nothing read, nothing stored
            };
            let chunk = rng.random_range(1..40);
            let mut rows = 0u64;
            let stopped = loop {
                match reader.next_chunk(chunk) {
                    Ok(Some(c)) => rows += c.len() as u64,
                    Ok(None) => break None,
                    Err(why) => break Some(why),
                }
            };
            let s = reader.finish();
            assert_eq!(
                rows + s.duplicates + s.rows_rejected,
                s.rows_total,
                "seed {seed} ({stopped:?})\n{shown:?}"
            );
            assert_eq!(rows, s.rows_unique, "seed {seed}");
            assert_eq!(
                s.lines.total,
                crate::csv_records::physical_lines(&bytes),
                "seed {seed}: {:?} ({stopped:?})\n{shown:?}",
                s.lines
            );
            assert!(s.lines.balanced(), "seed {seed}: {:?}\n{shown:?}", s.lines);
            assert_eq!(
                stopped.is_none(),
                s.lines.unread == 0,
                "seed {seed}: {stopped:?}"
            );
        }
    }

    #[test]
    fn the_key_set_is_never_sized_from_blank_lines() {
        let mut text = "\n".repeat(SNIFF_BYTES);
        text.insert_str(0, "call_id,started_at\n");
        // One line of 256 KiB extrapolated to 1 GiB: thousands, not the millions lines would say.
        assert!(estimated_rows(text.as_bytes(), 1 << 30) < 10_000);
        let rows = "c1,2024-03-14T09:00:00\n".repeat(1000);
        let estimate = estimated_rows(rows.as_bytes(), rows.len() as u64 * 10);
        assert!((10_000..12_000).contains(&estimate), "{estimate}");
    }

    #[test]
    fn a_configured_encoding_decodes_files_without_a_bom() {
        let d = ib_with(
            "[datasets.ib_calls.match]",
            "[datasets.ib_calls.csv]\nencoding = \"iso-8859-15\"\n\n[datasets.ib_calls.match]",
        );
        // 0xA4 is € in ISO-8859-15 (¤ in Windows-1252).
        let parsed = parse_attachment(
            &d.datasets["ib_calls"],
            b"call_id,started_at,notes\nc1,2024-03-14T09:00:00,5 \xa4\n",
            &Origin::default(),
        )
        .unwrap();
        assert_eq!(parsed.encoding, "ISO-8859-15");
        assert_eq!(parsed.rows[0].values[11], Some(Value::Text("5 €".into())));
    }

    #[test]
    fn a_stream_that_stops_being_utf8_rejects_the_records_it_cannot_read() {
        let mut text = b"call_id,started_at,notes\n".to_vec();
        for i in 0..20_000 {
            text.extend_from_slice(format!("c{i},2024-03-14T09:00:00,ok\n").as_bytes());
        }
        text.extend_from_slice(b"late,2024-03-14T09:00:00,caf\xe9\n");
        let d = defs();
        let mut reader = AttachmentReader::from_reader(
            &d.datasets["ib_calls"],
            &text[..],
            None,
            &Origin::default(),
        )
        .unwrap();
        while reader.next_chunk(1000).unwrap().is_some() {}
        let s = reader.finish();
        assert_eq!(
            (s.encoding, s.rows_unique, s.rows_rejected),
            ("utf-8", 20_000, 1)
        );
        assert_eq!(s.rejects[0].line, 20_002);
        assert!(
            s.rejects[0].reason.contains("encoding = "),
            "{}",
            s.rejects[0].reason
        );
        assert!(s.lines.balanced());
    }
}
