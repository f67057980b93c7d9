# The relay's uploads (inbox/relay/{relay}/{sha256}.eml, through presigned URLs the control API
# signs) reach ingest by S3 event notification: S3 -> the inbound queue, in S3's own event shape.

resource "aws_sqs_queue_policy" "inbound_from_s3" {
  queue_url = aws_sqs_queue.main["inbound"].id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid       = "RelayUploadsFromTheDataBucket"
      Effect    = "Allow"
      Principal = { Service = "s3.amazonaws.com" }
      Action    = "sqs:SendMessage"
      Resource  = aws_sqs_queue.main["inbound"].arn
      Condition = {
        ArnEquals    = { "aws:SourceArn" = aws_s3_bucket.data.arn }
        StringEquals = { "aws:SourceAccount" = local.account_id }
      }
    }]
  })
}

resource "aws_s3_bucket_notification" "relay_inbox" {
  bucket = aws_s3_bucket.data.id
  queue {
    id            = "relay-inbox"
    queue_arn     = aws_sqs_queue.main["inbound"].arn
    events        = ["s3:ObjectCreated:*"]
    filter_prefix = "inbox/relay/"
    filter_suffix = ".eml"
  }
  # S3 checks at once that it may send to the queue.
  depends_on = [aws_sqs_queue_policy.inbound_from_s3]
}

# The deployment's relay secret: each relay's key is derived from it and the relay's salt
# (charlie::relay_auth), so the api keeps this one secret and a salt per relay. Its value is made
# once; rotating it (a new version) invalidates every relay's key.
resource "aws_secretsmanager_secret" "relay_key" {
  #checkov:skip=CKV2_AWS_57:Rotating the relay secret invalidates every relay's key at once; relays are re-keyed one at a time with `charlie relay create` after a revoke, and the secret is rotated by hand when needed (docs/operations.md)
  name                    = "${local.p}/relay-signing-key"
  description             = "The secret each on-prem relay's key is derived from"
  recovery_window_in_days = var.secret_recovery_window_days
  kms_key_id              = local.kms_key_arn
}

data "aws_secretsmanager_random_password" "relay_key" {
  password_length     = 48
  exclude_punctuation = true
}

resource "aws_secretsmanager_secret_version" "relay_key" {
  secret_id     = aws_secretsmanager_secret.relay_key.id
  secret_string = data.aws_secretsmanager_random_password.relay_key.random_password
  lifecycle {
    # A new random value on every plan must not replace the secret in use.
    ignore_changes = [secret_string]
  }
}
