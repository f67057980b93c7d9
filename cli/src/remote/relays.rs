//! On-prem relays: created, listed, revoked.

use super::*;

#[derive(Subcommand)]
pub enum RelayCommand {
    /// Create a relay and print its key (shown once; it goes in the relay's relay.toml). A
    /// revoked relay is created again with a new key.
    Create {
        /// 1 to 40 of a-z, 0-9 and -
        id: RelayId,
        /// The mailbox the relay reads, when Graph may read it too (the same mail by both
        /// paths is then ingested once)
        #[arg(long)]
        mailbox: Option<String>,
        /// A mail server whose Authentication-Results headers are believed in the relay's
        /// mail (its authserv-id, the host name the header starts with; repeat for several).
        /// Without one, datasets that require an authenticated sender ignore the relay's mail
        #[arg(long = "trust-authserv-id", value_name = "HOST")]
        trusted_authserv_ids: Vec<String>,
    },
    /// Every relay, when it was last seen, whether it is revoked
    List,
    /// Revoke a relay: its key is refused, and what it uploaded after is quarantined
    Revoke { id: RelayId },
}

pub async fn relay(c: &Client, command: RelayCommand) -> ExitCode {
    let result = async {
        match command {
            RelayCommand::Create {
                id,
                mailbox,
                trusted_authserv_ids,
            } => {
                let ask = NewRelay {
                    id: id.to_string(),
                    mailbox,
                    trusted_authserv_ids,
                };
                let created: CreatedRelay = c.typed("POST", "/v1/relays", Some(json!(ask))).await?;
                if c.json {
                    c.print(&created);
                } else {
                    let id = cell(&created.relay.id);
                    println!("relay {id}: {}", cell(&created.key));
                    println!(
                        "shown once: on the relay's machine, store it with `charlie-relay keyring set {id}` (then key_keyring in relay.toml), or put it in its key_file or CHARLIE_RELAY_KEY"
                    );
                }
                Ok::<(), Failure>(())
            }
            RelayCommand::List => {
                let Some(list) = c.shown::<RelayList>("GET", "/v1/relays", None).await? else {
                    return Ok(());
                };
                let rows: Vec<Vec<String>> = list
                    .relays
                    .iter()
                    .map(|o| {
                        let r = &o.relay;
                        vec![
                            cell(&r.id),
                            opt(&r.mailbox),
                            at(&r.created_at),
                            at_opt(&r.last_seen_at),
                            at_opt(&r.revoked_at),
                            match o.outbox_waiting {
                                0 => "-".into(),
                                n => format!(
                                    "{n} waiting since {}",
                                    at_opt(&o.outbox_oldest_queued_at)
                                ),
                            },
                        ]
                    })
                    .collect();
                table(
                    &["id", "mailbox", "created", "last seen", "revoked", "outbox"],
                    &rows,
                );
                // A mail its relay's sender keeps deferring, with what the server said.
                for o in &list.relays {
                    if let Some(stuck) = &o.outbox_stuck {
                        println!(
                            "relay {}: mail {} deferred {} time(s), last at {}, next try {}: {}",
                            cell(&o.relay.id),
                            cell(&stuck.message_id),
                            stuck.attempts,
                            at_opt(&stuck.last_attempt_at),
                            at_opt(&stuck.next_attempt_at),
                            opt(&stuck.last_answer)
                        );
                    }
                }
                Ok(())
            }
            RelayCommand::Revoke { id } => {
                let relay: RelayInfo = c
                    .typed(
                        "DELETE",
                        &format!("/v1/relays/{}", charlie::uri::segment(&id)),
                        None,
                    )
                    .await?;
                if c.json {
                    c.print(&relay);
                } else {
                    println!(
                        "relay {id} revoked at {}",
                        at_opt(&relay.revoked_at)
                    );
                }
                Ok(())
            }
        }
    }
    .await;
    exit(result)
}
