# The relay's uploads (inbox/relay/{relay}/{sha256}.eml, through presigned URLs the control API
# signs) reach ingest by S3 event notification: S3 -> the inbound queue, in S3's own event shape.

resource "aws_sqs_queue_policy" "inbound_from_s3" {
  queue_url = aws_sqs_queue.main["inbound"].id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid       = "RelayUploadsFromTheDataBucket"
      Effect    = "Allow"
      Principal = { Service = "s3.amazonaws.com" }
      Action    = "sqs:SendMessage"
      Resource  = aws_sqs_queue.main["inbound"].arn
      Condition = {
        ArnEquals    = { "aws:SourceArn" = aws_s3_bucket.data.arn }
        StringEquals = { "aws:SourceAccount" = local.account_id }
      }
    }]
  })
}

resource "aws_s3_bucket_notification" "relay_inbox" {
  bucket = aws_s3_bucket.data.id
  queue {
    id            = "relay-inbox"
    queue_arn     = aws_sqs_queue.main["inbound"].arn
    events        = ["s3:ObjectCreated:*"]
    filter_prefix = "inbox/relay/"
    filter_suffix = ".eml"
  }
  # S3 checks at once that it may send to the queue.
  depends_on = [aws_sqs_queue_policy.inbound_from_s3]
}
