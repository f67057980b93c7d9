//! Report definitions and their workbooks' versions.

use super::*;

#[derive(Subcommand)]
pub enum ReportsCommand {
    /// The report definitions and when each fires next
    List,
    /// The stored versions of a period's workbook
    Versions { report: ReportName, period: String },
}

pub async fn reports(c: &Client, command: ReportsCommand) -> ExitCode {
    let result = async {
        match command {
            ReportsCommand::List => {
                let Some(list) = c.shown::<ReportList>("GET", "/v1/reports", None).await? else {
                    return Ok(());
                };
                let rows: Vec<Vec<String>> = list
                    .reports
                    .iter()
                    .map(|r| {
                        vec![
                            cell(&r.name),
                            cell(&r.schedule),
                            opt(&r.next_run_local),
                            r.transport.name().to_owned(),
                            r.recipients.join(", "),
                        ]
                    })
                    .collect();
                table(
                    &["report", "schedule", "next run", "transport", "recipients"],
                    &rows,
                );
                Ok::<(), Failure>(())
            }
            ReportsCommand::Versions { report, period } => {
                let Some(stored) = c
                    .shown::<WorkbookVersions>(
                        "GET",
                        &format!(
                            "/v1/reports/{}/versions?period={}",
                            charlie::uri::segment(&report),
                            charlie::uri::segment(&period)
                        ),
                        None,
                    )
                    .await?
                else {
                    return Ok(());
                };
                println!("{}", cell(&stored.key));
                let rows: Vec<Vec<String>> = stored
                    .versions
                    .iter()
                    .map(|v| {
                        vec![
                            opt(&v.version_id),
                            at(&v.modified.to_rfc3339()),
                            v.size.to_string(),
                            if v.latest {
                                "latest".into()
                            } else {
                                String::new()
                            },
                        ]
                    })
                    .collect();
                table(&["version", "stored", "bytes", ""], &rows);
                Ok(())
            }
        }
    }
    .await;
    exit(result)
}
