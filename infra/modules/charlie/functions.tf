resource "aws_iam_role" "fn" {
  for_each = local.functions
  name     = "${local.p}-${each.key}"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "lambda.amazonaws.com" }
      Action    = "sts:AssumeRole"
    }]
  })
}

locals {
  # Each function writes its own log group only (its streams, ":*").
  logs_statement = { for fn in local.functions : fn => {
    Effect   = "Allow"
    Action   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    Resource = "${aws_cloudwatch_log_group.fn[fn].arn}:*"
  } }
  # X-Ray's trace segments (its actions take no resource).
  tracing_statement = var.tracing_mode == "Active" ? [{
    Effect   = "Allow"
    Action   = ["xray:PutTraceSegments", "xray:PutTelemetryRecords"]
    Resource = "*"
  }] : []
  read_config = {
    Effect   = "Allow"
    Action   = ["s3:GetObject"]
    Resource = "${aws_s3_bucket.data.arn}/config/*"
  }
  read_graph_secret = {
    Effect   = "Allow"
    Action   = ["secretsmanager:GetSecretValue"]
    Resource = aws_secretsmanager_secret.graph.arn
  }
  consume = { for q, v in local.queues : q => {
    Effect   = "Allow"
    Action   = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:ChangeMessageVisibility"]
    Resource = aws_sqs_queue.main[q].arn
  } }
  send_dead_letters = { for fn, qs in local.consumed : fn => [for q in qs : {
    Effect   = "Allow"
    Action   = ["sqs:SendMessage"]
    Resource = aws_sqs_queue.dlq[q].arn
  }] }
  send = { for q in keys(local.queues) : q => {
    Effect   = "Allow"
    Action   = ["sqs:SendMessage"]
    Resource = aws_sqs_queue.main[q].arn
  } }
  # Counters add with TransactWriteItems, which needs PutItem and UpdateItem on the items.
  state_rw = {
    Effect   = "Allow"
    Action   = ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem", "dynamodb:Query"]
    Resource = [aws_dynamodb_table.state.arn, "${aws_dynamodb_table.state.arn}/index/*"]
  }

  # Least privilege: each function gets only what its stage does.
  policies = {
    graph-webhook = [
      local.send["inbound"], local.send["lifecycle"],
      { Effect = "Allow", Action = ["secretsmanager:GetSecretValue"], Resource = concat([aws_secretsmanager_secret.client_state.arn], aws_secretsmanager_secret.origin[*].arn) },
      # Intake's pause flag (read), and the mails it parks while paused (written): those items
      # only (dynamodb:LeadingKeys), so a compromised webhook cannot write API keys, claims or
      # anything else of the state table.
      {
        Effect    = "Allow", Action = ["dynamodb:GetItem"], Resource = aws_dynamodb_table.state.arn,
        Condition = { "ForAllValues:StringEquals" = { "dynamodb:LeadingKeys" = ["INTAKE#control"] } }
      },
      {
        Effect    = "Allow", Action = ["dynamodb:PutItem"], Resource = aws_dynamodb_table.state.arn,
        Condition = { "ForAllValues:StringLike" = { "dynamodb:LeadingKeys" = ["PARKED#*"] } }
      },
    ]
    poller = [
      local.read_config, local.read_graph_secret, local.state_rw, local.send["inbound"],
      local.consume["lifecycle"],
      # Its scheduled (asynchronous) invocations that fail every attempt: the on-failure
      # destination below.
      { Effect = "Allow", Action = ["sqs:SendMessage"], Resource = aws_sqs_queue.scheduler_dlq.arn },
      # It creates subscriptions, each with a fresh clientState the webhook reads.
      { Effect = "Allow", Action = ["secretsmanager:GetSecretValue", "secretsmanager:PutSecretValue"], Resource = aws_secretsmanager_secret.client_state.arn },
    ]
    ingest = concat([for statement in [try(local.send["outbound"], null)] : statement if statement != null], [
      local.read_config, local.read_graph_secret, local.state_rw,
      local.consume["inbound"], local.send["inbound"],
      # Large attachments stream to raw/ as multipart uploads; quarantine copies from raw/.
      { Effect = "Allow", Action = ["s3:PutObject", "s3:GetObject", "s3:AbortMultipartUpload"], Resource = ["${aws_s3_bucket.data.arn}/raw/*", "${aws_s3_bucket.data.arn}/quarantine/*"] },
      # Relay uploads are read, never written: a write under inbox/relay/ would trigger ingest
      # again as if a relay had uploaded it.
      { Effect = "Allow", Action = ["s3:GetObject"], Resource = "${aws_s3_bucket.data.arn}/inbox/relay/*" },
      { Effect = "Allow", Action = ["dynamodb:BatchGetItem", "dynamodb:BatchWriteItem", "dynamodb:PutItem", "dynamodb:Query", "dynamodb:DeleteItem"], Resource = aws_dynamodb_table.rows.arn },
    ])
    # (Nothing when there is no downstream API: no function either.)
    batch-sender = [for statement in [
      # The breaker's record and the dead-letter counters.
      local.state_rw, try(local.consume["outbound"], null),
      try({ Effect = "Allow", Action = ["secretsmanager:GetSecretValue"], Resource = aws_secretsmanager_secret.downstream[0].arn }, null),
    ] : statement if statement != null && local.downstream]
    report-builder = [
      local.read_config, local.state_rw, local.send["mail"], local.consume["runs"],
      { Effect = "Allow", Action = ["s3:PutObject"], Resource = "${aws_s3_bucket.data.arn}/reports/*" },
      { Effect = "Allow", Action = ["dynamodb:Query"], Resource = aws_dynamodb_table.rows.arn },
    ]
    api = [
      local.read_config, local.send["runs"], local.send["inbound"],
      # Runs, keys, audit, cancel requests, and the folders' health records.
      { Effect = "Allow", Action = ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:Query"], Resource = [aws_dynamodb_table.state.arn, "${aws_dynamodb_table.state.arn}/index/*"] },
      # Workbook versions and the presigned downloads it redirects to.
      { Effect = "Allow", Action = ["s3:GetObject", "s3:GetObjectVersion"], Resource = ["${aws_s3_bucket.data.arn}/reports/*", "${aws_s3_bucket.data.arn}/quarantine/*", "${aws_s3_bucket.data.arn}/raw/*", "${aws_s3_bucket.data.arn}/outbox/relay/*"] },
      { Effect = "Allow", Action = ["s3:ListBucket", "s3:ListBucketVersions"], Resource = aws_s3_bucket.data.arn },
      # Depths of every queue; dead letters peeked, deleted and redriven to their source.
      { Effect = "Allow", Action = ["sqs:GetQueueAttributes"], Resource = concat([for q in aws_sqs_queue.main : q.arn], [for q in aws_sqs_queue.dlq : q.arn], [aws_sqs_queue.scheduler_dlq.arn]) },
      { Effect = "Allow", Action = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility"], Resource = concat([for q in aws_sqs_queue.dlq : q.arn], [aws_sqs_queue.scheduler_dlq.arn]) },
      { Effect = "Allow", Action = ["sqs:SendMessage"], Resource = [for q in aws_sqs_queue.main : q.arn] },
      { Effect = "Allow", Action = ["secretsmanager:GetSecretValue"], Resource = concat([aws_secretsmanager_secret.link_key.arn, aws_secretsmanager_secret.relay_key.arn], aws_secretsmanager_secret.origin[*].arn) },
      # The relays' presigned uploads are signed with the api's own credentials.
      { Effect = "Allow", Action = ["s3:PutObject"], Resource = "${aws_s3_bucket.data.arn}/inbox/relay/*" },
      # Each queue's age of oldest message, which SQS publishes to CloudWatch only (the action
      # takes no resource-level permissions).
      { Effect = "Allow", Action = ["cloudwatch:GetMetricStatistics"], Resource = "*" },
    ]
    mailer = [
      # The Graph secret: reports with transport = "graph" send through Graph sendMail.
      local.read_config, local.read_graph_secret, local.state_rw, local.consume["mail"], local.consume["ses_events"],
      { Effect = "Allow", Action = ["s3:GetObject", "s3:GetObjectVersion"], Resource = "${aws_s3_bucket.data.arn}/reports/*" },
      # Report mail with transport = "relay" is queued for its relay.
      { Effect = "Allow", Action = ["s3:PutObject"], Resource = "${aws_s3_bucket.data.arn}/outbox/relay/*" },
      # As the sender's identities only, and only through the configuration set (which
      # requires TLS and reports bounces).
      { Effect = "Allow", Action = ["ses:SendEmail", "ses:SendRawEmail"], Resource = concat([aws_ses_email_identity.sender.arn, aws_ses_configuration_set.main.arn], var.ses_identity_arns) },
      { Effect = "Allow", Action = ["secretsmanager:GetSecretValue"], Resource = aws_secretsmanager_secret.link_key.arn },
    ]
  }
}

locals {
  # The PostgreSQL password, for the functions that reach the row store.
  read_postgres_secret = { for fn in local.functions : fn => (
    contains(local.row_store_users, fn) && var.row_store == "postgres" && var.postgres_secret_arn != null
    ? [{ Effect = "Allow", Action = ["secretsmanager:GetSecretValue"], Resource = var.postgres_secret_arn }]
    : []
  ) }
}

resource "aws_iam_role_policy" "fn" {
  for_each = local.functions
  name     = "${local.p}-${each.key}"
  role     = aws_iam_role.fn[each.key].id
  policy = jsonencode({
    Version = "2012-10-17",
    Statement = concat(
      [local.logs_statement[each.key], local.use_key], local.tracing_statement,
      local.policies[each.key], local.send_dead_letters[each.key], local.read_postgres_secret[each.key],
    )
  })
}

resource "aws_cloudwatch_log_group" "fn" {
  for_each          = local.functions
  name              = "/aws/lambda/${local.p}-${each.key}"
  retention_in_days = var.log_retention_days
  kms_key_id        = local.kms_key_arn
}

locals {
  # Functions not listed are unreserved (-1). ingest's default is its queue's maximum
  # concurrency, so the event source mapping is never throttled by it.
  reserved_concurrency = merge({ ingest = var.graph_ingest_concurrency }, var.reserved_concurrency)
}

resource "aws_lambda_function" "fn" {
  #checkov:skip=CKV_AWS_272:The zips are built from this repository and uploaded by Terraform from the deployer's machine or CI (filename, source_code_hash), not taken from a bucket; Lambda code signing needs S3-sourced packages signed by an AWS Signer profile, and who may update code is decided by the deployer's IAM
  #checkov:skip=CKV_AWS_116:Only the poller is invoked asynchronously (Scheduler), and its failed invocations go to the Scheduler DLQ through an on-failure destination (aws_lambda_function_event_invoke_config.poller), which keeps the error with the event; the others are invoked synchronously (API Gateway) or by SQS event source mappings, whose queues have their own DLQs
  #checkov:skip=CKV_AWS_115:graph-webhook, poller, ingest and api have reserved concurrency (var.reserved_concurrency); report-builder, mailer and batch-sender are left unreserved on purpose: they consume SQS queues (the batch sender's instances are bounded by its mapping's maximum concurrency instead) without a maximum concurrency, and reserved concurrency below what Lambda's SQS poller runs throttles batches, which burns their receive counts into the DLQs; their load is a few messages per report run
  #checkov:skip=CKV_AWS_117:Only the functions that reach the PostgreSQL row store need a VPC and get one (vpc_config with var.vpc); with DynamoDB every function talks only to AWS APIs and Graph over TLS, and a VPC would add NAT gateways for no isolation gained
  for_each         = local.functions
  function_name    = "${local.p}-${each.key}"
  role             = aws_iam_role.fn[each.key].arn
  runtime          = "provided.al2023"
  handler          = "bootstrap"
  architectures    = [var.lambda_architecture]
  filename         = "${var.lambda_zip_dir}/${each.key}.zip"
  source_code_hash = filebase64sha256("${var.lambda_zip_dir}/${each.key}.zip")
  timeout          = var.function_timeouts[each.key]
  memory_size      = var.function_memory[each.key]
  # The environment (queue URLs, names, the metrics namespace) under the deployment's key.
  kms_key_arn                    = var.function_environment_key ? local.kms_key_arn : null
  reserved_concurrent_executions = lookup(local.reserved_concurrency, each.key, -1)

  tracing_config {
    mode = var.tracing_mode
  }

  # /tmp: the report builder writes its workbook's sheets and the workbook itself there.
  ephemeral_storage {
    size = var.function_ephemeral_storage[each.key]
  }

  # In the database's VPC only the functions that reach it.
  dynamic "vpc_config" {
    for_each = var.vpc != null && contains(local.row_store_users, each.key) ? [var.vpc] : []
    content {
      subnet_ids         = vpc_config.value.subnet_ids
      security_group_ids = vpc_config.value.security_group_ids
    }
  }

  lifecycle {
    precondition {
      condition     = var.row_store != "postgres" || var.postgres_url != null
      error_message = "row_store = \"postgres\" needs postgres_url."
    }
    precondition {
      condition     = lookup(local.reserved_concurrency, "ingest", -1) == -1 || lookup(local.reserved_concurrency, "ingest", -1) >= var.graph_ingest_concurrency
      error_message = "reserved_concurrency of ingest must be at least graph_ingest_concurrency (the inbound queue's maximum concurrency)."
    }
    precondition {
      condition     = lookup(local.reserved_concurrency, "poller", -1) == -1 || lookup(local.reserved_concurrency, "poller", -1) >= 3
      error_message = "reserved_concurrency of the poller must be at least 3 (its lifecycle queue runs 2, and Scheduler 1)."
    }
  }

  environment {
    variables = merge(local.common_env, { CHARLIE_STAGE = each.key }, local.function_env[each.key], local.dead_letter_env[each.key])
  }

  depends_on = [aws_cloudwatch_log_group.fn, aws_iam_role_policy.fn, aws_iam_role_policy_attachment.vpc, aws_secretsmanager_secret_version.link_key, aws_secretsmanager_secret_version.relay_key, aws_secretsmanager_secret_version.origin]
}

# Functions in a VPC create network interfaces there.
resource "aws_iam_role_policy_attachment" "vpc" {
  for_each   = var.vpc != null ? local.row_store_users : toset([])
  role       = aws_iam_role.fn[each.key].name
  policy_arn = "arn:aws:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole"
}

# The poller's scheduled invocations are asynchronous: one that fails its two retries (or waits
# longer than a poll interval) goes to the Scheduler DLQ with its error, not nowhere. A lost poll
# is repaired by the next one; the DLQ's alarm says that polls are failing.
resource "aws_lambda_function_event_invoke_config" "poller" {
  count                        = var.async_failure_destination ? 1 : 0
  function_name                = aws_lambda_function.fn["poller"].function_name
  maximum_retry_attempts       = 2
  maximum_event_age_in_seconds = 300
  destination_config {
    on_failure {
      destination = aws_sqs_queue.scheduler_dlq.arn
    }
  }
}
