# Once per account and region, before infra/envs/aws: the bucket that holds Terraform's state and
# the DynamoDB table that locks it, both encrypted with their own key.
#
#   terraform init && terraform apply -var region=eu-west-2
#   terraform output -raw backend_config > ../backend.hcl
#   cd .. && terraform init -backend-config=backend.hcl
#
# This root's own state is local (terraform.tfstate here, a few resources): keep it with the
# team's secrets, or import the three resources again if it is lost. Nothing here is deleted by
# accident: the bucket refuses deletion while it holds state, the table has deletion protection,
# the key has a 30-day deletion window.
terraform {
  required_version = ">= 1.6"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "= 5.100.0"
    }
  }
}

variable "region" {
  type = string
}

variable "name_prefix" {
  type    = string
  default = "charlie"
}

provider "aws" {
  region = var.region
}

data "aws_caller_identity" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  name       = "${var.name_prefix}-tfstate"
}

resource "aws_kms_key" "state" {
  description             = "${local.name}: Terraform state and its lock table"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      # Who may read state (it holds every resource's attributes) is decided by IAM policies.
      Sid       = "AccountIamPolicies"
      Effect    = "Allow"
      Principal = { AWS = "arn:aws:iam::${local.account_id}:root" }
      Action    = "kms:*"
      Resource  = "*"
    }]
  })
}

resource "aws_kms_alias" "state" {
  name          = "alias/${local.name}"
  target_key_id = aws_kms_key.state.key_id
}

resource "aws_s3_bucket" "state" {
  #checkov:skip=CKV_AWS_18:Reads and writes of state are recorded by the account's CloudTrail (data events), which names the principal; a log bucket for the state bucket would need its own
  #checkov:skip=CKV_AWS_144:State is small and versioned; a copy in a second region is the account's disaster-recovery decision, not this bootstrap's
  #checkov:skip=CKV2_AWS_62:Nothing reacts to state objects; Terraform is the only writer
  bucket = "${local.name}-${local.account_id}-${var.region}"
  lifecycle {
    prevent_destroy = true
  }
}

resource "aws_s3_bucket_versioning" "state" {
  bucket = aws_s3_bucket.state.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "state" {
  bucket = aws_s3_bucket.state.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.state.arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_public_access_block" "state" {
  bucket                  = aws_s3_bucket.state.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_lifecycle_configuration" "state" {
  bucket     = aws_s3_bucket.state.id
  depends_on = [aws_s3_bucket_versioning.state]
  rule {
    id     = "old-state-versions"
    status = "Enabled"
    filter {}
    # Earlier versions of the state: 90 days to roll back a bad apply.
    noncurrent_version_expiration {
      noncurrent_days = 90
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }
}

resource "aws_s3_bucket_policy" "state" {
  bucket     = aws_s3_bucket.state.id
  depends_on = [aws_s3_bucket_public_access_block.state]
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid       = "DenyInsecureTransport"
      Effect    = "Deny"
      Principal = "*"
      Action    = "s3:*"
      Resource  = [aws_s3_bucket.state.arn, "${aws_s3_bucket.state.arn}/*"]
      Condition = { Bool = { "aws:SecureTransport" = "false" } }
    }]
  })
}

resource "aws_dynamodb_table" "lock" {
  name                        = "${local.name}-lock"
  billing_mode                = "PAY_PER_REQUEST"
  hash_key                    = "LockID"
  deletion_protection_enabled = true
  attribute {
    name = "LockID"
    type = "S"
  }
  point_in_time_recovery {
    enabled = true
  }
  server_side_encryption {
    enabled     = true
    kms_key_arn = aws_kms_key.state.arn
  }
}

output "backend_config" {
  description = "infra/envs/aws's backend.hcl (terraform init -backend-config=backend.hcl)."
  value       = <<-EOT
    bucket         = "${aws_s3_bucket.state.bucket}"
    key            = "${var.name_prefix}/terraform.tfstate"
    region         = "${var.region}"
    dynamodb_table = "${aws_dynamodb_table.lock.name}"
    encrypt        = true
    kms_key_id     = "${aws_kms_key.state.arn}"
  EOT
}
