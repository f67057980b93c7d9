//! `Queue`: sends Charlie's JSON messages to an SQS queue, with the correlation id attribute.

use anyhow::{Context, bail};
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
        for chunk in messages.chunks(10) {
            let mut entries = Vec::with_capacity(chunk.len());
            for (i, (msg, corr)) in chunk.iter().enumerate() {
                let attr = MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(*corr)
                    .build()?;
                entries.push(
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(serde_json::to_string(msg)?)
                        .message_attributes(CORRELATION_ATTRIBUTE, attr)
                        .build()?,
                );
            }
            let out = self
                .client
                .send_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
                .with_context(|| format!("sending to {}", self.url))?;
            if let Some(f) = out.failed.first() {
                bail!(
                    "SQS refused {} of {} messages to {} (first: {} {})",
                    out.failed.len(),
                    chunk.len(),
                    self.url,
                    f.code,
                    f.message.as_deref().unwrap_or("")
                );
            }
        }
        Ok(())
    }
}
