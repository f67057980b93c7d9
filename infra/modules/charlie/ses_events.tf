# SES events of the configuration set (bounces, complaints, deliveries) reach the mailer, which
# records them on the delivery: configuration set -> SNS topic -> the ses_events queue.

resource "aws_sns_topic" "ses_events" {
  name = "${local.p}-ses-events"
  # The key's policy lets SES publish (kms.tf).
  kms_master_key_id = local.kms_key_arn
}

resource "aws_sqs_queue_policy" "ses_events" {
  queue_url = aws_sqs_queue.main["ses_events"].id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "sns.amazonaws.com" }
      Action    = "sqs:SendMessage"
      Resource  = aws_sqs_queue.main["ses_events"].arn
      Condition = { ArnEquals = { "aws:SourceArn" = aws_sns_topic.ses_events.arn } }
    }]
  })
}

resource "aws_sns_topic_subscription" "ses_events" {
  topic_arn = aws_sns_topic.ses_events.arn
  protocol  = "sqs"
  endpoint  = aws_sqs_queue.main["ses_events"].arn
}

resource "aws_ses_event_destination" "ses_events" {
  name                   = "${local.p}-feedback"
  configuration_set_name = aws_ses_configuration_set.main.name
  enabled                = true
  matching_types         = ["bounce", "complaint", "delivery"]
  sns_destination {
    topic_arn = aws_sns_topic.ses_events.arn
  }
}
