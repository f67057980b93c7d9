//! Report periods: which day a scheduled run covers, in the report's time zone.

use chrono::{DateTime, Days, NaiveDate, Utc};
use chrono_tz::Tz;

/// The day before the one on which the schedule fired, as seen in the report's time zone: a
/// schedule at 06:00 Europe/London reports on the previous London day, whatever UTC says.
pub fn previous_day(scheduled: DateTime<Utc>, tz: Tz) -> NaiveDate {
    let local = scheduled.with_timezone(&tz).date_naive();
    local.checked_sub_days(Days::new(1)).unwrap_or(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previous_day_is_taken_in_the_reports_time_zone() {
        // 23:30 UTC on the 14th is already the 15th in Sydney.
        let t: DateTime<Utc> = "2024-03-14T23:30:00Z".parse().unwrap();
        assert_eq!(
            previous_day(t, chrono_tz::Australia::Sydney),
            "2024-03-14".parse().unwrap()
        );
        assert_eq!(
            previous_day(t, chrono_tz::Europe::London),
            "2024-03-13".parse().unwrap()
        );
    }
}
