//! Query strings and forms, parsed by hand so that bad input gets a 400 page that says what
//! was wrong (never a 500, never a bare "failed to deserialize").

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use uuid::Uuid;

/// A request's parameters, in order (a name may repeat: `id=1&id=2`).
pub(crate) struct Params(Vec<(String, String)>);

/// What was wrong with a parameter, in words for the 400 page.
#[derive(Debug)]
pub(crate) struct BadInput(pub(crate) String);

impl Params {
    /// Parses `a=1&b=2` (a query string or a form body).
    pub(crate) fn parse(raw: &[u8]) -> Params {
        Params(
            url::form_urlencoded::parse(raw)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// The first value of `name`, trimmed; `None` when absent or blank.
    pub(crate) fn text(&self, name: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    /// A free-text value (a key, a tag, a note): at most 1,000 characters and no NUL, which
    /// Postgres cannot store.
    pub(crate) fn free_text(&self, name: &str) -> Result<Option<String>, BadInput> {
        match self.text(name) {
            Some(value) if value.contains('\0') => {
                Err(BadInput(format!("{name} must not contain a NUL character")))
            }
            Some(value) if value.chars().count() > 1_000 => {
                Err(BadInput(format!("{name} is longer than 1,000 characters")))
            }
            other => Ok(other),
        }
    }

    /// Every value of `name`.
    pub(crate) fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.trim())
    }

    /// `name` parsed as `T`, with a message naming the parameter when it does not parse.
    pub(crate) fn parsed<T: std::str::FromStr>(
        &self,
        name: &str,
        what: &str,
    ) -> Result<Option<T>, BadInput> {
        match self.text(name) {
            None => Ok(None),
            Some(value) => value
                .parse()
                .map(Some)
                .map_err(|_| BadInput(format!("{name}={}: expected {what}", shorten(&value)))),
        }
    }

    /// A job id (a positive integer).
    pub(crate) fn id(&self, name: &str) -> Result<Option<i64>, BadInput> {
        match self.parsed::<i64>(name, "a job id (a positive whole number)")? {
            Some(id) if id <= 0 => Err(BadInput(format!(
                "{name}={id}: expected a job id (a positive whole number)"
            ))),
            other => Ok(other),
        }
    }

    /// A conversation id.
    pub(crate) fn uuid(&self, name: &str) -> Result<Option<Uuid>, BadInput> {
        self.parsed(name, "a conversation id (a UUID such as 3f2a…-…)")
    }

    /// A time: RFC 3339, or `YYYY-MM-DDTHH:MM[:SS]` as a browser's date-time field sends it,
    /// read as UTC.
    pub(crate) fn time(&self, name: &str) -> Result<Option<DateTime<Utc>>, BadInput> {
        let Some(value) = self.text(name) else {
            return Ok(None);
        };
        if let Ok(time) = DateTime::parse_from_rfc3339(&value) {
            return Ok(Some(time.with_timezone(&Utc)));
        }
        for format in ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M"] {
            if let Ok(naive) = NaiveDateTime::parse_from_str(&value, format) {
                return Ok(Some(Utc.from_utc_datetime(&naive)));
            }
        }
        Err(BadInput(format!(
            "{name}={}: expected a time such as 2026-11-25T14:30 (UTC) or RFC 3339",
            shorten(&value)
        )))
    }

    /// Every `id` value as job ids.
    pub(crate) fn ids(&self, name: &str) -> Result<Vec<i64>, BadInput> {
        self.all(name)
            .filter(|v| !v.is_empty())
            .map(|v| match v.parse::<i64>() {
                Ok(id) if id > 0 => Ok(id),
                _ => Err(BadInput(format!(
                    "{name}={}: expected a job id (a positive whole number)",
                    shorten(v)
                ))),
            })
            .collect()
    }
}

/// At most 60 characters of a bad value, for the message.
fn shorten(value: &str) -> String {
    let mut short: String = value.chars().take(60).collect();
    if short.len() < value.len() {
        short.push('…');
    }
    format!("{short:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_are_named_in_the_message() {
        let params = Params::parse(b"id=abc&conversation=nope&since=yesterday&state=x");
        assert!(params.id("id").unwrap_err().0.contains("id=\"abc\""));
        assert!(params.uuid("conversation").unwrap_err().0.contains("UUID"));
        assert!(params
            .time("since")
            .unwrap_err()
            .0
            .contains("2026-11-25T14:30"));
        assert!(Params::parse(b"id=-3")
            .id("id")
            .unwrap_err()
            .0
            .contains("positive"));
    }

    #[test]
    fn good_values_parse() {
        let params = Params::parse(b"id=42&since=2026-11-25T14%3A30&ids=1&ids=2&blank=+");
        assert_eq!(params.id("id").unwrap(), Some(42));
        assert_eq!(
            params.time("since").unwrap().unwrap().to_rfc3339(),
            "2026-11-25T14:30:00+00:00"
        );
        assert_eq!(params.ids("ids").unwrap(), vec![1, 2]);
        assert_eq!(params.text("blank"), None);
    }
}
