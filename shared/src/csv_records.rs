//! The layer under CSV ingest: bytes in some encoding → UTF-8 text → records, with every
//! physical line of the file accounted for.
//!
//! Records are split by `csv-core` (RFC 4180: `"` quotes, `""` escapes, `\n`, `\r\n` or a lone
//! `\r` ends a record) over a buffer this module owns, so it sees every byte the parser consumed:
//! - **lines**: a line ends at `\n`, `\r\n` or a lone `\r`; each record knows the line it starts
//!   on and how many lines it spans (a quoted field may hold line breaks), and blank lines between
//!   records (which `csv-core` skips) are counted, so header + records + blank = the file's lines;
//! - **an unterminated quote**: `csv-core` prefers *a* parse to an error and reads a quote that
//!   never closes to the end of the file, as one field. The same quoting rules are followed here
//!   for records that contain a quote, so such a record is known, with the line its quote opened.
//!
//! No `unsafe`: every field is a `&str` sliced from text validated once per record.

use std::io::Read;

use encoding_rs::{Decoder, Encoding};

/// Input is read this much at a time.
const BUFFER: usize = 64 * 1024;

/// How an input is decoded, chosen from its first bytes and the dataset's `encoding`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TextEncoding {
    encoding: &'static Encoding,
    /// Bytes of byte-order mark at the start (skipped).
    pub bom: usize,
}

impl TextEncoding {
    /// A byte-order mark decides (as in WHATWG's decode); else the configured label; else UTF-8
    /// when `head` is UTF-8 (`head_is_whole`: `head` is the whole input, so it may not end inside
    /// a character), else Windows-1252, the encoding of spreadsheet exports that are not UTF-8.
    pub fn choose(head: &[u8], head_is_whole: bool, configured: Option<&'static Encoding>) -> Self {
        if let Some((encoding, bom)) = Encoding::for_bom(head) {
            return TextEncoding { encoding, bom };
        }
        let encoding = configured.unwrap_or_else(|| {
            // The fast check first (SIMD); the standard one only to see where it failed.
            if simdutf8::basic::from_utf8(head).is_ok() {
                return encoding_rs::UTF_8;
            }
            match std::str::from_utf8(head) {
                Err(e) if !head_is_whole && e.error_len().is_none() => encoding_rs::UTF_8,
                _ => encoding_rs::WINDOWS_1252,
            }
        });
        TextEncoding { encoding, bom: 0 }
    }

    /// Its name as reported with an attachment: `utf-8`, `utf-8-bom`, `utf-16le`, `utf-16be`,
    /// else encoding_rs's name (`windows-1252`, `ISO-8859-15`, `Shift_JIS`, …).
    pub fn name(&self) -> &'static str {
        match (self.encoding.name(), self.bom) {
            ("UTF-8", 0) => "utf-8",
            ("UTF-8", _) => "utf-8-bom",
            ("UTF-16LE", _) => "utf-16le",
            ("UTF-16BE", _) => "utf-16be",
            (name, _) => name,
        }
    }

    pub fn is_utf8(&self) -> bool {
        self.encoding == encoding_rs::UTF_8
    }

    /// `input` (positioned after the byte-order mark) as UTF-8 text. UTF-8 passes as it is:
    /// the record reader validates each record's text.
    pub fn decoder<'a, R: Read + Send + 'a>(&self, input: R) -> Box<dyn Read + Send + 'a> {
        if self.is_utf8() {
            Box::new(input)
        } else {
            Box::new(Decoding {
                inner: input,
                decoder: self.encoding.new_decoder_without_bom_handling(),
                buf: vec![0; BUFFER].into_boxed_slice(),
                start: 0,
                end: 0,
                eof: false,
                finished: false,
                pending: Vec::new(),
            })
        }
    }
}

/// Decodes a non-UTF-8 input as it is read (malformed sequences become U+FFFD, as WHATWG says).
struct Decoding<R> {
    inner: R,
    decoder: Decoder,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    eof: bool,
    /// The decoder has seen the end (it must not be called again).
    finished: bool,
    /// Decoded text a small read had no room for.
    pending: Vec<u8>,
}

impl<R: Read> Read for Decoding<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if !self.pending.is_empty() {
            let n = out.len().min(self.pending.len());
            out[..n].copy_from_slice(&self.pending[..n]);
            self.pending.drain(..n);
            return Ok(n);
        }
        if self.finished {
            return Ok(0);
        }
        if out.len() < 16 {
            // The decoder needs room for a whole character: decode into a buffer of our own.
            let mut room = [0u8; 64];
            let n = self.read(&mut room)?;
            self.pending.extend_from_slice(&room[..n]);
            return if n == 0 { Ok(0) } else { self.read(out) };
        }
        loop {
            if self.start == self.end && !self.eof {
                let n = match self.inner.read(&mut self.buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                (self.start, self.end, self.eof) = (0, n, n == 0);
            }
            let (result, read, written, _) =
                self.decoder
                    .decode_to_utf8(&self.buf[self.start..self.end], out, self.eof);
            self.start += read;
            if self.eof && result == encoding_rs::CoderResult::InputEmpty {
                self.finished = true;
            }
            if written > 0 || self.finished {
                return Ok(written);
            }
        }
    }
}

/// Where one record sits in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordInfo {
    /// 1-based line the record starts on.
    pub line: u64,
    /// Physical lines it spans (1, or more when a quoted field holds line breaks).
    pub lines: u64,
    /// Set when a quoted field never closed and so ran to the end of the file: the line where
    /// that quote opened.
    pub unterminated_quote: Option<u64>,
    /// Set when text follows the closing quote of a quoted field (`"a"b`), the mark of a
    /// missing or stray quote: the lines where that quote opened and closed.
    pub text_after_quote: Option<(u64, u64)>,
}

/// Why records stopped before the end of the file.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("line {line}: a field is longer than the limit of {limit} bytes (max_field_bytes)")]
    FieldTooLong { line: u64, limit: usize },
    #[error("line {line}: a record has more than the limit of {limit} fields (max_columns)")]
    TooManyFields { line: u64, limit: usize },
}

/// The quoting state of the field being read, as `csv-core` has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quoting {
    FieldStart,
    Unquoted,
    Quoted,
    /// A quote inside a quoted field: the next byte says whether it closed the field or was the
    /// first of an escaped `""`.
    QuoteInQuoted,
}

/// Records of a UTF-8 text stream.
pub struct RecordReader<'a> {
    input: Box<dyn Read + Send + 'a>,
    core: csv_core::Reader,
    delimiter: u8,
    buf: Box<[u8]>,
    pos: usize,
    filled: usize,
    eof: bool,
    fields: Vec<u8>,
    /// Field `i` of the current record is `fields[starts[i]..ends[i]]`.
    starts: Vec<usize>,
    ends: Vec<usize>,
    nfields: usize,
    /// The current record's text, validated (`fields[..text_len]`).
    text_len: usize,
    /// The line the read position is on, 1-based.
    line: u64,
    /// The last byte consumed was `\r` (a `\n` after it ends no further line).
    prev_cr: bool,
    /// The last byte consumed ended a line (or nothing was consumed yet).
    at_line_start: bool,
    /// Lines that held nothing (skipped between records), so far.
    pub blank_lines: u64,
    /// Bytes of text consumed so far.
    pub consumed: u64,
    max_field_bytes: usize,
    max_fields: usize,
    quoting: Quoting,
    quote_line: u64,
    text_after_quote: Option<(u64, u64)>,
    /// Split records without quotes or lone `\r` by searching for delimiters (see
    /// [`RecordReader::plain_record`]); off only to test that path against csv-core's.
    plain_path: bool,
}

impl<'a> RecordReader<'a> {
    /// `delimiter` must be ASCII (definitions check it; a sniffed one always is).
    pub fn new(
        input: Box<dyn Read + Send + 'a>,
        delimiter: u8,
        max_field_bytes: usize,
        max_fields: usize,
    ) -> Self {
        debug_assert!(delimiter.is_ascii());
        RecordReader {
            input,
            core: csv_core::ReaderBuilder::new().delimiter(delimiter).build(),
            delimiter,
            buf: vec![0; BUFFER].into_boxed_slice(),
            pos: 0,
            filled: 0,
            eof: false,
            fields: vec![0; 4096],
            starts: vec![0; 64],
            ends: vec![0; 64],
            nfields: 0,
            text_len: 0,
            line: 1,
            prev_cr: false,
            at_line_start: true,
            blank_lines: 0,
            consumed: 0,
            max_field_bytes,
            max_fields,
            quoting: Quoting::FieldStart,
            quote_line: 0,
            text_after_quote: None,
            plain_path: true,
        }
    }

    /// Reads every record with csv-core, never with the plain-record path.
    #[cfg(test)]
    fn without_plain_path(mut self) -> Self {
        self.plain_path = false;
        self
    }

    /// The physical lines read so far (a last line without a line break counts).
    pub fn lines_read(&self) -> u64 {
        self.line - 1 + u64::from(!self.at_line_start)
    }

    /// Reads the rest of the text without parsing it, counting its lines, and answers every
    /// physical line of the text ([`RecordReader::lines_read`] at its end). Used once reading
    /// records stopped part way, so the lines after are accounted for. Reading stops early
    /// (the count is then what was seen) past `max_bytes` of text or at a read error.
    pub fn count_rest(&mut self, max_bytes: u64) -> u64 {
        while self.consumed <= max_bytes {
            if self.pos == self.filled {
                if self.eof {
                    break;
                }
                if self.fill().is_err() {
                    break;
                }
                continue;
            }
            self.count_breaks(self.pos, self.filled);
            self.pos = self.filled;
        }
        self.lines_read()
    }

    fn fill(&mut self) -> std::io::Result<()> {
        if self.pos < self.filled || self.eof {
            return Ok(());
        }
        loop {
            match self.input.read(&mut self.buf) {
                Ok(n) => {
                    (self.pos, self.filled, self.eof) = (0, n, n == 0);
                    return Ok(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The next record, or `None` at the end of the file. Its fields are [`RecordReader::field`].
    pub fn next_record(&mut self) -> Result<Option<RecordInfo>, RecordError> {
        // Line breaks before a record are blank lines (`csv-core` would skip them unseen).
        loop {
            self.fill()?;
            if self.pos == self.filled {
                return Ok(None);
            }
            let b = self.buf[self.pos];
            if b != b'\n' && b != b'\r' {
                break;
            }
            if self.count_breaks(self.pos, self.pos + 1) > 0 {
                self.blank_lines += 1;
            }
            self.pos += 1;
        }
        let line = self.line;
        self.quoting = Quoting::FieldStart;
        self.text_after_quote = None;
        if self.plain_path
            && let Some(info) = self.plain_record(line)?
        {
            return Ok(Some(info));
        }
        let (mut nout, mut nend) = (0, 0);
        loop {
            self.fill()?;
            let (res, nin, o, e) = self.core.read_record(
                &self.buf[self.pos..self.filled],
                &mut self.fields[nout..],
                &mut self.ends[nend..],
            );
            self.track(self.pos, self.pos + nin);
            self.pos += nin;
            nout += o;
            nend += e;
            match res {
                csv_core::ReadRecordResult::InputEmpty => {}
                csv_core::ReadRecordResult::OutputFull => {
                    let field_start = if nend == 0 { 0 } else { self.ends[nend - 1] };
                    if nout - field_start > self.max_field_bytes {
                        return Err(RecordError::FieldTooLong {
                            line,
                            limit: self.max_field_bytes,
                        });
                    }
                    self.fields.resize(self.fields.len() * 2, 0);
                }
                csv_core::ReadRecordResult::OutputEndsFull => {
                    if nend >= self.max_fields {
                        return Err(RecordError::TooManyFields {
                            line,
                            limit: self.max_fields,
                        });
                    }
                    self.ends.resize(self.ends.len() * 2, 0);
                }
                csv_core::ReadRecordResult::Record => {
                    if nend > self.max_fields {
                        return Err(RecordError::TooManyFields {
                            line,
                            limit: self.max_fields,
                        });
                    }
                    if self.starts.len() < nend {
                        self.starts.resize(self.ends.len(), 0);
                    }
                    let mut start = 0;
                    for (i, &end) in self.ends[..nend].iter().enumerate() {
                        if end - start > self.max_field_bytes {
                            return Err(RecordError::FieldTooLong {
                                line,
                                limit: self.max_field_bytes,
                            });
                        }
                        self.starts[i] = start;
                        start = end;
                    }
                    self.nfields = nend;
                    self.text_len = nout;
                    let lines = self.lines_read() + 1 - line;
                    let unterminated = (self.quoting == Quoting::Quoted).then_some(self.quote_line);
                    return Ok(Some(RecordInfo {
                        line,
                        lines,
                        unterminated_quote: unterminated,
                        text_after_quote: self.text_after_quote,
                    }));
                }
                csv_core::ReadRecordResult::End => return Ok(None),
            }
        }
    }

    /// The record at the read position when it is a plain one: its line ends (`\n` or `\r\n`)
    /// inside the buffer and holds no other `\r`, and each of its quoted fields opens at the
    /// field's start and closes before the delimiter or the line's end. Most lines of an export
    /// are plain; csv-core reads them a byte at a time, while here the line is copied once and
    /// its delimiters and quotes are found eight bytes at a time ([`Specials`]), each field
    /// then being a range of the copy (a third of the parse time at 100k rows). `None` leaves
    /// the record to csv-core, which then reads it from its start: any line a quote could make
    /// span lines, or that needs the quote tracking's reasons.
    fn plain_record(&mut self, line: u64) -> Result<Option<RecordInfo>, RecordError> {
        let avail = &self.buf[self.pos..self.filled];
        let Some(nl) = memchr::memchr(b'\n', avail) else {
            return Ok(None);
        };
        let body = &avail[..nl - usize::from(nl > 0 && avail[nl - 1] == b'\r')];
        if memchr::memchr(b'\r', body).is_some() {
            return Ok(None); // a lone `\r` ends a record: csv-core's to read
        }
        if self.fields.len() < body.len() {
            self.fields.resize(body.len().next_power_of_two(), 0);
        }
        self.fields[..body.len()].copy_from_slice(body);
        let delim = self.delimiter;
        let mut specials = Specials::new(body, delim);
        let (mut at, mut nfields) = (0, 0);
        loop {
            // A field starts at `at`; it is `range`, the next starts at `next` unless `last`.
            let (range, next, last);
            if body.get(at) == Some(&b'"') {
                specials.next(); // the opening quote
                let (first, mut read, mut out) = (at + 1, at + 1, at + 1);
                let close = loop {
                    match specials.next() {
                        Some(p) if body[p] == b'"' => {
                            // `fields` is `body` shifted left by each `""` seen so far.
                            self.fields.copy_within(read..p, out);
                            out += p - read;
                            if body.get(p + 1) != Some(&b'"') {
                                break p;
                            }
                            specials.next(); // `""`: an escaped quote
                            self.fields[out] = b'"';
                            out += 1;
                            read = p + 2;
                        }
                        Some(_) => {}            // a delimiter inside the quotes
                        None => return Ok(None), // the quote closes on a later line, or never
                    }
                };
                range = first..out;
                match body.get(close + 1) {
                    None => (next, last) = (0, true),
                    Some(&b) if b == delim => {
                        specials.next();
                        (next, last) = (close + 2, false);
                    }
                    Some(_) => return Ok(None), // text after the closing quote
                }
            } else {
                match specials.next() {
                    None => (range, next, last) = (at..body.len(), 0, true),
                    Some(p) if body[p] == delim => (range, next, last) = (at..p, p + 1, false),
                    Some(_) => return Ok(None), // a quote inside an unquoted field
                }
            }
            if range.len() > self.max_field_bytes {
                return Err(RecordError::FieldTooLong {
                    line,
                    limit: self.max_field_bytes,
                });
            }
            if nfields >= self.max_fields {
                return Err(RecordError::TooManyFields {
                    line,
                    limit: self.max_fields,
                });
            }
            if nfields == self.ends.len() {
                self.ends.resize(self.ends.len() * 2, 0);
            }
            if nfields >= self.starts.len() {
                self.starts.resize(self.ends.len(), 0);
            }
            (self.starts[nfields], self.ends[nfields]) = (range.start, range.end);
            nfields += 1;
            if last {
                break;
            }
            at = next;
        }
        self.nfields = nfields;
        self.text_len = body.len();
        self.pos += nl + 1;
        self.consumed += nl as u64 + 1;
        self.line += 1;
        self.prev_cr = false;
        self.at_line_start = true;
        Ok(Some(RecordInfo {
            line,
            lines: 1,
            unterminated_quote: None,
            text_after_quote: None,
        }))
    }

    /// The current record's text: `None` when it is not UTF-8, which decoded input always is
    /// (the parser removes only ASCII bytes, never part of a character).
    pub fn text(&self) -> Option<&str> {
        simdutf8::basic::from_utf8(&self.fields[..self.text_len]).ok()
    }

    pub fn len(&self) -> usize {
        self.nfields
    }

    pub fn is_empty(&self) -> bool {
        self.nfields == 0
    }

    /// Field `i` of the current record within its `text()`; `None` past the last field.
    pub fn field_range(&self, i: usize) -> Option<std::ops::Range<usize>> {
        if i >= self.nfields {
            return None;
        }
        Some(self.starts[i]..self.ends[i])
    }

    /// Field `i` as bytes.
    pub fn field(&self, i: usize) -> Option<&[u8]> {
        self.field_range(i).map(|r| &self.fields[r])
    }

    /// Counts the line breaks in `buf[from..to]`, moving the line on; returns how many.
    fn count_breaks(&mut self, from: usize, to: usize) -> u64 {
        let bytes = &self.buf[from..to];
        let n = breaks_in(bytes, self.prev_cr);
        if let Some(&last) = bytes.last() {
            self.prev_cr = last == b'\r';
            self.at_line_start = last == b'\n' || last == b'\r';
        }
        self.consumed += bytes.len() as u64;
        self.line += n;
        n
    }

    /// Counts lines in the bytes the parser consumed and follows their quoting. Only quotes
    /// (and the byte after a closing one) change it, so it jumps from quote to quote.
    fn track(&mut self, from: usize, to: usize) {
        if from == to {
            return;
        }
        let bytes = &self.buf[from..to];
        let delim = self.delimiter;
        let ends_field = |b: u8| b == delim || b == b'\n' || b == b'\r';
        let mut i = 0;
        loop {
            match self.quoting {
                Quoting::Quoted => match memchr::memchr(b'"', &bytes[i..]) {
                    Some(k) => {
                        i += k + 1;
                        self.quoting = Quoting::QuoteInQuoted;
                    }
                    None => break,
                },
                Quoting::QuoteInQuoted => {
                    let Some(&b) = bytes.get(i) else { break };
                    if b == b'"' {
                        self.quoting = Quoting::Quoted; // `""`: an escaped quote
                        i += 1;
                    } else if ends_field(b) {
                        self.quoting = Quoting::FieldStart;
                        i += 1;
                    } else {
                        let line = self.line + breaks_in(&bytes[..i], self.prev_cr);
                        self.text_after_quote.get_or_insert((self.quote_line, line));
                        self.quoting = Quoting::Unquoted;
                    }
                }
                Quoting::FieldStart | Quoting::Unquoted => {
                    let Some(k) = memchr::memchr(b'"', &bytes[i..]) else {
                        let last = bytes[bytes.len() - 1];
                        if i < bytes.len() {
                            self.quoting = if ends_field(last) {
                                Quoting::FieldStart
                            } else {
                                Quoting::Unquoted
                            };
                        }
                        break;
                    };
                    let at = i + k;
                    let field_start = if at == 0 {
                        self.quoting == Quoting::FieldStart
                    } else {
                        ends_field(bytes[at - 1])
                    };
                    if field_start {
                        self.quote_line = self.line + breaks_in(&bytes[..at], self.prev_cr);
                        self.quoting = Quoting::Quoted;
                    } else {
                        self.quoting = Quoting::Unquoted; // a quote inside a field is text
                    }
                    i = at + 1;
                }
            }
        }
        self.count_breaks(from, to);
    }
}

/// The positions of a line's delimiters and quotes, in order, found eight bytes at a time in
/// a `u64` (no `unsafe`, and no per-call set-up: fields are short).
struct Specials<'b> {
    body: &'b [u8],
    /// The word at `base` with the high bit of each special byte set.
    mask: u64,
    base: usize,
    delim: u64,
}

const ONES: u64 = 0x0101_0101_0101_0101;
const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;

impl<'b> Specials<'b> {
    fn new(body: &'b [u8], delim: u8) -> Self {
        let mut s = Specials {
            body,
            mask: 0,
            base: 0,
            delim: ONES * u64::from(delim),
        };
        s.mask = s.word_mask();
        s
    }

    /// The high bit of each byte of `w` that is zero, exactly (no borrow across bytes).
    fn zero_bytes(w: u64) -> u64 {
        !(((w & LOW7) + LOW7) | w | LOW7)
    }

    fn word_mask(&self) -> u64 {
        let rest = &self.body[self.base.min(self.body.len())..];
        let w = match rest.first_chunk::<8>() {
            Some(word) => u64::from_le_bytes(*word),
            None => {
                let mut word = [0u8; 8]; // past the end: zeros, which are not special
                word[..rest.len()].copy_from_slice(rest);
                u64::from_le_bytes(word)
            }
        };
        Self::zero_bytes(w ^ self.delim) | Self::zero_bytes(w ^ (ONES * u64::from(b'"')))
    }
}

impl Iterator for Specials<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        while self.mask == 0 {
            self.base += 8;
            if self.base >= self.body.len() {
                return None;
            }
            self.mask = self.word_mask();
        }
        let at = self.base + self.mask.trailing_zeros() as usize / 8;
        self.mask &= self.mask - 1;
        Some(at)
    }
}

/// Line breaks in `bytes` (`prev_cr`: the byte before them was `\r`).
fn breaks_in(bytes: &[u8], prev_cr: bool) -> u64 {
    let mut n = 0;
    for at in memchr::memchr2_iter(b'\n', b'\r', bytes) {
        let after_cr = if at == 0 {
            prev_cr
        } else {
            bytes[at - 1] == b'\r'
        };
        if !(bytes[at] == b'\n' && after_cr) {
            n += 1;
        }
    }
    n
}

/// The physical lines of `bytes`: a line ends at `\n`, `\r\n` or a lone `\r`; a last line
/// without a break counts. The reference the record reader's accounting is tested against.
pub fn physical_lines(bytes: &[u8]) -> u64 {
    let mut n = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\r' if bytes.get(i + 1) == Some(&b'\n') => {
                n += 1;
                i += 1;
            }
            b'\r' | b'\n' => n += 1,
            _ => {}
        }
        i += 1;
    }
    n + u64::from(bytes.last().is_some_and(|&b| b != b'\n' && b != b'\r'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(text: &str) -> (Vec<(RecordInfo, Vec<String>)>, u64, u64) {
        let mut r = RecordReader::new(Box::new(text.as_bytes()), b',', 1 << 20, 1000);
        let mut out = Vec::new();
        while let Some(info) = r.next_record().unwrap() {
            let t = r.text().unwrap();
            let fields = (0..r.len())
                .map(|i| t[r.field_range(i).unwrap()].to_owned())
                .collect();
            out.push((info, fields));
        }
        (out, r.blank_lines, r.lines_read())
    }

    fn info(line: u64, lines: u64) -> RecordInfo {
        RecordInfo {
            line,
            lines,
            unterminated_quote: None,
            text_after_quote: None,
        }
    }

    #[test]
    fn records_know_their_lines_whatever_the_line_ends() {
        for text in [
            "a,b\n1,\"x\ny\"\n\n2,z\n",
            "a,b\r\n1,\"x\r\ny\"\r\n\r\n2,z\r\n",
            "a,b\r1,\"x\ry\"\r\r2,z",
        ] {
            let (recs, blank, lines) = records(text);
            let infos: Vec<RecordInfo> = recs.iter().map(|r| r.0).collect();
            assert_eq!(infos, [info(1, 1), info(2, 2), info(5, 1)], "{text:?}");
            assert_eq!((blank, lines), (1, 5), "{text:?}");
            assert_eq!(physical_lines(text.as_bytes()), 5, "{text:?}");
            assert_eq!(recs[2].1, ["2", "z"]);
        }
    }

    #[test]
    fn an_unterminated_quote_is_found_with_the_line_it_opened_on() {
        let (recs, _, lines) = records("a,b\n1,ok\n2,\"open\n3,x\n4,y\n");
        assert_eq!(recs.len(), 3);
        assert_eq!(
            recs[2].0,
            RecordInfo {
                line: 3,
                lines: 3,
                unterminated_quote: Some(3),
                text_after_quote: None,
            }
        );
        assert_eq!(lines, 5);
        // Quotes that close, escaped quotes and a quote inside an unquoted field are fine.
        let (recs, _, _) = records("a,b\n\"x\"\"y\",5\" screen\n\"q\"z,\"\"\n");
        assert!(recs.iter().all(|r| r.0.unterminated_quote.is_none()));
        assert_eq!(recs[1].1, ["x\"y", "5\" screen"]);
        assert_eq!(recs[1].0.text_after_quote, None);
        assert_eq!(recs[2].1, ["qz", ""]);
        assert_eq!(recs[2].0.text_after_quote, Some((3, 3)));
        // A quote left open closes at a later line's stray quote: caught by what follows it.
        let (recs, _, _) = records("a,b\n1,\"open\n2,5\" screen\n3,x\n");
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[1].0.text_after_quote, Some((2, 3)));
        assert_eq!(recs[1].0.lines, 2);
    }

    /// Gives its bytes a few at a time, so records straddle the reader's buffer.
    struct Trickle<'b>(&'b [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            let n = self.1.min(out.len()).min(self.0.len());
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    type Read_ = (
        Vec<(RecordInfo, Vec<Vec<u8>>)>,
        u64,
        u64,
        u64,
        Option<String>,
    );

    fn read_all(mut r: RecordReader<'_>) -> Read_ {
        let mut out = Vec::new();
        let error = loop {
            match r.next_record() {
                Ok(Some(info)) => {
                    let fields = (0..r.len()).map(|i| r.field(i).unwrap().to_vec()).collect();
                    out.push((info, fields));
                }
                Ok(None) => break None,
                Err(e) => break Some(e.to_string()),
            }
        };
        // After an error the file is given up: where the reader stopped does not matter.
        let (lines, consumed) = if error.is_some() {
            (0, 0)
        } else {
            (r.lines_read(), r.consumed)
        };
        (out, r.blank_lines, lines, consumed, error)
    }

    #[test]
    fn plain_records_read_as_csv_core_reads_them() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let alphabet: [&[u8]; 9] = [
            b"a",
            b"bc",
            b",",
            b";",
            b"\"",
            b"\n",
            b"\r",
            b" ",
            "é".as_bytes(),
        ];
        for case in 0..3000 {
            let len = rng.random_range(0..120);
            let text: Vec<u8> = (0..len)
                .flat_map(|_| {
                    alphabet[rng.random_range(0..alphabet.len())]
                        .iter()
                        .copied()
                })
                .collect();
            let chunk = [1, 3, 7, 64, 1 << 20][case % 5];
            let (fields, bytes) = [(1000, 1 << 20), (4, 1 << 20), (1000, 6)][case % 3];
            let read = |plain: bool| {
                let r = RecordReader::new(Box::new(Trickle(&text, chunk)), b',', bytes, fields);
                read_all(if plain { r } else { r.without_plain_path() })
            };
            assert_eq!(
                read(true),
                read(false),
                "{:?} in chunks of {chunk}",
                String::from_utf8_lossy(&text)
            );
        }
    }

    #[test]
    fn limits_stop_the_reader_with_the_line() {
        let long = format!("a\n{}\n", "x".repeat(10_000));
        let mut r = RecordReader::new(Box::new(long.as_bytes()), b',', 5000, 10);
        r.next_record().unwrap();
        let err = r.next_record().unwrap_err();
        assert!(
            matches!(
                err,
                RecordError::FieldTooLong {
                    line: 2,
                    limit: 5000
                }
            ),
            "{err}"
        );
        let wide = format!("a\n{}\n", ",".repeat(200));
        let mut r = RecordReader::new(Box::new(wide.as_bytes()), b',', 5000, 100);
        r.next_record().unwrap();
        let err = r.next_record().unwrap_err();
        assert!(
            matches!(
                err,
                RecordError::TooManyFields {
                    line: 2,
                    limit: 100
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn encodings_are_chosen_by_bom_then_label_then_content() {
        let utf16 = TextEncoding::choose(b"\xFF\xFEa\0", true, None);
        assert_eq!((utf16.name(), utf16.bom), ("utf-16le", 2));
        let label = Encoding::for_label(b"iso-8859-15");
        assert_eq!(
            TextEncoding::choose(b"abc", true, label).name(),
            "ISO-8859-15"
        );
        assert_eq!(
            TextEncoding::choose(b"caf\xe9", true, None).name(),
            "windows-1252"
        );
        // A character cut at the end of a sample is still UTF-8; at the end of the file it is not.
        let cut = "€".as_bytes();
        assert_eq!(TextEncoding::choose(&cut[..2], false, None).name(), "utf-8");
        assert_eq!(
            TextEncoding::choose(&cut[..2], true, None).name(),
            "windows-1252"
        );
        let mut text = String::new();
        TextEncoding::choose(b"", true, Encoding::for_label(b"shift_jis"))
            .decoder(&b"\x93\xfa\x96\x7b"[..])
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "日本");
    }

    /// Found by the `csv_ingest` fuzz target: a read after the end called the finished decoder.
    #[test]
    fn a_decoder_read_past_its_end_answers_zero() {
        let enc = TextEncoding::choose(b"caf\xe9", true, None);
        let mut d = enc.decoder(&b"caf\xe9,\x80"[..]);
        let mut text = String::new();
        d.read_to_string(&mut text).unwrap();
        assert_eq!(text, "café,€");
        let mut buf = [0u8; 64];
        assert_eq!(d.read(&mut buf).unwrap(), 0);
        assert_eq!(d.read(&mut buf[..3]).unwrap(), 0);
    }
}
