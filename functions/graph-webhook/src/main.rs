//! The graph-webhook Lambda function. Its logic is `charlie::stages`; this only hands it to the runtime.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    charlie::stages::run_lambda("graph-webhook").await
}
