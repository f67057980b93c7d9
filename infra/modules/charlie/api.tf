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
  # Every route, the webhook's included (Graph's bursts stay well under it).
  default_route_settings {
    throttling_rate_limit  = var.api_throttle.rate
    throttling_burst_limit = var.api_throttle.burst
  }
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

resource "aws_lambda_permission" "api" {
  statement_id  = "AllowApiGatewayInvokeApi"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.fn["api"].function_name
  principal     = "apigateway.amazonaws.com"
  source_arn    = "${aws_apigatewayv2_api.http.execution_arn}/*/*/v1/*"
}

resource "aws_lambda_permission" "api_graph_webhook" {
  statement_id  = "AllowApiGatewayInvoke"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.fn["graph-webhook"].function_name
  principal     = "apigateway.amazonaws.com"
  source_arn    = "${aws_apigatewayv2_api.http.execution_arn}/*/*/graph/*"
}
