output "bucket" {
  value = aws_s3_bucket.data.bucket
}

output "rows_table" {
  value = aws_dynamodb_table.rows.name
}

output "state_table" {
  value = aws_dynamodb_table.state.name
}

output "queue_urls" {
  value = { for k, q in aws_sqs_queue.main : k => q.url }
}

output "dlq_urls" {
  # Each queue's DLQ, and Scheduler's own for firings it could not deliver.
  value = merge({ for k, q in aws_sqs_queue.dlq : k => q.url }, { scheduler = aws_sqs_queue.scheduler_dlq.url })
}

output "function_names" {
  value = { for k, f in aws_lambda_function.fn : k => f.function_name }
}

output "api_id" {
  value = aws_apigatewayv2_api.http.id
}

output "api_endpoint" {
  value = aws_apigatewayv2_api.http.api_endpoint
}
