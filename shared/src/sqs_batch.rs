//! The one way Charlie consumes an SQS batch: each message runs in its own span; every result
//! is kept; a retryable failure (or a panic) is reported back (`ReportBatchItemFailures`) so
//! SQS retries that message alone and dead-letters it after the queue's max receives; a
//! permanent failure goes to the dead-letter queue at once with its cause and is not retried.
//! On the last receive the queue allows (`DeadLetters::max_receives`), a retryable failure is
//! sent to the dead-letter queue with its cause too, instead of being moved there by the
//! queue's redrive without one.
//! Messages the invocation has no time left for are not started, and reported for retry.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use chrono::{Duration, Utc};
use futures::FutureExt;
use tracing::{Instrument, error, info_span, warn};

use crate::failure::{FailureKind, kind_of};
use crate::invocation::Invocation;
use crate::messages::CORRELATION_ATTRIBUTE;
use crate::ports::{DeadLetter, DeadLetters};

/// A message is not started with less than this left of the invocation.
pub const STOP_MARGIN: Duration = Duration::seconds(5);

/// The correlation id a message carries, if any.
pub fn correlation_id(msg: &SqsMessage) -> Option<&str> {
    msg.message_attributes
        .get(CORRELATION_ATTRIBUTE)
        .and_then(|a| a.string_value.as_deref())
}

/// Where a batch's permanent failures go and who gave up on them.
pub struct Consumer<'a> {
    pub stage: &'a str,
    pub dead_letters: &'a dyn DeadLetters,
    /// Where each message sent to the dead-letter queue is counted (`dead_lettered/{stage}`).
    pub counters: Option<&'a dyn crate::ports::StateRecords>,
}

/// Handles every message of `event` with `handle` (in order) and returns the failures to
/// retry.
///
/// A message without a `messageId` cannot be reported alone; it is reported with an empty
/// identifier, which Lambda treats as a failure of the whole batch: nothing is lost.
pub async fn process<F, Fut>(
    event: SqsEvent,
    invocation: &Invocation,
    consumer: Consumer<'_>,
    handle: F,
) -> SqsBatchResponse
where
    F: Fn(SqsMessage) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut response = SqsBatchResponse::default();
    let mut not_started = 0;
    for msg in event.records {
        let id = msg.message_id.clone().unwrap_or_default();
        if invocation.remaining() < STOP_MARGIN {
            not_started += 1;
            response.batch_item_failures.push(failure(id));
            continue;
        }
        let receives = msg
            .attributes
            .get("ApproximateReceiveCount")
            .cloned()
            .unwrap_or_default();
        let span = info_span!(
            "message",
            message_id = %id,
            correlation_id = correlation_id(&msg).unwrap_or("-"),
            receive_count = %receives,
        );
        // What a dead letter of this message carries, taken before the handler owns it.
        let letter_of = DeadLetter {
            source_queue: msg.event_source_arn.clone().unwrap_or_default(),
            message_id: id.clone(),
            body: msg.body.clone().unwrap_or_default(),
            correlation_id: correlation_id(&msg).map(str::to_owned),
            cause: String::new(),
            stage: consumer.stage.to_owned(),
        };
        let correlation = correlation_id(&msg).map(str::to_owned);
        let outcome = AssertUnwindSafe(
            crate::invocation::with_correlation(correlation, handle(msg)).instrument(span.clone()),
        )
        .catch_unwind()
        .await;
        let error = match outcome {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".to_owned());
                anyhow::anyhow!("the handler panicked: {what}")
            }
        };
        let cause = format!("{error:#}");
        let kind = kind_of(&error);
        // The last receive the queue allows: a retryable failure now would only move the
        // message to the dead-letter queue without a word, so it goes there with its cause.
        let last_receive = consumer
            .dead_letters
            .max_receives()
            .is_some_and(|max| receives.parse::<u32>().is_ok_and(|n| n >= max));
        if kind == FailureKind::Retryable && !last_receive {
            span.in_scope(|| {
                if crate::failure::is_busy(&error) {
                    warn!(
                        error = cause,
                        kind = "busy",
                        "message held back (held elsewhere, or waiting for a breaker): left on the queue for retry"
                    )
                } else {
                    error!(
                        error = cause,
                        kind = "retryable",
                        "message failed: left on the queue for retry, then the dead-letter queue"
                    )
                }
            });
            response.batch_item_failures.push(failure(id));
            continue;
        }
        let (kind_name, cause) = match kind {
            FailureKind::Permanent => ("permanent", cause),
            FailureKind::Retryable => (
                "retries exhausted",
                format!("failed on each of its {receives} receives; the last time: {cause}"),
            ),
        };
        let letter = DeadLetter {
            cause: cause.clone(),
            ..letter_of
        };
        match consumer
            .dead_letters
            .send(&letter)
            .instrument(span.clone())
            .await
        {
            Ok(()) => {
                span.in_scope(|| {
                    error!(
                        error = cause,
                        kind = kind_name,
                        "message failed for good: sent to the dead-letter queue with its cause"
                    )
                });
                if let Some(records) = consumer.counters {
                    let mut counts = crate::counters::Counts::default();
                    counts.add(crate::counters::Kind::DeadLettered, consumer.stage, 1);
                    let event = format!("dead_letter/{}/{}", consumer.stage, letter.message_id);
                    // The message is in the dead-letter queue: failing it now would put it
                    // there twice. A counter that could not be written is said, not retried.
                    if let Err(e) = crate::counters::count(records, &event, Utc::now(), &counts)
                        .instrument(span.clone())
                        .await
                    {
                        span.in_scope(
                            || error!(error = %format!("{e:#}"), "the dead letter was not counted"),
                        );
                    }
                }
            }
            Err(dlq) => {
                span.in_scope(|| {
                    error!(error = cause, dead_letter_error = %format!("{dlq:#}"), kind = kind_name, "message failed for good, and the dead-letter queue refused it: left on the queue")
                });
                response.batch_item_failures.push(failure(id));
            }
        }
    }
    if not_started > 0 {
        warn!(
            not_started,
            remaining_ms = invocation.remaining().num_milliseconds(),
            "the invocation's time is nearly up: messages left for the next one"
        );
    }
    response
}

fn failure(id: String) -> BatchItemFailure {
    let mut failure = BatchItemFailure::default();
    failure.item_identifier = id;
    failure
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::memory::MemoryDeadLetters;
    use crate::failure::permanent;

    fn event(bodies: &[&str]) -> SqsEvent {
        let records: Vec<serde_json::Value> = bodies
            .iter()
            .enumerate()
            .map(|(i, b)| serde_json::json!({"messageId": format!("m{i}"), "body": b, "attributes": {}, "messageAttributes": {}, "eventSourceARN": "arn:aws:sqs:eu-west-2:123456789012:inbound"}))
            .collect();
        serde_json::from_value(serde_json::json!({ "Records": records })).unwrap()
    }

    fn invocation() -> Invocation {
        Invocation::with_timeout(std::time::Duration::from_secs(60))
    }

    fn ids(resp: &SqsBatchResponse) -> Vec<&str> {
        resp.batch_item_failures
            .iter()
            .map(|f| f.item_identifier.as_str())
            .collect()
    }

    #[tokio::test]
    async fn only_failed_messages_are_reported() {
        let dlq = MemoryDeadLetters::default();
        let consumer = Consumer {
            stage: "ingest",
            dead_letters: &dlq,
            counters: None,
        };
        let resp = process(
            event(&["ok", "bad", "ok", "bad"]),
            &invocation(),
            consumer,
            |m| async move {
                if m.body.as_deref() == Some("bad") {
                    anyhow::bail!("throttled")
                }
                Ok(())
            },
        )
        .await;
        assert_eq!(ids(&resp), vec!["m1", "m3"]);
        assert!(dlq.letters().is_empty(), "retryable: not dead-lettered");
    }

    #[tokio::test]
    async fn a_fully_successful_batch_reports_nothing() {
        let dlq = MemoryDeadLetters::default();
        let consumer = Consumer {
            stage: "ingest",
            dead_letters: &dlq,
            counters: None,
        };
        let resp = process(event(&["a", "b"]), &invocation(), consumer, |_| async {
            Ok(())
        })
        .await;
        assert!(resp.batch_item_failures.is_empty());
        let json = serde_json::to_value(&resp).unwrap();
        assert_eq!(json, serde_json::json!({"batchItemFailures": []}));
    }

    #[tokio::test]
    async fn a_permanent_failure_goes_to_the_dead_letter_queue_at_once_with_its_cause() {
        let dlq = MemoryDeadLetters::default();
        let consumer = Consumer {
            stage: "ingest",
            dead_letters: &dlq,
            counters: None,
        };
        let resp = process(
            event(&["ok", "poison"]),
            &invocation(),
            consumer,
            |m| async move {
                if m.body.as_deref() == Some("poison") {
                    return Err(permanent("not an inbound message"));
                }
                Ok(())
            },
        )
        .await;
        assert!(resp.batch_item_failures.is_empty(), "not retried");
        let letters = dlq.letters();
        assert_eq!(letters.len(), 1);
        assert_eq!(letters[0].body, "poison");
        assert_eq!(letters[0].message_id, "m1");
        assert_eq!(letters[0].stage, "ingest");
        assert_eq!(
            letters[0].source_queue,
            "arn:aws:sqs:eu-west-2:123456789012:inbound"
        );
        assert!(letters[0].cause.contains("not an inbound message"));
    }

    #[tokio::test]
    async fn a_permanent_failure_the_dead_letter_queue_refuses_stays_on_the_queue() {
        let dlq = MemoryDeadLetters::default();
        dlq.fault.set("AccessDenied");
        let consumer = Consumer {
            stage: "mailer",
            dead_letters: &dlq,
            counters: None,
        };
        let resp = process(event(&["poison"]), &invocation(), consumer, |_| async {
            Err(permanent("bad recipient"))
        })
        .await;
        assert_eq!(ids(&resp), vec!["m0"], "left for the queue's own redrive");
    }

    /// Messages received `receives` times each.
    fn received(bodies: &[&str], receives: u32) -> SqsEvent {
        let mut event = event(bodies);
        for r in &mut event.records {
            r.attributes
                .insert("ApproximateReceiveCount".into(), receives.to_string());
        }
        event
    }

    #[tokio::test]
    async fn a_retryable_failure_on_the_last_receive_is_dead_lettered_with_its_cause() {
        let dlq = MemoryDeadLetters::with_max_receives(5);
        let fail = |_| async { Err::<(), _>(anyhow::anyhow!("the row store timed out")) };
        let consumer = || Consumer {
            stage: "report-builder",
            dead_letters: &dlq,
            counters: None,
        };
        let resp = process(received(&["run"], 4), &invocation(), consumer(), fail).await;
        assert_eq!(ids(&resp), vec!["m0"], "receive 4 of 5: retried");
        assert!(dlq.letters().is_empty());

        let resp = process(received(&["run"], 5), &invocation(), consumer(), fail).await;
        assert!(resp.batch_item_failures.is_empty(), "handed to the DLQ");
        let letters = dlq.letters();
        assert_eq!(letters.len(), 1);
        assert_eq!(
            letters[0].cause,
            "failed on each of its 5 receives; the last time: the row store timed out"
        );
        assert_eq!(letters[0].stage, "report-builder");
    }

    #[tokio::test]
    async fn without_a_known_maximum_retryable_failures_stay_with_the_queue() {
        let dlq = MemoryDeadLetters::default();
        let consumer = Consumer {
            stage: "ingest",
            dead_letters: &dlq,
            counters: None,
        };
        let resp = process(received(&["m"], 50), &invocation(), consumer, |_| async {
            Err(crate::failure::busy("claimed elsewhere"))
        })
        .await;
        assert_eq!(ids(&resp), vec!["m0"]);
        assert!(dlq.letters().is_empty());
    }

    #[tokio::test]
    async fn a_panic_fails_its_message_alone() {
        let dlq = MemoryDeadLetters::default();
        let consumer = Consumer {
            stage: "mailer",
            dead_letters: &dlq,
            counters: None,
        };
        let resp = process(
            event(&["ok", "boom", "ok"]),
            &invocation(),
            consumer,
            |m| async move {
                if m.body.as_deref() == Some("boom") {
                    panic!("index out of bounds");
                }
                Ok(())
            },
        )
        .await;
        assert_eq!(ids(&resp), vec!["m1"]);
    }

    #[tokio::test]
    async fn no_message_is_started_when_the_invocation_is_out_of_time() {
        let dlq = MemoryDeadLetters::default();
        let consumer = Consumer {
            stage: "ingest",
            dead_letters: &dlq,
            counters: None,
        };
        let nearly_over = Invocation::new("r", chrono::Utc::now() + Duration::seconds(2));
        let resp = process(event(&["a", "b"]), &nearly_over, consumer, |_| async {
            panic!("must not start")
        })
        .await;
        assert_eq!(ids(&resp), vec!["m0", "m1"]);
    }
}
