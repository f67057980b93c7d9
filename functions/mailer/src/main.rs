//! The mailer Lambda function: its stage is `charlie::stages::mailer`; this only wires it to
//! the runtime, with mimalloc as the allocator (a few small allocations per row add up).

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    charlie::lambda::run("mailer", |env| async move {
        charlie::stages::mailer::Mailer::from_env(&env).await
    })
    .await
}
