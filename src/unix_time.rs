//! Times the API writes in unix seconds, and which of them the product stores as times.

use chrono::{DateTime, Utc};

/// The seconds of the years 1 to 9999: the times a timestamp of the database, and the usual
/// clients of it (Python's `datetime` among them), can hold. `openai.unix_time` in the
/// migrations draws the same line.
pub const STORABLE_SECONDS: std::ops::RangeInclusive<i64> = -62_135_596_800..=253_402_300_799;

/// The time `seconds` names, or `None` when it lies outside `STORABLE_SECONDS`.
pub fn storable(seconds: i64) -> Option<DateTime<Utc>> {
    if STORABLE_SECONDS.contains(&seconds) {
        DateTime::from_timestamp(seconds, 0)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_storable_range_is_the_years_one_to_9999() {
        let first = storable(*STORABLE_SECONDS.start()).expect("storable");
        let last = storable(*STORABLE_SECONDS.end()).expect("storable");
        assert_eq!(first.to_rfc3339(), "0001-01-01T00:00:00+00:00");
        assert_eq!(last.to_rfc3339(), "9999-12-31T23:59:59+00:00");
        assert_eq!(storable(STORABLE_SECONDS.start() - 1), None);
        assert_eq!(storable(STORABLE_SECONDS.end() + 1), None);
    }
}
