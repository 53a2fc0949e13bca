//! When scheduled sessions start: a template's cron expression (seed 003 section 9), parsed
//! with croner and checked when the template loads.

use std::fmt;

/// A cron expression, checked when loaded: `minute hour day month weekday`, in UTC (a sixth
/// leading field for seconds is accepted).
#[derive(Debug, Clone)]
pub struct Schedule {
    text: String,
    cron: croner::Cron,
}

impl Schedule {
    /// Parses a cron expression.
    ///
    /// # Errors
    /// What the cron parser says is wrong with it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let fields = text.split_whitespace().count();
        if !(5..=6).contains(&fields) {
            return Err(format!(
                "{text:?}: a cron expression has 5 fields (minute hour day month weekday), found {fields}"
            ));
        }
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Optional)
            .build()
            .parse(text)
            .map_err(|e| format!("{text:?}: {e}"))?;
        Ok(Self {
            text: text.to_owned(),
            cron,
        })
    }

    /// The first time at or after `unix_s` (Unix seconds) the schedule matches.
    pub fn next_at_or_after(&self, unix_s: i64) -> Option<i64> {
        let at = chrono::DateTime::from_timestamp(unix_s, 0)?;
        self.cron
            .find_next_occurrence(&at, true)
            .ok()
            .map(|t| t.timestamp())
    }

    /// The expression as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for Schedule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}
