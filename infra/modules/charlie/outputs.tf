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

output "alerts_topic_arn" {
  description = "Every alarm notifies this topic; subscribe a pager or chat integration to it (alert_email subscribes one address)."
  value       = aws_sns_topic.alerts.arn
}

output "kms_key_arn" {
  description = "The deployment's key (data at rest); envs/aws also encrypts the RDS instance with it."
  value       = aws_kms_key.main.arn
}

output "dashboard_name" {
  value = aws_cloudwatch_dashboard.main.dashboard_name
}

output "metrics_namespace" {
  value = local.metrics_namespace
}

output "origin_header" {
  description = "With origin_check: the header the CDN adds to each request it forwards to api_endpoint ({name, value}); null without."
  value = var.origin_check ? {
    name  = "x-charlie-origin"
    value = aws_secretsmanager_secret_version.origin[0].secret_string
  } : null
  sensitive = true
}
