//! Settings come from a map of environment variables, never from process-global state, so the
//! local runner can host several functions in one process, each with its own deployment's values.

use std::collections::HashMap;

/// A function's environment: the variables Terraform set on it (plus, in AWS, the runtime's own).
/// Its `Debug` names the variables and never shows a value: the runtime's own include the
/// session credentials.
#[derive(Clone, Default)]
pub struct Env(HashMap<String, String>);

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&str> = self.0.keys().map(String::as_str).collect();
        names.sort_unstable();
        f.debug_struct("Env").field("names", &names).finish()
    }
}

/// A setting that is missing or malformed; never retryable, it needs a deployment fix.
#[derive(Debug, thiserror::Error)]
pub enum SettingError {
    #[error("environment variable {0} is required but not set")]
    Missing(&'static str),
    #[error("environment variable {name} has an invalid value: {reason}")]
    Invalid { name: &'static str, reason: String },
}

impl Env {
    /// The current process's environment: what a Lambda function sees.
    pub fn from_process() -> Self {
        Env(std::env::vars().collect())
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    pub fn required(&self, name: &'static str) -> Result<&str, SettingError> {
        self.get(name).ok_or(SettingError::Missing(name))
    }

    /// A parsed setting with a default when unset.
    pub fn parsed_or<T: std::str::FromStr>(
        &self,
        name: &'static str,
        default: T,
    ) -> Result<T, SettingError>
    where
        T::Err: std::fmt::Display,
    {
        match self.get(name) {
            None => Ok(default),
            Some(raw) => raw.parse().map_err(|e: T::Err| SettingError::Invalid {
                name,
                reason: e.to_string(),
            }),
        }
    }

    /// [`Env::parsed_or`] for a setting that must lie in `range`.
    pub fn in_range_or<T>(
        &self,
        name: &'static str,
        default: T,
        range: std::ops::RangeInclusive<T>,
    ) -> Result<T, SettingError>
    where
        T: std::str::FromStr + PartialOrd + std::fmt::Display,
        T::Err: std::fmt::Display,
    {
        let value = self.parsed_or(name, default)?;
        if range.contains(&value) {
            Ok(value)
        } else {
            Err(SettingError::Invalid {
                name,
                reason: format!("{value} is outside {} to {}", range.start(), range.end()),
            })
        }
    }

    pub fn with(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.0.insert(name.into(), value.into());
        self
    }

    pub fn extend(&mut self, other: impl IntoIterator<Item = (String, String)>) {
        self.0.extend(other);
    }
}

impl FromIterator<(String, String)> for Env {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        Env(iter.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_values_count_as_unset() {
        let env = Env::default().with("A", "");
        assert!(env.get("A").is_none());
        assert!(matches!(env.required("A"), Err(SettingError::Missing("A"))));
    }

    #[test]
    fn malformed_numbers_name_the_variable() {
        let env = Env::default().with("N", "ten");
        let err = env.parsed_or("N", 1u32).unwrap_err().to_string();
        assert!(err.contains("N") && err.contains("invalid"), "{err}");
    }

    #[test]
    fn ranged_settings_refuse_values_outside_their_range() {
        let env = Env::default().with("D", "9").with("E", "3");
        let err = env.in_range_or("D", 7u32, 1..=7).unwrap_err().to_string();
        assert!(
            err.contains("D") && err.contains("9 is outside 1 to 7"),
            "{err}"
        );
        assert_eq!(env.in_range_or("E", 7u32, 1..=7).unwrap(), 3);
        assert_eq!(env.in_range_or("UNSET", 7u32, 1..=7).unwrap(), 7);
        assert!(env.with("F", "x").in_range_or("F", 7u32, 1..=7).is_err());
    }

    #[test]
    fn debug_names_the_variables_and_shows_no_value() {
        let env = Env::default()
            .with("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI")
            .with("A", "1");
        let printed = format!("{env:?}");
        assert_eq!(printed, r#"Env { names: ["A", "AWS_SECRET_ACCESS_KEY"] }"#);
    }
}
