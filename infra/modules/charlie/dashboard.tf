# The pipeline at a glance: alarms, queues and their DLQs, function errors, intake, runs, mail,
# Graph and the HTTP API. The same metrics the alarms read (alarms.tf).
locals {
  ns = local.metrics_namespace
  all_alarm_arns = concat(
    [for a in aws_cloudwatch_metric_alarm.dlq_depth : a.arn],
    [aws_cloudwatch_metric_alarm.scheduler_dlq_depth.arn],
    [for a in aws_cloudwatch_metric_alarm.queue_age : a.arn],
    [for a in aws_cloudwatch_metric_alarm.function_errors : a.arn],
    [for a in aws_cloudwatch_metric_alarm.function_throttles : a.arn],
    [aws_cloudwatch_metric_alarm.http_5xx_rate.arn, aws_cloudwatch_metric_alarm.bounce_rate.arn],
    [for a in aws_cloudwatch_metric_alarm.missed_run : a.arn],
    [aws_cloudwatch_metric_alarm.quarantine_spike.arn, aws_cloudwatch_metric_alarm.subscription_expiry.arn, aws_cloudwatch_metric_alarm.graph_secret_expiry.arn],
    [for a in aws_cloudwatch_metric_alarm.downstream_breaker_open : a.arn],
    [aws_cloudwatch_metric_alarm.relay_refused.arn, aws_cloudwatch_metric_alarm.relay_outbox_stale.arn],
  )

  # A time series widget at (x, y), 8 wide and 6 high.
  widgets = concat([
    {
      x       = 0, y = 6, title = "Queues: messages waiting", stat = "Maximum", period = 300,
      metrics = [for q in keys(local.queues) : ["AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", aws_sqs_queue.main[q].name, { label = q }]]
    },
    {
      x       = 8, y = 6, title = "Queues: age of oldest message (s)", stat = "Maximum", period = 300,
      metrics = [for q in keys(local.consumed_queues) : ["AWS/SQS", "ApproximateAgeOfOldestMessage", "QueueName", aws_sqs_queue.main[q].name, { label = q }]]
    },
    {
      x = 16, y = 6, title = "Dead-letter queues: messages", stat = "Maximum", period = 300,
      metrics = concat(
        [for q in keys(local.queues) : ["AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", aws_sqs_queue.dlq[q].name, { label = "${q}-dlq" }]],
        [["AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", aws_sqs_queue.scheduler_dlq.name, { label = "scheduler-dlq" }]],
      )
    },
    {
      x       = 0, y = 12, title = "Functions: errors", stat = "Sum", period = 300,
      metrics = [for f in local.functions : ["AWS/Lambda", "Errors", "FunctionName", aws_lambda_function.fn[f].function_name, { label = f }]]
    },
    {
      x       = 8, y = 12, title = "Functions: throttles", stat = "Sum", period = 300,
      metrics = [for f in local.functions : ["AWS/Lambda", "Throttles", "FunctionName", aws_lambda_function.fn[f].function_name, { label = f }]]
    },
    {
      x       = 16, y = 12, title = "HTTP API: requests, 4xx, 5xx", stat = "Sum", period = 300,
      metrics = [for m in ["Count", "4xx", "5xx"] : ["AWS/ApiGateway", m, "ApiId", aws_apigatewayv2_api.http.id, "Stage", aws_apigatewayv2_stage.default.name, { label = m }]]
    },
    {
      x       = 0, y = 18, title = "Intake: rows", stat = "Sum", period = 3600,
      metrics = [for m in ["RowsNew", "RowsDuplicate", "RowsRejected"] : [local.ns, m, "Stage", "ingest"]]
    },
    {
      x       = 8, y = 18, title = "Intake: mails and quarantined attachments", stat = "Sum", period = 3600,
      metrics = [for m in ["MailsIngested", "MailsIgnored", "AttachmentsQuarantined"] : [local.ns, m, "Stage", "ingest"]]
    },
    {
      x       = 16, y = 18, title = "Messages dead-lettered by the functions", stat = "Sum", period = 3600,
      metrics = [for s in ["graph-webhook", "poller", "ingest", "report-builder", "mailer"] : [local.ns, "DeadLettered", "Stage", s, { label = s }]]
    },
    {
      x = 0, y = 24, title = "Runs: duration (ms) and failures", stat = "Maximum", period = 3600,
      metrics = [
        [local.ns, "RunDuration", "Stage", "report-builder", { label = "longest run (ms)" }],
        [local.ns, "RunsFailed", "Stage", "report-builder", { stat = "Sum", label = "runs failed", yAxis = "right" }],
      ]
    },
    {
      x = 8, y = 24, title = "Mail: sent, bounces, complaints, refused by relays", stat = "Sum", period = 3600,
      metrics = concat(
        [for m in ["MailsSent", "Bounces", "Complaints"] : [local.ns, m, "Stage", "mailer"]],
        [[local.ns, "RelayMailsRefused", "Stage", "api", { label = "refused by a relay's sender" }]],
      )
    },
    {
      x = 16, y = 24, title = "Graph: subscription time left (s), throttled calls", stat = "Minimum", period = 900,
      metrics = [
        [local.ns, "SubscriptionSecondsToExpiry", "Stage", "poller", { label = "shortest subscription lifetime (s)" }],
        [local.ns, "GraphThrottled", "Stage", "poller", { stat = "Sum", label = "throttled calls", yAxis = "right" }],
      ]
    },
    ], local.downstream ? [
    {
      x = 0, y = 30, title = "Downstream API: failed calls, breaker (0 closed, 1 half-open, 2 open)", stat = "Sum", period = 300,
      metrics = [
        [local.ns, "DownstreamFailures", "Stage", "batch-sender", { label = "failed calls" }],
        [local.ns, "DownstreamBreakerState", "Stage", "batch-sender", { stat = "Maximum", label = "breaker", yAxis = "right" }],
      ]
    },
  ] : [])
}

resource "aws_cloudwatch_dashboard" "main" {
  dashboard_name = local.p
  dashboard_body = jsonencode({
    widgets = concat(
      [
        {
          type       = "alarm", x = 0, y = 0, width = 24, height = 6
          properties = { title = "Alarms (${local.runbook} says what to do)", alarms = local.all_alarm_arns, sortBy = "stateUpdatedTimestamp" }
        },
      ],
      [for w in local.widgets : {
        type = "metric", x = w.x, y = w.y, width = 8, height = 6
        properties = {
          title   = w.title
          region  = local.region
          view    = "timeSeries"
          stacked = false
          stat    = w.stat
          period  = w.period
          metrics = w.metrics
        }
      }],
    )
  })
}
