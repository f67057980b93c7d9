//! The `/iam/v1` routes' callers: the IAM principals allowed (`CHARLIE_IAM_PRINCIPALS`) and the
//! principal API Gateway names, as a caller with a scope.

use super::*;

/// An IAM principal allowed on the `/iam/v1` routes, with its scope.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct IamPrincipal {
    /// An IAM user or role ARN (`arn:aws:iam::123456789012:role/ops`); a role also matches
    /// its sessions (`arn:aws:sts::123456789012:assumed-role/ops/…`). A trailing `*` matches
    /// any rest.
    pub arn: String,
    pub scope: String,
}

/// The IAM principals from `CHARLIE_IAM_PRINCIPALS` (`[{"arn": …, "scope": …}]`); none when
/// unset. A bad entry fails the cold start: better than a principal silently refused.
pub fn iam_principals(json: Option<&str>) -> anyhow::Result<Vec<(String, Scope)>> {
    let Some(json) = json.filter(|j| !j.trim().is_empty()) else {
        return Ok(Vec::new());
    };
    let list: Vec<IamPrincipal> = serde_json::from_str(json).map_err(|e| {
        crate::failure::permanent(format!(
            "CHARLIE_IAM_PRINCIPALS is not a JSON list of {{\"arn\", \"scope\"}}: {e}"
        ))
    })?;
    list.into_iter()
        .map(|p| {
            let scope = Scope::parse(&p.scope).ok_or_else(|| {
                crate::failure::permanent(format!(
                    "CHARLIE_IAM_PRINCIPALS: {} has scope {:?}, not one of {}",
                    p.arn,
                    p.scope,
                    Scope::NAMES.join(", ")
                ))
            })?;
            if !p.arn.starts_with("arn:aws") {
                return Err(crate::failure::permanent(format!(
                    "CHARLIE_IAM_PRINCIPALS: {:?} is not an ARN",
                    p.arn
                )));
            }
            Ok((p.arn, scope))
        })
        .collect()
}

/// The ARNs a caller's principal answers to: itself, and for a role's session the role's ARN
/// (with no path: a session's ARN does not carry it; a configured role ARN with a path is
/// compared by account and name).
pub(super) fn principal_matches(pattern: &str, principal: &str) -> bool {
    if let Some(prefix) = pattern.strip_suffix('*') {
        return principal.starts_with(prefix);
    }
    if pattern == principal {
        return true;
    }
    // arn:aws:sts::{account}:assumed-role/{role}/{session}
    let session = principal
        .strip_prefix("arn:aws:sts::")
        .and_then(|r| r.split_once(":assumed-role/"))
        .and_then(|(account, rest)| Some((account, rest.split_once('/')?.0)));
    // arn:aws:iam::{account}:role/{path/}{role}
    let role = pattern
        .strip_prefix("arn:aws:iam::")
        .and_then(|r| r.split_once(":role/"))
        .map(|(account, rest)| (account, rest.rsplit('/').next().unwrap_or(rest)));
    matches!((session, role), (Some(s), Some(r)) if s == r)
}

/// The caller on an `/iam/v1` route as a key record (its name the principal's ARN, its scope
/// the highest configured for it), or why not.
pub(super) fn iam_caller(
    principals: &[(String, Scope)],
    principal: Option<&str>,
) -> Result<ApiKeyRecord, ApiError> {
    let Some(principal) = principal else {
        return Err(ApiError::new(
            401,
            "unauthorized",
            "the /iam/v1 routes take SigV4-signed requests (API Gateway's AWS_IAM authorization); this one names no IAM principal",
        ));
    };
    let scope = principals
        .iter()
        .filter(|(arn, _)| principal_matches(arn, principal))
        .map(|(_, scope)| *scope)
        .max()
        .ok_or_else(|| {
            ApiError::new(
                403,
                "forbidden",
                format!(
                    "the IAM principal {principal} is not allowed on this API (add it to the deployment's api_iam_principals)"
                ),
            )
        })?;
    Ok(ApiKeyRecord {
        id: "iam".into(),
        name: principal.to_owned(),
        scopes: vec![scope.name().to_owned()],
        secret_sha256: String::new(),
        created_at: String::new(),
        created_by: "api_iam_principals".into(),
        revoked_at: None,
    })
}
