# The Charlie module deployed to AWS. Build the zips first (README, "Deploying to AWS"):
#   scripts/package                          (writes dist/lambda/<fn>.zip for every function)
# The Graph app credentials are set out of band, never in state; the poller writes the
# subscriptions' clientStates itself (docs/operations.md: "The Graph client secret").
#
# State lives in S3 with a DynamoDB lock, both encrypted, made once by ./bootstrap:
#   (cd bootstrap && terraform init && terraform apply -var region=eu-west-2)
#   terraform init -backend-config=backend.hcl   # backend.hcl: bootstrap's `backend_config` output
# (backend.hcl.example shows its shape). The provider lock file is committed: `terraform init`
# installs exactly the recorded provider build.
terraform {
  required_version = ">= 1.6"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "= 5.100.0"
    }
  }
  # Partial configuration: bucket, key, region, dynamodb_table, kms_key_id and encrypt come
  # from -backend-config, so no account's names are written here.
  backend "s3" {}
}

variable "region" {
  type = string
}

variable "tenant_id" {
  type = string
}

variable "sender" {
  description = "From address of the report mail, e.g. reports@example.com"
  type        = string
}

variable "sender_domain" {
  description = "The domain SES signs the mail for with DKIM; null: the sender's domain. Create the DNS records of the dkim_records and domain_verification_record outputs."
  type        = string
  default     = null
}

variable "alert_email" {
  description = "Address the alarms notify (it confirms the subscription by mail); null: subscribe something else to the alerts_topic_arn output."
  type        = string
  default     = null
}

variable "reserved_concurrency" {
  description = "Reserved concurrency per function (the module's default when null); { ingest = -1 } reserves none, for an account whose concurrency quota is still too low."
  type        = map(number)
  default     = null
}

variable "config_writers" {
  description = "Principals besides the one running Terraform that may write config/ (e.g. the CI deploy role, if people also apply by hand)."
  type        = list(string)
  default     = []
}

variable "mailboxes" {
  type = list(string)
}

variable "row_store" {
  description = "dynamodb (default), or postgres: an RDS PostgreSQL instance behind RDS Proxy in vpc_id"
  type        = string
  default     = "dynamodb"
}

variable "vpc_id" {
  description = "With row_store = postgres: the VPC of the database and of the functions that reach it"
  type        = string
  default     = null
}

variable "private_subnet_ids" {
  description = "With row_store = postgres: private subnets (two AZs or more) with a NAT gateway, so ingest still reaches Graph and the AWS APIs"
  type        = list(string)
  default     = []
}

variable "db_instance_class" {
  type    = string
  default = "db.t4g.medium"
}

variable "api_iam_principals" {
  description = "IAM users and roles allowed on the control API's /iam/v1 routes (SigV4), each with a scope: read, operate or admin."
  type = list(object({
    arn   = string
    scope = string
  }))
  default = []
}

provider "aws" {
  region = var.region
}

data "aws_caller_identity" "current" {}

locals {
  postgres      = var.row_store == "postgres"
  sender_domain = coalesce(var.sender_domain, split("@", var.sender)[1])
}

# The sender's domain as an SES identity with Easy DKIM: SES signs every report mail, so
# receivers can tell it from a forgery (and DMARC passes).
resource "aws_ses_domain_identity" "sender" {
  domain = local.sender_domain
}

resource "aws_ses_domain_dkim" "sender" {
  domain = aws_ses_domain_identity.sender.domain
}

module "charlie" {
  source          = "../../modules/charlie"
  name_prefix     = "charlie"
  lambda_zip_dir  = "${path.root}/../../../dist/lambda"
  config_file     = "${path.root}/../../../reports.toml"
  sender          = var.sender
  mailboxes       = var.mailboxes
  graph_token_url = "https://login.microsoftonline.com/${var.tenant_id}/oauth2/v2.0/token"
  infra_file      = "${path.root}/../../../reports.infra.json"
  # Behind CloudFront and the WAF (edge.tf): everything but /iam/v1 comes through it.
  origin_check     = true
  webhook_base_url = local.edge_url
  # Callers inside AWS (SigV4 on /iam/v1), each with a scope.
  api_iam_principals = var.api_iam_principals
  # The mailer may send as the DKIM-signed domain too.
  ses_identity_arns = [aws_ses_domain_identity.sender.arn]

  # Production: tables that cannot be deleted by accident, secrets that can be restored for
  # 30 days after a deletion, alarms that reach someone.
  deletion_protection         = true
  secret_recovery_window_days = 30
  alert_email                 = var.alert_email
  config_writers              = var.config_writers
  reserved_concurrency        = var.reserved_concurrency

  row_store = var.row_store
  # Through the proxy, with TLS; the password comes from the instance's managed secret.
  postgres_url        = local.postgres ? "host=${aws_db_proxy.rows[0].endpoint} port=5432 user=charlie dbname=charlie sslmode=require" : null
  postgres_secret_arn = local.postgres ? aws_db_instance.rows[0].master_user_secret[0].secret_arn : null
  vpc = local.postgres ? {
    subnet_ids         = var.private_subnet_ids
    security_group_ids = [aws_security_group.functions[0].id]
  } : null
}

output "dkim_records" {
  description = "CNAME records to create in the sender domain's DNS: SES signs with DKIM once they resolve."
  value = [for token in aws_ses_domain_dkim.sender.dkim_tokens : {
    name  = "${token}._domainkey.${local.sender_domain}"
    type  = "CNAME"
    value = "${token}.dkim.amazonses.com"
  }]
}

output "domain_verification_record" {
  description = "TXT record proving the domain to SES."
  value = {
    name  = "_amazonses.${local.sender_domain}"
    type  = "TXT"
    value = aws_ses_domain_identity.sender.verification_token
  }
}

output "alerts_topic_arn" {
  value = module.charlie.alerts_topic_arn
}

output "dashboard" {
  value = "https://${var.region}.console.aws.amazon.com/cloudwatch/home?region=${var.region}#dashboards:name=${module.charlie.dashboard_name}"
}

output "api_endpoint" {
  description = "Where people, the CLI, the relays and Graph reach the API: CloudFront, behind the WAF."
  value       = local.edge_url
}
