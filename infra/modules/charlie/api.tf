resource "aws_apigatewayv2_api" "http" {
  name          = "${local.p}-api"
  protocol_type = "HTTP"
}

resource "aws_apigatewayv2_integration" "graph_webhook" {
  api_id                 = aws_apigatewayv2_api.http.id
  integration_type       = "AWS_PROXY"
  integration_uri        = aws_lambda_function.fn["graph-webhook"].invoke_arn
  integration_method     = "POST"
  payload_format_version = "2.0"
  timeout_milliseconds   = 10000
}

resource "aws_apigatewayv2_route" "graph_notifications" {
  #checkov:skip=CKV_AWS_309:Microsoft Graph posts change notifications without credentials (it can send none); the function answers the validation handshake and checks each notification's clientState against the subscription's secret in constant time
  api_id    = aws_apigatewayv2_api.http.id
  route_key = "POST /graph/notifications"
  target    = "integrations/${aws_apigatewayv2_integration.graph_webhook.id}"
}

# Graph's lifecycle notifications (lifecycleNotificationUrl): the same function tells them apart.
resource "aws_apigatewayv2_route" "graph_lifecycle" {
  #checkov:skip=CKV_AWS_309:Microsoft Graph posts lifecycle notifications without credentials (it can send none); the function checks their clientState as for change notifications
  api_id    = aws_apigatewayv2_api.http.id
  route_key = "POST /graph/lifecycle"
  target    = "integrations/${aws_apigatewayv2_integration.graph_webhook.id}"
}

# The control API: every route under /v1 goes to the api function, which routes it.
resource "aws_apigatewayv2_integration" "api" {
  api_id                 = aws_apigatewayv2_api.http.id
  integration_type       = "AWS_PROXY"
  integration_uri        = aws_lambda_function.fn["api"].invoke_arn
  integration_method     = "POST"
  payload_format_version = "2.0"
  timeout_milliseconds   = 30000
}

resource "aws_apigatewayv2_route" "api" {
  #checkov:skip=CKV_AWS_309:The control API authorizes every request itself: an API key (stored hashed, with a scope of read, operate or admin) checked by the function, which also serves the unauthenticated OpenAPI document and signed download links; callers inside AWS use the AWS_IAM route /iam/v1 instead
  api_id    = aws_apigatewayv2_api.http.id
  route_key = "ANY /v1/{proxy+}"
  target    = "integrations/${aws_apigatewayv2_integration.api.id}"
}

# The routes anyone may call (download links, relays' signed calls, the dashboard's sign-in),
# each its own route so each has its own throttle (var.api_route_throttles): a flood of one
# cannot starve operators or Graph's notifications.
resource "aws_apigatewayv2_route" "api_public" {
  for_each = toset(["GET /v1/links/{proxy+}", "ANY /v1/relay", "ANY /v1/relay/{proxy+}", "POST /ui/login"])
  #checkov:skip=CKV_AWS_309:Reachable without credentials by design: a download link carries its own HMAC-signed, expiring token; a relay signs every request with its own HMAC key (checked by the function, nonce and clock skew included); the sign-in form takes an API key. Each route is throttled on its own (api_route_throttles) and, on AWS, behind the WAF rate rule
  api_id    = aws_apigatewayv2_api.http.id
  route_key = each.value
  target    = "integrations/${aws_apigatewayv2_integration.api.id}"
}

# The dashboard: server-rendered pages under /ui, from the same function.
resource "aws_apigatewayv2_route" "ui" {
  for_each = toset(["GET /ui", "ANY /ui/{proxy+}"])
  #checkov:skip=CKV_AWS_309:The dashboard signs people in itself: an API key typed into its login form opens a session (HttpOnly, Secure, SameSite=Strict cookie, stored hashed, ended by the key's revocation), every state-changing form carries the session's CSRF token, and the login page and stylesheet must be reachable before anyone is signed in
  api_id    = aws_apigatewayv2_api.http.id
  route_key = each.value
  target    = "integrations/${aws_apigatewayv2_integration.api.id}"
}

# The same API for callers inside AWS: SigV4-signed requests, checked by API Gateway, the
# principal then mapped to a scope by the function (api_iam_principals). A caller needs
# execute-api:Invoke on this route in its own policy.
resource "aws_apigatewayv2_route" "api_iam" {
  api_id             = aws_apigatewayv2_api.http.id
  route_key          = "ANY /iam/v1/{proxy+}"
  authorization_type = "AWS_IAM"
  target             = "integrations/${aws_apigatewayv2_integration.api.id}"
}

# One JSON line per request. No headers, no query string (Graph's validationToken travels there),
# no body: what was called, by which address, how it ended and how long it took.
resource "aws_cloudwatch_log_group" "api_access" {
  name              = "/aws/apigateway/${local.p}-api"
  retention_in_days = var.log_retention_days
  kms_key_id        = local.kms_key_arn
}

resource "aws_apigatewayv2_stage" "default" {
  api_id      = aws_apigatewayv2_api.http.id
  name        = "$default"
  auto_deploy = true
  # Operators' routes; the webhook's and the public ones have their own (below).
  default_route_settings {
    throttling_rate_limit  = var.api_throttle.rate
    throttling_burst_limit = var.api_throttle.burst
  }
  dynamic "route_settings" {
    for_each = var.api_route_throttles
    content {
      route_key              = route_settings.key
      throttling_rate_limit  = route_settings.value.rate
      throttling_burst_limit = route_settings.value.burst
    }
  }
  depends_on = [
    aws_apigatewayv2_route.graph_notifications,
    aws_apigatewayv2_route.graph_lifecycle,
    aws_apigatewayv2_route.api_public,
  ]
  access_log_settings {
    destination_arn = aws_cloudwatch_log_group.api_access.arn
    format = jsonencode({
      requestId          = "$context.requestId"
      requestTime        = "$context.requestTime"
      sourceIp           = "$context.identity.sourceIp"
      routeKey           = "$context.routeKey"
      status             = "$context.status"
      protocol           = "$context.protocol"
      responseLength     = "$context.responseLength"
      responseLatency    = "$context.responseLatency"
      integrationStatus  = "$context.integrationStatus"
      integrationLatency = "$context.integrationLatency"
      integrationError   = "$context.integrationErrorMessage"
      errorMessage       = "$context.error.message"
      iamCaller          = "$context.identity.userArn"
    })
  }
}

# Lambda checks each route's source ARN ({api}/{stage}/{method}/{path}) against these: every
# route the api function serves needs one (the local runner enforces them as Lambda does).
resource "aws_lambda_permission" "api" {
  statement_id  = "AllowApiGatewayInvokeApi"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.fn["api"].function_name
  principal     = "apigateway.amazonaws.com"
  source_arn    = "${aws_apigatewayv2_api.http.execution_arn}/*/*/v1/*"
}

# The dashboard: GET /ui and ANY /ui/{proxy+}.
resource "aws_lambda_permission" "api_ui" {
  for_each = {
    AllowApiGatewayInvokeUi      = "ui"
    AllowApiGatewayInvokeUiPages = "ui/*"
  }
  statement_id  = each.key
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.fn["api"].function_name
  principal     = "apigateway.amazonaws.com"
  source_arn    = "${aws_apigatewayv2_api.http.execution_arn}/*/*/${each.value}"
}

resource "aws_lambda_permission" "api_graph_webhook" {
  statement_id  = "AllowApiGatewayInvoke"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.fn["graph-webhook"].function_name
  principal     = "apigateway.amazonaws.com"
  source_arn    = "${aws_apigatewayv2_api.http.execution_arn}/*/*/graph/*"
}
