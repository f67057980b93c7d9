//! Dead letters: listed, peeked, redriven, deleted.

use super::*;

#[derive(Subcommand)]
pub enum DlqCommand {
    /// Every dead-letter queue and how many messages it holds
    List,
    /// The messages of QUEUE's dead-letter queue, with their causes (left where they are)
    Peek {
        queue: String,
        #[arg(long, default_value_t = 10)]
        max: u32,
    },
    /// Move dead letters back to their queue: the ids given, or --all
    Redrive {
        queue: String,
        ids: Vec<String>,
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
    /// Delete one dead letter
    Delete { queue: String, id: String },
}

pub async fn dlq(c: &Client, command: DlqCommand) -> ExitCode {
    let result = async {
        match command {
            DlqCommand::List => {
                let Some(list) = c
                    .shown::<DeadLetterQueues>("GET", "/v1/dead-letters", None)
                    .await?
                else {
                    return Ok(());
                };
                let rows: Vec<Vec<String>> = list
                    .dead_letter_queues
                    .iter()
                    .map(|q| {
                        vec![
                            cell(&q.queue),
                            q.messages.to_string(),
                            at_opt(&q.oldest_sent_at),
                            if q.redrivable {
                                "yes".into()
                            } else {
                                "no (no source queue)".into()
                            },
                        ]
                    })
                    .collect();
                table(&["queue", "dead letters", "oldest", "redrivable"], &rows);
                Ok(())
            }
            DlqCommand::Peek { queue, max } => {
                let Some(peeked) = c
                    .shown::<DeadLetters>(
                        "GET",
                        &format!(
                            "/v1/dead-letters/{}?max={max}",
                            charlie::uri::segment(&queue)
                        ),
                        None,
                    )
                    .await?
                else {
                    return Ok(());
                };
                if peeked.messages.is_empty() {
                    println!("{queue}: no dead letters");
                }
                for l in &peeked.messages {
                    println!(
                        "{}  sent {}  received {}x  stage {}",
                        cell(&l.message_id),
                        at(&l.sent_at.map(|t| t.to_rfc3339()).unwrap_or_default()),
                        l.receive_count,
                        opt(&l.failed_stage)
                    );
                    println!("  cause: {}", opt(&l.cause));
                    let body = cell(&l.body);
                    let short: String = body.chars().take(160).collect();
                    println!(
                        "  body:  {short}{}",
                        if body.chars().count() > 160 {
                            "…"
                        } else {
                            ""
                        }
                    );
                }
                Ok(())
            }
            DlqCommand::Redrive { queue, ids, all } => {
                let ask = if all {
                    Redrive {
                        all: true,
                        ..Redrive::default()
                    }
                } else if ids.is_empty() {
                    return Err(Failure(
                        2,
                        "give the message ids to redrive, or --all".into(),
                    ));
                } else {
                    Redrive {
                        message_ids: Some(ids),
                        ..Redrive::default()
                    }
                };
                let done: Redriven = c
                    .typed(
                        "POST",
                        &format!("/v1/dead-letters/{}/redrive", charlie::uri::segment(&queue)),
                        Some(json!(ask)),
                    )
                    .await?;
                if c.json {
                    c.print(&done);
                } else {
                    println!(
                        "{queue}: {} message(s) moved back to the queue",
                        done.moved.len()
                    );
                    for id in &done.not_found {
                        println!("  not found: {}", cell(id));
                    }
                }
                if !done.not_found.is_empty() {
                    return Err(Failure(
                        4,
                        "some messages were not in the dead-letter queue".into(),
                    ));
                }
                Ok(())
            }
            DlqCommand::Delete { queue, id } => {
                c.call(
                    "DELETE",
                    &format!(
                        "/v1/dead-letters/{}/{}",
                        charlie::uri::segment(&queue),
                        charlie::uri::segment(&id)
                    ),
                    None,
                )
                .await?;
                if !c.json {
                    println!("{queue}: {id} deleted");
                }
                Ok(())
            }
        }
    }
    .await;
    exit(result)
}
