//! Report periods: a day, an ISO week, a month or an explicit range of days, always in the
//! report's time zone, and which period a scheduled run covers.

use std::fmt;

use chrono::{DateTime, Datelike, Days, Months, NaiveDate, Utc, Weekday};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

/// How long a report's scheduled period is (`period = "day"` in `reports.toml`).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum PeriodKind {
    #[default]
    Day,
    Week,
    Month,
}

/// Days `first..=last`, named by how they were asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Day(NaiveDate),
    /// The ISO week starting on this Monday.
    Week(NaiveDate),
    /// The month starting on this first day.
    Month(NaiveDate),
    Range(NaiveDate, NaiveDate),
}

/// The first instant of `day` in `tz`: local midnight, or the first local time after it where
/// a clock change skips midnight (America/Havana, Asia/Beirut, …).
pub fn start_of_day(day: NaiveDate, tz: Tz) -> DateTime<Utc> {
    use chrono::TimeZone;
    let midnight = day.and_time(chrono::NaiveTime::MIN);
    (0..=24 * 4)
        .find_map(|quarter| {
            let local = midnight + chrono::Duration::minutes(15 * quarter);
            tz.from_local_datetime(&local).earliest()
        })
        .map(|t| t.with_timezone(&Utc))
        // Unreachable (no zone skips a whole day at its start); UTC midnight otherwise.
        .unwrap_or_else(|| midnight.and_utc())
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "period {0:?} is not a day (2024-03-14), an ISO week (2024-W11), a month (2024-03) or a range (2024-03-01..2024-03-14): {1}"
)]
pub struct BadPeriod(pub String, pub &'static str);

impl Period {
    /// Parses `2024-03-14`, `2024-W11`, `2024-03` or `2024-03-01..2024-03-14` (inclusive).
    pub fn parse(text: &str) -> Result<Period, BadPeriod> {
        let bad = |why| BadPeriod(text.to_owned(), why);
        let t = text.trim();
        if let Some((a, b)) = t.split_once("..") {
            let day = |s: &str| {
                NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d").map_err(|_| bad("bad date"))
            };
            let (first, last) = (day(a)?, day(b)?);
            if last < first {
                return Err(bad("the range ends before it starts"));
            }
            if (last - first).num_days() > 366 {
                return Err(bad("a range is at most 367 days"));
            }
            return Ok(if first == last {
                Period::Day(first)
            } else {
                Period::Range(first, last)
            });
        }
        if let Some((y, w)) = t.split_once("-W").or_else(|| t.split_once("-w")) {
            let year: i32 = y.parse().map_err(|_| bad("bad year"))?;
            let week: u32 = w.parse().map_err(|_| bad("bad week number"))?;
            return NaiveDate::from_isoywd_opt(year, week, Weekday::Mon)
                .map(Period::Week)
                .ok_or_else(|| bad("no such ISO week"));
        }
        if t.len() == 7 {
            return NaiveDate::parse_from_str(&format!("{t}-01"), "%Y-%m-%d")
                .map(Period::Month)
                .map_err(|_| bad("bad month"));
        }
        NaiveDate::parse_from_str(t, "%Y-%m-%d")
            .map(Period::Day)
            .map_err(|_| bad("bad date"))
    }

    /// The period of `kind` that contains `day`.
    pub fn containing(kind: PeriodKind, day: NaiveDate) -> Period {
        match kind {
            PeriodKind::Day => Period::Day(day),
            PeriodKind::Week => {
                Period::Week(day - Days::new(u64::from(day.weekday().num_days_from_monday())))
            }
            PeriodKind::Month => Period::Month(day.with_day(1).expect("day 1 exists")),
        }
    }

    /// The last complete period of `kind` before the moment a schedule fired, as seen in the
    /// report's time zone: a 06:00 Europe/London schedule on a Monday reports on the previous
    /// London day, or the previous Monday–Sunday week, or (on the 1st) the previous month.
    pub fn previous(kind: PeriodKind, scheduled: DateTime<Utc>, tz: Tz) -> Period {
        let today = scheduled.with_timezone(&tz).date_naive();
        let current = Period::containing(kind, today);
        let before = current.first().pred_opt().unwrap_or(current.first());
        Period::containing(kind, before)
    }

    pub fn first(&self) -> NaiveDate {
        match *self {
            Period::Day(d) | Period::Week(d) | Period::Month(d) | Period::Range(d, _) => d,
        }
    }

    pub fn last(&self) -> NaiveDate {
        match *self {
            Period::Day(d) => d,
            Period::Week(d) => d + Days::new(6),
            Period::Month(d) => d + Months::new(1) - Days::new(1),
            Period::Range(_, d) => d,
        }
    }

    pub fn contains(&self, day: NaiveDate) -> bool {
        (self.first()..=self.last()).contains(&day)
    }

    /// Every day of the period, in order.
    pub fn days(&self) -> impl Iterator<Item = NaiveDate> + use<> {
        let last = self.last();
        self.first().iter_days().take_while(move |d| *d <= last)
    }
}

/// The label used in file names, S3 keys, run ids and subjects: `2024-03-14`, `2024-W11`,
/// `2024-03` or `2024-03-01..2024-03-14`; [`Period::parse`] reads it back.
impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Period::Day(d) => write!(f, "{}", d.format("%Y-%m-%d")),
            Period::Week(d) => {
                let w = d.iso_week();
                write!(f, "{}-W{:02}", w.year(), w.week())
            }
            Period::Month(d) => write!(f, "{}", d.format("%Y-%m")),
            Period::Range(a, b) => write!(f, "{}..{}", a.format("%Y-%m-%d"), b.format("%Y-%m-%d")),
        }
    }
}

impl Serialize for Period {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Period {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Period::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    #[test]
    fn a_day_starts_at_local_midnight_or_the_first_time_after_a_skipped_one() {
        let london = super::start_of_day(day("2024-07-01"), chrono_tz::Europe::London);
        assert_eq!(london.to_rfc3339(), "2024-06-30T23:00:00+00:00");
        // Havana moved its clocks from 00:00 to 01:00 on 2024-03-10: that day starts at 01:00.
        let havana = super::start_of_day(day("2024-03-10"), chrono_tz::America::Havana);
        assert_eq!(havana.to_rfc3339(), "2024-03-10T05:00:00+00:00");
    }

    #[test]
    fn previous_day_is_taken_in_the_reports_time_zone() {
        // 23:30 UTC on the 14th is already the 15th in Sydney.
        let t: DateTime<Utc> = "2024-03-14T23:30:00Z".parse().unwrap();
        assert_eq!(
            Period::previous(PeriodKind::Day, t, chrono_tz::Australia::Sydney),
            Period::Day(day("2024-03-14"))
        );
        assert_eq!(
            Period::previous(PeriodKind::Day, t, chrono_tz::Europe::London),
            Period::Day(day("2024-03-13"))
        );
    }

    #[test]
    fn previous_week_and_month_are_the_last_complete_ones() {
        // Monday 2024-03-18 06:00 London: the week of Monday the 11th to Sunday the 17th.
        let monday: DateTime<Utc> = "2024-03-18T06:00:00Z".parse().unwrap();
        let week = Period::previous(PeriodKind::Week, monday, chrono_tz::Europe::London);
        assert_eq!(week, Period::Week(day("2024-03-11")));
        assert_eq!(week.last(), day("2024-03-17"));
        assert_eq!(week.to_string(), "2024-W11");
        // 1 March 2024 06:00: February, a leap month.
        let first: DateTime<Utc> = "2024-03-01T06:00:00Z".parse().unwrap();
        let month = Period::previous(PeriodKind::Month, first, chrono_tz::Europe::London);
        assert_eq!(month.to_string(), "2024-02");
        assert_eq!(month.days().count(), 29);
        // 1 January: December of the year before.
        let new_year: DateTime<Utc> = "2025-01-01T06:00:00Z".parse().unwrap();
        let december = Period::previous(PeriodKind::Month, new_year, chrono_tz::UTC);
        assert_eq!(december.to_string(), "2024-12");
        assert_eq!(december.last(), day("2024-12-31"));
    }

    #[test]
    fn labels_parse_back_to_the_same_period() {
        for label in [
            "2024-03-14",
            "2024-W11",
            "2024-W01",
            "2024-03",
            "2024-03-01..2024-03-14",
        ] {
            assert_eq!(Period::parse(label).unwrap().to_string(), label);
        }
        // ISO week 1 of 2025 starts in December 2024.
        assert_eq!(
            Period::parse("2025-W01").unwrap().first(),
            day("2024-12-30")
        );
        assert_eq!(
            Period::parse("2024-03-14..2024-03-14").unwrap(),
            Period::Day(day("2024-03-14"))
        );
    }

    #[test]
    fn bad_periods_say_what_is_wrong() {
        for (text, why) in [
            ("2024-13-01", "bad date"),
            ("2024-W54", "no such ISO week"),
            ("2024-03-14..2024-03-01", "the range ends before it starts"),
            ("2023-01-01..2024-12-31", "a range is at most 367 days"),
            ("yesterday", "bad date"),
            ("2024-13", "bad month"),
        ] {
            assert_eq!(Period::parse(text).unwrap_err().1, why, "{text}");
        }
    }

    #[test]
    fn a_period_contains_its_days_only() {
        let p = Period::parse("2024-W11").unwrap();
        assert!(p.contains(day("2024-03-11")) && p.contains(day("2024-03-17")));
        assert!(!p.contains(day("2024-03-10")) && !p.contains(day("2024-03-18")));
        assert_eq!(p.days().count(), 7);
    }
}
