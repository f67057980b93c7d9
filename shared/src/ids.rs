//! Ids that have rules, each written once: a relay's id, an API key's id, a run's id, and the
//! names of datasets and reports. Each
//! is a type that only [`parse`](RelayId::parse) makes (and serde, through it), so a value of
//! the type is a valid id wherever it travels: state records, the API's answers, the
//! dashboard and the CLI's arguments (clap parses them with `FromStr`, so a bad id is refused
//! before anything is asked).

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

/// Why a text is not an id of a kind: names the kind and says what the id looks like.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a {kind}: {rule}")]
pub struct BadId {
    pub kind: &'static str,
    pub rule: &'static str,
    pub text: String,
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $rule:literal, $ok:expr, $schema:tt) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        /// As the text it is (`"branch-7"`), so messages quote an id the same way typed or not.
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl $name {
            /// What the id looks like (for messages and documents).
            pub const RULE: &'static str = $rule;

            pub fn parse(text: &str) -> Result<Self, BadId> {
                let ok: fn(&str) -> bool = $ok;
                if ok(text) {
                    Ok($name(text.to_owned()))
                } else {
                    Err(BadId {
                        kind: $kind,
                        rule: $rule,
                        // Enough to recognise it, never a page of it.
                        text: text.chars().take(80).collect(),
                    })
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;

            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = BadId;

            fn from_str(s: &str) -> Result<Self, BadId> {
                Self::parse(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                Self::parse(&text).map_err(serde::de::Error::custom)
            }
        }

        /// A string with the rule as its description and as much of the rule as JSON Schema
        /// says (a unit test holds the two to the same texts).
        impl JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }

            fn inline_schema() -> bool {
                true
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                let mut schema = schemars::json_schema!($schema);
                schema.insert("type".into(), "string".into());
                schema.insert("description".into(), format!("A {}: {}", $kind, $rule).into());
                schema
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

id_type!(
    /// An on-prem relay's id: it is a key segment (`inbox/relay/{id}/`) and part of the relay's
    /// key (`chr_{id}_…`).
    RelayId,
    "relay id",
    "1 to 40 of a-z, 0-9 and -, not starting with -",
    |id| (1..=40).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-'),
    { "pattern": "^[a-z0-9][a-z0-9-]{0,39}$" }
);

id_type!(
    /// An API key's id: the part of `chk_{id}_{secret}` that names the key (never the secret).
    KeyId,
    "key id",
    "16 hexadecimal digits (the part of chk_{id}_… before the secret)",
    |id| id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()),
    { "pattern": "^[0-9A-Fa-f]{16}$" }
);

id_type!(
    /// A run's id (`{report}.{period}.{source}…`): it keys the run's record and its workbook.
    RunId,
    "run id",
    "1 to 256 characters, none of them a control character",
    |id| (1..=256).contains(&id.len()) && !id.chars().any(char::is_control),
    { "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]{1,256}$", "maxLength": 256 }
);

/// What a dataset's or a report's name may be: it is part of storage keys (`{dataset}#{day}`,
/// `reports/{report}/…`), run ids (`{report}.{period}…`) and schedule names, so nothing that
/// could make one name's key another's.
fn name_ok(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

id_type!(
    /// A dataset's name (`[datasets.NAME]`).
    DatasetName,
    "dataset name",
    "1 to 64 letters, digits, '_' and '-'",
    name_ok,
    { "pattern": "^[A-Za-z0-9_-]{1,64}$" }
);

id_type!(
    /// A report's name (`[reports.NAME]`).
    ReportName,
    "report name",
    "1 to 64 letters, digits, '_' and '-'",
    name_ok,
    { "pattern": "^[A-Za-z0-9_-]{1,64}$" }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_parsed_by_their_rule_and_the_refusal_names_the_kind_and_the_rule() {
        assert_eq!(RelayId::parse("branch-7").unwrap().as_str(), "branch-7");
        for bad in ["", "-a", "Branch", "a_b", "a/b", &"a".repeat(41)] {
            let e = RelayId::parse(bad).unwrap_err();
            assert!(e.to_string().contains("is not a relay id: 1 to 40"), "{e}");
        }
        assert!(KeyId::parse("0123456789abcdef").is_ok());
        assert!(KeyId::parse("0123456789abcde").is_err());
        assert!(KeyId::parse("0123456789abcdeg").is_err());
        assert!(RunId::parse("call_centre_daily.2024-03-14.api.1").is_ok());
        assert!(RunId::parse("a\nb").is_err());
        assert!(RunId::parse(&"r".repeat(257)).is_err());
        // A refusal quotes a long text only in part.
        let e = RunId::parse(&"r".repeat(300)).unwrap_err();
        assert!(e.to_string().len() < 200, "{e}");
    }

    #[test]
    fn serde_reads_only_valid_ids_and_writes_the_bare_text() {
        let id: RelayId = serde_json::from_str("\"branch-7\"").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"branch-7\"");
        let e = serde_json::from_str::<RelayId>("\"Branch 7\"").unwrap_err();
        assert!(e.to_string().contains("not a relay id"), "{e}");
        assert!("nope".parse::<KeyId>().is_err());
        for bad in ["ib@rebuild", "ib#2024-03-14", "ib/x", "ib calls", "a.b", ""] {
            assert!(DatasetName::parse(bad).is_err(), "{bad}");
            assert!(ReportName::parse(bad).is_err(), "{bad}");
        }
        assert!(ReportName::parse("call_centre_daily").is_ok());
    }

    /// What the OpenAPI document says of an id is what `parse` takes: every sample is taken by
    /// both or refused by both.
    #[test]
    fn each_ids_schema_pattern_takes_what_parse_takes() {
        fn agree<T: JsonSchema>(parse: fn(&str) -> bool) {
            let schema = schemars::SchemaGenerator::default().into_root_schema_for::<T>();
            let pattern = schema.get("pattern").and_then(|p| p.as_str()).unwrap();
            let re = regex::Regex::new(pattern).unwrap();
            let samples = [
                "",
                "a",
                "-a",
                "a-",
                "branch-7",
                "Branch",
                "a_b",
                "a.b",
                "a b",
                "a/b",
                "a\nb",
                "a\u{7f}b",
                "0123456789abcdef",
                "0123456789ABCDEF",
                "0123456789abcdeg",
                "call_centre_daily.2024-03-14.api.1",
                "ib#2024-03-14",
                "x@y",
            ];
            let long = [
                "a".repeat(40),
                "a".repeat(41),
                "a".repeat(64),
                "a".repeat(65),
            ];
            let long = long.iter().map(String::as_str);
            for s in samples
                .into_iter()
                .chain(long)
                .chain(["a".repeat(257).as_str()])
            {
                assert_eq!(re.is_match(s), parse(s), "{} {s:?}", T::schema_name());
            }
        }
        agree::<RelayId>(|s| RelayId::parse(s).is_ok());
        agree::<KeyId>(|s| KeyId::parse(s).is_ok());
        agree::<RunId>(|s| RunId::parse(s).is_ok());
        agree::<DatasetName>(|s| DatasetName::parse(s).is_ok());
        agree::<ReportName>(|s| ReportName::parse(s).is_ok());
    }
}
