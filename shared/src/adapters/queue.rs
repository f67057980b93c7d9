//! `Queue`: sends Charlie's JSON messages to an SQS queue, with the correlation id attribute.

use anyhow::{Context, anyhow};
use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
use serde::Serialize;

use crate::messages::CORRELATION_ATTRIBUTE;

#[derive(Clone, Debug)]
pub struct Queue {
    client: aws_sdk_sqs::Client,
    url: String,
}

impl Queue {
    pub fn new(client: aws_sdk_sqs::Client, url: impl Into<String>) -> Self {
        Queue {
            client,
            url: url.into(),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub async fn send<T: Serialize>(
        &self,
        message: &T,
        correlation_id: &str,
    ) -> anyhow::Result<()> {
        self.send_all(&[(message, correlation_id)]).await
    }

    /// Sends in batches of 10 and checks every entry: any entry SQS refused fails the call,
    /// naming it, so the caller's retry covers it (duplicates are harmless downstream).
    pub async fn send_all<T: Serialize>(&self, messages: &[(&T, &str)]) -> anyhow::Result<()> {
        let (_, failure) = self.send_each(messages).await;
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Like [`Queue::send_all`], but tries every batch whatever the others did: how many
    /// messages SQS took, and the first failure if any.
    pub async fn send_each<T: Serialize>(
        &self,
        messages: &[(&T, &str)],
    ) -> (usize, Option<anyhow::Error>) {
        let mut sent = 0;
        let mut first_failure = None;
        for chunk in messages.chunks(10) {
            match self.send_batch(chunk).await {
                Ok(n) => sent += n,
                Err(e) => {
                    sent += e.1;
                    first_failure.get_or_insert(e.0);
                }
            }
        }
        (sent, first_failure)
    }

    /// One batch: `Ok(n)` when all went; otherwise the error and how many went.
    async fn send_batch<T: Serialize>(
        &self,
        chunk: &[(&T, &str)],
    ) -> Result<usize, (anyhow::Error, usize)> {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, (msg, corr))| entry(i, msg, corr))
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

/// One batch entry: the message as JSON with its correlation id attribute.
fn entry<T: Serialize>(
    id: usize,
    msg: &T,
    correlation_id: &str,
) -> anyhow::Result<SendMessageBatchRequestEntry> {
    let attr = MessageAttributeValue::builder()
        .data_type("String")
        .string_value(correlation_id)
        .build()?;
    Ok(SendMessageBatchRequestEntry::builder()
        .id(id.to_string())
        .message_body(serde_json::to_string(msg)?)
        .message_attributes(CORRELATION_ATTRIBUTE, attr)
        .build()?)
}
