//! CSV attachment → typed, keyed, deduplicated rows, per a dataset's definition. Pure: bytes in,
//! rows and rejects out; storage decides what is new.

use std::borrow::Cow;

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, Timelike};
use chrono_tz::Tz;
use sha2::{Digest, Sha256};

use crate::definitions::{Column, ColumnType, Dataset, DeriveFn};
use crate::key_set::KeySet;
use crate::value::{Row, Value};

/// Keys longer than this are stored as their SHA-256 (DynamoDB sort keys are at most 1 KiB).
const MAX_PLAIN_KEY: usize = 512;
/// Rows typed ahead of their dedup, so that their key slots' loads overlap (see `next_chunk`).
const PREFETCH_BATCH: usize = 16;
/// Separates key column values inside a row key; a control character no export uses.
const KEY_SEPARATOR: char = '\u{1f}';

/// A row ready to store: its key within the day, the day, and its values.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyedRow {
    pub key: String,
    pub date: NaiveDate,
    pub values: Row,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Reject {
    /// 1-based line of the file where the record starts.
    pub line: u64,
    pub reason: String,
}

#[derive(Debug)]
pub struct ParsedAttachment {
    pub encoding: &'static str,
    pub delimiter: char,
    /// Data records read (excluding the header).
    pub rows_total: u64,
    /// Unique, valid rows in file order (first occurrence of each key).
    pub rows: Vec<KeyedRow>,
    /// Valid rows whose key repeated an earlier row of the same file.
    pub duplicates: u64,
    pub rejects: Vec<Reject>,
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
}

/// Parses one attachment for `dataset`, keeping every unique row (see [`AttachmentReader`] to
/// stream instead).
pub fn parse_attachment(dataset: &Dataset, bytes: &[u8]) -> Result<ParsedAttachment, Unusable> {
    let mut reader = AttachmentReader::new(dataset, bytes)?;
    let mut rows = Vec::new();
    while let Some(chunk) = reader.next_chunk(usize::MAX) {
        rows.extend(chunk);
    }
    let s = reader.finish();
    Ok(ParsedAttachment {
        encoding: s.encoding,
        delimiter: s.delimiter,
        rows_total: s.rows_total,
        rows,
        duplicates: s.duplicates,
        rejects: s.rejects,
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
    pub rejects: Vec<Reject>,
}

/// The decoded text, shared by the CSV reader and the line-number fix-up: the input itself when
/// it is UTF-8 already (no copy), else its decoded form.
#[derive(Clone)]
enum SharedText<'a> {
    Borrowed(&'a str),
    Decoded(std::sync::Arc<str>),
}

impl SharedText<'_> {
    fn as_str(&self) -> &str {
        match self {
            SharedText::Borrowed(s) => s,
            SharedText::Decoded(s) => s,
        }
    }
}

impl AsRef<[u8]> for SharedText<'_> {
    fn as_ref(&self) -> &[u8] {
        self.as_str().as_bytes()
    }
}

/// Streams an attachment: unique, valid rows come out in chunks (first occurrence of each key
/// wins across the whole file), so memory stays bounded by the chunk size plus a compact set of
/// the keys seen, whatever the file's size.
pub struct AttachmentReader<'a> {
    dataset: &'a Dataset,
    /// The whole text when it is in memory: reject line numbers are then exact.
    text: Option<SharedText<'a>>,
    /// A streamed file's line ends are CRLF (from its header line).
    crlf: bool,
    reader: csv::Reader<Box<dyn std::io::Read + Send + 'a>>,
    record: csv::ByteRecord,
    positions: Vec<Option<usize>>,
    /// Each derived column with the column it derives from (looked up once, not per row).
    derived: Vec<(usize, usize)>,
    key_idx: Vec<usize>,
    date_idx: usize,
    keys: KeySet,
    /// Typed rows waiting for dedup, with their keys' hashes (kept to reuse its allocation).
    batch: Vec<(u64, KeyedRow)>,
    summary: ReadSummary,
    done: bool,
}

impl<'a> AttachmentReader<'a> {
    /// Decodes the bytes and reads the header; fails when the file cannot be used at all.
    pub fn new(dataset: &'a Dataset, bytes: &'a [u8]) -> Result<Self, Unusable> {
        let (text, encoding) = decode(bytes);
        let text = match text {
            Cow::Borrowed(s) => SharedText::Borrowed(s),
            Cow::Owned(s) => SharedText::Decoded(std::sync::Arc::from(s)),
        };
        Self::from_text(dataset, text, encoding)
    }

    /// Reads a file as a stream, so that memory holds a buffer of it, never the whole file:
    /// for exports larger than memory should hold (`charlie report build`). UTF-8 files (the
    /// exporters' norm) stream; UTF-16 and Windows-1252 files are decoded in memory. Line numbers
    /// of rejects assume the line ends of the header line throughout.
    pub fn from_file(dataset: &'a Dataset, path: &std::path::Path) -> Result<Self, Unusable> {
        use std::io::{Read, Seek};
        let unreadable = |e: std::io::Error| Unusable::Unreadable(e.to_string());
        let mut file = std::fs::File::open(path).map_err(unreadable)?;
        let size = file.metadata().map_err(unreadable)?.len() as usize;
        // First pass: is it UTF-8 throughout? (Reading it twice costs less than holding it.)
        let mut head = Vec::new();
        let mut check = Utf8Checked::new(&mut file);
        let mut block = vec![0u8; 1 << 20];
        let utf8 = loop {
            match check.read(&mut block) {
                Ok(0) => break true,
                Ok(n) => {
                    if head.len() < SNIFF_BYTES {
                        head.extend_from_slice(&block[..n.min(SNIFF_BYTES - head.len())]);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => break false,
                Err(e) => return Err(unreadable(e)),
            }
        };
        let bom = head.starts_with(b"\xEF\xBB\xBF");
        if !utf8 || head.starts_with(b"\xFF\xFE") || head.starts_with(b"\xFE\xFF") {
            // Decoded in memory, owned by the reader.
            drop(block);
            let bytes = std::fs::read(path).map_err(unreadable)?;
            let (text, encoding) = decode(&bytes);
            let text = SharedText::Decoded(std::sync::Arc::from(text.into_owned()));
            return Self::from_text(dataset, text, encoding);
        }
        let skip = if bom { 3 } else { 0 };
        file.seek(std::io::SeekFrom::Start(skip))
            .map_err(unreadable)?;
        let head = &head[skip as usize..];
        let first_line = head.split(|&b| b == b'\n').next().unwrap_or_default();
        let crlf = first_line.ends_with(b"\r") && first_line.len() < head.len();
        let input: Box<dyn std::io::Read + Send + 'a> = Box::new(Utf8Checked::new(file));
        let mut reader = Self::from_input(
            dataset,
            input,
            &String::from_utf8_lossy(head),
            size,
            if bom { "utf-8-bom" } else { "utf-8" },
        )?;
        reader.crlf = crlf;
        Ok(reader)
    }

    fn from_text(
        dataset: &'a Dataset,
        text: SharedText<'a>,
        encoding: &'static str,
    ) -> Result<Self, Unusable> {
        let shared = text.clone();
        let all = text.as_str();
        let head = &all[..all.floor_char_boundary(SNIFF_BYTES)];
        let (head, size) = (head.to_owned(), all.len());
        let input: Box<dyn std::io::Read + Send + 'a> = Box::new(std::io::Cursor::new(text));
        let mut reader = Self::from_input(dataset, input, &head, size, encoding)?;
        reader.text = Some(shared);
        Ok(reader)
    }

    /// Reads the header from `input`, whose first bytes are `head` and whose size is `size`.
    fn from_input(
        dataset: &'a Dataset,
        input: Box<dyn std::io::Read + Send + 'a>,
        head: &str,
        size: usize,
        encoding: &'static str,
    ) -> Result<Self, Unusable> {
        if head.trim().is_empty() {
            return Err(Unusable::Empty);
        }
        let delimiter = dataset
            .csv
            .delimiter
            .unwrap_or_else(|| sniff_delimiter(head));
        // Sizing the key set once spares its rehashing: records ≈ lines, estimated from a sample.
        let lines = estimated_lines(head.as_bytes(), size);
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(delimiter as u8)
            .has_headers(false)
            .flexible(true)
            .buffer_capacity(64 * 1024)
            .from_reader(input);
        // One record, reused for every row: no allocation per row for the parse itself.
        let mut record = csv::ByteRecord::new();
        match reader.read_byte_record(&mut record) {
            Ok(true) => {}
            Ok(false) => return Err(Unusable::Empty),
            Err(e) => return Err(Unusable::Malformed(e.to_string())),
        }
        let header: Vec<String> = record
            .iter()
            .map(|h| String::from_utf8_lossy(h).into_owned())
            .collect();
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
                    && (c.required || key_idx_contains(dataset, &c.name))
            })
            .map(|(c, _)| c.header().to_owned())
            .collect();
        if !missing.is_empty() {
            return Err(Unusable::MissingColumns(missing));
        }
        let date_idx = dataset
            .column(&dataset.date_column)
            .map(|(i, _)| i)
            .expect("validated definitions declare the date column");
        Ok(AttachmentReader {
            dataset,
            text: None,
            crlf: false,
            reader,
            record,
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
            date_idx,
            keys: KeySet::with_capacity(lines, size / 4),
            batch: Vec::with_capacity(PREFETCH_BATCH),
            summary: ReadSummary {
                encoding,
                delimiter,
                rows_total: 0,
                rows_unique: 0,
                duplicates: 0,
                rejects: Vec::new(),
            },
            done: false,
        })
    }

    /// The next unique, valid rows (at most `max`), or `None` at the end of the file.
    ///
    /// Rows are typed in small batches and their keys' slots prefetched before the batch is
    /// deduplicated in file order, so the key set's memory latency overlaps useful work.
    pub fn next_chunk(&mut self, max: usize) -> Option<Vec<KeyedRow>> {
        if self.done {
            return None;
        }
        let mut rows = Vec::with_capacity(max.min(8192));
        let mut batch = std::mem::take(&mut self.batch);
        while rows.len() < max && !self.done {
            // Each row of the batch adds at most one row to the chunk: it never overflows `max`.
            let room = (max - rows.len()).min(PREFETCH_BATCH);
            while batch.len() < room {
                match self.next_row() {
                    Some(row) => {
                        let hash = self.keys.hash(row.date, &row.key);
                        self.keys.prefetch(hash);
                        batch.push((hash, row));
                    }
                    None => break,
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
            None
        } else {
            Some(rows)
        }
    }

    /// The next valid row of the file, recording rejects on the way; `None` at its end.
    fn next_row(&mut self) -> Option<KeyedRow> {
        loop {
            match self.reader.read_byte_record(&mut self.record) {
                Ok(true) => {}
                Ok(false) => {
                    self.done = true;
                    return None;
                }
                Err(e) => {
                    let line = e.position().map_or(0, |p| self.line(p));
                    if matches!(e.kind(), csv::ErrorKind::Io(_)) {
                        // The stream broke (or changed under us): nothing after it can be trusted.
                        self.done = true;
                        self.summary.rejects.push(Reject {
                            line,
                            reason: format!("the file could not be read past here: {e}"),
                        });
                        return None;
                    }
                    self.summary.rows_total += 1;
                    self.summary.rejects.push(Reject {
                        line,
                        reason: format!("unreadable record: {e}"),
                    });
                    continue;
                }
            }
            let record = &self.record;
            if record.iter().all(|f| f.iter().all(u8::is_ascii_whitespace)) {
                continue; // blank or separator-only line: not a record
            }
            self.summary.rows_total += 1;
            match keyed_row(
                self.dataset,
                &self.positions,
                &self.derived,
                self.date_idx,
                &self.key_idx,
                record,
            ) {
                Ok(row) => return Some(row),
                Err(reason) => {
                    let line = record.position().map_or(0, |p| self.line(p));
                    self.summary.rejects.push(Reject { line, reason });
                }
            }
        }
    }

    /// The 1-based line where the record at `pos` starts. In memory, [`line_of`] looks at the
    /// byte there; a stream has gone past it, so a CRLF file's records (all after the header,
    /// whose CRLF puts the reader's count one behind) are taken as one line further on.
    fn line(&self, pos: &csv::Position) -> u64 {
        match &self.text {
            Some(text) => line_of(text.as_str(), pos),
            None if self.crlf => pos.line() + 1,
            None => pos.line(),
        }
    }

    /// What was read; call after the last chunk.
    pub fn finish(self) -> ReadSummary {
        self.summary
    }
}

/// How much of a file's start is read to sniff its delimiter and estimate its lines.
const SNIFF_BYTES: usize = 256 * 1024;

/// About how many lines a text of `size` bytes has, from a `sample` of its start: extrapolated
/// with a margin (exact when the sample is the whole text). Counting a large file's every byte
/// would cost 4% of its ingest.
fn estimated_lines(sample: &[u8], size: usize) -> usize {
    let lines = sample.iter().filter(|&&b| b == b'\n').count() + 1;
    if size <= sample.len() {
        lines
    } else {
        (lines as f64 * size as f64 / sample.len().max(1) as f64 * 1.2) as usize
    }
}

/// Passes UTF-8 through, checking it as it goes: an invalid byte is an `InvalidData` error. A
/// character split across reads is held back until it is whole, so every read ends on a
/// character boundary (fields are then valid `str`s without another check, see [`field_str`]).
struct Utf8Checked<R> {
    inner: R,
    carry: [u8; 3],
    carry_len: usize,
    offset: u64,
}

impl<R> Utf8Checked<R> {
    fn new(inner: R) -> Self {
        Utf8Checked {
            inner,
            carry: [0; 3],
            carry_len: 0,
            offset: 0,
        }
    }
}

impl<R: std::io::Read> std::io::Read for Utf8Checked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::io::{Error, ErrorKind};
        if buf.len() < 4 {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "read buffer under 4 bytes",
            ));
        }
        loop {
            let c = self.carry_len;
            buf[..c].copy_from_slice(&self.carry[..c]);
            let n = match self.inner.read(&mut buf[c..]) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let end = c + n;
            if n == 0 {
                return if c == 0 {
                    Ok(0)
                } else {
                    Err(Error::new(
                        ErrorKind::InvalidData,
                        "the file ends inside a UTF-8 character",
                    ))
                };
            }
            let valid = match std::str::from_utf8(&buf[..end]) {
                Ok(_) => end,
                Err(e) if e.error_len().is_none() => e.valid_up_to(),
                Err(e) => {
                    return Err(Error::new(
                        ErrorKind::InvalidData,
                        format!("not UTF-8 at byte {}", self.offset + e.valid_up_to() as u64),
                    ));
                }
            };
            self.carry_len = end - valid;
            self.carry[..self.carry_len].copy_from_slice(&buf[valid..end]);
            if valid > 0 {
                self.offset += valid as u64;
                return Ok(valid);
            }
        }
    }
}

/// The 1-based line where a record starts. After a CRLF the csv reader has not yet consumed the
/// `\n` when it stamps the next record's position, so its line count is one behind there.
fn line_of(text: &str, pos: &csv::Position) -> u64 {
    match text.as_bytes().get(pos.byte() as usize) {
        Some(b'\n') => pos.line() + 1,
        _ => pos.line(),
    }
}

/// A record typed, dated and keyed; the reason it is rejected otherwise.
fn keyed_row(
    dataset: &Dataset,
    positions: &[Option<usize>],
    derived: &[(usize, usize)],
    date_idx: usize,
    key_idx: &[usize],
    record: &csv::ByteRecord,
) -> Result<KeyedRow, String> {
    let values = typed_row(dataset, positions, derived, record)?;
    let date = row_date(values[date_idx].as_ref())
        .ok_or_else(|| format!("column {} is empty", dataset.date_column))?;
    let key = row_key(dataset, key_idx, &values)?;
    Ok(KeyedRow { key, date, values })
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
    record: &csv::ByteRecord,
) -> Result<Row, String> {
    let tz = dataset.time_zone.0;
    let mut row = Vec::with_capacity(dataset.columns.len());
    for (col, pos) in dataset.columns.iter().zip(positions) {
        if col.derive.is_some() {
            row.push(None); // filled below, once its source is typed
            continue;
        }
        let raw = pos.and_then(|p| record.get(p)).map_or("", field_str);
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

/// A field as text. The whole input was decoded to a `str` before parsing, and the CSV reader
/// splits and unescapes only at ASCII bytes (delimiter, quote, CR, LF), which never occur inside
/// a UTF-8 multi-byte sequence: every field is valid UTF-8, so it is not validated again (that
/// check was 4% of the ingest time).
fn field_str(f: &[u8]) -> &str {
    debug_assert!(std::str::from_utf8(f).is_ok());
    // SAFETY: see above; debug builds (and so every test) check it.
    unsafe { std::str::from_utf8_unchecked(f) }
}

/// The field's text after the column's clean-up: trim, lookup table, default.
fn cleaned<'a>(col: &'a Column, raw: &'a str) -> std::borrow::Cow<'a, str> {
    let text = if col.trim { raw.trim() } else { raw };
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
    let t = raw.trim();
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
    if b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        b[r].iter().try_fold(0u32, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    };
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
    let date = NaiveDate::from_ymd_opt(num(0..4)? as i32, num(5..7)?, num(8..10)?)?;
    date.and_hms_nano_opt(num(11..13)?, num(14..16)?, num(17..19)?, nanos)
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

/// Decodes the bytes of an export: UTF-8 (BOM dropped), UTF-16 with BOM, else Windows-1252.
pub fn decode(bytes: &[u8]) -> (Cow<'_, str>, &'static str) {
    if let Some(rest) = bytes.strip_prefix(b"\xEF\xBB\xBF") {
        // `from_utf8` first: it validates several times faster than the lossy decoder.
        let text =
            std::str::from_utf8(rest).map_or_else(|_| String::from_utf8_lossy(rest), Cow::from);
        return (text, "utf-8-bom");
    }
    if let Some(rest) = bytes.strip_prefix(b"\xFF\xFE") {
        return (utf16(rest, u16::from_le_bytes).into(), "utf-16le");
    }
    if let Some(rest) = bytes.strip_prefix(b"\xFE\xFF") {
        return (utf16(rest, u16::from_be_bytes).into(), "utf-16be");
    }
    match std::str::from_utf8(bytes) {
        Ok(s) => (s.into(), "utf-8"),
        Err(_) => (
            bytes
                .iter()
                .map(|&b| windows_1252(b))
                .collect::<String>()
                .into(),
            "windows-1252",
        ),
    }
}

fn utf16(bytes: &[u8], unit: fn([u8; 2]) -> u16) -> String {
    let units = bytes.chunks_exact(2).map(|c| unit([c[0], c[1]]));
    char::decode_utf16(units)
        .map(|r| r.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect()
}

/// Windows-1252: Latin-1 but for 0x80–0x9F, which hold typographic characters.
fn windows_1252(b: u8) -> char {
    const HIGH: [char; 32] = [
        '€', '\u{81}', '‚', 'ƒ', '„', '…', '†', '‡', 'ˆ', '‰', 'Š', '‹', 'Œ', '\u{8d}', 'Ž',
        '\u{8f}', '\u{90}', '‘', '’', '“', '”', '•', '–', '—', '˜', '™', 'š', '›', 'œ', '\u{9d}',
        'ž', 'Ÿ',
    ];
    match b {
        0x80..=0x9F => HIGH[usize::from(b - 0x80)],
        _ => char::from(b),
    }
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
        let parsed = parse_attachment(&d.datasets["ib_calls"], text.as_bytes()).unwrap();
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
        let parsed = parse_attachment(&d.datasets["ib_calls"], text.as_bytes()).unwrap();
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
        let mut reader = AttachmentReader::new(&d.datasets["ib_calls"], text.as_bytes()).unwrap();
        let mut rows = Vec::new();
        while let Some(chunk) = reader.next_chunk(1) {
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
        let parsed = parse_attachment(&d.datasets["ib_calls"], text.as_bytes()).unwrap();
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
        let parsed = parse_attachment(&d.datasets["ib_calls"], text.as_bytes()).unwrap();
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
        let err = parse_attachment(&d.datasets["ib_calls"], text.as_bytes()).unwrap_err();
        assert_eq!(
            err,
            Unusable::MissingColumns(vec!["call_id".into(), "started_at".into()])
        );
    }

    #[test]
    fn na_looking_text_is_text_and_only_empty_is_missing() {
        let d = defs();
        let text = csv(&["c1,,,Sales,2024-03-14T09:00:00,,,0,1,X,N/A,NULL"]);
        let parsed = parse_attachment(&d.datasets["ib_calls"], text.as_bytes()).unwrap();
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
        for u in "café".encode_utf16() {
            le.extend_from_slice(&u.to_le_bytes());
        }
        let (text, encoding) = decode(&le);
        assert_eq!((text.as_ref(), encoding), ("café", "utf-16le"));
        let (text, encoding) = decode(b"caf\xe9 \x80");
        assert_eq!((text.as_ref(), encoding), ("café €", "windows-1252"));
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
        let parsed = parse_attachment(ds, csv.as_bytes()).unwrap();
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
            let parsed = parse_attachment(&d.datasets["ib_calls"], text.as_bytes()).unwrap();
            let lines: Vec<u64> = parsed.rejects.iter().map(|r| r.line).collect();
            assert_eq!(lines, vec![2, 5], "{:?}", parsed.rejects);
        }
    }

    /// Every row, the rejects and the summary of reading `path` as a stream.
    fn streamed(path: &std::path::Path) -> (Vec<KeyedRow>, ReadSummary) {
        let d = defs();
        let mut reader = AttachmentReader::from_file(&d.datasets["ib_calls"], path).unwrap();
        let mut rows = Vec::new();
        while let Some(chunk) = reader.next_chunk(2) {
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
            let in_memory = parse_attachment(&d.datasets["ib_calls"], text.as_bytes()).unwrap();
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
    fn utf8_split_across_reads_is_passed_whole_and_bad_bytes_are_refused() {
        use std::io::Read;
        /// Hands out one byte per read, the worst case for a character split.
        struct Trickle<'b>(&'b [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let Some((&b, rest)) = self.0.split_first() else {
                    return Ok(0);
                };
                buf[0] = b;
                self.0 = rest;
                Ok(1)
            }
        }
        let text = "Zoë € 𝄞 عميل";
        let mut out = Vec::new();
        let mut buf = [0u8; 4];
        let mut reader = Utf8Checked::new(Trickle(text.as_bytes()));
        loop {
            let n = reader.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            assert!(
                std::str::from_utf8(&buf[..n]).is_ok(),
                "every read is whole characters"
            );
            out.extend_from_slice(&buf[..n]);
        }
        assert_eq!(out, text.as_bytes());
        let err = Utf8Checked::new(&b"ok \xff no"[..]).read_to_end(&mut Vec::new());
        assert!(err.unwrap_err().to_string().contains("not UTF-8 at byte 3"));
        let cut = Utf8Checked::new(&"€".as_bytes()[..2]).read_to_end(&mut Vec::new());
        assert!(
            cut.unwrap_err()
                .to_string()
                .contains("ends inside a UTF-8 character")
        );
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
        parse_attachment(&defs().datasets["ib_calls"], text).unwrap()
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
    fn short_and_long_records_are_read_by_header_position() {
        // A record with fewer fields lacks the later columns; extra fields are ignored.
        let parsed = ib(b"call_id,started_at,queue\nc1,2024-03-14T09:00:00\nc2,2024-03-14T09:01:00,Sales,extra\n");
        assert_eq!(parsed.rows[0].values[3], None);
        assert_eq!(parsed.rows[1].values[3], Some(Value::Text("Sales".into())));
    }

    #[test]
    fn an_unterminated_quote_keeps_the_rest_of_the_file_in_one_field() {
        // The CSV rules leave no other reading; the damage stays visible as one long note.
        let parsed = ib(
            b"call_id,started_at,notes\nc1,2024-03-14T09:00:00,\"open\nc2,2024-03-14T09:01:00,x\n",
        );
        assert_eq!(parsed.rows.len(), 1);
        assert_eq!(
            parsed.rows[0].values[11],
            Some(Value::Text("open\nc2,2024-03-14T09:01:00,x\n".into()))
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
        let parsed = parse_attachment(&d.datasets["ib_calls"], text.as_bytes()).unwrap();
        assert!(parsed.rows[0].key.starts_with("sha256:"));
        assert_eq!(parsed.rows[0].key.len(), 7 + 64);
    }
}
