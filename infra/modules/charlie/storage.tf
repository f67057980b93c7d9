# One bucket: raw/ as received, quarantine/, reports/, inbox/relay/, config/.
resource "aws_s3_bucket" "data" {
  #checkov:skip=CKV_AWS_18:Server access logs would need a second bucket per deployment (itself unlogged); object-level access is recorded by the account's CloudTrail data events instead, which also name the IAM principal
  #checkov:skip=CKV_AWS_144:One region by design: versioning (noncurrent reports kept 30 days) and the tables' PITR are the recovery path; replicating mailed personal data to a second region is a per-deployment decision, not the module's default
  bucket        = "${local.p}-data-${local.account_id}-${local.region}"
  force_destroy = false
}

resource "aws_s3_bucket_versioning" "data" {
  bucket = aws_s3_bucket.data.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "data" {
  bucket = aws_s3_bucket.data.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = local.kms_key_arn
    }
    # One data key per object prefix and hour instead of a KMS call per object.
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_public_access_block" "data" {
  bucket                  = aws_s3_bucket.data.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_lifecycle_configuration" "data" {
  bucket     = aws_s3_bucket.data.id
  depends_on = [aws_s3_bucket_versioning.data]

  rule {
    id     = "abort-incomplete-uploads"
    status = "Enabled"
    filter {}
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
    # An expired object leaves a delete marker (the bucket is versioned); once its noncurrent
    # versions are gone too, the marker goes.
    expiration {
      expired_object_delete_marker = true
    }
  }

  rule {
    id     = "expire-old-report-versions"
    status = "Enabled"
    filter {
      prefix = "reports/"
    }
    noncurrent_version_expiration {
      noncurrent_days = var.report_versions_days
    }
  }

  # A dataset's retain_days: its raw files (with their .rejects.json) and quarantined files
  # expire that many days after they were stored, as its rows do (TTL or the retention sweep).
  # Expired objects become noncurrent and are gone a day later: retention deletes the data,
  # it does not hide it behind a delete marker.
  dynamic "rule" {
    for_each = { for pair in setproduct(keys(local.retained_datasets), ["raw", "quarantine"]) :
    "${pair[1]}/${pair[0]}/" => local.retained_datasets[pair[0]] }
    content {
      id     = "retain-${replace(trimsuffix(rule.key, "/"), "/", "-")}"
      status = "Enabled"
      filter {
        prefix = rule.key
      }
      expiration {
        days = rule.value
      }
      noncurrent_version_expiration {
        noncurrent_days = 1
      }
    }
  }

  # A relay's uploads: once ingested, each attachment is archived in raw/ (kept as its dataset
  # says); the whole mail is kept for relay_inbox_days for inspection and re-ingest. A mail
  # quarantined whole is kept as long, and so is report mail queued for a relay (outbox/relay/,
  # fetched by the relay within minutes when it runs).
  dynamic "rule" {
    for_each = { "inbox/relay/" = "relay-inbox", "quarantine/mail/" = "quarantined-mail", "outbox/relay/" = "relay-outbox" }
    content {
      id     = "retain-${rule.value}"
      status = "Enabled"
      filter {
        prefix = rule.key
      }
      expiration {
        days = var.relay_inbox_days
      }
      noncurrent_version_expiration {
        noncurrent_days = 1
      }
    }
  }

  # A report's retain_days: its workbooks expire that many days after they were built.
  dynamic "rule" {
    for_each = local.retained_reports
    content {
      id     = "retain-reports-${rule.key}"
      status = "Enabled"
      filter {
        prefix = "reports/${rule.key}/"
      }
      expiration {
        days = rule.value
      }
      noncurrent_version_expiration {
        noncurrent_days = var.report_versions_days
      }
    }
  }
}

# Only TLS, and config/ is written by the deployer alone: the definitions decide where mail goes,
# so no function (their roles have no write there either) and no other principal of the account
# may change them outside an apply.
data "aws_iam_session_context" "deployer" {
  # The role behind an assumed-role session (aws:PrincipalArn names the role, not the session).
  arn = data.aws_caller_identity.current.arn
}

resource "aws_s3_bucket_policy" "data" {
  count  = var.bucket_policy ? 1 : 0
  bucket = aws_s3_bucket.data.id
  # After the public access block, which S3 applies to policies as they are put.
  depends_on = [aws_s3_bucket_public_access_block.data]
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid       = "DenyInsecureTransport"
        Effect    = "Deny"
        Principal = "*"
        Action    = "s3:*"
        Resource  = [aws_s3_bucket.data.arn, "${aws_s3_bucket.data.arn}/*"]
        Condition = { Bool = { "aws:SecureTransport" = "false" } }
      },
      {
        Sid       = "ConfigWrittenByTheDeployerOnly"
        Effect    = "Deny"
        Principal = "*"
        Action    = ["s3:PutObject", "s3:DeleteObject", "s3:DeleteObjectVersion", "s3:PutObjectTagging"]
        Resource  = "${aws_s3_bucket.data.arn}/config/*"
        Condition = { ArnNotEquals = { "aws:PrincipalArn" = concat([data.aws_iam_session_context.deployer.issuer_arn], var.config_writers) } }
      },
    ]
  })
}

resource "aws_s3_object" "config" {
  # Versioned first, so the object has the version id the functions load it by; after the
  # bucket policy, so a new deployer principal is allowed before it uploads.
  depends_on   = [aws_s3_bucket_versioning.data, aws_s3_bucket_policy.data]
  bucket       = aws_s3_bucket.data.id
  key          = "config/reports.toml"
  source       = var.config_file
  etag         = filemd5(var.config_file)
  content_type = "application/toml"
}

# Stored rows: pk "{dataset}#{yyyy-mm-dd}", sk the row's key.
resource "aws_dynamodb_table" "rows" {
  name         = "${local.p}-rows"
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "pk"
  range_key    = "sk"

  attribute {
    name = "pk"
    type = "S"
  }
  attribute {
    name = "sk"
    type = "S"
  }

  # A dataset's retain_days: each row carries the time it expires (start of the day after its
  # day plus retain_days, in the dataset's zone); DynamoDB deletes it within a few days of that.
  ttl {
    attribute_name = "expires_at"
    enabled        = true
  }

  deletion_protection_enabled = var.deletion_protection

  point_in_time_recovery {
    enabled = true
  }
  server_side_encryption {
    enabled     = true
    kms_key_arn = local.kms_key_arn
  }
}

# Typed state items: mail claims, runs, deliveries, Graph delta links, ...
resource "aws_dynamodb_table" "state" {
  name         = "${local.p}-state"
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "pk"
  range_key    = "sk"

  attribute {
    name = "pk"
    type = "S"
  }
  attribute {
    name = "sk"
    type = "S"
  }
  attribute {
    name = "gsi1pk"
    type = "S"
  }
  attribute {
    name = "gsi1sk"
    type = "S"
  }

  # Lists runs by report and date.
  global_secondary_index {
    name            = "gsi1"
    hash_key        = "gsi1pk"
    range_key       = "gsi1sk"
    projection_type = "ALL"
  }

  ttl {
    attribute_name = "expires_at"
    enabled        = true
  }

  deletion_protection_enabled = var.deletion_protection

  point_in_time_recovery {
    enabled = true
  }
  server_side_encryption {
    enabled     = true
    kms_key_arn = local.kms_key_arn
  }
}

resource "aws_secretsmanager_secret" "graph" {
  #checkov:skip=CKV2_AWS_57:The client secret is issued by Microsoft Entra ID, which Secrets Manager cannot rotate; docs/operations.md gives the rotation path and an alarm fires before it expires (GraphSecretSecondsToExpiry)
  name                    = "${local.p}/graph-app"
  description             = "Microsoft Graph app credentials {client_id, client_secret}"
  recovery_window_in_days = var.secret_recovery_window_days
  kms_key_id              = local.kms_key_arn
}

resource "aws_secretsmanager_secret_version" "graph" {
  count         = var.graph_credentials == null ? 0 : 1
  secret_id     = aws_secretsmanager_secret.graph.id
  secret_string = jsonencode(var.graph_credentials)
}

# The poller owns its value: {"subscriptions": {id: clientState}}, a fresh random clientState
# per Graph subscription it creates. Terraform creates the secret only.
resource "aws_secretsmanager_secret" "client_state" {
  #checkov:skip=CKV2_AWS_57:Not a credential with a lifetime: the poller writes a fresh random clientState for each Graph subscription it creates, so it changes with every subscription (at most 7 days)
  name                    = "${local.p}/webhook-client-state"
  description             = "clientState of each Graph subscription (written by the poller)"
  recovery_window_in_days = var.secret_recovery_window_days
  kms_key_id              = local.kms_key_arn
}

# The key that signs the mails' download links (HMAC); the api checks them, the mailer signs.
# Its value is made once. Rotated by hand as a key set ({"current", "keys"}): links signed
# under the old key keep working while it stays in the set (docs/operations.md).
resource "aws_secretsmanager_secret" "link_key" {
  #checkov:skip=CKV2_AWS_57:Rotated by hand as a key set (new current key, the old one kept for link_days so mailed links keep working, then dropped: docs/operations.md); a scheduled rotation Lambda would replace the value outright and kill every mailed link
  name                    = "${local.p}/link-signing-key"
  description             = "HMAC key of the report mails' download links"
  recovery_window_in_days = var.secret_recovery_window_days
  kms_key_id              = local.kms_key_arn
}

data "aws_secretsmanager_random_password" "link_key" {
  password_length     = 48
  exclude_punctuation = true
}

resource "aws_secretsmanager_secret_version" "link_key" {
  secret_id     = aws_secretsmanager_secret.link_key.id
  secret_string = data.aws_secretsmanager_random_password.link_key.random_password
  lifecycle {
    # A new random value on every plan must not replace the key in use.
    ignore_changes = [secret_string]
  }
}

# The value the CDN in front of the API (origin_check) adds to every request as the header
# x-charlie-origin; the webhook and the API refuse requests without it. Made once; rotated by
# hand (docs/operations.md): the secret may hold the new and the old value while CloudFront
# moves to the new one.
resource "aws_secretsmanager_secret" "origin" {
  #checkov:skip=CKV2_AWS_57:Rotated by hand with two values held at once (new and old) while CloudFront's header moves to the new one (docs/operations.md); a rotation Lambda replacing the value outright would refuse every request until CloudFront caught up
  count                   = var.origin_check ? 1 : 0
  name                    = "${local.p}/origin-header"
  description             = "Value of the x-charlie-origin header the CDN adds to each request it forwards to the API"
  recovery_window_in_days = var.secret_recovery_window_days
  kms_key_id              = local.kms_key_arn
}

data "aws_secretsmanager_random_password" "origin" {
  count               = var.origin_check ? 1 : 0
  password_length     = 48
  exclude_punctuation = true
}

resource "aws_secretsmanager_secret_version" "origin" {
  count         = var.origin_check ? 1 : 0
  secret_id     = aws_secretsmanager_secret.origin[0].id
  secret_string = data.aws_secretsmanager_random_password.origin[0].random_password
  lifecycle {
    # A new random value on every plan must not replace the header in use.
    ignore_changes = [secret_string]
  }
}

resource "aws_ses_email_identity" "sender" {
  email = var.sender
}

resource "aws_ses_configuration_set" "main" {
  #checkov:skip=CKV_AWS_365:TLS is required (tls_policy = "Require") wherever var.ses_require_tls is true: the default and infra/envs/aws; checkov evaluates this module through infra/envs/local, where moto cannot store delivery options and the variable is false
  name = "${local.p}-mail"
  # Report mail carries business data: no delivery to a server that refuses TLS.
  dynamic "delivery_options" {
    for_each = var.ses_require_tls ? ["Require"] : []
    content {
      tls_policy = delivery_options.value
    }
  }
}

# The downstream API's bearer token ({"token": …}), read by the batch sender at cold start and
# again after a 401 (docs/downstream-api.md).
resource "aws_secretsmanager_secret" "downstream" {
  #checkov:skip=CKV2_AWS_57:The token is issued by the downstream API's owners, which Secrets Manager cannot rotate; a new value written here is picked up after the next 401 (docs/operations.md)
  count                   = local.downstream ? 1 : 0
  name                    = "${local.p}/downstream"
  description             = "Bearer token of the downstream persistence API {token}"
  recovery_window_in_days = var.secret_recovery_window_days
  kms_key_id              = local.kms_key_arn
}

resource "aws_secretsmanager_secret_version" "downstream" {
  count         = local.downstream && var.downstream_token != null ? 1 : 0
  secret_id     = aws_secretsmanager_secret.downstream[0].id
  secret_string = jsonencode({ token = var.downstream_token })
}
