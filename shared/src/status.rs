//! The statuses a run, a delivery and a reprocess go through: each written once, here. The
//! state records store them, the API answers with them, the dashboard colours them and the CLI
//! waits on them; all by these types, serialised as the same snake_case words as before.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How a status reads to someone glancing at it (the dashboard's colour and mark).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    Good,
    Bad,
    Wait,
    Neutral,
}

impl Tone {
    pub fn class(self) -> &'static str {
        match self {
            Tone::Good => "good",
            Tone::Bad => "bad",
            Tone::Wait => "wait",
            Tone::Neutral => "neutral",
        }
    }
}

/// Writes `as_str`, `Display`, `FromStr` (the error lists every word) and `ALL` for an enum of
/// unit variants, each with its word.
macro_rules! words_for {
    ($name:ident { $($variant:ident = $word:literal),+ $(,)? }) => {
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $word),+
                }
            }

            /// Every word, in order (for messages and documents).
            pub fn words() -> Vec<&'static str> {
                Self::ALL.iter().map(|s| s.as_str()).collect()
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, String> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| format!("{s:?} is not one of {:?}", Self::words()))
            }
        }
    };
}
pub(crate) use words_for as words;

/// Where a run is (`RUN#{id}` / `run`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Requested through the API, not yet picked up.
    Queued,
    /// An attempt is at work (until the record's `deadline`).
    Building,
    /// An attempt failed (`error` says why); the queue tries again.
    Retrying,
    Built,
    /// The period had no rows and the report sends nothing then.
    SkippedEmpty,
    /// The period had no rows; a "no data" mail was queued.
    NoticeSent,
    Cancelled,
    /// For good: `error` says why, the message is in the runs DLQ.
    Failed,
}

words!(RunStatus {
    Queued = "queued",
    Building = "building",
    Retrying = "retrying",
    Built = "built",
    SkippedEmpty = "skipped_empty",
    NoticeSent = "notice_sent",
    Cancelled = "cancelled",
    Failed = "failed",
});

impl RunStatus {
    /// Nothing more happens to the run (a cancel has nothing to stop, a waiter stops waiting).
    pub fn is_final(self) -> bool {
        !matches!(
            self,
            RunStatus::Queued | RunStatus::Building | RunStatus::Retrying
        )
    }

    pub fn tone(self) -> Tone {
        match self {
            RunStatus::Built | RunStatus::NoticeSent => Tone::Good,
            RunStatus::Failed | RunStatus::Cancelled => Tone::Bad,
            RunStatus::Queued
            | RunStatus::Building
            | RunStatus::Retrying
            | RunStatus::SkippedEmpty => Tone::Wait,
        }
    }
}

/// Where a report mail is: sent (or queued for a relay), then what its receiver said, which
/// only ever rises in `rank` (a bounce after a delivery stands, never the other way round).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Waiting in a relay's outbox.
    Queued,
    /// Handed to SES or Graph.
    Sent,
    /// SES: the receiving server took it.
    Delivered,
    /// SES: it bounced.
    Bounced,
    /// SES: the recipient marked it as spam.
    Complained,
    /// A relay's SMTP server took it.
    Relayed,
    /// A relay's SMTP server refused it for good.
    Refused,
}

words!(DeliveryStatus {
    Queued = "queued",
    Sent = "sent",
    Delivered = "delivered",
    Bounced = "bounced",
    Complained = "complained",
    Relayed = "relayed",
    Refused = "refused",
});

impl DeliveryStatus {
    /// Later news replaces earlier only with a higher rank.
    pub fn rank(self) -> u8 {
        match self {
            DeliveryStatus::Queued | DeliveryStatus::Sent => 0,
            DeliveryStatus::Delivered | DeliveryStatus::Relayed => 1,
            DeliveryStatus::Bounced | DeliveryStatus::Refused => 2,
            DeliveryStatus::Complained => 3,
        }
    }

    pub fn tone(self) -> Tone {
        match self {
            DeliveryStatus::Sent | DeliveryStatus::Delivered | DeliveryStatus::Relayed => {
                Tone::Good
            }
            DeliveryStatus::Bounced | DeliveryStatus::Complained | DeliveryStatus::Refused => {
                Tone::Bad
            }
            DeliveryStatus::Queued => Tone::Wait,
        }
    }
}

/// Where a reprocess asked for through the API is (`REPROCESS#{id}` / `status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReprocessStatus {
    Queued,
    Running,
    /// An attempt failed on something a retry can mend; the queue tries again.
    Retrying,
    Done,
    /// For good, with its reason; the day was left as it was.
    Failed,
}

words!(ReprocessStatus {
    Queued = "queued",
    Running = "running",
    Retrying = "retrying",
    Done = "done",
    Failed = "failed",
});

impl ReprocessStatus {
    pub fn is_final(self) -> bool {
        matches!(self, ReprocessStatus::Done | ReprocessStatus::Failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The words are the ones stored in every record so far: a record written before these
    /// types reads back, and one written now reads as before.
    #[test]
    fn each_status_is_stored_as_its_word_and_parsed_back() {
        for s in RunStatus::ALL {
            let json = serde_json::to_string(s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
            assert_eq!(serde_json::from_str::<RunStatus>(&json).unwrap(), *s);
            assert_eq!(s.as_str().parse::<RunStatus>().unwrap(), *s);
        }
        for s in DeliveryStatus::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
            assert_eq!(s.as_str().parse::<DeliveryStatus>().unwrap(), *s);
        }
        for s in ReprocessStatus::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
            assert_eq!(s.as_str().parse::<ReprocessStatus>().unwrap(), *s);
        }
        assert_eq!(
            serde_json::to_value(RunStatus::SkippedEmpty).unwrap(),
            "skipped_empty"
        );
        let e = "done".parse::<RunStatus>().unwrap_err();
        assert!(e.contains("\"built\"") && e.contains("\"done\""), "{e}");
    }

    #[test]
    fn final_statuses_are_the_ones_nothing_follows() {
        let finals: Vec<_> = RunStatus::ALL.iter().filter(|s| s.is_final()).collect();
        assert_eq!(
            finals,
            [
                &RunStatus::Built,
                &RunStatus::SkippedEmpty,
                &RunStatus::NoticeSent,
                &RunStatus::Cancelled,
                &RunStatus::Failed
            ]
        );
        assert!(!ReprocessStatus::Retrying.is_final());
        assert!(ReprocessStatus::Failed.is_final());
    }

    #[test]
    fn receivers_news_only_rises() {
        use DeliveryStatus::*;
        assert!(Sent.rank() < Delivered.rank());
        assert!(Delivered.rank() < Bounced.rank());
        assert!(Bounced.rank() < Complained.rank());
        assert!(Relayed.rank() < Refused.rank());
    }
}
