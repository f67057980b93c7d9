//! The report-builder Lambda function: its stage is `charlie::stages::report`; this only wires it to
//! the runtime, with mimalloc as the allocator (a few small allocations per row add up).

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    charlie::lambda::run("report-builder", |env| async move {
        charlie::stages::report::ReportBuilder::from_env(&env).await
    })
    .await
}
