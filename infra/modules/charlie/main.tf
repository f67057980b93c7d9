terraform {
  required_version = ">= 1.6"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "= 5.100.0"
    }
  }
}

data "aws_caller_identity" "current" {}
data "aws_region" "current" {}

locals {
  p = var.name_prefix
  # Generated from reports.toml (`charlie config infra`): report -> {cron, timezone,
  # retain_days}, dataset -> {retain_days}; a null retain_days keeps everything.
  definitions = jsondecode(file(var.infra_file))
  reports     = local.definitions.reports
  retained_datasets = { for name, d in local.definitions.datasets : name => d.retain_days
  if d.retain_days != null }
  retained_reports = { for name, r in local.reports : name => r.retain_days
  if r.retain_days != null }
  account_id = data.aws_caller_identity.current.account_id
  region     = data.aws_region.current.name

  # The batch sender exists only with a downstream API to forward to (downstream_base_url);
  # without one, ingest queues no outcomes and there is no outbound queue.
  downstream = var.downstream_base_url != null
  functions = toset(concat(["graph-webhook", "poller", "ingest", "report-builder", "mailer", "api"],
  local.downstream ? ["batch-sender"] : []))

  # Queue -> the function consuming it (its timeout sets the visibility timeout).
  # max_concurrency bounds how many instances a queue's consumer runs at once (null: Lambda's
  # own scaling). Graph allows 4 concurrent requests per app and mailbox, and each consumer
  # handles a batch's messages one after the other, so each instance has at most one Graph
  # call in flight: ingest at `graph_ingest_concurrency` (2) + the poller (1: it works on a
  # folder under the folder's lock, whichever of schedule or lifecycle queue started it) + the
  # mailer sending as that mailbox (1) stays within 4.
  # max_receives: receives before the DLQ; outbound's are many because the batch sender
  # holds its messages back while the downstream API is down (a receive an hour at most).
  queues = merge({
    inbound = { consumer = "ingest", batch_size = 10, window = 0, max_concurrency = var.graph_ingest_concurrency, max_receives = var.max_receive_count }
    mail    = { consumer = "mailer", batch_size = 5, window = 0, max_concurrency = null, max_receives = var.max_receive_count }
    # SES bounce, complaint and delivery events (configuration set -> SNS -> here).
    ses_events = { consumer = "mailer", batch_size = 10, window = 0, max_concurrency = null, max_receives = var.max_receive_count }
    # Graph lifecycle events the webhook queued: the poller renews, recreates or resyncs.
    lifecycle = { consumer = "poller", batch_size = 10, window = 0, max_concurrency = 2, max_receives = var.max_receive_count }
    # Report runs: each schedule's firings (Scheduler's SQS target) and the API's run requests.
    # One run per invocation (a build may take the function's whole timeout).
    runs = { consumer = "report-builder", batch_size = 1, window = 0, max_concurrency = null, max_receives = var.max_receive_count }
    }, local.downstream ? {
    # Ingest outcomes for the downstream API, in large batches.
    outbound = { consumer = "batch-sender", batch_size = var.downstream_batch_size, window = var.downstream_batching_window_seconds, max_concurrency = var.downstream_max_concurrency, max_receives = var.downstream_max_receive_count }
  } : {})

  # Where Graph posts notifications: the API's own URL unless one is given (a custom domain,
  # or the local runner's port).
  # The `$default` stage is served at the API's own endpoint (its invoke URL is the same):
  # taken from the API, so the stage can wait for the routes its throttles name.
  # Behind the CDN (origin_check), the functions that serve HTTP read the origin header's value.
  origin_env = var.origin_check ? { CHARLIE_ORIGIN_SECRET = aws_secretsmanager_secret.origin[0].name } : {}

  webhook_base_url = trimsuffix(var.webhook_base_url != null ? var.webhook_base_url : aws_apigatewayv2_api.http.api_endpoint, "/")

  # Per consuming function: its queues' ARNs -> their dead-letter queues, where a message that
  # failed permanently goes at once with its cause.
  consumed = { for fn in local.functions : fn => [for q, v in local.queues : q if v.consumer == fn] }
  # On a message's last receive (max_receive_count) a retryable failure goes there too, with
  # its cause, rather than being moved by the redrive policy without one.
  dead_letter_env = { for fn, qs in local.consumed : fn => length(qs) == 0 ? {} : {
    CHARLIE_DEAD_LETTER_QUEUES = jsonencode({ for q in qs : aws_sqs_queue.main[q].arn => aws_sqs_queue.dlq[q].url })
    CHARLIE_MAX_RECEIVE_COUNT  = tostring(max([for q in qs : local.queues[q].max_receives]...))
  } }

  # The functions that read or write rows, and how they reach the row store.
  row_store_users = toset(["ingest", "report-builder"])
  row_store_env = merge(
    { CHARLIE_ROW_STORE = var.row_store },
    var.row_store == "postgres" ? { CHARLIE_POSTGRES_URL = var.postgres_url } : {},
    var.row_store == "postgres" && var.postgres_secret_arn != null ? { CHARLIE_POSTGRES_SECRET = var.postgres_secret_arn } : {},
  )

  # Where the functions' Embedded Metric Format metrics go (the alarms and dashboard read them).
  metrics_namespace = coalesce(var.metrics_namespace, "Charlie/${var.name_prefix}")

  common_env = {
    RUST_LOG                  = var.log_level
    CHARLIE_METRICS_NAMESPACE = local.metrics_namespace
    CHARLIE_BUCKET            = aws_s3_bucket.data.bucket
    CHARLIE_CONFIG_KEY        = aws_s3_object.config.key
    # The definitions by version: every instance runs the file this apply uploaded.
    CHARLIE_CONFIG_VERSION = aws_s3_object.config.version_id
    CHARLIE_ROWS_TABLE     = aws_dynamodb_table.rows.name
    CHARLIE_STATE_TABLE    = aws_dynamodb_table.state.name
    CHARLIE_GRAPH_SECRET   = aws_secretsmanager_secret.graph.name
    GRAPH_BASE_URL         = var.graph_base_url
    GRAPH_TOKEN_URL        = var.graph_token_url
  }

  function_env = {
    graph-webhook = merge({
      CHARLIE_INBOUND_QUEUE_URL          = aws_sqs_queue.main["inbound"].url
      CHARLIE_LIFECYCLE_QUEUE_URL        = aws_sqs_queue.main["lifecycle"].url
      CHARLIE_CLIENT_STATE_SECRET        = aws_secretsmanager_secret.client_state.name
      CHARLIE_CLIENT_STATE_CACHE_SECONDS = tostring(var.client_state_cache_seconds)
    }, local.origin_env)
    poller = {
      CHARLIE_INBOUND_QUEUE_URL        = aws_sqs_queue.main["inbound"].url
      CHARLIE_MAILBOXES                = join(",", var.mailboxes)
      CHARLIE_CLIENT_STATE_SECRET      = aws_secretsmanager_secret.client_state.name
      CHARLIE_NOTIFICATION_URL         = "${local.webhook_base_url}/graph/notifications"
      CHARLIE_LIFECYCLE_URL            = "${local.webhook_base_url}/graph/lifecycle"
      CHARLIE_RESYNC_LOOKBACK_HOURS    = tostring(var.resync_lookback_hours)
      CHARLIE_SUBSCRIPTION_RENEW_HOURS = tostring(var.subscription_renew_hours)
    }
    ingest = merge(local.row_store_env, {
      # Continuations of a file that did not finish in one invocation go back on inbound.
      CHARLIE_INBOUND_QUEUE_URL     = aws_sqs_queue.main["inbound"].url
      CHARLIE_ROW_WRITE_CONCURRENCY = tostring(var.row_write_concurrency)
      # Outcomes go to outbound only when something consumes it.
    }, local.downstream ? { CHARLIE_OUTBOUND_QUEUE_URL = aws_sqs_queue.main["outbound"].url } : {})
    batch-sender = local.downstream ? {
      CHARLIE_OUTBOUND_QUEUE_URL           = aws_sqs_queue.main["outbound"].url
      CHARLIE_DOWNSTREAM_URL               = var.downstream_base_url
      CHARLIE_DOWNSTREAM_SECRET            = aws_secretsmanager_secret.downstream[0].name
      CHARLIE_DOWNSTREAM_MAX_ITEMS         = tostring(var.downstream_max_items)
      CHARLIE_DOWNSTREAM_TIMEOUT_SECONDS   = tostring(var.downstream_timeout_seconds)
      CHARLIE_BREAKER_FAILURES             = tostring(var.downstream_breaker.failures)
      CHARLIE_BREAKER_WINDOW_SECONDS       = tostring(var.downstream_breaker.window_seconds)
      CHARLIE_BREAKER_COOLDOWN_SECONDS     = tostring(var.downstream_breaker.cooldown_seconds)
      CHARLIE_RETRY_VISIBILITY_MAX_SECONDS = tostring(var.downstream_retry_visibility_max_seconds)
      CHARLIE_DOWNSTREAM_ALLOW_HTTP        = var.downstream_allow_http ? "1" : "0"
    } : {}
    report-builder = merge(local.row_store_env, {
      CHARLIE_MAIL_QUEUE_URL = aws_sqs_queue.main["mail"].url
    })
    api = merge(local.origin_env, {
      CHARLIE_RUNS_QUEUE_URL = aws_sqs_queue.main["runs"].url
      # Where people reach the API (a dashboard sign-in posted from there is same-origin).
      CHARLIE_API_BASE_URL        = local.webhook_base_url
      CHARLIE_INBOUND_QUEUE_URL   = aws_sqs_queue.main["inbound"].url
      CHARLIE_LIFECYCLE_QUEUE_URL = aws_sqs_queue.main["lifecycle"].url
      CHARLIE_LINK_SECRET         = aws_secretsmanager_secret.link_key.name
      CHARLIE_RELAY_SECRET        = aws_secretsmanager_secret.relay_key.name
      CHARLIE_POLL_STALE_MINUTES  = tostring(var.poll_stale_minutes)
      # Report mail waiting longer for its relay makes health 503 (as the alarm).
      CHARLIE_RELAY_OUTBOX_STALE_MINUTES = tostring(var.alarm_thresholds.relay_outbox_hours * 60)
      # Who may call the /iam/v1 routes (SigV4), each with its scope.
      CHARLIE_IAM_PRINCIPALS = jsonencode(var.api_iam_principals)
      # One key's state-changing calls per hour, and its runs/reruns per report (and redrives
      # per queue): a leaked or scripted key cannot mail-bomb the recipients.
      CHARLIE_KEY_CALLS_PER_HOUR            = tostring(var.api_key_limits.calls_per_hour)
      CHARLIE_KEY_SENDS_PER_REPORT_PER_HOUR = tostring(var.api_key_limits.sends_per_report_per_hour)
      # A queue's oldest message older than this makes health 503.
      CHARLIE_MAX_MESSAGE_AGE_SECONDS = tostring(var.max_message_age_seconds)
      # Every queue with its DLQ, and Scheduler's DLQ (no source queue).
      CHARLIE_QUEUES = jsonencode(merge(
        { for q, _ in local.queues : q => { url = aws_sqs_queue.main[q].url, dlq_url = aws_sqs_queue.dlq[q].url } },
        { scheduler = { url = null, dlq_url = aws_sqs_queue.scheduler_dlq.url } },
      ))
    })
    mailer = {
      CHARLIE_SENDER         = var.sender
      CHARLIE_SES_CONFIG_SET = aws_ses_configuration_set.main.name
      CHARLIE_MAX_MAIL_BYTES = tostring(var.max_mail_bytes)
      CHARLIE_LINK_DAYS      = tostring(var.link_days)
      # Links to the API's download route, signed with the link key: they work for link_days
      # whatever happens to the mailer's role session.
      CHARLIE_LINK_SECRET  = aws_secretsmanager_secret.link_key.name
      CHARLIE_API_BASE_URL = local.webhook_base_url
    }
  }
}
