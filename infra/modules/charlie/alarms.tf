# Alarms that reach a person: every alarm notifies the alerts topic when it fires and when it
# clears. docs/operations.md says, per alarm, what it means, what to look at and what to do.
resource "aws_sns_topic" "alerts" {
  name = "${local.p}-alerts"
  # The key's policy lets CloudWatch publish (kms.tf).
  kms_master_key_id = local.kms_key_arn
}

resource "aws_sns_topic_subscription" "alert_email" {
  count     = var.alert_email == null ? 0 : 1
  topic_arn = aws_sns_topic.alerts.arn
  protocol  = "email"
  endpoint  = var.alert_email
}

locals {
  alarm_actions = [aws_sns_topic.alerts.arn]
  runbook       = "docs/operations.md"

  # Report -> how long without a delivered mail is a missed run: a daily schedule 1 day, one
  # restricted to some weekdays 7 days. CloudWatch looks back 7 days at most, so a schedule on
  # given days of the month (or any rarer one) gets no missed-run alarm (see the runbook).
  report_cron_fields = { for name, r in local.reports : name => (
    startswith(r.cron, "cron(") ? split(" ", trimsuffix(trimprefix(r.cron, "cron("), ")")) : []
  ) }
  missed_run_days = { for name, f in local.report_cron_fields : name => (
    length(f) != 6 ? 0 :
    contains(["*", "?"], f[4]) ? (contains(["*", "?"], f[2]) ? 1 : 0) :
    7
  ) }

  # Queues with a consumer: their oldest message's age says whether the consumer keeps up.
  consumed_queues = { for q, v in local.queues : q => v if v.consumer != null }
}

# --- Queues ---------------------------------------------------------------------------------

resource "aws_cloudwatch_metric_alarm" "dlq_depth" {
  for_each            = local.queues
  alarm_name          = "${local.p}-${each.key}-dlq-not-empty"
  alarm_description   = "Messages in ${aws_sqs_queue.dlq[each.key].name}: `charlie dlq peek ${each.key}` shows them with their causes (${local.runbook}, DLQ not empty)"
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateNumberOfMessagesVisible"
  dimensions          = { QueueName = aws_sqs_queue.dlq[each.key].name }
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "scheduler_dlq_depth" {
  alarm_name          = "${local.p}-scheduler-dlq-not-empty"
  alarm_description   = "A schedule firing Scheduler could not deliver, or a poll that failed every attempt, is in ${aws_sqs_queue.scheduler_dlq.name}: its message attributes say why (${local.runbook}, Scheduler DLQ not empty)"
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateNumberOfMessagesVisible"
  dimensions          = { QueueName = aws_sqs_queue.scheduler_dlq.name }
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "queue_age" {
  for_each            = local.consumed_queues
  alarm_name          = "${local.p}-${each.key}-oldest-message-age"
  alarm_description   = "The oldest message on ${aws_sqs_queue.main[each.key].name} has waited over ${var.max_message_age_seconds} s for ${each.value.consumer} (${local.runbook}, queue not drained)"
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateAgeOfOldestMessage"
  dimensions          = { QueueName = aws_sqs_queue.main[each.key].name }
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 2
  threshold           = var.max_message_age_seconds
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

# --- Functions ------------------------------------------------------------------------------

resource "aws_cloudwatch_metric_alarm" "function_errors" {
  for_each            = local.functions
  alarm_name          = "${local.p}-${each.key}-errors"
  alarm_description   = "${aws_lambda_function.fn[each.key].function_name} failed invocations (crash, timeout, or an error it returned) (${local.runbook}, function errors)"
  namespace           = "AWS/Lambda"
  metric_name         = "Errors"
  dimensions          = { FunctionName = aws_lambda_function.fn[each.key].function_name }
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "function_throttles" {
  for_each            = local.functions
  alarm_name          = "${local.p}-${each.key}-throttles"
  alarm_description   = "${aws_lambda_function.fn[each.key].function_name} was throttled: it hit its reserved concurrency or the account's limit (${local.runbook}, function throttles)"
  namespace           = "AWS/Lambda"
  metric_name         = "Throttles"
  dimensions          = { FunctionName = aws_lambda_function.fn[each.key].function_name }
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

# --- The HTTP API (Graph's webhook and the control API) --------------------------------------

resource "aws_cloudwatch_metric_alarm" "http_5xx_rate" {
  alarm_name          = "${local.p}-http-5xx-rate"
  alarm_description   = "Over ${var.alarm_thresholds.http_5xx_percent}% of the HTTP API's requests (Graph's notifications, the control API) answered 5xx in 2 of 3 five-minute periods (${local.runbook}, HTTP 5xx rate)"
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.alarm_thresholds.http_5xx_percent
  evaluation_periods  = 3
  datapoints_to_alarm = 2
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions

  metric_query {
    id          = "rate"
    expression  = "IF(requests > 0, 100 * errors / requests, 0)"
    label       = "5xx % of requests"
    return_data = true
  }
  metric_query {
    id = "errors"
    metric {
      namespace   = "AWS/ApiGateway"
      metric_name = "5xx"
      dimensions  = { ApiId = aws_apigatewayv2_api.http.id, Stage = aws_apigatewayv2_stage.default.name }
      stat        = "Sum"
      period      = 300
    }
  }
  metric_query {
    id = "requests"
    metric {
      namespace   = "AWS/ApiGateway"
      metric_name = "Count"
      dimensions  = { ApiId = aws_apigatewayv2_api.http.id, Stage = aws_apigatewayv2_stage.default.name }
      stat        = "Sum"
      period      = 300
    }
  }
}

# --- Mail -----------------------------------------------------------------------------------

resource "aws_cloudwatch_metric_alarm" "bounce_rate" {
  alarm_name          = "${local.p}-bounce-rate"
  alarm_description   = "Over ${var.alarm_thresholds.bounce_percent}% of the report mails sent in the last day bounced; SES reviews an account above 5% (${local.runbook}, bounce rate)"
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.alarm_thresholds.bounce_percent
  evaluation_periods  = 1
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions

  metric_query {
    id          = "rate"
    expression  = "IF(sent > 0, 100 * bounces / sent, 0)"
    label       = "bounces % of mails sent"
    return_data = true
  }
  metric_query {
    id = "bounces"
    metric {
      namespace   = local.metrics_namespace
      metric_name = "Bounces"
      dimensions  = { Stage = "mailer" }
      stat        = "Sum"
      period      = 86400
    }
  }
  metric_query {
    id = "sent"
    metric {
      namespace   = local.metrics_namespace
      metric_name = "MailsSent"
      dimensions  = { Stage = "mailer" }
      stat        = "Sum"
      period      = 86400
    }
  }
}

# A report is delivered when the mailer reports MailsSent for it. No datapoint in the window
# counts as breaching: no mail at all is exactly what this alarm is for.
resource "aws_cloudwatch_metric_alarm" "missed_run" {
  for_each            = { for name, days in local.missed_run_days : name => days if days > 0 }
  alarm_name          = "${local.p}-report-${each.key}-not-delivered"
  alarm_description   = "No mail of report ${each.key} (${local.reports[each.key].cron}, ${local.reports[each.key].timezone}) sent in the last ${each.value == 1 ? "day" : "${each.value} days"} (${local.runbook}, report not delivered)"
  namespace           = local.metrics_namespace
  metric_name         = "MailsSent"
  dimensions          = { Stage = "mailer", Report = each.key }
  statistic           = "Sum"
  period              = 86400
  evaluation_periods  = each.value
  datapoints_to_alarm = each.value
  threshold           = 1
  comparison_operator = "LessThanThreshold"
  treat_missing_data  = "breaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

# --- Relays ---------------------------------------------------------------------------------

# The API records each report mail a relay's SMTP server (or Outlook) refused for good.
resource "aws_cloudwatch_metric_alarm" "relay_refused" {
  alarm_name          = "${local.p}-relay-mail-refused"
  alarm_description   = "A relay's SMTP server or Outlook refused a report mail for good within the last hour: its recipients did not get it (${local.runbook}, relay mail refused)"
  namespace           = local.metrics_namespace
  metric_name         = "RelayMailsRefused"
  dimensions          = { Stage = "api" }
  statistic           = "Sum"
  period              = 3600
  evaluation_periods  = 1
  threshold           = 1
  comparison_operator = "GreaterThanOrEqualToThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

# The poller reports, every 5 minutes while any relay exists, how long the oldest report mail
# queued for a relay has waited (0 when none waits). No datapoint: no relay, or the poller is
# not running (its own alarm says so).
resource "aws_cloudwatch_metric_alarm" "relay_outbox_stale" {
  alarm_name          = "${local.p}-relay-outbox-not-sent"
  alarm_description   = "Report mail has waited over ${var.alarm_thresholds.relay_outbox_hours} h for its relay to send it: the relay is stopped, has no [outbox], or cannot reach its SMTP server (${local.runbook}, relay outbox not sent)"
  namespace           = local.metrics_namespace
  metric_name         = "RelayOutboxOldestAge"
  dimensions          = { Stage = "poller" }
  statistic           = "Maximum"
  period              = 900
  evaluation_periods  = 1
  threshold           = var.alarm_thresholds.relay_outbox_hours * 3600
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

# --- Intake ---------------------------------------------------------------------------------

resource "aws_cloudwatch_metric_alarm" "quarantine_spike" {
  alarm_name          = "${local.p}-quarantine-spike"
  alarm_description   = "${var.alarm_thresholds.quarantine_per_hour} or more attachments quarantined within an hour: a sender changed its export, or a dataset's definition no longer matches (${local.runbook}, quarantine spike)"
  namespace           = local.metrics_namespace
  metric_name         = "AttachmentsQuarantined"
  dimensions          = { Stage = "ingest" }
  statistic           = "Sum"
  period              = 3600
  evaluation_periods  = 1
  threshold           = var.alarm_thresholds.quarantine_per_hour
  comparison_operator = "GreaterThanOrEqualToThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

# --- Microsoft Graph ------------------------------------------------------------------------

# The poller reports the shortest remaining lifetime among the subscriptions on every poll
# (every 5 minutes), so no datapoint for half an hour means it is not polling: breaching too.
resource "aws_cloudwatch_metric_alarm" "subscription_expiry" {
  alarm_name          = "${local.p}-graph-subscription-expiring"
  alarm_description   = "A Graph subscription has under ${var.alarm_thresholds.subscription_expiry_hours} h left although the poller renews at ${var.subscription_renew_hours} h, or the poller reported nothing for 30 minutes (${local.runbook}, Graph subscription expiring)"
  namespace           = local.metrics_namespace
  metric_name         = "SubscriptionSecondsToExpiry"
  dimensions          = { Stage = "poller" }
  statistic           = "Minimum"
  period              = 900
  evaluation_periods  = 2
  threshold           = var.alarm_thresholds.subscription_expiry_hours * 3600
  comparison_operator = "LessThanThreshold"
  treat_missing_data  = "breaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

# Reported when the Graph credentials secret carries the client secret's expiry
# ("client_secret_expires_at", docs/operations.md); nothing reported is not an alarm.
resource "aws_cloudwatch_metric_alarm" "graph_secret_expiry" {
  alarm_name          = "${local.p}-graph-client-secret-expiring"
  alarm_description   = "The Graph app's client secret expires in under ${var.alarm_thresholds.graph_secret_expiry_days} days: rotate it (${local.runbook}, Graph client secret rotation)"
  namespace           = local.metrics_namespace
  metric_name         = "GraphSecretSecondsToExpiry"
  dimensions          = { Stage = "poller" }
  statistic           = "Minimum"
  period              = 3600
  evaluation_periods  = 1
  threshold           = var.alarm_thresholds.graph_secret_expiry_days * 86400
  comparison_operator = "LessThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

# --- The downstream persistence API (with the batch sender) ---------------------------------

# The breaker records its state (0 closed, 1 half-open, 2 open) on every call it makes and every
# change; open for 15 minutes on end means the downstream API is down, and outcomes wait in
# outbound (up to downstream_max_receive_count receives).
resource "aws_cloudwatch_metric_alarm" "downstream_breaker_open" {
  count               = local.downstream ? 1 : 0
  alarm_name          = "${local.p}-downstream-breaker-open"
  alarm_description   = "The batch sender's circuit breaker stayed open for 15 minutes: the downstream API keeps failing, and outcomes wait in outbound (${local.runbook}, downstream breaker open)"
  namespace           = local.metrics_namespace
  metric_name         = "DownstreamBreakerState"
  dimensions          = { Stage = "batch-sender" }
  statistic           = "Minimum"
  period              = 300
  evaluation_periods  = 3
  threshold           = 2
  comparison_operator = "GreaterThanOrEqualToThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}
