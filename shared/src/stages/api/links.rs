//! A mail's download link (`/v1/links/{token}`, no key: the token is the credential).

use super::*;

impl Api {
    pub(super) async fn follow_link(&self, token: &str) -> Result<Reply, ApiError> {
        let refuse = |why: String| Reply {
            status: 403,
            summary: format!("refused: {why}"),
            body: ReplyBody::Html(link_page(&why)),
            location: None,
        };
        let Some(link_key) = &self.link_key else {
            return Ok(refuse(
                "download links are not enabled on this deployment".into(),
            ));
        };
        let claims = match crate::links::verify(link_key, token, Utc::now()) {
            Ok(c) => c,
            Err(e) => {
                warn!(reason = %e, "a download link was refused");
                return Ok(refuse(e.to_string()));
            }
        };
        // The run must still hold that version (a deleted run's link is dead).
        let run: Option<RunRecord> = self
            .records
            .get_record(&RecordKey::run(&claims.run_id))
            .await?;
        let current = run.as_ref().is_some_and(|r| {
            r.workbook_key.as_deref() == Some(claims.workbook_key.as_str())
                && r.workbook_version == claims.workbook_version
        });
        if !current {
            return Ok(refuse("this link's workbook is no longer stored".into()));
        }
        let url = self
            .objects
            .presigned_get(
                &claims.workbook_key,
                claims.workbook_version.as_deref(),
                std::time::Duration::from_secs(DOWNLOAD_MINUTES * 60),
            )
            .await?;
        info!(run_id = claims.run_id, "download link followed");
        Ok(redirect(url).said(format!(
            "download {} of run {}",
            claims.workbook_key, claims.run_id
        )))
    }
}
