# The PostgreSQL row store (row_store = "postgres"): RDS PostgreSQL with a password RDS keeps in
# Secrets Manager, behind RDS Proxy (connection pooling for Lambda's bursts of cold starts;
# TLS required). Only ingest and report-builder run in the VPC; the private subnets need a NAT
# gateway (or interface endpoints) for Graph, SQS, S3, DynamoDB and Secrets Manager.

resource "aws_security_group" "functions" {
  #checkov:skip=CKV2_AWS_5:Attached to ingest and report-builder through module.charlie's var.vpc (security_group_ids of their vpc_config), which checkov does not follow into the module
  count       = local.postgres ? 1 : 0
  name        = "charlie-functions"
  description = "ingest and report-builder: out to the proxy, Graph and the AWS APIs"
  vpc_id      = var.vpc_id
}

# Out only to what they call: HTTPS (Graph, the AWS APIs through the NAT gateway or endpoints)
# and PostgreSQL on the proxy. (DNS to the VPC resolver is not filtered by security groups.)
resource "aws_vpc_security_group_egress_rule" "functions_https" {
  count             = local.postgres ? 1 : 0
  security_group_id = aws_security_group.functions[0].id
  description       = "HTTPS: Microsoft Graph and the AWS APIs"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_vpc_security_group_egress_rule" "functions_postgres" {
  count                        = local.postgres ? 1 : 0
  security_group_id            = aws_security_group.functions[0].id
  description                  = "PostgreSQL: the RDS Proxy"
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
  referenced_security_group_id = aws_security_group.database[0].id
}

resource "aws_security_group" "database" {
  count       = local.postgres ? 1 : 0
  name        = "charlie-rows"
  description = "PostgreSQL from the functions (through the proxy) only"
  vpc_id      = var.vpc_id
  ingress {
    description     = "PostgreSQL from the functions"
    from_port       = 5432
    to_port         = 5432
    protocol        = "tcp"
    security_groups = [aws_security_group.functions[0].id]
  }
  ingress {
    description = "PostgreSQL from the proxy to the instance"
    from_port   = 5432
    to_port     = 5432
    protocol    = "tcp"
    self        = true
  }
  egress {
    description = "The proxy to the instance"
    from_port   = 5432
    to_port     = 5432
    protocol    = "tcp"
    self        = true
  }
}

resource "aws_db_subnet_group" "rows" {
  count      = local.postgres ? 1 : 0
  name       = "charlie-rows"
  subnet_ids = var.private_subnet_ids
}

# TLS only. Slow statements (over a second) and schema changes are logged, without their parameters (row
# values are business data); the logs go to CloudWatch Logs.
resource "aws_db_parameter_group" "rows" {
  count  = local.postgres ? 1 : 0
  name   = "charlie-rows"
  family = "postgres15"
  # TLS only (PostgreSQL 15's default on RDS, stated so it stays so).
  parameter {
    name  = "rds.force_ssl"
    value = "1"
  }
  parameter {
    name  = "log_statement"
    value = "ddl"
  }
  parameter {
    name  = "log_min_duration_statement"
    value = "1000"
  }
  parameter {
    name  = "log_parameter_max_length"
    value = "0"
  }
}

resource "aws_iam_role" "rds_monitoring" {
  count = local.postgres ? 1 : 0
  name  = "charlie-rows-monitoring"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "monitoring.rds.amazonaws.com" }
      Action    = "sts:AssumeRole"
      Condition = { StringEquals = { "aws:SourceAccount" = data.aws_caller_identity.current.account_id } }
    }]
  })
}

resource "aws_iam_role_policy_attachment" "rds_monitoring" {
  count      = local.postgres ? 1 : 0
  role       = aws_iam_role.rds_monitoring[0].name
  policy_arn = "arn:aws:iam::aws:policy/service-role/AmazonRDSEnhancedMonitoringRole"
}

resource "aws_db_instance" "rows" {
  #checkov:skip=CKV_AWS_161:Every client connects through RDS Proxy (require_tls) with the password RDS keeps in Secrets Manager; IAM database authentication would be a second way in that nothing uses
  count                               = local.postgres ? 1 : 0
  identifier                          = "charlie-rows"
  engine                              = "postgres"
  engine_version                      = "15"
  instance_class                      = var.db_instance_class
  allocated_storage                   = 50
  max_allocated_storage               = 500
  storage_encrypted                   = true
  kms_key_id                          = module.charlie.kms_key_arn
  master_user_secret_kms_key_id       = module.charlie.kms_key_arn
  parameter_group_name                = aws_db_parameter_group.rows[0].name
  enabled_cloudwatch_logs_exports     = ["postgresql", "upgrade"]
  monitoring_interval                 = 60
  monitoring_role_arn                 = aws_iam_role.rds_monitoring[0].arn
  performance_insights_kms_key_id     = module.charlie.kms_key_arn
  db_name                             = "charlie"
  username                            = "charlie"
  manage_master_user_password         = true
  db_subnet_group_name                = aws_db_subnet_group.rows[0].name
  vpc_security_group_ids              = [aws_security_group.database[0].id]
  multi_az                            = true
  backup_retention_period             = 7
  deletion_protection                 = true
  skip_final_snapshot                 = false
  final_snapshot_identifier           = "charlie-rows-final"
  auto_minor_version_upgrade          = true
  performance_insights_enabled        = true
  iam_database_authentication_enabled = false
  copy_tags_to_snapshot               = true
}

resource "aws_iam_role" "proxy" {
  count = local.postgres ? 1 : 0
  name  = "charlie-rows-proxy"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "rds.amazonaws.com" }
      Action    = "sts:AssumeRole"
    }]
  })
}

resource "aws_iam_role_policy" "proxy" {
  count = local.postgres ? 1 : 0
  name  = "charlie-rows-proxy-secret"
  role  = aws_iam_role.proxy[0].id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Effect   = "Allow"
        Action   = ["secretsmanager:GetSecretValue"]
        Resource = aws_db_instance.rows[0].master_user_secret[0].secret_arn
      },
      # The secret is encrypted with the deployment's key.
      {
        Effect    = "Allow"
        Action    = ["kms:Decrypt"]
        Resource  = module.charlie.kms_key_arn
        Condition = { StringEquals = { "kms:ViaService" = "secretsmanager.${var.region}.amazonaws.com" } }
      },
    ]
  })
}

resource "aws_db_proxy" "rows" {
  count                  = local.postgres ? 1 : 0
  name                   = "charlie-rows"
  engine_family          = "POSTGRESQL"
  require_tls            = true
  idle_client_timeout    = 1800
  role_arn               = aws_iam_role.proxy[0].arn
  vpc_subnet_ids         = var.private_subnet_ids
  vpc_security_group_ids = [aws_security_group.database[0].id]
  auth {
    auth_scheme = "SECRETS"
    iam_auth    = "DISABLED"
    secret_arn  = aws_db_instance.rows[0].master_user_secret[0].secret_arn
  }
}

resource "aws_db_proxy_default_target_group" "rows" {
  count         = local.postgres ? 1 : 0
  db_proxy_name = aws_db_proxy.rows[0].name
  connection_pool_config {
    max_connections_percent      = 90
    max_idle_connections_percent = 50
  }
}

resource "aws_db_proxy_target" "rows" {
  count                  = local.postgres ? 1 : 0
  db_proxy_name          = aws_db_proxy.rows[0].name
  target_group_name      = aws_db_proxy_default_target_group.rows[0].name
  db_instance_identifier = aws_db_instance.rows[0].identifier
}
