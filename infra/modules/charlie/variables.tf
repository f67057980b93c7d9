variable "name_prefix" {
  description = "Prefix of every resource name; one deployment per prefix and account/region."
  type        = string
  default     = "charlie"
}

variable "lambda_zip_dir" {
  description = "Folder holding one <function>.zip per function (bootstrap inside), built from the workspace."
  type        = string
}

variable "lambda_architecture" {
  description = "x86_64 or arm64, matching how the zips were built."
  type        = string
  default     = "x86_64"
}

variable "config_file" {
  description = "Path of reports.toml, uploaded to s3://<bucket>/config/reports.toml and read at cold start."
  type        = string
}

variable "sender" {
  description = "From address of report mail; it (or its domain) becomes a verified SES identity."
  type        = string
}

variable "mailboxes" {
  description = "Mailbox folders the poller reads, as \"user@domain/folder\"."
  type        = list(string)
}

variable "graph_base_url" {
  description = "Microsoft Graph base URL (the v1.0 root)."
  type        = string
  default     = "https://graph.microsoft.com/v1.0"
}

variable "graph_token_url" {
  description = "OAuth2 token endpoint of the tenant (client credentials)."
  type        = string
}

variable "graph_credentials" {
  description = "Graph app credentials as {client_id, client_secret}; null leaves the secret's value to be set out of band."
  type        = object({ client_id = string, client_secret = string })
  default     = null
  sensitive   = true
}

variable "webhook_base_url" {
  description = "Base URL people and Graph reach the API at (Graph's …/graph/notifications and …/graph/lifecycle, the mails' download links, the dashboard's sign-in origin); null: the API's invoke URL."
  type        = string
  default     = null
}

variable "origin_check" {
  description = "The API sits behind a CDN (infra/envs/aws: CloudFront with the WAF) that adds the origin header: the webhook and the API then refuse every request without it (the /iam/v1 routes excepted), so the WAF cannot be gone round. The module makes the header's random value (the origin_header output)."
  type        = bool
  default     = false
}

variable "client_state_cache_seconds" {
  description = "How long the webhook trusts its copy of the subscriptions' clientStates; a replaced subscription stops counting within this time."
  type        = number
  default     = 60
  validation {
    condition     = var.client_state_cache_seconds >= 0 && var.client_state_cache_seconds <= 3600
    error_message = "client_state_cache_seconds must be 0-3600."
  }
}

variable "resync_lookback_hours" {
  description = "A fresh delta sync (first, or after Graph expired the delta link) covers mail received this many hours back."
  type        = number
  default     = 72
  validation {
    condition     = var.resync_lookback_hours >= 1 && var.resync_lookback_hours <= 720
    error_message = "resync_lookback_hours must be 1-720."
  }
}

variable "subscription_renew_hours" {
  description = "A Graph subscription is renewed when fewer than this many hours remain (mail subscriptions last just under 7 days)."
  type        = number
  default     = 72
  validation {
    condition     = var.subscription_renew_hours >= 1 && var.subscription_renew_hours <= 160
    error_message = "subscription_renew_hours must be 1-160."
  }
}

variable "infra_file" {
  description = "What the module reads of the definitions: {datasets: {name: {retain_days}}, reports: {name: {cron, timezone, retain_days}}} JSON written from reports.toml by `charlie config infra` (reports.toml is their one source; a test fails when this file is stale)."
  type        = string
}

variable "relay_inbox_days" {
  description = "Days a relay's uploaded mail (inbox/relay/) and a mail quarantined whole (quarantine/mail/) are kept; the attachments ingested from it are archived in raw/ for as long as their dataset says."
  type        = number
  default     = 30
  validation {
    condition     = var.relay_inbox_days >= 1
    error_message = "relay_inbox_days must be at least 1."
  }
}

variable "report_versions_days" {
  description = "Days a workbook replaced by a re-run of its period is kept as a noncurrent version (a report's own retain_days governs the current one)."
  type        = number
  default     = 30
  validation {
    condition     = var.report_versions_days >= 1
    error_message = "report_versions_days must be at least 1."
  }
}

variable "retention_schedule" {
  description = "When the daily retention sweep deletes the rows past their dataset's retain_days (PostgreSQL row store only: DynamoDB expires them by TTL). Evaluated in UTC."
  type        = string
  default     = "cron(15 3 * * ? *)"
}

variable "poll_schedule" {
  description = "Schedule expression of the Graph delta poller."
  type        = string
  default     = "rate(5 minutes)"
}

variable "event_source_mappings_enabled" {
  description = "false against emulators that cannot run Lambda code (moto): the local runner consumes the queues instead."
  type        = bool
  default     = true
}

variable "log_level" {
  description = "RUST_LOG of every function."
  type        = string
  default     = "info"
}

variable "function_timeouts" {
  description = "Timeout in seconds per function; queues get visibility = 6 x their consumer's timeout."
  type        = map(number)
  default = {
    graph-webhook  = 10
    poller         = 120
    ingest         = 300
    report-builder = 600
    mailer         = 180 # a large workbook through a Graph upload session takes a while
    api            = 29  # API Gateway's HTTP API integration timeout is 30 s
    batch-sender   = 120 # retries inside the invocation, each call within downstream_timeout_seconds
  }
}

variable "function_memory" {
  description = "Memory in MB per function."
  type        = map(number)
  default = {
    graph-webhook  = 256
    poller         = 256
    ingest         = 1024
    report-builder = 2048
    mailer         = 512
    api            = 256
    batch-sender   = 256
  }
}

variable "function_ephemeral_storage" {
  description = "/tmp in MB per function (512 to 10240). The report builder streams its sheets and workbook there: about 1 GB per million rows in a period."
  type        = map(number)
  default = {
    graph-webhook  = 512
    poller         = 512
    ingest         = 512
    report-builder = 4096
    mailer         = 512
    api            = 512
    batch-sender   = 512
  }
}

variable "api_throttle" {
  description = "API Gateway throttling of the operators' routes (every route without its own in api_route_throttles): steady requests per second and burst."
  type        = object({ rate = number, burst = number })
  default     = { rate = 20, burst = 40 }
}

variable "api_key_limits" {
  description = "Bounds on one API key's state-changing calls per hour: all of them, and the runs started or rerun per report (and redrives per queue), past which it gets 429 with Retry-After (audited)."
  type        = object({ calls_per_hour = number, sends_per_report_per_hour = number })
  default     = { calls_per_hour = 300, sends_per_report_per_hour = 10 }
}

variable "api_route_throttles" {
  description = "Throttles of their own for the routes callers reach without an API key, so a flood of one starves nothing else: Graph's notifications with headroom for a mailbox's bursts, download links, relays and the dashboard's sign-in tight. Route key => steady requests per second and burst."
  type        = map(object({ rate = number, burst = number }))
  default = {
    "POST /graph/notifications" = { rate = 100, burst = 200 }
    "POST /graph/lifecycle"     = { rate = 10, burst = 20 }
    "GET /v1/links/{proxy+}"    = { rate = 5, burst = 10 }
    "ANY /v1/relay"             = { rate = 10, burst = 20 }
    "ANY /v1/relay/{proxy+}"    = { rate = 10, burst = 20 }
    "POST /ui/login"            = { rate = 1, burst = 5 }
  }
}

variable "poll_stale_minutes" {
  description = "The control API's health is 503 when a folder had no successful poll for this long."
  type        = number
  default     = 30
}

variable "api_iam_principals" {
  description = "IAM users and roles that may call the control API's /iam/v1 routes with SigV4, each with a scope (read, operate or admin). A role also covers its sessions. Each also needs execute-api:Invoke on the route."
  type = list(object({
    arn   = string
    scope = string
  }))
  default = []
  validation {
    condition     = alltrue([for p in var.api_iam_principals : contains(["read", "operate", "admin"], p.scope) && startswith(p.arn, "arn:aws")])
    error_message = "Each of api_iam_principals needs an ARN (arn:aws…) and a scope of read, operate or admin."
  }
}

variable "max_message_age_seconds" {
  description = "The control API's health is 503 when a queue's oldest message has waited longer than this (SQS's ApproximateAgeOfOldestMessage)."
  type        = number
  default     = 3600
  validation {
    condition     = var.max_message_age_seconds >= 60 && var.max_message_age_seconds <= 1209600
    error_message = "max_message_age_seconds must be between 60 and 1209600 (14 days, SQS's longest retention)."
  }
}

variable "max_receive_count" {
  description = "Receives before a message moves to its dead-letter queue."
  type        = number
  default     = 5
}

variable "max_mail_bytes" {
  description = "Size policy: a report mail over this many bytes (MIME, attachment encoded) carries a download link instead of the workbook. SES v2 allows 40 MB."
  type        = number
  default     = 41943040
  validation {
    condition     = var.max_mail_bytes >= 1 && var.max_mail_bytes <= 41943040
    error_message = "max_mail_bytes must be between 1 and 41943040 (SES v2's limit)."
  }
}

variable "link_days" {
  description = "How many days a mail's download link (size policy) works: a token signed with the link key for the API's download route, which redirects to a presigned URL valid for minutes. Three by default: a link is a bearer credential, a report is read within a day or two, and each day more widens what a forwarded or leaked mail opens."
  type        = number
  default     = 3
  validation {
    condition     = var.link_days >= 1 && var.link_days <= 90
    error_message = "link_days must be between 1 and 90."
  }
}

variable "row_store" {
  description = "Where rows are stored: \"dynamodb\" (the rows table) or \"postgres\" (postgres_url; RDS in infra/envs/aws)."
  type        = string
  default     = "dynamodb"
  validation {
    condition     = contains(["dynamodb", "postgres"], var.row_store)
    error_message = "row_store must be \"dynamodb\" or \"postgres\"."
  }
}

variable "postgres_url" {
  description = "With row_store = \"postgres\": the libpq connection string of the server (or RDS Proxy), without the password, e.g. \"host=… port=5432 user=charlie dbname=charlie sslmode=require\"."
  type        = string
  default     = null
}

variable "postgres_secret_arn" {
  description = "With row_store = \"postgres\": the Secrets Manager secret holding {\"password\": …} (RDS's managed master secret has that shape); null when the server needs none."
  type        = string
  default     = null
}

variable "vpc" {
  description = "Subnets and security groups of the functions that reach the database (ingest, report-builder); null: no VPC. Those functions then reach Graph, SES and AWS APIs through the VPC (NAT gateway or VPC endpoints)."
  type        = object({ subnet_ids = list(string), security_group_ids = list(string) })
  default     = null
}

variable "row_write_concurrency" {
  description = "DynamoDB batch calls each ingest invocation keeps in flight (1-64). On-demand tables take far more; a provisioned table throttles, and throttled calls back off."
  type        = number
  default     = 8
  validation {
    condition     = var.row_write_concurrency >= 1 && var.row_write_concurrency <= 64
    error_message = "row_write_concurrency must be between 1 and 64."
  }
}

variable "graph_ingest_concurrency" {
  description = "Most ingest instances at once (the inbound queue's event source mapping; SQS allows 2 or more). Each makes one Graph call at a time, and Graph allows 4 per mailbox in all (see the queues in main.tf)."
  type        = number
  default     = 2
  validation {
    condition     = var.graph_ingest_concurrency >= 2 && var.graph_ingest_concurrency <= 4
    error_message = "graph_ingest_concurrency must be 2, 3 or 4: Graph allows 4 concurrent requests per mailbox."
  }
}

# --- Production readiness: encryption, protection, observability -----------------------------

variable "deletion_protection" {
  description = "Deletion protection on the DynamoDB tables (true on an account; false against the emulator, whose tables the tests recreate)."
  type        = bool
  default     = true
}

variable "secret_recovery_window_days" {
  description = "Days a deleted secret can still be restored (7-30), or 0 to delete at once (the emulator, so the tests can recreate a secret of the same name)."
  type        = number
  default     = 30
  validation {
    condition     = var.secret_recovery_window_days == 0 || (var.secret_recovery_window_days >= 7 && var.secret_recovery_window_days <= 30)
    error_message = "secret_recovery_window_days must be 0 or 7-30 (Secrets Manager's range)."
  }
}

variable "log_retention_days" {
  description = "Retention of the functions' and the API's log groups, in days (one of CloudWatch Logs' allowed values)."
  type        = number
  default     = 365
}

variable "bucket_policy" {
  description = "The bucket's policy: TLS only, and config/ written by the deployer (and config_writers) alone. false only against moto, which applies a bucket policy's Deny statements to object requests without looking at their conditions, so it would refuse every object request."
  type        = bool
  default     = true
}

variable "config_writers" {
  description = "IAM principals (role or user ARNs, as aws:PrincipalArn gives them) allowed to write config/ besides the principal running Terraform, e.g. a CI deploy role."
  type        = list(string)
  default     = []
}

variable "ses_identity_arns" {
  description = "More SES identities the mailer may send as (e.g. the sender domain's identity from infra/envs/aws, DKIM-signed); the sender's own address identity is always included."
  type        = list(string)
  default     = []
}

variable "ses_require_tls" {
  description = "The configuration set refuses to deliver a mail unless the receiving server takes it over TLS. false only against moto, which has no PutConfigurationSetDeliveryOptions."
  type        = bool
  default     = true
}

variable "async_failure_destination" {
  description = "The poller's asynchronous invocations (Scheduler's) that fail all their attempts go to the Scheduler DLQ with the error (an on-failure destination)."
  type        = bool
  default     = true
}

variable "function_environment_key" {
  description = "Encrypt the functions' environments with the deployment's key rather than Lambda's AWS managed key. false only against moto, which does not keep a function's KMSKeyArn (every plan would show it again)."
  type        = bool
  default     = true
}

variable "tracing_mode" {
  description = "X-Ray tracing of every function: Active (each invocation traced) or PassThrough."
  type        = string
  default     = "Active"
  validation {
    condition     = contains(["Active", "PassThrough"], var.tracing_mode)
    error_message = "tracing_mode must be Active or PassThrough."
  }
}

variable "reserved_concurrency" {
  description = "Reserved concurrency per function: it can never run more instances than this, and the rest of the account can never take this capacity from it. The webhook's bound keeps a flood of notifications from starving the other functions. ingest defaults to graph_ingest_concurrency (its queue's maximum concurrency, which it must not be below); the poller needs 3 (its lifecycle queue's 2 and a scheduled run). A function left out, or given -1, is unreserved (report-builder and mailer: see functions.tf); { ingest = -1 } reserves nothing. The account keeps 100 unreserved. null: the default."
  type        = map(number)
  nullable    = false
  default = {
    graph-webhook = 10
    poller        = 3
    api           = 10
  }
}

variable "metrics_namespace" {
  description = "CloudWatch namespace of the functions' Embedded Metric Format metrics (CHARLIE_METRICS_NAMESPACE); null: \"Charlie/<name_prefix>\"."
  type        = string
  default     = null
}

variable "alert_email" {
  description = "Address subscribed to the alerts topic (it must confirm the subscription); null: no subscription (subscribe a pager or chat integration to the topic instead)."
  type        = string
  default     = null
}

variable "alarm_thresholds" {
  description = "Thresholds of the alarms (docs/operations.md says what each means)."
  type = object({
    http_5xx_percent          = number # the HTTP API's 5xx responses, % of requests over 5 minutes
    bounce_percent            = number # SES bounces, % of mails sent over a day
    quarantine_per_hour       = number # attachments quarantined in an hour
    subscription_expiry_hours = number # hours left on the Graph subscription closest to expiry
    graph_secret_expiry_days  = number # days left on the Graph client secret
    # hours report mail may wait for its relay to send it (also health's limit)
    relay_outbox_hours = optional(number, 4)
  })
  default = {
    http_5xx_percent          = 5
    bounce_percent            = 5
    quarantine_per_hour       = 5
    subscription_expiry_hours = 24
    graph_secret_expiry_days  = 30
    relay_outbox_hours        = 4
  }
  validation {
    condition     = var.alarm_thresholds.relay_outbox_hours >= 1 && var.alarm_thresholds.relay_outbox_hours <= 168
    error_message = "alarm_thresholds.relay_outbox_hours must be between 1 and 168."
  }
}

# ---- the downstream persistence API (docs/downstream-api.md) -----------------------------------

variable "downstream_base_url" {
  description = "Base URL of the downstream persistence API (POST {base}/batch-metadata). null: no batch sender is deployed, there is no outbound queue and ingest forwards no outcomes."
  type        = string
  default     = null
  validation {
    condition     = var.downstream_base_url == null || can(regex("^https?://[^/]+", var.downstream_base_url))
    error_message = "downstream_base_url must be an http(s) URL."
  }
}

variable "downstream_allow_http" {
  description = "Let the batch sender call a plain-http downstream URL (a local fake only; production is HTTPS)."
  type        = bool
  default     = false
}

variable "downstream_token" {
  description = "The downstream API's bearer token, written to the {prefix}/downstream secret as {\"token\": …}. null: put the value in the secret outside Terraform (it stays out of the state then)."
  type        = string
  default     = null
  sensitive   = true
}

variable "downstream_batch_size" {
  description = "Outcomes per batch-sender invocation (the outbound event source mapping's batch size, 1-10000)."
  type        = number
  default     = 100
  validation {
    condition     = var.downstream_batch_size >= 1 && var.downstream_batch_size <= 10000
    error_message = "downstream_batch_size must be 1-10000."
  }
}

variable "downstream_batching_window_seconds" {
  description = "How long Lambda gathers outcomes before invoking the batch sender (0-300; needed above 10 per batch)."
  type        = number
  default     = 30
  validation {
    condition     = var.downstream_batching_window_seconds >= 0 && var.downstream_batching_window_seconds <= 300
    error_message = "downstream_batching_window_seconds must be 0-300."
  }
}

variable "downstream_max_concurrency" {
  description = "Most batch-sender instances at once (the mapping's maximum concurrency, 2-1000; null: Lambda's scaling)."
  type        = number
  default     = 5
  validation {
    condition     = var.downstream_max_concurrency == null || (coalesce(var.downstream_max_concurrency, 2) >= 2 && coalesce(var.downstream_max_concurrency, 2) <= 1000)
    error_message = "downstream_max_concurrency must be 2-1000, or null."
  }
}

variable "downstream_max_items" {
  description = "Items per call to the downstream API (1-500)."
  type        = number
  default     = 100
  validation {
    condition     = var.downstream_max_items >= 1 && var.downstream_max_items <= 500
    error_message = "downstream_max_items must be 1-500."
  }
}

variable "downstream_timeout_seconds" {
  description = "Timeout of one call to the downstream API."
  type        = number
  default     = 10
}

variable "downstream_breaker" {
  description = "The circuit breaker shared by every batch-sender instance: it opens after `failures` failed calls within `window_seconds`, and lets one probe through after `cooldown_seconds`."
  type = object({
    failures         = number
    window_seconds   = number
    cooldown_seconds = number
  })
  default = { failures = 5, window_seconds = 60, cooldown_seconds = 30 }
}

variable "downstream_retry_visibility_max_seconds" {
  description = "The longest the batch sender makes a message it could not deliver wait before its next receive (its backoff doubles per receive up to this)."
  type        = number
  default     = 3600
}

variable "downstream_max_receive_count" {
  description = "Receives of an outcome before the outbound DLQ: while the downstream API is down each receive waits up to downstream_retry_visibility_max_seconds, so 100 covers about four days of outage."
  type        = number
  default     = 100
}
