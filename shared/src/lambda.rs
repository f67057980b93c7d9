//! A Lambda function's `main`: build the stage once from the process environment (cold
//! start), then serve invocations until the runtime stops, each in a span that names its
//! request id.

use std::future::Future;

use tracing::Instrument;

use crate::env::Env;
use crate::invocation::Invocation;
use crate::stages::Handler;

pub async fn run<H, F, Fut>(stage: &'static str, build: F) -> Result<(), lambda_runtime::Error>
where
    H: Handler + 'static,
    F: FnOnce(Env) -> Fut,
    Fut: Future<Output = anyhow::Result<H>>,
{
    let env = Env::from_process();
    crate::telemetry::init(&env);
    // The release profile unwinds, so a panic fails one message, not the whole batch; this
    // line shows which strategy the deployed binary was built with.
    let panic = if cfg!(panic = "unwind") {
        "panic strategy: unwind"
    } else {
        "panic strategy: abort"
    };
    tracing::info!(stage, panic, "cold start");
    // Metrics go to stdout in Embedded Metric Format after each invocation.
    let namespace = env
        .get("CHARLIE_METRICS_NAMESPACE")
        .unwrap_or("Charlie")
        .to_owned();
    let metrics = crate::metrics::install(&namespace)?;
    let handler = build(env).await.map_err(|e| {
        tracing::error!(error = %format!("{e:#}"), stage, "cold start failed");
        e
    })?;
    let handler = &handler;
    lambda_runtime::run(lambda_runtime::service_fn(
        move |event: lambda_runtime::LambdaEvent<serde_json::Value>| async move {
            let invocation = Invocation::from(&event.context);
            let span = tracing::info_span!("invocation", stage, request_id = %invocation.request_id);
            let result = handler
                .invoke(event.payload, &invocation)
                .instrument(span)
                .await;
            // Also after a failed invocation: what it counted before failing happened.
            if let Err(e) = metrics.flush(std::io::stdout().lock()) {
                tracing::error!(error = %e, stage, "could not write the invocation's metrics");
            }
            result.map_err(|e| {
                tracing::error!(error = %format!("{e:#}"), stage, request_id = %invocation.request_id, "invocation failed");
                lambda_runtime::Error::from(format!("{e:#}"))
            })
        },
    ))
    .await
}
