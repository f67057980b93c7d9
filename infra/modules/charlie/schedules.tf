resource "aws_iam_role" "scheduler" {
  name = "${local.p}-scheduler"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "scheduler.amazonaws.com" }
      Action    = "sts:AssumeRole"
      # Only this account's schedules may assume it (no confused deputy).
      Condition = { StringEquals = { "aws:SourceAccount" = local.account_id } }
    }]
  })
}

resource "aws_iam_role_policy" "scheduler" {
  name = "${local.p}-scheduler-invoke"
  role = aws_iam_role.scheduler.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      { Effect = "Allow", Action = ["lambda:InvokeFunction"], Resource = [aws_lambda_function.fn["poller"].arn] },
      { Effect = "Allow", Action = ["sqs:SendMessage"], Resource = [aws_sqs_queue.main["runs"].arn, aws_sqs_queue.scheduler_dlq.arn] },
      # The schedules' inputs are encrypted with the deployment's key; Scheduler decrypts
      # them as this role when it fires.
      { Effect = "Allow", Action = ["kms:Decrypt"], Resource = aws_kms_key.main.arn },
    ]
  })
}

# Where Scheduler puts a firing it could not deliver after its retries (the target refused it,
# the role lacked a permission, the queue was gone), so no firing is lost unseen.
resource "aws_sqs_queue" "scheduler_dlq" {
  name                      = "${local.p}-scheduler-dlq"
  message_retention_seconds = 1209600
  sqs_managed_sse_enabled   = true
}

locals {
  # jsonencode escapes < and > (as \u003c, \u003e); Scheduler substitutes its context attributes
  # only in their literal form, so they are put back.
  scheduled_time = "<aws.scheduler.scheduled-time>"
  poll_input = replace(replace(jsonencode({
    v = 1, scheduled_time = local.scheduled_time
  }), "\\u003c", "<"), "\\u003e", ">")
  report_inputs = { for name, _ in local.reports : name => replace(replace(jsonencode({
    v = 1, kind = "scheduled", report = name, scheduled_time = local.scheduled_time
  }), "\\u003c", "<"), "\\u003e", ">") }
}

resource "aws_scheduler_schedule" "poller" {
  name                = "${local.p}-poller"
  schedule_expression = var.poll_schedule
  kms_key_arn         = local.kms_key_arn
  flexible_time_window {
    mode = "OFF"
  }
  target {
    arn      = aws_lambda_function.fn["poller"].arn
    role_arn = aws_iam_role.scheduler.arn
    input    = local.poll_input
    retry_policy {
      maximum_retry_attempts       = 2
      maximum_event_age_in_seconds = 300
    }
    dead_letter_config {
      arn = aws_sqs_queue.scheduler_dlq.arn
    }
  }
}

# One schedule per report, in the report's own time zone, each firing a message on `runs` (the
# report builder consumes it with partial batch failures; a run that keeps failing ends in the
# runs DLQ with its cause). The scheduled time travels in the input, so a redelivered firing
# builds the same run (same period, same run id: no second mail).
resource "aws_scheduler_schedule" "report" {
  for_each                     = local.reports
  name                         = "${local.p}-report-${each.key}"
  schedule_expression          = each.value.cron
  schedule_expression_timezone = each.value.timezone
  kms_key_arn                  = local.kms_key_arn
  flexible_time_window {
    mode = "OFF"
  }
  target {
    arn      = aws_sqs_queue.main["runs"].arn
    role_arn = aws_iam_role.scheduler.arn
    input    = local.report_inputs[each.key]
    retry_policy {
      maximum_retry_attempts       = 3
      maximum_event_age_in_seconds = 3600
    }
    dead_letter_config {
      arn = aws_sqs_queue.scheduler_dlq.arn
    }
  }
}

# The daily retention sweep on `runs`: the report builder deletes the rows past their dataset's
# retain_days. Only the PostgreSQL row store needs it (DynamoDB rows carry their TTL); a sweep
# is idempotent, so a redelivered firing deletes nothing more.
resource "aws_scheduler_schedule" "retention" {
  count               = var.row_store == "postgres" && length(local.retained_datasets) > 0 ? 1 : 0
  name                = "${local.p}-retention"
  schedule_expression = var.retention_schedule
  kms_key_arn         = local.kms_key_arn
  flexible_time_window {
    mode = "OFF"
  }
  target {
    arn      = aws_sqs_queue.main["runs"].arn
    role_arn = aws_iam_role.scheduler.arn
    input = replace(replace(jsonencode({
      v = 1, kind = "retention", scheduled_time = local.scheduled_time
    }), "\\u003c", "<"), "\\u003e", ">")
    retry_policy {
      maximum_retry_attempts       = 3
      maximum_event_age_in_seconds = 3600
    }
    dead_letter_config {
      arn = aws_sqs_queue.scheduler_dlq.arn
    }
  }
}
