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
  api_id    = aws_apigatewayv2_api.http.id
  route_key = "POST /graph/notifications"
  target    = "integrations/${aws_apigatewayv2_integration.graph_webhook.id}"
}

# Graph's lifecycle notifications (lifecycleNotificationUrl): the same function tells them apart.
resource "aws_apigatewayv2_route" "graph_lifecycle" {
  api_id    = aws_apigatewayv2_api.http.id
  route_key = "POST /graph/lifecycle"
  target    = "integrations/${aws_apigatewayv2_integration.graph_webhook.id}"
}

resource "aws_apigatewayv2_stage" "default" {
  api_id      = aws_apigatewayv2_api.http.id
  name        = "$default"
  auto_deploy = true
}

resource "aws_lambda_permission" "api_graph_webhook" {
  statement_id  = "AllowApiGatewayInvoke"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.fn["graph-webhook"].function_name
  principal     = "apigateway.amazonaws.com"
  source_arn    = "${aws_apigatewayv2_api.http.execution_arn}/*/*/graph/*"
}
