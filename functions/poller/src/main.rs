//! The poller Lambda function: its stage is `charlie::stages::poller`; this only wires it to
//! the runtime, with mimalloc as the allocator (a few small allocations per row add up).

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    charlie::lambda::run("poller", |env| async move {
        charlie::stages::poller::Poller::from_env(&env).await
    })
    .await
}
