# The Charlie module applied to a local AWS emulator (moto by default, LocalStack works too).
# Lambda code cannot run in the emulator: event source mappings are created disabled and the local
# runner (localstack/) consumes the queues, fires the schedules and serves the API routes.
terraform {
  required_version = ">= 1.6"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "= 5.100.0"
    }
  }
}

variable "endpoint" {
  description = "The emulator's URL, e.g. http://127.0.0.1:4566"
  type        = string
}

variable "region" {
  type    = string
  default = "eu-west-2"
}

variable "name_prefix" {
  type    = string
  default = "charlie-local"
}

variable "lambda_zip_dir" {
  type = string
}

variable "config_file" {
  type = string
}

variable "graph_base_url" {
  type = string
}

variable "graph_token_url" {
  type = string
}

variable "webhook_base_url" {
  description = "The local runner's API address, where the fake Graph posts notifications"
  type        = string
}

variable "mailboxes" {
  type    = list(string)
  default = ["ops-reports@contoso.example/inbox"]
}

variable "downstream_base_url" {
  description = "The fake downstream persistence API (charlie-local's); null: no batch sender"
  type        = string
  default     = null
}

variable "downstream_token" {
  description = "The fake downstream API's bearer token (a local value, never a real one)"
  type        = string
  default     = null
  sensitive   = true
}

variable "row_store" {
  description = "dynamodb, or postgres on the local server at postgres_url (scripts/demo --row-store postgres)"
  type        = string
  default     = "dynamodb"
}

variable "postgres_url" {
  type    = string
  default = null
}

variable "sender" {
  type    = string
  default = "reports@charlie.example"
}

provider "aws" {
  region                      = var.region
  access_key                  = "test"
  secret_key                  = "test"
  skip_credentials_validation = true
  skip_metadata_api_check     = true
  skip_region_validation      = true
  s3_use_path_style           = true

  endpoints {
    apigatewayv2   = var.endpoint
    cloudwatch     = var.endpoint
    cloudwatchlogs = var.endpoint
    dynamodb       = var.endpoint
    iam            = var.endpoint
    kms            = var.endpoint
    lambda         = var.endpoint
    s3             = var.endpoint
    scheduler      = var.endpoint
    secretsmanager = var.endpoint
    ses            = var.endpoint
    sesv2          = var.endpoint
    sns            = var.endpoint
    sqs            = var.endpoint
    sts            = var.endpoint
  }
}

module "charlie" {
  source = "../../modules/charlie"

  name_prefix     = var.name_prefix
  lambda_zip_dir  = var.lambda_zip_dir
  config_file     = var.config_file
  sender          = var.sender
  mailboxes       = var.mailboxes
  graph_base_url  = var.graph_base_url
  graph_token_url = var.graph_token_url
  # Beside the definitions: reports.toml -> reports.infra.json (`charlie config infra`).
  infra_file = "${trimsuffix(var.config_file, ".toml")}.infra.json"
  row_store  = var.row_store
  # The batch sender against the fake downstream API over plain http, with a breaker that
  # cools down in 2 s and retries that wait at most 2 s, so the fault scenarios take seconds.
  downstream_base_url                     = var.downstream_base_url
  downstream_token                        = var.downstream_token
  downstream_allow_http                   = true
  downstream_breaker                      = { failures = 3, window_seconds = 60, cooldown_seconds = 2 }
  downstream_retry_visibility_max_seconds = 2
  downstream_timeout_seconds              = 2
  # One batch-sender batch at a time in the runner (its mapping's maximum concurrency unset):
  # moto's SQS once left a message invisible when five pumps received from outbound at once;
  # the breaker shared by racing instances is covered by its unit test.
  downstream_max_concurrency = null
  postgres_url               = var.postgres_url
  # 10 MiB: the tests send a 12 MB workbook to see the size policy's download link.
  max_mail_bytes                = 10485760
  event_source_mappings_enabled = false
  log_level                     = "info,charlie=debug"

  # Local-only credentials for the fake Graph; never real ones.
  graph_credentials = { client_id = "charlie-local", client_secret = "local-fake-graph-secret" }
  # The local runner serves the API routes on this URL (moto serves none).
  webhook_base_url = var.webhook_base_url
  # The tests see a replaced subscription stop counting after a second, not a minute.
  client_state_cache_seconds = 1
  # The principal the local runner's API Gateway checks SigV4 requests against (the local
  # credentials), allowed on the /iam/v1 routes.
  api_iam_principals = [{ arn = "arn:aws:iam::123456789012:user/charlie-local", scope = "operate" }]

  # Each run recreates the tables and secrets under the same names: nothing to protect, and a
  # secret must be deleted at once to be made again.
  deletion_protection         = false
  secret_recovery_window_days = 0
  # moto has no PutConfigurationSetDeliveryOptions (SES v1): the configuration set cannot be
  # told to require TLS there. On an account it is (the module's default).
  ses_require_tls = false
  # moto applies a bucket policy's Deny statements to every object request, ignoring their
  # conditions (aws:SecureTransport, aws:PrincipalArn): with the policy no object could be read
  # or written. On an account the policy is there (the module's default).
  bucket_policy = false
  # moto does not keep a function's KMSKeyArn, so every plan would set it again; Lambda's own
  # key encrypts the environments there.
  function_environment_key = false
}

output "deployment" {
  value = {
    bucket         = module.charlie.bucket
    rows_table     = module.charlie.rows_table
    state_table    = module.charlie.state_table
    queue_urls     = module.charlie.queue_urls
    dlq_urls       = module.charlie.dlq_urls
    function_names = module.charlie.function_names
    api_id         = module.charlie.api_id
  }
}
