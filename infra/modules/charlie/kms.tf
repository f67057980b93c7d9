# One customer managed key per deployment encrypts everything the deployment stores: the bucket,
# both tables, the secrets, the log groups, the functions' environments, the schedules' inputs
# and the SNS topics. A customer managed key rather than the AWS managed ones because:
#   - CloudWatch alarms and SES can publish to an encrypted SNS topic only with a key whose
#     policy lets them (the AWS managed aws/sns key cannot be granted to them);
#   - CloudWatch Logs and EventBridge Scheduler have no AWS managed key to choose;
#   - one key policy says who can read the deployment's data, and CloudTrail records every use.
# Its cost: $1 a month and KMS requests (the bucket uses an S3 Bucket Key, the tables and Lambda
# cache data keys, so requests stay few).
resource "aws_kms_key" "main" {
  description             = "${local.p}: data at rest (bucket, tables, secrets, logs, topics, schedules)"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        # The account's IAM policies decide who else may use the key (the function roles,
        # the Scheduler role, the deployer).
        Sid       = "AccountIamPolicies"
        Effect    = "Allow"
        Principal = { AWS = "arn:aws:iam::${local.account_id}:root" }
        Action    = "kms:*"
        Resource  = "*"
      },
      {
        Sid       = "CloudWatchLogsOfThisDeployment"
        Effect    = "Allow"
        Principal = { Service = "logs.${local.region}.amazonaws.com" }
        Action    = ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey"]
        Resource  = "*"
        Condition = {
          ArnLike = {
            "kms:EncryptionContext:aws:logs:arn" = [
              "arn:aws:logs:${local.region}:${local.account_id}:log-group:/aws/lambda/${local.p}-*",
              "arn:aws:logs:${local.region}:${local.account_id}:log-group:/aws/apigateway/${local.p}-*",
            ]
          }
        }
      },
      {
        # Alarms publish to the alerts topic: the grant as CloudWatch documents it, without a
        # condition (one CloudWatch does not send would silence every alarm).
        Sid       = "AlarmsPublishToTheAlertsTopic"
        Effect    = "Allow"
        Principal = { Service = "cloudwatch.amazonaws.com" }
        Action    = ["kms:Decrypt", "kms:GenerateDataKey*"]
        Resource  = "*"
      },
      {
        # SES publishes bounces, complaints and deliveries to the ses-events topic.
        Sid       = "SesPublishesItsEvents"
        Effect    = "Allow"
        Principal = { Service = "ses.amazonaws.com" }
        Action    = ["kms:Decrypt", "kms:GenerateDataKey*"]
        Resource  = "*"
        Condition = { StringEquals = { "aws:SourceAccount" = local.account_id } }
      },
    ]
  })
}

resource "aws_kms_alias" "main" {
  name          = "alias/${local.p}"
  target_key_id = aws_kms_key.main.key_id
}

locals {
  kms_key_arn = aws_kms_key.main.arn
  # What a function needs of the key: read what is encrypted (objects, secrets, items, its
  # environment) and encrypt what it writes.
  use_key = {
    Effect   = "Allow"
    Action   = ["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey", "kms:DescribeKey"]
    Resource = aws_kms_key.main.arn
  }
}
