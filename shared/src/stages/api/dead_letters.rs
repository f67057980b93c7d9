//! Dead letters: peeked without being consumed, redriven to their source queue, deleted one at a time.

use super::*;

impl Api {
    pub(super) fn known_queue(&self, queue: &str) -> Result<bool, ApiError> {
        self.queues
            .queues()
            .into_iter()
            .find(|(name, _)| name == queue)
            .map(|(_, redrivable)| redrivable)
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "no queue {queue:?}; the queues are {:?}",
                    self.queues
                        .queues()
                        .into_iter()
                        .map(|(n, _)| n)
                        .collect::<Vec<_>>()
                ))
            })
    }

    pub(super) async fn dead_letter_queues(&self) -> Result<Reply, ApiError> {
        let mut out = Vec::new();
        for (name, redrivable) in self.queues.queues() {
            let dead = self.queues.depth(&name, true).await?;
            let oldest = if dead.visible > 0 {
                self.queues
                    .peek(&name, 10)
                    .await?
                    .into_iter()
                    .filter_map(|l| l.sent_at)
                    .min()
            } else {
                None
            };
            out.push(contract::DeadLetterQueue {
                queue: name,
                redrivable,
                messages: dead.visible + dead.in_flight,
                oldest_sent_at: oldest.map(|t| t.to_rfc3339()),
            });
        }
        Reply::typed(
            200,
            &contract::DeadLetterQueues {
                dead_letter_queues: out,
            },
        )
    }

    pub(super) async fn peek(&self, req: &Request, queue: &str) -> Result<Reply, ApiError> {
        self.known_queue(queue)?;
        let max = req.count("max", 10, 100)?;
        let letters = self.queues.peek(queue, max).await?;
        Reply::typed(
            200,
            &contract::DeadLetters {
                queue: queue.to_owned(),
                messages: letters,
            },
        )
    }

    pub(super) async fn redrive(&self, req: &Request, queue: &str) -> Result<Reply, ApiError> {
        let redrivable = self.known_queue(queue)?;
        let ask: contract::Redrive = req.json()?;
        if !redrivable {
            return Err(ApiError::conflict(format!(
                "{queue}'s dead letters have no source queue to go back to: start what they were for again (POST /v1/runs), then delete them"
            )));
        }
        let max = ask.max.unwrap_or(100);
        if !(1..=1000).contains(&max) {
            return Err(ApiError::bad("max", "max is a number from 1 to 1000"));
        }
        let ids = match (ask.message_ids, ask.all) {
            (Some(ids), false) if !ids.is_empty() && ids.len() <= 100 => Some(ids),
            (Some(_), false) => {
                return Err(ApiError::bad("message_ids", "give 1 to 100 message ids"));
            }
            (None, true) => None,
            (Some(_), true) => {
                return Err(ApiError::bad("all", "give message_ids or all, not both"));
            }
            (None, false) => {
                return Err(ApiError::bad(
                    "message_ids",
                    "give message_ids, or all: true",
                ));
            }
        };
        let done = self.queues.redrive(queue, ids.as_deref(), max).await?;
        info!(
            queue,
            moved = done.moved.len(),
            not_found = done.not_found.len(),
            "dead letters redriven"
        );
        let moved = done.moved.len();
        let answer = contract::Redriven {
            queue: queue.to_owned(),
            moved: done.moved,
            not_found: done.not_found,
        };
        Ok(Reply::typed(200, &answer)?.said(format!("redrive {queue}: {moved} moved")))
    }

    pub(super) async fn delete_dead_letter(
        &self,
        queue: &str,
        id: &str,
    ) -> Result<Reply, ApiError> {
        self.known_queue(queue)?;
        if self.queues.delete(queue, id).await? {
            Ok(Reply {
                status: 204,
                body: ReplyBody::Empty,
                location: None,
                summary: format!("delete dead letter {queue}/{id}"),
            })
        } else {
            Err(ApiError::not_found(format!(
                "no message {id} in {queue}'s dead-letter queue"
            )))
        }
    }
}
