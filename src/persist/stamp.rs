//! Version directory names: sortable UTC timestamps such as
//! `20261126T074900123Z`, with a `-<n>` suffix when a name is already taken.
//! Pure functions of the time they are given; no clock reads here.

use std::time::{SystemTime, UNIX_EPOCH};

/// A parsed version name; orders as the versions were begun.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct VersionKey {
    /// `yyyymmdd`.
    pub date: u32,
    /// `HHMMSSmmm`.
    pub time: u32,
    /// 0 for the plain name, `n` for the suffix `-<n>`.
    pub seq: u32,
}

impl VersionKey {
    /// The key for a moment, with no suffix. Times before 1970 count as 1970.
    pub fn at(now: SystemTime) -> VersionKey {
        let c = Civil::from(now);
        VersionKey {
            date: c.year.clamp(0, 9999) as u32 * 10_000 + c.month * 100 + c.day,
            time: c.hour * 10_000_000 + c.minute * 100_000 + c.second * 1000 + c.milli,
            seq: 0,
        }
    }

    /// Parses a directory name; `None` for anything that is not a version name.
    pub fn parse(name: &str) -> Option<VersionKey> {
        let b = name.as_bytes();
        if b.len() < 19 || b[8] != b'T' || b[18] != b'Z' {
            return None;
        }
        let date = digits(&b[..8])?;
        let time = digits(&b[9..18])?;
        let seq = match &b[19..] {
            [] => 0,
            [b'-', rest @ ..] if !rest.is_empty() && rest.len() <= 9 && rest[0] != b'0' => {
                digits(rest)?
            }
            _ => return None,
        };
        Some(VersionKey { date, time, seq })
    }

    pub fn name(&self) -> String {
        if self.seq == 0 {
            format!("{:08}T{:09}Z", self.date, self.time)
        } else {
            format!("{:08}T{:09}Z-{}", self.date, self.time, self.seq)
        }
    }
}

fn digits(b: &[u8]) -> Option<u32> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// A UTC calendar time.
#[derive(Debug, PartialEq, Eq)]
pub struct Civil {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub milli: u32,
}

impl From<SystemTime> for Civil {
    fn from(t: SystemTime) -> Civil {
        let ms = t
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let ms = i64::try_from(ms).unwrap_or(i64::MAX);
        let days = ms.div_euclid(86_400_000);
        let in_day = ms.rem_euclid(86_400_000) as u32;
        let (year, month, day) = civil_from_days(days);
        Civil {
            year,
            month,
            day,
            hour: in_day / 3_600_000,
            minute: in_day / 60_000 % 60,
            second: in_day / 1000 % 60,
            milli: in_day % 1000,
        }
    }
}

impl Civil {
    /// RFC 3339 with milliseconds, e.g. `2026-11-26T07:49:00.123Z`.
    pub fn rfc3339(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second, self.milli
        )
    }
}

/// Days since 1970-01-01 -> (year, month, day) in the proleptic Gregorian
/// calendar (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at_ms(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    #[test]
    fn formats_known_moments() {
        assert_eq!(VersionKey::at(at_ms(0)).name(), "19700101T000000000Z");
        // 2026-11-26T07:49:00.123Z
        let t = at_ms(1_795_679_340_123);
        assert_eq!(VersionKey::at(t).name(), "20261126T074900123Z");
        assert_eq!(Civil::from(t).rfc3339(), "2026-11-26T07:49:00.123Z");
        // Leap day.
        assert_eq!(
            Civil::from(at_ms(951_782_400_000)).rfc3339(),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(
            Civil::from(at_ms(1_735_689_599_999)).rfc3339(),
            "2024-12-31T23:59:59.999Z"
        );
    }

    #[test]
    fn parses_what_it_formats_and_nothing_else() {
        let k = VersionKey {
            date: 20261126,
            time: 74900123,
            seq: 12,
        };
        assert_eq!(k.name(), "20261126T074900123Z-12");
        assert_eq!(VersionKey::parse(&k.name()), Some(k));
        assert_eq!(
            VersionKey::parse("20261126T074900123Z"),
            Some(VersionKey { seq: 0, ..k })
        );
        for bad in [
            "",
            "metadata.json",
            "20261126T074900123",
            "20261126T074900123Z-",
            "20261126T074900123Z-01",
            "20261126T074900123Z-1x",
            "20261126X074900123Z",
            "2026112aT074900123Z",
            "20261126T074900123Z.tmp",
        ] {
            assert_eq!(VersionKey::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn keys_order_as_time_then_suffix() {
        let a = VersionKey::parse("20261126T074900123Z").unwrap();
        let b = VersionKey::parse("20261126T074900123Z-2").unwrap();
        let c = VersionKey::parse("20261126T074900123Z-10").unwrap();
        let d = VersionKey::parse("20261126T074900124Z").unwrap();
        assert!(a < b && b < c && c < d);
    }
}
