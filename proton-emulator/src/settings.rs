//! How realistic the emulator is about idempotency and consistency, and the JSON form of those
//! settings served by `GET`/`PUT /_emulator/config`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What a Create whose client token is already in use answers when its other parameters differ.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Idempotency {
    /// The existing connection, whatever the parameters (the emulator's historic behaviour:
    /// forgiving, so a client that reuses tokens carelessly still works).
    #[default]
    Lenient,
    /// ConflictException, as AWS answers a token reused for a different request: a client that
    /// derives tokens wrongly is caught before it meets the real service.
    Strict,
}

impl Idempotency {
    pub const ALL: [Idempotency; 2] = [Idempotency::Lenient, Idempotency::Strict];

    pub fn as_str(self) -> &'static str {
        match self {
            Idempotency::Lenient => "lenient",
            Idempotency::Strict => "strict",
        }
    }
}

impl fmt::Display for Idempotency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error of [`Idempotency::from_str`]; its message lists the accepted values.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not an idempotency mode: expected 'strict' or 'lenient'")]
pub struct UnknownIdempotency(String);

impl FromStr for Idempotency {
    type Err = UnknownIdempotency;

    fn from_str(s: &str) -> Result<Idempotency, UnknownIdempotency> {
        Idempotency::ALL
            .into_iter()
            .find(|mode| mode.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownIdempotency(s.to_string()))
    }
}

/// The settings that may change while the emulator runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    pub idempotency: Idempotency,
    /// How long List takes to reflect a Create or a Delete (see `Store::list`).
    pub list_lag: Duration,
}

/// The JSON form of [`Settings`] for `PUT /_emulator/config`. Like the faults document, a PUT
/// replaces the settings as a whole: a member left out takes its default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ConfigDocument {
    /// `"lenient"` (default) or `"strict"`.
    pub idempotency: Option<String>,
    pub list_lag_ms: u64,
}

impl ConfigDocument {
    pub fn into_settings(self) -> Result<Settings, String> {
        let idempotency = match self.idempotency {
            Some(mode) => mode
                .parse()
                .map_err(|e: UnknownIdempotency| e.to_string())?,
            None => Idempotency::default(),
        };
        Ok(Settings {
            idempotency,
            list_lag: Duration::from_millis(self.list_lag_ms),
        })
    }
}

impl From<&Settings> for ConfigDocument {
    fn from(settings: &Settings) -> ConfigDocument {
        ConfigDocument {
            idempotency: Some(settings.idempotency.as_str().to_string()),
            list_lag_ms: u64::try_from(settings.list_lag.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_parses_its_names_only() {
        assert_eq!("strict".parse(), Ok(Idempotency::Strict));
        assert_eq!("Lenient".parse(), Ok(Idempotency::Lenient));
        let err = "sometimes".parse::<Idempotency>().unwrap_err();
        assert!(err.to_string().contains("'sometimes'"), "{err}");
        assert!(err.to_string().contains("strict"), "{err}");
        for mode in Idempotency::ALL {
            assert_eq!(mode.to_string().parse(), Ok(mode));
        }
    }

    #[test]
    fn config_document_round_trip_and_checks() {
        let doc: ConfigDocument =
            serde_json::from_str(r#"{"idempotency": "strict", "listLagMs": 1500}"#).unwrap();
        let settings = doc.clone().into_settings().unwrap();
        assert_eq!(
            settings,
            Settings {
                idempotency: Idempotency::Strict,
                list_lag: Duration::from_millis(1500),
            }
        );
        assert_eq!(ConfigDocument::from(&settings), doc);

        let empty: ConfigDocument = serde_json::from_str("{}").unwrap();
        assert_eq!(empty.into_settings().unwrap(), Settings::default());
        let bad = ConfigDocument {
            idempotency: Some("eventually".into()),
            ..ConfigDocument::default()
        };
        assert!(bad.into_settings().unwrap_err().contains("eventually"));
        assert!(serde_json::from_str::<ConfigDocument>(r#"{"lag": 1}"#).is_err());
        assert!(serde_json::from_str::<ConfigDocument>(r#"{"listLagMs": -1}"#).is_err());
    }
}
