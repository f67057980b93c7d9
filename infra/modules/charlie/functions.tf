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
  logs_statement = {
    Effect   = "Allow"
    Action   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    Resource = "arn:aws:logs:${local.region}:${local.account_id}:log-group:/aws/lambda/${local.p}-*:*"
  }
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
  consume = { for q in ["inbound", "mail", "ses_events", "lifecycle", "runs"] : q => {
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
      local.logs_statement,
      local.send["inbound"], local.send["lifecycle"],
      { Effect = "Allow", Action = ["secretsmanager:GetSecretValue"], Resource = aws_secretsmanager_secret.client_state.arn },
      # Intake's pause flag, and the mails it parks while paused.
      { Effect = "Allow", Action = ["dynamodb:GetItem", "dynamodb:PutItem"], Resource = aws_dynamodb_table.state.arn },
    ]
    poller = [
      local.logs_statement, local.read_config, local.read_graph_secret, local.state_rw, local.send["inbound"],
      local.consume["lifecycle"],
      # It creates subscriptions, each with a fresh clientState the webhook reads.
      { Effect = "Allow", Action = ["secretsmanager:GetSecretValue", "secretsmanager:PutSecretValue"], Resource = aws_secretsmanager_secret.client_state.arn },
    ]
    ingest = [
      local.logs_statement, local.read_config, local.read_graph_secret, local.state_rw,
      local.consume["inbound"], local.send["inbound"], local.send["outbound"],
      # Large attachments stream to raw/ as multipart uploads; quarantine copies from raw/.
      { Effect = "Allow", Action = ["s3:PutObject", "s3:GetObject", "s3:AbortMultipartUpload"], Resource = ["${aws_s3_bucket.data.arn}/raw/*", "${aws_s3_bucket.data.arn}/quarantine/*", "${aws_s3_bucket.data.arn}/inbox/*"] },
      { Effect = "Allow", Action = ["dynamodb:BatchGetItem", "dynamodb:BatchWriteItem", "dynamodb:PutItem", "dynamodb:Query", "dynamodb:DeleteItem"], Resource = aws_dynamodb_table.rows.arn },
    ]
    report-builder = [
      local.logs_statement, local.read_config, local.state_rw, local.send["mail"], local.consume["runs"],
      { Effect = "Allow", Action = ["s3:PutObject"], Resource = "${aws_s3_bucket.data.arn}/reports/*" },
      { Effect = "Allow", Action = ["dynamodb:Query"], Resource = aws_dynamodb_table.rows.arn },
    ]
    api = [
      local.logs_statement, local.read_config, local.send["runs"], local.send["inbound"],
      # Runs, keys, audit, cancel requests, and the folders' health records.
      { Effect = "Allow", Action = ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:Query"], Resource = [aws_dynamodb_table.state.arn, "${aws_dynamodb_table.state.arn}/index/*"] },
      # Workbook versions and the presigned downloads it redirects to.
      { Effect = "Allow", Action = ["s3:GetObject", "s3:GetObjectVersion"], Resource = ["${aws_s3_bucket.data.arn}/reports/*", "${aws_s3_bucket.data.arn}/quarantine/*", "${aws_s3_bucket.data.arn}/raw/*"] },
      { Effect = "Allow", Action = ["s3:ListBucket", "s3:ListBucketVersions"], Resource = aws_s3_bucket.data.arn },
      # Depths of every queue; dead letters peeked, deleted and redriven to their source.
      { Effect = "Allow", Action = ["sqs:GetQueueAttributes"], Resource = concat([for q in aws_sqs_queue.main : q.arn], [for q in aws_sqs_queue.dlq : q.arn], [aws_sqs_queue.scheduler_dlq.arn]) },
      { Effect = "Allow", Action = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility"], Resource = concat([for q in aws_sqs_queue.dlq : q.arn], [aws_sqs_queue.scheduler_dlq.arn]) },
      { Effect = "Allow", Action = ["sqs:SendMessage"], Resource = [for q in aws_sqs_queue.main : q.arn] },
      { Effect = "Allow", Action = ["secretsmanager:GetSecretValue"], Resource = aws_secretsmanager_secret.link_key.arn },
      # Each queue's age of oldest message, which SQS publishes to CloudWatch only (the action
      # takes no resource-level permissions).
      { Effect = "Allow", Action = ["cloudwatch:GetMetricStatistics"], Resource = "*" },
    ]
    mailer = [
      # The Graph secret: reports with transport = "graph" send through Graph sendMail.
      local.logs_statement, local.read_config, local.read_graph_secret, local.state_rw, local.consume["mail"], local.consume["ses_events"],
      { Effect = "Allow", Action = ["s3:GetObject", "s3:GetObjectVersion"], Resource = "${aws_s3_bucket.data.arn}/reports/*" },
      { Effect = "Allow", Action = ["ses:SendEmail", "ses:SendRawEmail"], Resource = "*" },
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
    Version   = "2012-10-17",
    Statement = concat(local.policies[each.key], local.send_dead_letters[each.key], local.read_postgres_secret[each.key])
  })
}

resource "aws_cloudwatch_log_group" "fn" {
  for_each          = local.functions
  name              = "/aws/lambda/${local.p}-${each.key}"
  retention_in_days = 30
}

resource "aws_lambda_function" "fn" {
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
  }

  environment {
    variables = merge(local.common_env, { CHARLIE_STAGE = each.key }, local.function_env[each.key], local.dead_letter_env[each.key])
  }

  depends_on = [aws_cloudwatch_log_group.fn, aws_iam_role_policy.fn, aws_iam_role_policy_attachment.vpc, aws_secretsmanager_secret_version.link_key]
}

# Functions in a VPC create network interfaces there.
resource "aws_iam_role_policy_attachment" "vpc" {
  for_each   = var.vpc != null ? local.row_store_users : toset([])
  role       = aws_iam_role.fn[each.key].name
  policy_arn = "arn:aws:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole"
}
