//! EventBridge Scheduler expressions, as `reports.toml` gives them: `cron(minutes hours
//! day-of-month month day-of-week year)`, `rate(n minutes|hours|days)` and
//! `at(yyyy-mm-ddThh:mm:ss)`, evaluated in the schedule's time zone (as Scheduler's
//! `ScheduleExpressionTimezone` does), so `charlie config check` refuses an expression
//! Scheduler would, and the control API can say when a report fires next.
//!
//! Cron fields follow Scheduler's rules: one of day-of-month and day-of-week is `?`;
//! day-of-week counts 1 = SUN … 7 = SAT (names allowed); `*`, `,`, `-` and `/` everywhere;
//! `L` in day-of-month (the month's last day) and `nL` in day-of-week (the month's last such
//! day); `nW` (nearest weekday) and `n#k` (the k-th such day). A local time that a daylight
//! saving change skips fires at the first instant after the gap; one repeated fires once, at
//! its first occurrence.

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

/// A parsed schedule expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expression {
    Cron(Box<Cron>),
    /// Every `every` from the schedule's creation (Scheduler counts from then).
    Rate(Duration),
    /// Once, at a local time.
    At(chrono::NaiveDateTime),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    minutes: u64,
    hours: u64,
    /// Bits 1..=31.
    days: Day,
    /// Bits 1..=12.
    months: u64,
    /// None: any year; else the allowed years.
    years: Option<Vec<(i32, i32, i32)>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Day {
    /// Day-of-month bits (1..=31), day-of-week `?`.
    OfMonth(u64),
    /// The month's last day, `offset` days before it (`L`, `L-2`).
    Last,
    /// The weekday nearest day n of the month (`15W`).
    NearestWeekday(u32),
    /// Day-of-week bits (1 = SUN … 7 = SAT), day-of-month `?`.
    OfWeek(u64),
    /// The month's last such weekday (`6L`: its last Friday).
    LastOfWeek(u32),
    /// The k-th such weekday of the month (`2#1`: its first Monday).
    NthOfWeek(u32, u32),
}

impl Expression {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let inner = |prefix: &str| {
            text.strip_prefix(prefix)
                .and_then(|t| t.strip_suffix(')'))
                .map(str::trim)
        };
        if let Some(body) = inner("cron(") {
            return Cron::parse(body).map(|c| Expression::Cron(Box::new(c)));
        }
        if let Some(body) = inner("rate(") {
            let (n, unit) = body
                .split_once(' ')
                .ok_or_else(|| format!("rate({body}): expected rate(value unit)"))?;
            let n: i64 = n
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("rate({body}): {n:?} is not a positive whole number"))?;
            let every = match unit.trim() {
                "minute" | "minutes" => Duration::minutes(n),
                "hour" | "hours" => Duration::hours(n),
                "day" | "days" => Duration::days(n),
                other => {
                    return Err(format!(
                        "rate({body}): unit {other:?} is not minute(s), hour(s) or day(s)"
                    ));
                }
            };
            return Ok(Expression::Rate(every));
        }
        if let Some(body) = inner("at(") {
            return chrono::NaiveDateTime::parse_from_str(body, "%Y-%m-%dT%H:%M:%S")
                .map(Expression::At)
                .map_err(|e| format!("at({body}): not yyyy-mm-ddThh:mm:ss: {e}"));
        }
        Err(format!(
            "{text:?} is not an EventBridge Scheduler expression: cron(…), rate(…) or at(…)"
        ))
    }

    /// The first firing strictly after `after`, in `zone`; `None` when there is none (an
    /// `at` in the past, a cron whose years are over) or, for `rate`, when it depends on the
    /// schedule's creation time, which only Scheduler knows.
    pub fn next_after(&self, after: DateTime<Utc>, zone: Tz) -> Option<DateTime<Utc>> {
        match self {
            Expression::Cron(c) => c.next_after(after, zone),
            Expression::Rate(_) => None,
            Expression::At(local) => {
                let t = resolve_local(zone, *local)?;
                (t > after).then_some(t)
            }
        }
    }
}

impl Cron {
    fn parse(body: &str) -> Result<Self, String> {
        let fields: Vec<&str> = body.split_whitespace().collect();
        let [min, hour, dom, month, dow, year] = fields[..] else {
            return Err(format!(
                "cron({body}): {} fields; Scheduler wants 6 (minutes hours day-of-month month day-of-week year)",
                fields.len()
            ));
        };
        let err = |field: &str, e: String| format!("cron({body}): {field}: {e}");
        let minutes = bits(min, 0, 59, &[]).map_err(|e| err("minutes", e))?;
        let hours = bits(hour, 0, 23, &[]).map_err(|e| err("hours", e))?;
        let months = bits(month, 1, 12, &MONTHS).map_err(|e| err("month", e))?;
        let days = match (dom, dow) {
            ("?", "?") => {
                return Err(err(
                    "day-of-month/day-of-week",
                    "only one of them may be ?".into(),
                ));
            }
            ("?", dow) => day_of_week(dow).map_err(|e| err("day-of-week", e))?,
            (dom, "?") => day_of_month(dom).map_err(|e| err("day-of-month", e))?,
            _ => {
                return Err(err(
                    "day-of-month/day-of-week",
                    "one of them must be ? (Scheduler does not combine them)".into(),
                ));
            }
        };
        let years = if year == "*" {
            None
        } else {
            Some(
                year.split(',')
                    .map(|part| range_step(part, 1970, 2199, &[]))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| err("year", e))?
                    .into_iter()
                    .map(|(a, b, s)| (a as i32, b as i32, s as i32))
                    .collect(),
            )
        };
        Ok(Cron {
            minutes,
            hours,
            days,
            months,
            years,
        })
    }

    fn year_allowed(&self, y: i32) -> bool {
        self.years.as_ref().is_none_or(|ranges| {
            ranges
                .iter()
                .any(|(a, b, s)| y >= *a && y <= *b && (y - a) % s == 0)
        })
    }

    fn day_allowed(&self, d: NaiveDate) -> bool {
        let last = last_day(d.year(), d.month());
        // 1 = SUN … 7 = SAT
        let weekday = d.weekday().num_days_from_sunday() + 1;
        match self.days {
            Day::OfMonth(bits) => bits & (1 << d.day()) != 0,
            Day::Last => d.day() == last,
            Day::NearestWeekday(n) => d.day() == nearest_weekday(d.year(), d.month(), n),
            Day::OfWeek(bits) => bits & (1 << weekday) != 0,
            Day::LastOfWeek(w) => weekday == w && d.day() + 7 > last,
            Day::NthOfWeek(w, k) => weekday == w && (d.day() - 1) / 7 + 1 == k,
        }
    }

    fn next_after(&self, after: DateTime<Utc>, zone: Tz) -> Option<DateTime<Utc>> {
        let start = after.with_timezone(&zone).date_naive();
        // Five years of days covers every expression with a firing at all but a sparse year list.
        let mut day = start;
        for _ in 0..(366 * 5) {
            if self.year_allowed(day.year())
                && self.months & (1 << day.month()) != 0
                && self.day_allowed(day)
            {
                for h in (0..24).filter(|h| self.hours & (1 << h) != 0) {
                    for m in (0..60).filter(|m| self.minutes & (1 << m) != 0) {
                        let local = day.and_time(NaiveTime::from_hms_opt(h, m, 0)?);
                        if let Some(t) = resolve_local(zone, local)
                            && t > after
                        {
                            return Some(t);
                        }
                    }
                }
            }
            day = day.succ_opt()?;
        }
        None
    }
}

/// A local time in `zone` as UTC: its first occurrence when repeated, the end of the gap
/// when skipped.
fn resolve_local(zone: Tz, local: chrono::NaiveDateTime) -> Option<DateTime<Utc>> {
    if let Some(t) = zone.from_local_datetime(&local).earliest() {
        return Some(t.with_timezone(&Utc));
    }
    // In a gap: the first whole minute that exists after it.
    let mut probe = local;
    for _ in 0..(3 * 60) {
        probe += Duration::minutes(1);
        if let Some(t) = zone.from_local_datetime(&probe).earliest() {
            let t = t.with_timezone(&Utc);
            return Some(t - Duration::seconds(i64::from(t.second())));
        }
    }
    None
}

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

fn day_of_month(field: &str) -> Result<Day, String> {
    if field == "L" {
        return Ok(Day::Last);
    }
    if let Some(n) = field.strip_suffix('W') {
        let n = number(n, 1, 31, &[])?;
        return Ok(Day::NearestWeekday(n));
    }
    Ok(Day::OfMonth(bits(field, 1, 31, &[])?))
}

fn day_of_week(field: &str) -> Result<Day, String> {
    if field == "L" {
        return Ok(Day::OfWeek(1 << 7));
    }
    if let Some(w) = field.strip_suffix('L') {
        return Ok(Day::LastOfWeek(number(w, 1, 7, &WEEKDAYS)?));
    }
    if let Some((w, k)) = field.split_once('#') {
        let k = number(k, 1, 5, &[])?;
        return Ok(Day::NthOfWeek(number(w, 1, 7, &WEEKDAYS)?, k));
    }
    Ok(Day::OfWeek(bits(field, 1, 7, &WEEKDAYS)?))
}

/// A field's allowed values as bits.
fn bits(field: &str, lo: u32, hi: u32, names: &[&str]) -> Result<u64, String> {
    let mut out = 0u64;
    for part in field.split(',') {
        let (a, b, step) = range_step(part, lo, hi, names)?;
        let mut v = a;
        while v <= b {
            out |= 1 << v;
            v += step;
        }
    }
    Ok(out)
}

/// `*`, `a`, `a-b`, with an optional `/step`: (first, last, step).
fn range_step(part: &str, lo: u32, hi: u32, names: &[&str]) -> Result<(u32, u32, u32), String> {
    let (range, step) = match part.split_once('/') {
        Some((r, s)) => (r, number(s, 1, hi.max(1), &[])?),
        None => (part, 1),
    };
    let (a, b) = match range {
        "*" => (lo, hi),
        r => match r.split_once('-') {
            Some((a, b)) => (number(a, lo, hi, names)?, number(b, lo, hi, names)?),
            // `5/15`: from 5 to the end, every 15.
            None if part.contains('/') => (number(r, lo, hi, names)?, hi),
            None => {
                let v = number(r, lo, hi, names)?;
                (v, v)
            }
        },
    };
    if a > b {
        return Err(format!("{part:?}: the range runs backwards"));
    }
    Ok((a, b, step))
}

fn number(text: &str, lo: u32, hi: u32, names: &[&str]) -> Result<u32, String> {
    let upper = text.to_ascii_uppercase();
    if let Some(i) = names.iter().position(|n| *n == upper) {
        return Ok(lo + i as u32);
    }
    match text.parse::<u32>() {
        Ok(v) if (lo..=hi).contains(&v) => Ok(v),
        Ok(v) => Err(format!("{v} is outside {lo}-{hi}")),
        Err(_) => Err(format!("{text:?} is not a number or a name")),
    }
}

fn last_day(year: i32, month: u32) -> u32 {
    let next = if month == 12 {
        NaiveDate::from_ymd_opt(year + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(year, month + 1, 1)
    };
    next.and_then(|d| d.pred_opt()).map_or(28, |d| d.day())
}

/// The weekday nearest day `n` of the month, within the month (Quartz's `nW`).
fn nearest_weekday(year: i32, month: u32, n: u32) -> u32 {
    let last = last_day(year, month);
    let n = n.min(last);
    let Some(d) = NaiveDate::from_ymd_opt(year, month, n) else {
        return n;
    };
    match d.weekday() {
        chrono::Weekday::Sat if n == 1 => 3,
        chrono::Weekday::Sat => n - 1,
        chrono::Weekday::Sun if n == last => n - 2,
        chrono::Weekday::Sun => n + 1,
        _ => n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn next(expr: &str, after: &str, zone: &str) -> Option<String> {
        Expression::parse(expr)
            .unwrap()
            .next_after(after.parse().unwrap(), zone.parse().unwrap())
            .map(|t| t.to_rfc3339())
    }

    #[test]
    fn the_shipped_schedules_fire_when_their_zone_says() {
        // 06:00 London is 06:00 UTC in winter, 05:00 UTC in summer.
        assert_eq!(
            next("cron(0 6 * * ? *)", "2024-03-14T12:00:00Z", "Europe/London").as_deref(),
            Some("2024-03-15T06:00:00+00:00")
        );
        assert_eq!(
            next("cron(0 6 * * ? *)", "2024-07-01T12:00:00Z", "Europe/London").as_deref(),
            Some("2024-07-02T05:00:00+00:00")
        );
        // Mondays at 07:00; 2024-03-14 is a Thursday.
        assert_eq!(
            next(
                "cron(0 7 ? * MON *)",
                "2024-03-14T12:00:00Z",
                "Europe/London"
            )
            .as_deref(),
            Some("2024-03-18T07:00:00+00:00")
        );
    }

    #[test]
    fn steps_lists_ranges_and_special_days() {
        let at = |e| next(e, "2024-02-10T00:00:00Z", "UTC");
        assert_eq!(
            at("cron(*/15 9-17 * * ? *)").as_deref(),
            Some("2024-02-10T09:00:00+00:00")
        );
        assert_eq!(
            at("cron(30 8 L * ? *)").as_deref(),
            Some("2024-02-29T08:30:00+00:00")
        );
        // The last Friday of February 2024 is the 23rd; its second Monday the 12th.
        assert_eq!(
            at("cron(0 9 ? * 6L *)").as_deref(),
            Some("2024-02-23T09:00:00+00:00")
        );
        assert_eq!(
            at("cron(0 9 ? * 2#2 *)").as_deref(),
            Some("2024-02-12T09:00:00+00:00")
        );
        // The 17th of February 2024 is a Saturday: the nearest weekday is Friday the 16th.
        assert_eq!(
            at("cron(0 9 17W * ? *)").as_deref(),
            Some("2024-02-16T09:00:00+00:00")
        );
        assert_eq!(
            at("cron(0 9 1,15 JAN,JUL ? 2025)").as_deref(),
            Some("2025-01-01T09:00:00+00:00")
        );
        assert_eq!(at("cron(0 9 1 1 ? 2020)"), None, "its years are over");
    }

    #[test]
    fn a_time_skipped_by_daylight_saving_fires_after_the_gap() {
        // 2024-03-31 01:30 does not exist in London (01:00 → 02:00).
        assert_eq!(
            next(
                "cron(30 1 * * ? *)",
                "2024-03-30T12:00:00Z",
                "Europe/London"
            )
            .as_deref(),
            Some("2024-03-31T01:00:00+00:00")
        );
    }

    #[test]
    fn at_and_rate() {
        assert_eq!(
            next("at(2030-01-02T03:04:05)", "2024-01-01T00:00:00Z", "UTC").as_deref(),
            Some("2030-01-02T03:04:05+00:00")
        );
        assert_eq!(next("rate(5 minutes)", "2024-01-01T00:00:00Z", "UTC"), None);
    }

    #[test]
    fn what_scheduler_refuses_is_refused_with_the_field() {
        for (expr, says) in [
            ("cron(0 6 * * *)", "5 fields"),
            ("cron(0 6 * * MON *)", "one of them must be ?"),
            ("cron(0 6 ? * ? *)", "only one of them may be ?"),
            ("cron(61 6 * * ? *)", "minutes: 61 is outside 0-59"),
            ("cron(0 6 ? * FUNDAY *)", "day-of-week"),
            ("cron(0 6 * 5-2 ? *)", "runs backwards"),
            ("rate(0 minutes)", "positive"),
            ("rate(5 weeks)", "unit"),
            ("0 6 * * ? *", "not an EventBridge Scheduler expression"),
        ] {
            let e = Expression::parse(expr).unwrap_err();
            assert!(e.contains(says), "{expr}: {e}");
        }
    }
}
