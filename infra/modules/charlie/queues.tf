resource "aws_sqs_queue" "dlq" {
  for_each                  = local.queues
  name                      = "${local.p}-${each.key}-dlq"
  message_retention_seconds = 1209600
  sqs_managed_sse_enabled   = true
}

resource "aws_sqs_queue" "main" {
  for_each = local.queues
  name     = "${local.p}-${each.key}"
  # At least 6 x the consumer's timeout, so a message is not redelivered while still in work.
  visibility_timeout_seconds = 6 * (each.value.consumer == null ? 60 : var.function_timeouts[each.value.consumer])
  message_retention_seconds  = 345600
  sqs_managed_sse_enabled    = true
  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.dlq[each.key].arn
    maxReceiveCount     = each.value.max_receives
  })
}

resource "aws_lambda_event_source_mapping" "consumer" {
  for_each                           = { for q, v in local.queues : q => v if v.consumer != null }
  event_source_arn                   = aws_sqs_queue.main[each.key].arn
  function_name                      = aws_lambda_function.fn[each.value.consumer].arn
  batch_size                         = each.value.batch_size
  maximum_batching_window_in_seconds = each.value.window
  function_response_types            = ["ReportBatchItemFailures"]
  enabled                            = var.event_source_mappings_enabled
  dynamic "scaling_config" {
    for_each = each.value.max_concurrency == null ? [] : [each.value.max_concurrency]
    content {
      maximum_concurrency = scaling_config.value
    }
  }
}
