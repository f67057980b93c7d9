//! SQS: the queues stages send work to, and the dead-letter queues permanent failures go to.

use std::collections::HashMap;

use anyhow::{Context, anyhow};
use async_trait::async_trait;
use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};

use crate::messages::CORRELATION_ATTRIBUTE;
use crate::ports::{DeadLetter, DeadLetters, QueuedMessage, WorkQueue};

/// The message attributes a dead letter carries beside its body.
pub const CAUSE_ATTRIBUTE: &str = "failure_cause";
pub const STAGE_ATTRIBUTE: &str = "failed_stage";
pub const SOURCE_ATTRIBUTE: &str = "source_queue";
pub const SOURCE_MESSAGE_ATTRIBUTE: &str = "source_message_id";
/// SQS allows 256 KiB per message, attributes included; the cause is cut well below.
const MAX_CAUSE_BYTES: usize = 4096;

#[derive(Clone, Debug)]
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    url: String,
}

impl SqsQueue {
    pub fn new(client: aws_sdk_sqs::Client, url: impl Into<String>) -> Self {
        SqsQueue {
            client,
            url: url.into(),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// One batch: `Ok(n)` when all went; otherwise the error and how many went.
    async fn send_batch(&self, chunk: &[QueuedMessage]) -> Result<usize, (anyhow::Error, usize)> {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, m)| entry(i, m))
            .collect::<anyhow::Result<Vec<_>>>()
            .map_err(|e| (e, 0))?;
        let out = self
            .client
            .send_message_batch()
            .queue_url(&self.url)
            .set_entries(Some(entries))
            .send()
            .await
            .with_context(|| format!("sending to {}", self.url))
            .map_err(|e| (e, 0))?;
        match out.failed.first() {
            Some(f) => Err((
                anyhow!(
                    "SQS refused {} of {} messages to {} (first: {} {})",
                    out.failed.len(),
                    chunk.len(),
                    self.url,
                    f.code,
                    f.message.as_deref().unwrap_or("")
                ),
                out.successful.len(),
            )),
            None => Ok(chunk.len()),
        }
    }
}

#[async_trait]
impl WorkQueue for SqsQueue {
    /// Sends in batches of 10 and checks every entry.
    async fn send_each(&self, messages: &[QueuedMessage]) -> (usize, Option<anyhow::Error>) {
        let mut sent = 0;
        let mut first_failure = None;
        for chunk in messages.chunks(10) {
            match self.send_batch(chunk).await {
                Ok(n) => sent += n,
                Err((e, n)) => {
                    sent += n;
                    first_failure.get_or_insert(e);
                }
            }
        }
        (sent, first_failure)
    }

    fn name(&self) -> &str {
        &self.url
    }
}

fn string_attribute(value: &str) -> anyhow::Result<MessageAttributeValue> {
    Ok(MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()?)
}

/// One batch entry: the body with its correlation id attribute.
fn entry(id: usize, msg: &QueuedMessage) -> anyhow::Result<SendMessageBatchRequestEntry> {
    Ok(SendMessageBatchRequestEntry::builder()
        .id(id.to_string())
        .message_body(&msg.body)
        .message_attributes(
            CORRELATION_ATTRIBUTE,
            string_attribute(&msg.correlation_id)?,
        )
        .build()?)
}

/// The dead-letter queues of the queues a function consumes, by source queue ARN
/// (`CHARLIE_DEAD_LETTER_QUEUES`, a JSON object Terraform writes).
#[derive(Clone, Debug)]
pub struct SqsDeadLetters {
    client: aws_sdk_sqs::Client,
    by_source: HashMap<String, String>,
}

impl SqsDeadLetters {
    pub fn new(client: aws_sdk_sqs::Client, by_source: HashMap<String, String>) -> Self {
        SqsDeadLetters { client, by_source }
    }

    /// From `{"<queue arn>": "<dead-letter queue url>", …}`.
    pub fn from_json(client: aws_sdk_sqs::Client, json: &str) -> anyhow::Result<Self> {
        let by_source = serde_json::from_str(json).map_err(|e| {
            crate::failure::permanent(format!(
                "CHARLIE_DEAD_LETTER_QUEUES is not a JSON object of queue ARN to URL: {e}"
            ))
        })?;
        Ok(Self::new(client, by_source))
    }
}

#[async_trait]
impl DeadLetters for SqsDeadLetters {
    async fn send(&self, letter: &DeadLetter) -> anyhow::Result<()> {
        let url = self.by_source.get(&letter.source_queue).with_context(|| {
            format!(
                "no dead-letter queue is configured for {}",
                letter.source_queue
            )
        })?;
        let mut cause = letter.cause.clone();
        if cause.len() > MAX_CAUSE_BYTES {
            let mut cut = MAX_CAUSE_BYTES;
            while !cause.is_char_boundary(cut) {
                cut -= 1;
            }
            cause.truncate(cut);
            cause.push('…');
        }
        let mut req = self
            .client
            .send_message()
            .queue_url(url)
            .message_body(&letter.body)
            .message_attributes(CAUSE_ATTRIBUTE, string_attribute(&cause)?)
            .message_attributes(STAGE_ATTRIBUTE, string_attribute(&letter.stage)?)
            .message_attributes(SOURCE_ATTRIBUTE, string_attribute(&letter.source_queue)?)
            .message_attributes(
                SOURCE_MESSAGE_ATTRIBUTE,
                string_attribute(&letter.message_id)?,
            );
        if let Some(c) = &letter.correlation_id {
            req = req.message_attributes(CORRELATION_ATTRIBUTE, string_attribute(c)?);
        }
        req.send()
            .await
            .with_context(|| format!("sending a dead letter to {url}"))?;
        Ok(())
    }
}
