resource "aws_iam_role" "scheduler" {
  name = "${local.p}-scheduler"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "scheduler.amazonaws.com" }
      Action    = "sts:AssumeRole"
    }]
  })
}

resource "aws_iam_role_policy" "scheduler" {
  name = "${local.p}-scheduler-invoke"
  role = aws_iam_role.scheduler.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect   = "Allow"
      Action   = ["lambda:InvokeFunction"]
      Resource = [aws_lambda_function.fn["poller"].arn, aws_lambda_function.fn["report-builder"].arn]
    }]
  })
}

locals {
  # jsonencode escapes < and > (as \u003c, \u003e); Scheduler substitutes its context attributes
  # only in their literal form, so they are put back.
  scheduled_time = "<aws.scheduler.scheduled-time>"
  poll_input = replace(replace(jsonencode({
    v = 1, scheduled_time = local.scheduled_time
  }), "\\u003c", "<"), "\\u003e", ">")
  report_inputs = { for name, _ in var.reports : name => replace(replace(jsonencode({
    v = 1, kind = "scheduled", report = name, scheduled_time = local.scheduled_time
  }), "\\u003c", "<"), "\\u003e", ">") }
}

resource "aws_scheduler_schedule" "poller" {
  name                = "${local.p}-poller"
  schedule_expression = var.poll_schedule
  flexible_time_window {
    mode = "OFF"
  }
  target {
    arn      = aws_lambda_function.fn["poller"].arn
    role_arn = aws_iam_role.scheduler.arn
    input    = local.poll_input
  }
}

# One schedule per report, in the report's own time zone. The scheduled time travels in the input,
# so a retried invocation builds the same run (same period, same run id: no second mail).
resource "aws_scheduler_schedule" "report" {
  for_each                     = var.reports
  name                         = "${local.p}-report-${each.key}"
  schedule_expression          = each.value.cron
  schedule_expression_timezone = each.value.timezone
  flexible_time_window {
    mode = "OFF"
  }
  target {
    arn      = aws_lambda_function.fn["report-builder"].arn
    role_arn = aws_iam_role.scheduler.arn
    input    = local.report_inputs[each.key]
    retry_policy {
      maximum_retry_attempts       = 3
      maximum_event_age_in_seconds = 3600
    }
  }
}
