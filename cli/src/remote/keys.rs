//! API keys and the audit trail.

use super::*;

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create a key (shown once). With --state-table, written straight to the state table with
    /// your AWS credentials: how the first key of a deployment is made.
    Create {
        name: String,
        /// read, operate or admin (each includes the ones before)
        #[arg(long, default_value = "read")]
        scope: String,
        /// The deployment's state table (Terraform output state_table)
        #[arg(long)]
        state_table: Option<String>,
    },
    /// Every key (never their secrets)
    List,
    /// Revoke a key by id
    Revoke { id: KeyId },
}

pub async fn keys(remote: &Remote, command: KeysCommand) -> ExitCode {
    use charlie::stages::api::keys::Scope;
    if let KeysCommand::Create {
        name,
        scope,
        state_table: Some(table),
    } = &command
    {
        let Some(scope) = Scope::parse(scope) else {
            return Failure(
                2,
                format!("scope {scope:?} is not one of {:?}", Scope::NAMES),
            )
            .into();
        };
        let aws =
            charlie::adapters::aws::AwsConfig::from_env(&charlie::env::Env::from_process()).await;
        let state = charlie::adapters::aws::dynamodb::DynamoState::new(
            aws_sdk_dynamodb::Client::new(&aws.sdk),
            table,
        );
        let by = std::env::var("USER").unwrap_or_else(|_| "cli".into());
        return match charlie::stages::api::keys::create(
            &state,
            name,
            &[scope],
            &format!("{by} (charlie keys create)"),
        )
        .await
        {
            Ok((record, key)) => {
                if remote.json {
                    let created = CreatedKey {
                        info: KeyInfo::from(&record),
                        key: key.expose().to_owned(),
                    };
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&created).unwrap_or_default()
                    );
                } else {
                    println!(
                        "key {} ({}, {}): {}",
                        record.id,
                        record.name,
                        record.scopes.join(","),
                        key.expose()
                    );
                    println!(
                        "shown once: keep it in a password manager; CHARLIE_API_KEY=<key> for the CLI"
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => Failure(5, format!("writing the key to {table}: {e:#}")).into(),
        };
    }
    let c = match Client::new(remote).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let result = async {
        match command {
            KeysCommand::Create { name, scope, .. } => {
                let ask = NewKey {
                    name,
                    scopes: vec![scope],
                };
                let created: CreatedKey = c.typed("POST", "/v1/keys", Some(json!(ask))).await?;
                if c.json {
                    c.print(&created);
                } else {
                    println!(
                        "key {} ({}, {}): {}",
                        cell(&created.info.id),
                        cell(&created.info.name),
                        cell(created.info.scopes.first().map_or("", String::as_str)),
                        cell(&created.key)
                    );
                    println!("shown once: keep it in a password manager");
                }
                Ok::<(), Failure>(())
            }
            KeysCommand::List => {
                let Some(list) = c.shown::<KeyList>("GET", "/v1/keys", None).await? else {
                    return Ok(());
                };
                let rows: Vec<Vec<String>> = list
                    .keys
                    .iter()
                    .map(|k| {
                        vec![
                            cell(&k.id),
                            cell(&k.name),
                            k.scopes.join(","),
                            at(&k.created_at),
                            at_opt(&k.revoked_at),
                        ]
                    })
                    .collect();
                table(&["id", "name", "scopes", "created", "revoked"], &rows);
                Ok(())
            }
            KeysCommand::Revoke { id } => {
                let key: KeyInfo = c
                    .typed(
                        "DELETE",
                        &format!("/v1/keys/{}", charlie::uri::segment(&id)),
                        None,
                    )
                    .await?;
                if c.json {
                    c.print(&key);
                } else {
                    println!(
                        "key {id} ({}) revoked at {}",
                        cell(&key.name),
                        at_opt(&key.revoked_at)
                    );
                }
                Ok(())
            }
        }
    }
    .await;
    exit(result)
}

/// `charlie audit`: the latest state-changing calls, as JSON.
pub async fn audit(c: &Client) -> ExitCode {
    match c
        .typed::<charlie::contract::AuditTrail>("GET", "/v1/audit", None)
        .await
    {
        Ok(trail) => {
            c.print(&trail);
            ExitCode::SUCCESS
        }
        Err(f) => f.into(),
    }
}
