# One bucket: raw/ as received, quarantine/, reports/, inbox/relay/, config/.
resource "aws_s3_bucket" "data" {
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
      sse_algorithm = "AES256"
    }
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
  }

  rule {
    id     = "expire-old-report-versions"
    status = "Enabled"
    filter {
      prefix = "reports/"
    }
    noncurrent_version_expiration {
      noncurrent_days = 30
    }
  }
}

resource "aws_s3_object" "config" {
  # Versioned first, so the object has the version id the functions load it by.
  depends_on   = [aws_s3_bucket_versioning.data]
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

  point_in_time_recovery {
    enabled = true
  }
  server_side_encryption {
    enabled = true
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

  point_in_time_recovery {
    enabled = true
  }
  server_side_encryption {
    enabled = true
  }
}

resource "aws_secretsmanager_secret" "graph" {
  name                    = "${local.p}/graph-app"
  description             = "Microsoft Graph app credentials {client_id, client_secret}"
  recovery_window_in_days = 0
}

resource "aws_secretsmanager_secret_version" "graph" {
  count         = var.graph_credentials == null ? 0 : 1
  secret_id     = aws_secretsmanager_secret.graph.id
  secret_string = jsonencode(var.graph_credentials)
}

# The poller owns its value: {"subscriptions": {id: clientState}}, a fresh random clientState
# per Graph subscription it creates. Terraform creates the secret only.
resource "aws_secretsmanager_secret" "client_state" {
  name                    = "${local.p}/webhook-client-state"
  description             = "clientState of each Graph subscription (written by the poller)"
  recovery_window_in_days = 0
}

# The key that signs the mails' download links (HMAC); the api checks them, the mailer signs.
# Its value is made once; rotating it (a new version) invalidates every link sent before.
resource "aws_secretsmanager_secret" "link_key" {
  name                    = "${local.p}/link-signing-key"
  description             = "HMAC key of the report mails' download links"
  recovery_window_in_days = 0
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

resource "aws_ses_email_identity" "sender" {
  email = var.sender
}

resource "aws_ses_configuration_set" "main" {
  name = "${local.p}-mail"
}
