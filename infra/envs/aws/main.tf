# The Charlie module deployed to AWS. Build the zips first (README, "Deploying to AWS"):
#   cargo lambda build --release --output-format zip -p graph-webhook -p poller -p ingest \
#     -p report-builder -p mailer            (writes target/lambda/<fn>/bootstrap.zip)
#   then copy each to dist/lambda/<fn>.zip
# The Graph app credentials are set out of band, never in state; the poller writes the
# subscriptions' clientStates itself.
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

variable "tenant_id" {
  type = string
}

variable "sender" {
  type = string
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

locals {
  postgres = var.row_store == "postgres"
}

module "charlie" {
  source          = "../../modules/charlie"
  name_prefix     = "charlie"
  lambda_zip_dir  = "${path.root}/../../../dist/lambda"
  config_file     = "${path.root}/../../../reports.toml"
  sender          = var.sender
  mailboxes       = var.mailboxes
  graph_token_url = "https://login.microsoftonline.com/${var.tenant_id}/oauth2/v2.0/token"
  schedules_file  = "${path.root}/../../../reports.schedules.json"
  # Callers inside AWS (SigV4 on /iam/v1), each with a scope.
  api_iam_principals = var.api_iam_principals

  row_store = var.row_store
  # Through the proxy, with TLS; the password comes from the instance's managed secret.
  postgres_url        = local.postgres ? "host=${aws_db_proxy.rows[0].endpoint} port=5432 user=charlie dbname=charlie sslmode=require" : null
  postgres_secret_arn = local.postgres ? aws_db_instance.rows[0].master_user_secret[0].secret_arn : null
  vpc = local.postgres ? {
    subnet_ids         = var.private_subnet_ids
    security_group_ids = [aws_security_group.functions[0].id]
  } : null
}
