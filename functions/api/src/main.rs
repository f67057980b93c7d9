//! The control API Lambda function: its stage is `charlie::stages::api`; this only wires it to
//! the runtime, with mimalloc as the allocator.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    charlie::lambda::run("api", |env| async move {
        charlie::stages::api::ApiFunction::from_env(&env).await
    })
    .await
}
