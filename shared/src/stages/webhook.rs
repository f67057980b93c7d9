//! graph-webhook: Microsoft Graph's notification URL behind API Gateway
//! (`POST /graph/notifications`).
//!
//! - Validation handshake: `?validationToken=…` is answered `200 text/plain` with the token.
//! - Change notifications: each one's `clientState` is compared in constant time with the secret;
//!   a mismatch is dropped and logged (never the secret), the rest go to `inbound`. Answers `202`
//!   at once; `5xx` only when nothing could be queued, so Graph retries; `400` for a body that is
//!   not a notification collection.

use aws_lambda_events::apigw::{ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
use aws_lambda_events::encodings::Body;
use aws_lambda_events::http::{HeaderMap, HeaderValue, header::CONTENT_TYPE};
use base64::Engine;
use serde::Deserialize;
use tracing::{error, info, warn};

use crate::adapters::aws::{AwsClients, read_secret};
use crate::adapters::queue::Queue;
use crate::env::Env;
use crate::messages::{InboundMessage, MailSource};
use crate::secret::Secret;

pub struct GraphWebhook {
    client_state: Secret,
    inbound: Queue,
}

#[derive(Debug, Deserialize)]
struct NotificationCollection {
    value: Vec<ChangeNotification>,
}

#[derive(Debug, Deserialize)]
struct ChangeNotification {
    #[serde(rename = "subscriptionId")]
    subscription_id: String,
    #[serde(default, rename = "clientState")]
    client_state: Option<String>,
    #[serde(default)]
    resource: String,
    #[serde(default, rename = "resourceData")]
    resource_data: Option<ResourceData>,
}

#[derive(Debug, Deserialize)]
struct ResourceData {
    #[serde(default)]
    id: Option<String>,
}

impl GraphWebhook {
    pub async fn from_env(env: &Env, clients: &AwsClients) -> anyhow::Result<Self> {
        Ok(GraphWebhook {
            client_state: read_secret(
                &clients.secrets,
                env.required("CHARLIE_CLIENT_STATE_SECRET")?,
            )
            .await?,
            inbound: Queue::new(
                clients.sqs.clone(),
                env.required("CHARLIE_INBOUND_QUEUE_URL")?,
            ),
        })
    }

    pub async fn handle(&self, req: ApiGatewayV2httpRequest) -> ApiGatewayV2httpResponse {
        if let Some(token) = req.query_string_parameters.first("validationToken") {
            info!("Graph validation handshake answered");
            return response(200, "text/plain", token.to_owned());
        }
        let body = match request_body(&req) {
            Ok(b) => b,
            Err(msg) => return problem(400, &msg),
        };
        let notifications: NotificationCollection = match serde_json::from_slice(&body) {
            Ok(n) => n,
            Err(e) => {
                return problem(
                    400,
                    &format!(
                        "the body is not a Graph notification collection ({{\"value\":[…]}}): {e}"
                    ),
                );
            }
        };
        let mut messages = Vec::new();
        for n in &notifications.value {
            let state_ok = n
                .client_state
                .as_deref()
                .is_some_and(|c| self.client_state.matches(c));
            if !state_ok {
                warn!(
                    subscription_id = n.subscription_id,
                    "notification with a wrong or missing clientState dropped"
                );
                continue;
            }
            match mail_of(n) {
                Some((mailbox, message_id)) => messages.push(InboundMessage::GraphMessage {
                    v: 1,
                    mailbox,
                    message_id,
                    source: MailSource::Webhook,
                }),
                None => warn!(
                    subscription_id = n.subscription_id,
                    resource = n.resource,
                    "notification for a resource that is not a user's message dropped"
                ),
            }
        }
        if messages.is_empty() {
            return response(202, "text/plain", String::new());
        }
        let ids: Vec<String> = messages
            .iter()
            .map(|_| super::new_correlation_id())
            .collect();
        let pairs: Vec<(&InboundMessage, &str)> = messages
            .iter()
            .zip(&ids)
            .map(|(m, c)| (m, c.as_str()))
            .collect();
        match self.inbound.send_all(&pairs).await {
            Ok(()) => {
                info!(queued = messages.len(), "notifications queued");
                response(202, "text/plain", String::new())
            }
            Err(e) => {
                error!(error = %format!("{e:#}"), "could not queue notifications; Graph will retry");
                problem(503, "notifications could not be queued; retry later")
            }
        }
    }
}

/// (mailbox, message id) from `Users/{mailbox}/Messages/{id}`.
fn mail_of(n: &ChangeNotification) -> Option<(String, String)> {
    let parts: Vec<&str> = n.resource.split('/').collect();
    match parts.as_slice() {
        [users, mailbox, messages, id]
            if users.eq_ignore_ascii_case("users") && messages.eq_ignore_ascii_case("messages") =>
        {
            let id = n
                .resource_data
                .as_ref()
                .and_then(|d| d.id.clone())
                .unwrap_or_else(|| (*id).to_owned());
            Some(((*mailbox).to_owned(), id))
        }
        _ => None,
    }
}

fn request_body(req: &ApiGatewayV2httpRequest) -> Result<Vec<u8>, String> {
    let raw = req.body.as_deref().unwrap_or_default();
    if req.is_base64_encoded {
        base64::engine::general_purpose::STANDARD
            .decode(raw)
            .map_err(|e| format!("the body is marked base64 but is not: {e}"))
    } else {
        Ok(raw.as_bytes().to_vec())
    }
}

fn response(status: i64, content_type: &'static str, body: String) -> ApiGatewayV2httpResponse {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    let mut r = ApiGatewayV2httpResponse::default();
    r.status_code = status;
    r.headers = headers;
    r.body = Some(Body::Text(body));
    r
}

fn problem(status: i64, message: &str) -> ApiGatewayV2httpResponse {
    response(
        status,
        "application/json",
        serde_json::json!({ "error": message }).to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_notification_names_its_mailbox_and_message() {
        let c: NotificationCollection = serde_json::from_str(include_str!(
            "../../../events/graph/change-notification.json"
        ))
        .unwrap();
        assert_eq!(
            mail_of(&c.value[0]),
            Some((
                "ops-reports@contoso.example".into(),
                "AAMkADNkNAAASq35xAAA=".into()
            ))
        );
    }
}
