# The edge: a CloudFront distribution in front of the HTTP API with a WAF web ACL, because
# API Gateway's HTTP APIs cannot have a web ACL of their own. People, Graph's notifications,
# the mails' download links, the relays and the dashboard all use the distribution's URL (the
# api_endpoint output); CloudFront adds the x-charlie-origin header (a secret the module makes)
# and the functions refuse any request without it, so the WAF cannot be gone round through the
# execute-api endpoint. The SigV4 routes (/iam/v1) are called at the execute-api endpoint
# (iam_endpoint output): AWS authenticates those callers itself.
#
# The web ACL limits each client address, per 5 minutes:
# - the routes anyone can reach without a key (download links, the dashboard's sign-in form,
#   the relays' signed calls) to var.waf_public_limit;
# - Graph's notifications to var.waf_graph_limit (Graph posts from a few addresses, in bursts);
# - everything together to var.waf_overall_limit;
# and drops requests AWS's managed lists know as bad (exploit patterns such as Log4Shell,
# addresses with a bad reputation). API Gateway's per-route throttles stay behind it.

provider "aws" {
  alias  = "us_east_1"
  region = "us-east-1" # CloudFront's web ACLs, logs and certificates live there
}

variable "waf_public_limit" {
  description = "Requests per client address per 5 minutes on the routes reachable without a key (/v1/links/, /ui/login, /v1/relay)."
  type        = number
  default     = 300
}

variable "waf_graph_limit" {
  description = "Requests per client address per 5 minutes on /graph/ (Graph's notifications)."
  type        = number
  default     = 6000
}

variable "waf_overall_limit" {
  description = "Requests per client address per 5 minutes on every route."
  type        = number
  default     = 3000
}

variable "edge_domain" {
  description = "A domain for the API (e.g. charlie.example.com) with an ACM certificate for it in us-east-1 (edge_certificate_arn); null: the distribution's *.cloudfront.net name."
  type        = string
  default     = null
}

variable "edge_certificate_arn" {
  type    = string
  default = null
}

variable "waf_log_retention_days" {
  type    = number
  default = 365
}

locals {
  api_origin = trimsuffix(trimprefix(module.charlie.api_endpoint, "https://"), "/")
  edge_url   = var.edge_domain != null ? "https://${var.edge_domain}" : "https://${aws_cloudfront_distribution.api.domain_name}"
  # The routes anyone can call without a key, by path prefix.
  public_prefixes = ["/v1/links/", "/ui/login", "/v1/relay"]
}

resource "aws_wafv2_web_acl" "api" {
  provider    = aws.us_east_1
  name        = "charlie-api"
  description = "Rate limits and managed rules in front of Charlie's API"
  scope       = "CLOUDFRONT"

  default_action {
    allow {}
  }

  rule {
    name     = "public-routes-per-address"
    priority = 10
    action {
      block {}
    }
    statement {
      rate_based_statement {
        limit                 = var.waf_public_limit
        evaluation_window_sec = 300
        aggregate_key_type    = "IP"
        scope_down_statement {
          or_statement {
            dynamic "statement" {
              for_each = local.public_prefixes
              content {
                byte_match_statement {
                  search_string         = statement.value
                  positional_constraint = "STARTS_WITH"
                  field_to_match {
                    uri_path {}
                  }
                  text_transformation {
                    priority = 0
                    type     = "URL_DECODE"
                  }
                }
              }
            }
          }
        }
      }
    }
    visibility_config {
      cloudwatch_metrics_enabled = true
      metric_name                = "charlie-public-routes"
      sampled_requests_enabled   = true
    }
  }

  rule {
    name     = "graph-per-address"
    priority = 20
    action {
      block {}
    }
    statement {
      rate_based_statement {
        limit                 = var.waf_graph_limit
        evaluation_window_sec = 300
        aggregate_key_type    = "IP"
        scope_down_statement {
          byte_match_statement {
            search_string         = "/graph/"
            positional_constraint = "STARTS_WITH"
            field_to_match {
              uri_path {}
            }
            text_transformation {
              priority = 0
              type     = "URL_DECODE"
            }
          }
        }
      }
    }
    visibility_config {
      cloudwatch_metrics_enabled = true
      metric_name                = "charlie-graph"
      sampled_requests_enabled   = true
    }
  }

  rule {
    name     = "everything-per-address"
    priority = 30
    action {
      block {}
    }
    statement {
      rate_based_statement {
        limit                 = var.waf_overall_limit
        evaluation_window_sec = 300
        aggregate_key_type    = "IP"
        # Graph has its own, higher limit above.
        scope_down_statement {
          not_statement {
            statement {
              byte_match_statement {
                search_string         = "/graph/"
                positional_constraint = "STARTS_WITH"
                field_to_match {
                  uri_path {}
                }
                text_transformation {
                  priority = 0
                  type     = "URL_DECODE"
                }
              }
            }
          }
        }
      }
    }
    visibility_config {
      cloudwatch_metrics_enabled = true
      metric_name                = "charlie-everything"
      sampled_requests_enabled   = true
    }
  }

  # Exploit patterns in paths, headers and bodies (Log4Shell's JNDI lookups among them).
  rule {
    name     = "aws-known-bad-inputs"
    priority = 40
    override_action {
      none {}
    }
    statement {
      managed_rule_group_statement {
        vendor_name = "AWS"
        name        = "AWSManagedRulesKnownBadInputsRuleSet"
      }
    }
    visibility_config {
      cloudwatch_metrics_enabled = true
      metric_name                = "charlie-known-bad-inputs"
      sampled_requests_enabled   = true
    }
  }

  rule {
    name     = "aws-ip-reputation"
    priority = 50
    override_action {
      none {}
    }
    statement {
      managed_rule_group_statement {
        vendor_name = "AWS"
        name        = "AWSManagedRulesAmazonIpReputationList"
      }
    }
    visibility_config {
      cloudwatch_metrics_enabled = true
      metric_name                = "charlie-ip-reputation"
      sampled_requests_enabled   = true
    }
  }

  visibility_config {
    cloudwatch_metrics_enabled = true
    metric_name                = "charlie-api"
    sampled_requests_enabled   = true
  }
}

# What the WAF blocked, for a year. The path is redacted (a download link's token is in it)
# and so are the headers that carry credentials.
resource "aws_cloudwatch_log_group" "waf" {
  #checkov:skip=CKV_AWS_158:Encrypted with CloudWatch Logs' own key: the entries hold addresses, methods and rule names; the path, query, cookies and credentials are redacted before they are written
  provider          = aws.us_east_1
  name              = "aws-waf-logs-charlie-api" # WAF requires the aws-waf-logs- prefix
  retention_in_days = var.waf_log_retention_days
}

resource "aws_wafv2_web_acl_logging_configuration" "api" {
  provider                = aws.us_east_1
  resource_arn            = aws_wafv2_web_acl.api.arn
  log_destination_configs = [aws_cloudwatch_log_group.waf.arn]

  redacted_fields {
    uri_path {}
  }
  redacted_fields {
    query_string {}
  }
  redacted_fields {
    single_header {
      name = "authorization"
    }
  }
  redacted_fields {
    single_header {
      name = "cookie"
    }
  }
  redacted_fields {
    single_header {
      name = "x-charlie-origin"
    }
  }

  # Only what was blocked: allowed traffic is in API Gateway's access log already.
  logging_filter {
    default_behavior = "DROP"
    filter {
      behavior    = "KEEP"
      requirement = "MEETS_ANY"
      condition {
        action_condition {
          action = "BLOCK"
        }
      }
    }
  }
}

# Headers every answer gets at the edge; the dashboard's own (its CSP, frame and referrer
# rules) are kept where it sets them.
resource "aws_cloudfront_response_headers_policy" "api" {
  #checkov:skip=CKV_AWS_259:HSTS is sent (a year, subdomains, overriding the origin) without `preload`: that asks browsers to hard-code the whole of edge_domain's parent, a decision for its owner, not this module
  name = "charlie-api"
  security_headers_config {
    strict_transport_security {
      access_control_max_age_sec = 31536000
      include_subdomains         = true
      override                   = true
    }
    content_type_options {
      override = false
    }
    frame_options {
      frame_option = "DENY"
      override     = false
    }
    referrer_policy {
      referrer_policy = "same-origin"
      override        = false
    }
  }
}

resource "aws_cloudfront_distribution" "api" {
  #checkov:skip=CKV_AWS_86:No access log: every download link's token is in its path, and a CloudFront standard log cannot redact it. Blocked requests are logged by the WAF (path redacted), allowed ones by API Gateway's access log, downloads in the API's audit log
  #checkov:skip=CKV_AWS_310:One origin: the API has no second copy to fail over to
  #checkov:skip=CKV_AWS_305:An API, not a website: there is no root object to serve
  #checkov:skip=CKV_AWS_374:No geo restriction: Graph posts notifications from Microsoft's data centres worldwide, and the rate rules and keys do not depend on a country
  #checkov:skip=CKV_AWS_174:TLS 1.2 (TLSv1.2_2021) whenever edge_domain and edge_certificate_arn are set, as recommended; the default *.cloudfront.net certificate cannot set a minimum version
  #checkov:skip=CKV2_AWS_42:A custom certificate is used when edge_domain and edge_certificate_arn are set; without them the distribution's own *.cloudfront.net certificate serves HTTPS
  #checkov:skip=CKV2_AWS_47:The web ACL has AWS's Known Bad Inputs rule group (Log4j's patterns among them); checkov cannot follow web_acl_id to it
  enabled         = true
  comment         = "Charlie's API behind the WAF"
  is_ipv6_enabled = true
  price_class     = "PriceClass_100"
  web_acl_id      = aws_wafv2_web_acl.api.arn
  aliases         = var.edge_domain != null ? [var.edge_domain] : []
  http_version    = "http2and3"

  origin {
    origin_id   = "api"
    domain_name = local.api_origin
    custom_origin_config {
      http_port              = 80
      https_port             = 443
      origin_protocol_policy = "https-only"
      origin_ssl_protocols   = ["TLSv1.2"]
      # The report builder's rebuilds and the relays' uploads answer well within this.
      origin_read_timeout = 30
    }
    custom_header {
      name  = module.charlie.origin_header.name
      value = module.charlie.origin_header.value
    }
  }

  default_cache_behavior {
    target_origin_id       = "api"
    viewer_protocol_policy = "https-only"
    allowed_methods        = ["GET", "HEAD", "OPTIONS", "PUT", "POST", "PATCH", "DELETE"]
    cached_methods         = ["GET", "HEAD"]
    # Nothing is cached (every answer depends on its caller); every viewer header but Host
    # reaches the API (API Gateway answers only to its own host name).
    cache_policy_id            = data.aws_cloudfront_cache_policy.disabled.id
    origin_request_policy_id   = data.aws_cloudfront_origin_request_policy.all_but_host.id
    response_headers_policy_id = aws_cloudfront_response_headers_policy.api.id
    compress                   = true
  }

  restrictions {
    geo_restriction {
      restriction_type = "none"
    }
  }

  viewer_certificate {
    cloudfront_default_certificate = var.edge_certificate_arn == null
    acm_certificate_arn            = var.edge_certificate_arn
    ssl_support_method             = var.edge_certificate_arn != null ? "sni-only" : null
    minimum_protocol_version       = var.edge_certificate_arn != null ? "TLSv1.2_2021" : "TLSv1"
  }
}

data "aws_cloudfront_cache_policy" "disabled" {
  name = "Managed-CachingDisabled"
}

data "aws_cloudfront_origin_request_policy" "all_but_host" {
  name = "Managed-AllViewerExceptHostHeader"
}

output "iam_endpoint" {
  description = "Where the /iam/v1 routes are called with SigV4 (API Gateway's own endpoint: a signature covers its host)."
  value       = "${module.charlie.api_endpoint}/iam/v1"
}
