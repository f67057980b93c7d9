# The Charlie module deployed to AWS. Build the zips first:
#   cargo lambda build --release --output-format zip   (writes target/lambda/<fn>/bootstrap.zip)
#   scripts/package-lambdas target/lambda dist/lambda  (renames them to dist/lambda/<fn>.zip)
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

variable "reports" {
  type = map(object({ cron = string, timezone = string }))
}

provider "aws" {
  region = var.region
}

module "charlie" {
  source          = "../../modules/charlie"
  name_prefix     = "charlie"
  lambda_zip_dir  = "${path.root}/../../../dist/lambda"
  config_file     = "${path.root}/../../../reports.toml"
  sender          = var.sender
  mailboxes       = var.mailboxes
  graph_token_url = "https://login.microsoftonline.com/${var.tenant_id}/oauth2/v2.0/token"
  reports         = var.reports
}
