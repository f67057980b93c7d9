//! The graph-webhook Lambda function: its stage is `charlie::stages::webhook`; this only wires it to
//! the runtime, with mimalloc as the allocator (a few small allocations per row add up).

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    charlie::lambda::run("graph-webhook", |env| async move {
        charlie::stages::webhook::GraphWebhook::from_env(&env).await
    })
    .await
}
