//! The one way Charlie consumes an SQS batch: each message runs in its own span, every result is
//! kept, and only the messages that failed are reported back (`ReportBatchItemFailures`), so SQS
//! retries those alone and dead-letters them after the queue's max receives.

use std::future::Future;

use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use tracing::{Instrument, error, info_span};

use crate::messages::CORRELATION_ATTRIBUTE;

/// The correlation id a message carries, if any.
pub fn correlation_id(msg: &SqsMessage) -> Option<&str> {
    msg.message_attributes
        .get(CORRELATION_ATTRIBUTE)
        .and_then(|a| a.string_value.as_deref())
}

/// Handles every message of `event` with `handle` (in order) and returns the failures.
///
/// A message without a `messageId` cannot be reported alone; it is reported with an empty
/// identifier, which Lambda treats as a failure of the whole batch: nothing is lost.
pub async fn process<F, Fut>(event: SqsEvent, handle: F) -> SqsBatchResponse
where
    F: Fn(SqsMessage) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut response = SqsBatchResponse::default();
    for msg in event.records {
        let id = msg.message_id.clone().unwrap_or_default();
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
        if let Err(e) = handle(msg).instrument(span.clone()).await {
            span.in_scope(|| {
                error!(error = %format!("{e:#}"), "message failed: left on the queue for retry, then the dead-letter queue")
            });
            let mut failure = BatchItemFailure::default();
            failure.item_identifier = id;
            response.batch_item_failures.push(failure);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(bodies: &[&str]) -> SqsEvent {
        let records: Vec<serde_json::Value> = bodies
            .iter()
            .enumerate()
            .map(|(i, b)| serde_json::json!({"messageId": format!("m{i}"), "body": b, "attributes": {}, "messageAttributes": {}}))
            .collect();
        serde_json::from_value(serde_json::json!({ "Records": records })).unwrap()
    }

    #[tokio::test]
    async fn only_failed_messages_are_reported() {
        let resp = process(event(&["ok", "bad", "ok", "bad"]), |m| async move {
            if m.body.as_deref() == Some("bad") {
                anyhow::bail!("poison")
            }
            Ok(())
        })
        .await;
        let ids: Vec<&str> = resp
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.as_str())
            .collect();
        assert_eq!(ids, vec!["m1", "m3"]);
    }

    #[tokio::test]
    async fn a_fully_successful_batch_reports_nothing() {
        let resp = process(event(&["a", "b"]), |_| async { Ok(()) }).await;
        assert!(resp.batch_item_failures.is_empty());
        let json = serde_json::to_value(&resp).unwrap();
        assert_eq!(json, serde_json::json!({"batchItemFailures": []}));
    }
}
