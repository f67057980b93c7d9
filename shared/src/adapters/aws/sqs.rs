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

/// `ChangeMessageVisibilityBatch` in tens; an entry SQS refuses (the message was deleted, or its
/// receipt handle expired) is logged, not an error: the message comes back at the queue's own
/// visibility timeout, or not at all.
#[async_trait]
impl crate::ports::MessageVisibility for SqsQueue {
    async fn set_visibility(&self, messages: &[(String, u32)]) -> anyhow::Result<()> {
        use aws_sdk_sqs::types::ChangeMessageVisibilityBatchRequestEntry as Entry;
        for chunk in messages.chunks(10) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, (handle, secs))| {
                    Entry::builder()
                        .id(i.to_string())
                        .receipt_handle(handle)
                        .visibility_timeout((*secs).min(43_200) as i32)
                        .build()
                })
                .collect::<Result<Vec<_>, _>>()?;
            let out = self
                .client
                .change_message_visibility_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
                .with_context(|| format!("changing message visibility on {}", self.url))?;
            for failed in out.failed {
                tracing::warn!(
                    queue = self.url,
                    code = failed.code,
                    message = failed.message.unwrap_or_default(),
                    "a message's visibility was not changed"
                );
            }
        }
        Ok(())
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
    max_receives: Option<u32>,
}

impl SqsDeadLetters {
    pub fn new(client: aws_sdk_sqs::Client, by_source: HashMap<String, String>) -> Self {
        SqsDeadLetters {
            client,
            by_source,
            max_receives: None,
        }
    }

    /// The queues' `maxReceiveCount` (their redrive policy's).
    pub fn with_max_receives(mut self, max: Option<u32>) -> Self {
        self.max_receives = max;
        self
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

    fn max_receives(&self) -> Option<u32> {
        self.max_receives
    }
}

/// A queue and its dead-letter queue, as `CHARLIE_QUEUES` names them.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct QueuePair {
    /// The source queue; `None` for a DLQ that has none (Scheduler's).
    pub url: Option<String>,
    pub dlq_url: String,
}

/// Operators' view of the queues (`QueueAdmin`), from `CHARLIE_QUEUES`:
/// `{"inbound": {"url": …, "dlq_url": …}, …}`.
#[derive(Clone, Debug)]
pub struct SqsQueueAdmin {
    client: aws_sdk_sqs::Client,
    queues: std::collections::BTreeMap<String, QueuePair>,
    /// Where SQS publishes each queue's age of oldest message (SQS's API has no such figure).
    #[cfg(feature = "cloudwatch")]
    cloudwatch: Option<aws_sdk_cloudwatch::Client>,
}

/// How far back the latest age-of-oldest-message figure is looked for: SQS publishes it
/// every minute while a queue is active.
const OLDEST_AGE_WINDOW_SECS: u64 = 600;

/// Rounds of ReceiveMessage a peek, redrive or delete makes at most: SQS returns a sample of
/// the queue each time, so a message is found in a few rounds, not always the first.
const ROUNDS: usize = 10;

impl SqsQueueAdmin {
    pub fn from_json(client: aws_sdk_sqs::Client, json: &str) -> anyhow::Result<Self> {
        let queues = serde_json::from_str(json).map_err(|e| {
            crate::failure::permanent(format!(
                "CHARLIE_QUEUES is not a JSON object of name to {{url, dlq_url}}: {e}"
            ))
        })?;
        Ok(SqsQueueAdmin {
            client,
            queues,
            #[cfg(feature = "cloudwatch")]
            cloudwatch: None,
        })
    }

    /// Reads the queues' oldest-message ages from CloudWatch.
    #[cfg(feature = "cloudwatch")]
    pub fn with_cloudwatch(self, cloudwatch: aws_sdk_cloudwatch::Client) -> Self {
        SqsQueueAdmin {
            cloudwatch: Some(cloudwatch),
            ..self
        }
    }

    fn pair(&self, queue: &str) -> anyhow::Result<&QueuePair> {
        self.queues
            .get(queue)
            .ok_or_else(|| crate::failure::permanent(format!("no queue named {queue:?}")))
    }

    async fn receive(
        &self,
        url: &str,
        visibility: i32,
    ) -> anyhow::Result<Vec<aws_sdk_sqs::types::Message>> {
        Ok(self
            .client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .visibility_timeout(visibility)
            .wait_time_seconds(0)
            .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send()
            .await
            .with_context(|| format!("receiving from {url}"))?
            .messages
            .unwrap_or_default())
    }

    /// Makes a message received for a look visible again at once.
    async fn put_back(&self, url: &str, m: &aws_sdk_sqs::types::Message) -> anyhow::Result<()> {
        if let Some(handle) = m.receipt_handle() {
            self.client
                .change_message_visibility()
                .queue_url(url)
                .receipt_handle(handle)
                .visibility_timeout(0)
                .send()
                .await
                .with_context(|| format!("putting a message back on {url}"))?;
        }
        Ok(())
    }

    async fn delete_received(
        &self,
        url: &str,
        m: &aws_sdk_sqs::types::Message,
    ) -> anyhow::Result<()> {
        self.client
            .delete_message()
            .queue_url(url)
            .receipt_handle(m.receipt_handle().unwrap_or_default())
            .send()
            .await
            .with_context(|| format!("deleting a message from {url}"))?;
        Ok(())
    }
}

fn letter_of(m: &aws_sdk_sqs::types::Message) -> crate::ports::Letter {
    use aws_sdk_sqs::types::MessageSystemAttributeName as A;
    let attr = |name: &str| {
        m.message_attributes()
            .and_then(|a| a.get(name))
            .and_then(|v| v.string_value())
            .map(str::to_owned)
    };
    let system = |name: A| m.attributes().and_then(|a| a.get(&name)).cloned();
    crate::ports::Letter {
        message_id: m.message_id().unwrap_or_default().to_owned(),
        body: m.body().unwrap_or_default().to_owned(),
        sent_at: system(A::SentTimestamp)
            .and_then(|t| t.parse::<i64>().ok())
            .and_then(chrono::DateTime::from_timestamp_millis),
        receive_count: system(A::ApproximateReceiveCount)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0),
        // Scheduler's dead letters say why in ERROR_CODE / ERROR_MESSAGE.
        cause: attr(CAUSE_ATTRIBUTE).or_else(|| {
            attr("ERROR_MESSAGE").map(|msg| match attr("ERROR_CODE") {
                Some(code) => format!("{code}: {msg}"),
                None => msg,
            })
        }),
        failed_stage: attr(STAGE_ATTRIBUTE),
        source_message_id: attr(SOURCE_MESSAGE_ATTRIBUTE),
        correlation_id: attr(CORRELATION_ATTRIBUTE),
    }
}

#[async_trait]
impl crate::ports::QueueAdmin for SqsQueueAdmin {
    fn queues(&self) -> Vec<(String, bool)> {
        self.queues
            .iter()
            .map(|(name, p)| (name.clone(), p.url.is_some()))
            .collect()
    }

    async fn depth(&self, queue: &str, dead: bool) -> anyhow::Result<crate::ports::QueueDepth> {
        use aws_sdk_sqs::types::QueueAttributeName as Q;
        let pair = self.pair(queue)?;
        let url = if dead {
            pair.dlq_url.as_str()
        } else {
            match &pair.url {
                Some(u) => u.as_str(),
                None => return Ok(crate::ports::QueueDepth::default()),
            }
        };
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(Q::ApproximateNumberOfMessages)
            .attribute_names(Q::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(Q::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .with_context(|| format!("reading the depth of {url}"))?;
        let get = |name: Q| {
            out.attributes()
                .and_then(|a| a.get(&name))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Ok(crate::ports::QueueDepth {
            visible: get(Q::ApproximateNumberOfMessages),
            in_flight: get(Q::ApproximateNumberOfMessagesNotVisible),
            delayed: get(Q::ApproximateNumberOfMessagesDelayed),
        })
    }

    #[cfg(not(feature = "cloudwatch"))]
    async fn oldest_age(&self, _queue: &str) -> anyhow::Result<Option<u64>> {
        Ok(None)
    }

    #[cfg(feature = "cloudwatch")]
    async fn oldest_age(&self, queue: &str) -> anyhow::Result<Option<u64>> {
        use aws_sdk_cloudwatch::types::{Dimension, Statistic};
        let (Some(cloudwatch), Some(url)) = (&self.cloudwatch, &self.pair(queue)?.url) else {
            return Ok(None);
        };
        let name = url.rsplit('/').next().unwrap_or(url);
        let now = std::time::SystemTime::now();
        let out = cloudwatch
            .get_metric_statistics()
            .namespace("AWS/SQS")
            .metric_name("ApproximateAgeOfOldestMessage")
            .dimensions(Dimension::builder().name("QueueName").value(name).build())
            .start_time((now - std::time::Duration::from_secs(OLDEST_AGE_WINDOW_SECS)).into())
            .end_time(now.into())
            .period(60)
            .statistics(Statistic::Maximum)
            .send()
            .await
            .with_context(|| format!("reading {name}'s age of oldest message from CloudWatch"))?;
        Ok(out
            .datapoints()
            .iter()
            .filter_map(|d| Some((d.timestamp()?.secs(), d.maximum()?)))
            .max_by_key(|(at, _)| *at)
            .map(|(_, age)| age.max(0.0) as u64))
    }

    async fn peek(&self, queue: &str, max: usize) -> anyhow::Result<Vec<crate::ports::Letter>> {
        let url = &self.pair(queue)?.dlq_url;
        let mut out: Vec<crate::ports::Letter> = Vec::new();
        for _ in 0..ROUNDS {
            let got = self.receive(url, 0).await?;
            let before = out.len();
            for m in &got {
                if out.len() < max
                    && !out
                        .iter()
                        .any(|l| Some(l.message_id.as_str()) == m.message_id())
                {
                    out.push(letter_of(m));
                }
            }
            if got.is_empty() || out.len() == before || out.len() >= max {
                break;
            }
        }
        out.sort_by_key(|l| l.sent_at);
        Ok(out)
    }

    async fn redrive(
        &self,
        queue: &str,
        ids: Option<&[String]>,
        max: usize,
    ) -> anyhow::Result<crate::ports::Redriven> {
        let pair = self.pair(queue)?;
        let Some(target) = &pair.url else {
            return Err(crate::failure::permanent(format!(
                "{queue}'s dead letters have no source queue to go back to"
            )));
        };
        let mut done = crate::ports::Redriven::default();
        let mut empty_rounds = 0;
        for _ in 0..(ROUNDS * 10) {
            if ids.is_none() && done.moved.len() >= max {
                break;
            }
            if ids.is_some_and(|ids| ids.iter().all(|id| done.moved.contains(id))) {
                break;
            }
            let got = self.receive(&pair.dlq_url, 60).await?;
            if got.is_empty() {
                empty_rounds += 1;
                if empty_rounds >= 2 {
                    break;
                }
                continue;
            }
            for m in &got {
                let id = m.message_id().unwrap_or_default().to_owned();
                let wanted = match ids {
                    Some(ids) => ids.contains(&id) && !done.moved.contains(&id),
                    None => done.moved.len() < max,
                };
                if !wanted {
                    self.put_back(&pair.dlq_url, m).await?;
                    continue;
                }
                let mut send = self
                    .client
                    .send_message()
                    .queue_url(target)
                    .message_body(m.body().unwrap_or_default());
                let letter = letter_of(m);
                if let Some(c) = &letter.correlation_id {
                    send = send.message_attributes(CORRELATION_ATTRIBUTE, string_attribute(c)?);
                }
                send.send()
                    .await
                    .with_context(|| format!("redriving {id} to {target}"))?;
                self.delete_received(&pair.dlq_url, m).await?;
                done.moved.push(id);
            }
        }
        if let Some(ids) = ids {
            done.not_found = ids
                .iter()
                .filter(|id| !done.moved.contains(id))
                .cloned()
                .collect();
        }
        Ok(done)
    }

    async fn delete(&self, queue: &str, message_id: &str) -> anyhow::Result<bool> {
        let url = &self.pair(queue)?.dlq_url;
        for _ in 0..ROUNDS {
            let got = self.receive(url, 30).await?;
            if got.is_empty() {
                return Ok(false);
            }
            let mut found = false;
            for m in &got {
                if m.message_id() == Some(message_id) {
                    self.delete_received(url, m).await?;
                    found = true;
                } else {
                    self.put_back(url, m).await?;
                }
            }
            if found {
                return Ok(true);
            }
        }
        Ok(false)
    }
}
