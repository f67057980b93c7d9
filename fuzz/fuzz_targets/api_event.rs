//! Any API Gateway (payload 2.0) event's path, query, `Host`, `X-Forwarded-Proto`, stage,
//! cookies and body: made into the API's HTTP request or refused with a reason, never a panic
//! (lambda_http panics on what it cannot convert; the API refuses that first).
#![no_main]

use aws_lambda_events::apigw::ApiGatewayV2httpRequest;
use charlie::stages::api::http_request_of;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let mut parts = text.split('\n');
    let mut next = || parts.next().map(str::to_owned);
    let mut event = ApiGatewayV2httpRequest::default();
    event.raw_path = next();
    event.raw_query_string = next();
    let mut header = |name: &'static str, value: Option<String>| {
        if let Some(v) = value.and_then(|v| v.parse().ok()) {
            event.headers.insert(name, v);
        }
    };
    header("host", next());
    header("x-forwarded-proto", next());
    event.request_context.stage = next();
    event.request_context.domain_name = next();
    event.cookies = next().map(|c| c.split(';').map(str::to_owned).collect());
    event.request_context.http.method = if flags & 2 == 0 {
        aws_lambda_events::http::Method::GET
    } else {
        aws_lambda_events::http::Method::POST
    };
    event.body = next();
    event.is_base64_encoded = flags & 1 == 1;
    if let Ok(request) = http_request_of(event) {
        assert!(request.uri().path().starts_with('/'), "{:?}", request.uri());
    }
});
