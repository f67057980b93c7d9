//! The API over HTTP: an axum [`Router`] built from [`routes::ROUTES`] (each route registered
//! once, with the access it needs), the caller as an extractor (an API key or an IAM principal,
//! checked against the route's scope), and the Lambda event path through `lambda_http`'s own
//! adapter, which API Gateway (payload 2.0), the local runner and the tests all take.

use std::convert::Infallible;

use axum::extract::{FromRequest, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{Method, Uri};
use axum::response::Response;
use axum::routing::{MethodFilter, MethodRouter, any, on};
use axum::{Extension, Router};
use lambda_http::request::{LambdaRequest, RequestContext};
use tower::ServiceExt;

use super::*;
use routes::{ROUTES, RouteDef};

/// The API as a Lambda function: [`Api`]'s router behind `lambda_http`'s adapter.
pub struct ApiFunction {
    router: Router,
}

impl ApiFunction {
    pub fn new(api: Arc<Api>) -> Self {
        ApiFunction {
            router: router(api),
        }
    }

    #[cfg(feature = "api")]
    pub async fn from_env(env: &crate::env::Env) -> anyhow::Result<Self> {
        Ok(Self::new(Arc::new(Api::from_env(env).await?)))
    }

    /// Answers one API Gateway (payload 2.0) event, as the Lambda function does.
    pub async fn respond(&self, event: ApiGatewayV2httpRequest) -> anyhow::Result<Value> {
        // lambda_http panics on what it cannot turn into an `http::Request` (a body marked
        // base64 that is not, a URL it cannot parse); those are the caller's mistakes: 400.
        let event = match readable(event) {
            Ok(event) => event,
            Err(refused) => return Ok(serde_json::to_value(gateway_response(refused))?),
        };
        let event = lambda_http::LambdaEvent::new(
            LambdaRequest::ApiGatewayV2(event),
            lambda_http::Context::default(),
        );
        let router = self
            .router
            .clone()
            .map_request(normalized)
            .and_then(in_memory);
        let answer = lambda_http::Adapter::from(router)
            .oneshot(event)
            .await
            .unwrap_or_else(|never: Infallible| match never {});
        Ok(serde_json::to_value(answer)?)
    }
}

#[async_trait]
impl crate::stages::Handler for ApiFunction {
    async fn invoke(&self, event: Value, _invocation: &Invocation) -> anyhow::Result<Value> {
        let request: ApiGatewayV2httpRequest = crate::stages::parse_event(event)?;
        Box::pin(self.respond(request)).await
    }
}

impl Api {
    /// Answers one API Gateway event through the router, as the Lambda function does (the
    /// tests' way in).
    pub async fn handle(
        self: &Arc<Self>,
        req: ApiGatewayV2httpRequest,
    ) -> ApiGatewayV2httpResponse {
        let function = ApiFunction::new(Arc::clone(self));
        let answer = match function.respond(req).await {
            Ok(answer) => answer,
            Err(e) => return gateway_response(e.into()),
        };
        serde_json::from_value(answer).unwrap_or_else(|e| {
            gateway_response(
                anyhow::anyhow!("the adapter's answer is not API Gateway's: {e}").into(),
            )
        })
    }
}

/// The router: every route of [`ROUTES`] under `/v1` and again under `/iam/v1` (API Gateway's
/// AWS_IAM routes), the dashboard under `/ui`, the 404/405 answers, and the CDN check in front
/// of all of it.
pub(super) fn router(api: Arc<Api>) -> Router {
    let mut router = Router::new();
    for def in ROUTES {
        let endpoint = endpoint(def);
        router = router
            .route(&format!("/v1{}", def.path), endpoint.clone())
            .route(&format!("/iam/v1{}", def.path), endpoint);
    }
    router
        .route("/ui", any(dashboard))
        .route("/ui/{*page}", any(dashboard))
        .fallback(no_route)
        .method_not_allowed_fallback(no_route)
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&api),
            behind_the_edge,
        ))
        .with_state(api)
}

/// A route's handler, by the access it needs; the route itself rides along as an extension.
fn endpoint(def: &'static RouteDef) -> MethodRouter<Arc<Api>> {
    // The table is constant: a method it misspells fails the first router built (every
    // test), never serves as another method.
    let method = Method::from_bytes(def.method.as_bytes())
        .unwrap_or_else(|_| panic!("ROUTES: {:?} is not an HTTP method", def.method));
    let filter = MethodFilter::try_from(method)
        .unwrap_or_else(|_| panic!("ROUTES: {} cannot be routed", def.method));
    let endpoint = match def.access {
        Access::Public => on(filter, public),
        Access::Relay => on(filter, relayed),
        Access::Scope(_) => on(filter, scoped),
    };
    endpoint.layer(Extension(def))
}

/// Behind the CDN, only what came through it (the WAF) is served; the SigV4 routes are
/// checked by AWS before the function runs and signed for API Gateway's own host.
async fn behind_the_edge(
    State(api): State<Arc<Api>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = request.uri().path();
    let signed_by_aws = path == "/iam/v1" || path.starts_with("/iam/v1/");
    if !signed_by_aws && !api.edge.admits(request.headers()) {
        return respond(Err(ApiError::new(
            403,
            "forbidden",
            "this API is reached through its CDN",
        )));
    }
    next.run(request).await
}

/// No route has this path (404), or none this method (405, with `Allow`).
async fn no_route(method: Method, uri: Uri) -> Response {
    let path = uri.path();
    let Some(segments) = segments_under_v1(path) else {
        return respond(Err(ApiError::not_found(format!(
            "no route {path}: routes are under /v1"
        ))));
    };
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let allowed: Vec<&str> = routes::matching(&segments)
        .map(|r| r.method)
        .filter(|m| *m != method.as_str())
        .collect();
    if allowed.is_empty() {
        return respond(Err(ApiError::not_found(format!(
            "no route {method} {path} (see /v1/openapi.json)"
        ))));
    }
    let allow = allowed.join(", ");
    let mut resp = respond(Err(ApiError::new(
        405,
        "method_not_allowed",
        format!("{path} takes {allow}"),
    )));
    if let Ok(v) = HeaderValue::from_str(&allow) {
        resp.headers_mut().insert("allow", v);
    }
    resp
}

/// The document and the mails' download links: no key.
async fn public(
    State(api): State<Arc<Api>>,
    Extension(def): Extension<&'static RouteDef>,
    req: Request,
) -> Response {
    match def.route {
        Route::Link => {
            let result = api.follow_link(req.segment(1)).await;
            // Who: the link (its bearer is unknown); what: the run's workbook, or why not.
            let (status, summary) = match &result {
                Ok(r) => (r.status, r.summary.clone()),
                Err(e) => (e.status, format!("refused: {}", e.message)),
            };
            info!(status, summary, "download link followed");
            api.audit_as(req.call(), ("link", "download link"), status, summary)
                .await;
            respond(result)
        }
        Route::OpenApi => respond(Ok(Reply::json(200, openapi().clone()))),
        other => respond(Err(
            anyhow::anyhow!("public route {other:?} has no answer").into()
        )),
    }
}

/// The OpenAPI document, built once.
fn openapi() -> &'static Value {
    static DOC: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    DOC.get_or_init(super::openapi::document)
}

/// A relay's own calls, signed with its key.
async fn relayed(
    State(api): State<Arc<Api>>,
    Extension(def): Extension<&'static RouteDef>,
    req: Request,
) -> Response {
    if let Err(e) = req.ids_fit() {
        return respond(Err(e));
    }
    respond(Box::pin(api.relay_call(&req, def.route)).await)
}

/// A route for a key (or a dashboard session, or an IAM principal) with the route's scope:
/// bounded, answered, and written to the audit trail.
async fn scoped(
    State(api): State<Arc<Api>>,
    Extension(def): Extension<&'static RouteDef>,
    Caller(key): Caller,
    req: Request,
) -> Response {
    if let Err(e) = req.ids_fit() {
        return respond(Err(e));
    }
    let segments: Vec<&str> = req.segments.iter().map(String::as_str).collect();
    let changes = req.method != "GET" && req.method != "HEAD";
    if changes && let Err(limited) = api.within_limits(&req, &segments, &key).await {
        let refused = Err(limited);
        api.audit(req.call(), &key, &refused).await;
        return respond(refused);
    }
    let result = api.route(&req, def.route, &segments, &key).await;
    // Every state-changing call, and the reads that hand out data: a workbook or a
    // quarantined file.
    let download = matches!(def.route, Route::DownloadRun | Route::QuarantineFile);
    if download {
        info!(
            key = key.name,
            path = req.path,
            status = result.as_ref().map_or_else(|e| e.status, |r| r.status),
            "download"
        );
    }
    if changes || download {
        api.audit(req.call(), &key, &result).await;
    }
    respond(result)
}

/// Serves `/ui…`.
async fn dashboard(State(api): State<Arc<Api>>, req: Request) -> Response {
    api.dashboard(&req).await
}

/// The caller of a route that needs a scope: an API key (`Authorization: Bearer chk_…`), or
/// on `/iam/v1` the IAM principal API Gateway checked; refused (401/403, audited) when unknown,
/// revoked or short of the route's scope.
pub(super) struct Caller(pub(super) ApiKeyRecord);

impl FromRequestParts<Arc<Api>> for Caller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, api: &Arc<Api>) -> Result<Self, Response> {
        let def = parts.extensions.get::<&'static RouteDef>().copied();
        let Some(needed) = def.and_then(RouteDef::scope) else {
            return Err(respond(Err(anyhow::anyhow!(
                "{} {} asks for a caller but needs no scope",
                parts.method,
                parts.uri.path()
            )
            .into())));
        };
        let method = parts.method.as_str();
        let path = parts.uri.path();
        let request_id = request_id(parts);
        let call = (request_id.as_str(), method, path);
        let iam_route = path.starts_with("/iam/");
        let key = if iam_route {
            let principal = principal(parts);
            match iam_caller(&api.iam_principals, principal.as_deref()) {
                Ok(caller) => caller,
                Err(e) => {
                    let who = principal.as_deref().unwrap_or("none");
                    let refused = format!("refused: {}", e.message);
                    api.audit_as(call, (who, "IAM caller"), e.status, refused)
                        .await;
                    return Err(respond(Err(e)));
                }
            }
        } else {
            let presented = bearer(&parts.headers);
            match keys::authenticate(api.records.as_ref(), presented.as_deref()).await {
                Ok(Ok(key)) => key,
                Ok(Err(refused)) => {
                    // Audited with the key's id when it has one (never the key itself).
                    let who = presented
                        .as_deref()
                        .and_then(keys::presented_id)
                        .unwrap_or("none");
                    let why = format!("refused: {}", refused.message());
                    api.audit_as(call, (who, "unauthenticated caller"), 401, why)
                        .await;
                    return Err(respond(Err(ApiError::new(
                        401,
                        "unauthorized",
                        refused.message(),
                    ))));
                }
                Err(e) => return Err(respond(Err(e.into()))),
            }
        };
        if keys::granted(&key).is_none_or(|s| s < needed) {
            let refused = Err(ApiError::new(
                403,
                "forbidden",
                format!(
                    "{method} {path} needs a {} with scope {}; this one ({}) has {}",
                    if iam_route { "caller" } else { "key" },
                    needed.name(),
                    key.name,
                    key.scopes.join(", ")
                ),
            ));
            api.audit(call, &key, &refused).await;
            return Err(respond(refused));
        }
        Ok(Caller(key))
    }
}

impl FromRequest<Arc<Api>> for Request {
    type Rejection = Response;

    async fn from_request(req: axum::extract::Request, _: &Arc<Api>) -> Result<Self, Response> {
        let (parts, body) = req.into_parts();
        // The event's body is in memory already (API Gateway passes at most 10 MB).
        let body = axum::body::to_bytes(body, usize::MAX).await.map_err(|e| {
            respond(Err(ApiError::bad(
                "body",
                format!("the body cannot be read: {e}"),
            )))
        })?;
        let path = parts.uri.path().to_owned();
        let segments = segments_under_v1(&path)
            .or_else(|| path.strip_prefix("/ui").map(split_path))
            .unwrap_or_default();
        let query = parts.uri.query().map(str::to_owned);
        let fields = crate::uri::form(query.as_deref().unwrap_or_default().as_bytes());
        Ok(Request {
            method: parts.method.as_str().to_owned(),
            request_id: request_id(&parts),
            domain_name: gateway(&parts).and_then(|g| g.domain_name.clone()),
            path,
            segments,
            query: fields,
            raw_query: query,
            headers: parts.headers,
            body: body.to_vec(),
        })
    }
}

/// What API Gateway said of the request (lambda_http keeps it as an extension).
fn gateway(parts: &Parts) -> Option<&aws_lambda_events::apigw::ApiGatewayV2httpRequestContext> {
    match parts.extensions.get::<RequestContext>()? {
        RequestContext::ApiGatewayV2(context) => Some(context),
        _ => None,
    }
}

fn request_id(parts: &Parts) -> String {
    gateway(parts)
        .and_then(|g| g.request_id.clone())
        .unwrap_or_else(crate::invocation::new_correlation_id)
}

/// The IAM principal API Gateway checked the SigV4 signature of (AWS_IAM routes only).
fn principal(parts: &Parts) -> Option<String> {
    gateway(parts)?
        .authorizer
        .as_ref()?
        .iam
        .as_ref()?
        .user_arn
        .clone()
}

/// A path's segments after its prefix, percent-decoded; empty segments (`//`, a trailing `/`)
/// are not segments.
fn split_path(rest: &str) -> Vec<String> {
    rest.split('/')
        .filter(|s| !s.is_empty())
        .map(crate::uri::decode)
        .collect()
}

/// The segments of a path under `/v1` (or `/iam/v1`); `None`: not under `/v1`.
fn segments_under_v1(path: &str) -> Option<Vec<String>> {
    let rest = path
        .strip_prefix("/iam")
        .filter(|r| r.starts_with("/v1"))
        .unwrap_or(path);
    let rest = rest.strip_prefix("/v1")?;
    (rest.is_empty() || rest.starts_with('/')).then(|| split_path(rest))
}

/// The router's response with its body read (the adapter holds the response across an
/// await, so its body must be `Sync`; the API's answers are small and in memory anyway).
async fn in_memory(resp: Response) -> Result<lambda_http::Response<lambda_http::Body>, Infallible> {
    let (parts, body) = resp.into_parts();
    let body = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(bytes) if bytes.is_empty() => lambda_http::Body::Empty,
        Ok(bytes) => lambda_http::Body::from(bytes.to_vec()),
        Err(e) => {
            error!(error = %e, "the API's answer could not be read");
            lambda_http::Body::Empty
        }
    };
    Ok(lambda_http::Response::from_parts(parts, body))
}

/// The request with its path's empty segments (`//`, a trailing `/`) dropped, so that
/// `/v1/runs/` is `/v1/runs` as the routes are written.
fn normalized(mut req: lambda_http::Request) -> lambda_http::Request {
    let path = req.uri().path();
    if path.len() > 1 && (path.ends_with('/') || path.contains("//")) {
        let mut clean: String = path
            .split('/')
            .filter(|s| !s.is_empty())
            .flat_map(|s| ["/", s])
            .collect();
        if clean.is_empty() {
            clean.push('/');
        }
        if let Some(q) = req.uri().query() {
            clean = format!("{clean}?{q}");
        }
        let mut parts = req.uri().clone().into_parts();
        if let Ok(pq) = clean.parse() {
            parts.path_and_query = Some(pq);
            if let Ok(uri) = Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        }
    }
    req
}

/// The HTTP request lambda_http makes of an event, or why the event is refused (a 400). Pure:
/// a fuzz target drives it, to hold [`readable`] to every panic lambda_http has.
pub fn http_request_of(event: ApiGatewayV2httpRequest) -> Result<lambda_http::Request, String> {
    let event = readable(event).map_err(|e| e.message)?;
    Ok(LambdaRequest::ApiGatewayV2(event).into())
}

/// The event, if lambda_http can turn it into a request without panicking: its body decodes,
/// its query is a URI's, and the headers it builds the URL from are well formed (a `Host` or
/// `X-Forwarded-Proto` that is not is dropped: API Gateway's `domainName` names the host).
fn readable(mut event: ApiGatewayV2httpRequest) -> Result<ApiGatewayV2httpRequest, ApiError> {
    if event.is_base64_encoded
        && let Some(body) = &event.body
        && base64::engine::general_purpose::STANDARD
            .decode(body)
            .is_err()
    {
        return Err(ApiError::bad(
            "body",
            "the body is marked base64 but is not",
        ));
    }
    if let Some(q) = event.raw_query_string.as_deref().filter(|q| !q.is_empty())
        && format!("/?{q}").parse::<Uri>().is_err()
    {
        return Err(ApiError::bad("query", "the query string is not a URI's"));
    }
    let host_ok = |h: &str| {
        !h.is_empty()
            && h.len() <= 255
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
            && format!("https://{h}/").parse::<url::Url>().is_ok()
    };
    if event
        .headers
        .get("host")
        .is_some_and(|h| !h.to_str().is_ok_and(host_ok))
    {
        event.headers.remove("host");
    }
    if event
        .request_context
        .domain_name
        .as_deref()
        .is_some_and(|h| !host_ok(h))
    {
        event.request_context.domain_name = None;
    }
    if event
        .headers
        .get("x-forwarded-proto")
        .is_some_and(|p| p != "https" && p != "http")
    {
        event.headers.remove("x-forwarded-proto");
    }
    if !event.raw_path.as_deref().unwrap_or("/").starts_with('/') {
        return Err(ApiError::not_found("a path starts with /"));
    }
    Ok(event)
}

/// An answer built without the router (the event could not become a request), as API
/// Gateway's response.
fn gateway_response(error: ApiError) -> ApiGatewayV2httpResponse {
    let (status, headers, body) = reply::answer(Err(error));
    let mut r = ApiGatewayV2httpResponse::default();
    r.status_code = i64::from(status);
    r.headers = headers;
    r.body = (!body.is_empty()).then_some(Body::Text(body));
    r
}
