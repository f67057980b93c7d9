//! The batch-sender Lambda function: its stage is `charlie::stages::batch_sender`; this only
//! wires it to the runtime, with mimalloc as the allocator like the other functions.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    charlie::lambda::run("batch-sender", |env| async move {
        charlie::stages::batch_sender::BatchSender::from_env(&env).await
    })
    .await
}
