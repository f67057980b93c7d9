//! Typed cell values: what a CSV field becomes once its column's type is applied.

use chrono::{NaiveDate, NaiveDateTime};
use compact_str::CompactString;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    Int(i64),
    Dec(f64),
    Bool(bool),
    /// Up to 24 bytes inline: most cells of an export (ids, names, codes) never allocate.
    Text(CompactString),
    DateTime(NaiveDateTime),
    Date(NaiveDate),
}

impl Value {
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Dec(d) => Some(*d),
            Value::Bool(b) => Some(f64::from(u8::from(*b))),
            _ => None,
        }
    }

    /// Appends the value as `display` writes it, without a temporary string.
    pub fn write_display(&self, out: &mut String) {
        use std::fmt::Write;
        match self {
            Value::Text(s) => out.push_str(s),
            Value::Int(i) => {
                let _ = write!(out, "{i}");
            }
            other => out.push_str(&other.display()),
        }
    }

    /// The value as the text a person would type (used for grouping and keys).
    pub fn display(&self) -> String {
        match self {
            Value::Int(i) => i.to_string(),
            Value::Dec(d) => d.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Text(s) => s.to_string(),
            Value::DateTime(t) => t.format("%Y-%m-%dT%H:%M:%S").to_string(),
            Value::Date(d) => d.format("%Y-%m-%d").to_string(),
        }
    }
}

/// One stored row: values in the dataset's column order; `None` is a missing (empty) field.
pub type Row = Vec<Option<Value>>;
