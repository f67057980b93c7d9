//! The deployment as the emulator holds it after `terraform apply`: functions and their
//! environments, event source mappings, schedules and API routes. The runner follows exactly
//! this wiring, never a copy of it.

use std::collections::HashMap;

use anyhow::Context;
use aws_config::SdkConfig;

#[derive(Debug, Clone)]
pub struct Function {
    pub name: String,
    pub arn: String,
    pub environment: HashMap<String, String>,
    /// The function's timeout in seconds.
    pub timeout: i32,
    /// Its resource policy's grants of `lambda:InvokeFunction` (`lambda get-policy`).
    pub grants: Vec<Grant>,
}

/// One statement of a function's resource policy that lets a service invoke it.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    /// `apigateway.amazonaws.com`, …
    pub service: String,
    /// The `AWS:SourceArn` it is limited to (`ArnLike` pattern, `*` and `?`); `None`: any.
    pub source_arn: Option<String>,
}

impl Grant {
    /// The `Allow` statements of a resource policy that grant `lambda:InvokeFunction` to a
    /// service, with their source ARN condition.
    pub fn of_policy(policy: &str) -> anyhow::Result<Vec<Grant>> {
        let doc: serde_json::Value =
            serde_json::from_str(policy).context("the function's policy is not JSON")?;
        let statements = match &doc["Statement"] {
            serde_json::Value::Array(s) => s.clone(),
            serde_json::Value::Null => Vec::new(),
            one => vec![one.clone()],
        };
        let mut grants = Vec::new();
        for s in statements {
            let actions: Vec<&str> = match &s["Action"] {
                serde_json::Value::String(a) => vec![a.as_str()],
                serde_json::Value::Array(a) => a.iter().filter_map(|a| a.as_str()).collect(),
                _ => Vec::new(),
            };
            let invokes = actions
                .iter()
                .any(|a| matches!(*a, "lambda:InvokeFunction" | "lambda:*" | "*"));
            let Some(service) = s["Principal"]["Service"].as_str() else {
                continue;
            };
            if s["Effect"] != "Allow" || !invokes {
                continue;
            }
            let mut source_arn = None;
            if let Some(conditions) = s["Condition"].as_object() {
                for (op, keys) in conditions {
                    let Some(keys) = keys.as_object() else {
                        continue;
                    };
                    for (key, value) in keys {
                        if key.eq_ignore_ascii_case("aws:SourceArn")
                            && matches!(
                                op.as_str(),
                                "ArnLike" | "ArnEquals" | "StringLike" | "StringEquals"
                            )
                        {
                            source_arn = value.as_str().map(str::to_owned);
                        }
                    }
                }
            }
            grants.push(Grant {
                service: service.to_owned(),
                source_arn,
            });
        }
        Ok(grants)
    }
}

/// Whether `arn` matches the `ArnLike` pattern (`*`: any run of characters, `/` included;
/// `?`: one character).
pub fn arn_like(pattern: &str, arn: &str) -> bool {
    let (p, a): (Vec<char>, Vec<char>) = (pattern.chars().collect(), arn.chars().collect());
    let (mut pi, mut ai, mut star, mut mark) = (0, 0, None, 0);
    while ai < a.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == a[ai]) {
            pi += 1;
            ai += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ai;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ai = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

impl Function {
    /// Whether its resource policy lets `service` invoke it for `source_arn`, as Lambda
    /// decides before running it.
    pub fn allows(&self, service: &str, source_arn: &str) -> bool {
        self.grants.iter().any(|g| {
            g.service == service
                && g.source_arn
                    .as_deref()
                    .is_none_or(|p| arn_like(p, source_arn))
        })
    }

    /// A fresh invocation that may run for the function's timeout, as Lambda gives one.
    pub fn invocation(&self) -> charlie::invocation::Invocation {
        charlie::invocation::Invocation::with_timeout(std::time::Duration::from_secs(
            u64::try_from(self.timeout).unwrap_or(3),
        ))
    }
}

#[derive(Debug, Clone)]
pub struct QueueMapping {
    pub queue_arn: String,
    pub queue_url: String,
    pub function_arn: String,
    pub batch_size: i32,
    /// The mapping's `ScalingConfig.MaximumConcurrency`: how many batches run at once.
    pub max_concurrency: Option<i32>,
    pub enabled: bool,
    pub report_batch_item_failures: bool,
}

#[derive(Debug, Clone)]
pub struct Schedule {
    pub name: String,
    pub expression: String,
    pub time_zone: Option<String>,
    pub target_arn: String,
    pub input: String,
}

#[derive(Debug, Clone)]
pub struct Route {
    /// `"POST /graph/notifications"`.
    pub route_key: String,
    /// `NONE`, or `AWS_IAM` (SigV4, checked by the runner as API Gateway does).
    pub authorization_type: String,
    pub api_id: String,
    pub function_arn: String,
    /// Its own throttle in the stage's route settings (steady requests per second, burst);
    /// `None`: the stage's default.
    pub throttle: Option<(f64, u32)>,
}

#[derive(Debug, Clone)]
pub struct Deployment {
    pub functions: Vec<Function>,
    pub mappings: Vec<QueueMapping>,
    pub schedules: Vec<Schedule>,
    pub routes: Vec<Route>,
}

impl Deployment {
    /// Reads everything whose name starts with `prefix` back from the emulator.
    pub async fn read(config: &SdkConfig, prefix: &str) -> anyhow::Result<Self> {
        let lambda = aws_sdk_lambda::Client::new(config);
        let sqs = aws_sdk_sqs::Client::new(config);
        let scheduler = aws_sdk_scheduler::Client::new(config);
        let apigw = aws_sdk_apigatewayv2::Client::new(config);

        let mut functions = Vec::new();
        let listed = lambda
            .list_functions()
            .max_items(1000)
            .send()
            .await
            .context("listing functions")?;
        for f in listed.functions() {
            let Some(name) = f.function_name().filter(|n| n.starts_with(prefix)) else {
                continue;
            };
            let conf = lambda
                .get_function_configuration()
                .function_name(name)
                .send()
                .await?;
            let grants = match lambda.get_policy().function_name(name).send().await {
                Ok(p) => Grant::of_policy(p.policy().unwrap_or("{}"))
                    .with_context(|| format!("reading {name}'s resource policy"))?,
                // No permission was ever added: nothing may invoke it but its owner.
                Err(e)
                    if aws_sdk_lambda::error::ProvideErrorMetadata::code(&e)
                        == Some("ResourceNotFoundException") =>
                {
                    Vec::new()
                }
                Err(e) => {
                    return Err(anyhow::Error::new(e))
                        .with_context(|| format!("reading {name}'s resource policy"));
                }
            };
            functions.push(Function {
                name: name.to_owned(),
                arn: conf.function_arn().unwrap_or_default().to_owned(),
                environment: conf
                    .environment()
                    .and_then(|e| e.variables())
                    .cloned()
                    .unwrap_or_default(),
                timeout: conf.timeout().unwrap_or(3),
                grants,
            });
        }
        let arns: Vec<&str> = functions.iter().map(|f| f.arn.as_str()).collect();

        let mut mappings = Vec::new();
        // Listing without a filter: moto ignores a short function name as filter.
        let esms = lambda
            .list_event_source_mappings()
            .send()
            .await
            .context("listing event source mappings")?;
        for m in esms.event_source_mappings() {
            let function_arn = m.function_arn().unwrap_or_default();
            if !arns.contains(&function_arn) {
                continue;
            }
            let queue_arn = m.event_source_arn().unwrap_or_default().to_owned();
            let queue_name = queue_arn.rsplit(':').next().unwrap_or_default();
            let url = sqs
                .get_queue_url()
                .queue_name(queue_name)
                .send()
                .await?
                .queue_url
                .unwrap_or_default();
            mappings.push(QueueMapping {
                queue_arn,
                queue_url: url,
                function_arn: function_arn.to_owned(),
                batch_size: m.batch_size().unwrap_or(10),
                max_concurrency: m.scaling_config().and_then(|c| c.maximum_concurrency()),
                enabled: m.state().is_some_and(|s| s.eq_ignore_ascii_case("enabled")),
                report_batch_item_failures: m
                    .function_response_types()
                    .iter()
                    .any(|t| t.as_str() == "ReportBatchItemFailures"),
            });
        }

        let mut schedules = Vec::new();
        let listed = scheduler
            .list_schedules()
            .name_prefix(prefix)
            .send()
            .await
            .context("listing schedules")?;
        for s in listed.schedules() {
            let name = s.name().unwrap_or_default();
            let full = scheduler
                .get_schedule()
                .name(name)
                .set_group_name(s.group_name().map(str::to_owned))
                .send()
                .await?;
            let target = full.target().context("a schedule without target")?;
            schedules.push(Schedule {
                name: name.to_owned(),
                expression: full.schedule_expression().unwrap_or_default().to_owned(),
                time_zone: full.schedule_expression_timezone().map(str::to_owned),
                target_arn: target.arn().to_owned(),
                input: target.input().unwrap_or("{}").to_owned(),
            });
        }

        let mut routes = Vec::new();
        let apis = apigw.get_apis().send().await.context("listing HTTP APIs")?;
        for api in apis.items() {
            if !api.name().is_some_and(|n| n.starts_with(prefix)) {
                continue;
            }
            let api_id = api.api_id().unwrap_or_default();
            let integrations = apigw.get_integrations().api_id(api_id).send().await?;
            let by_id: HashMap<&str, &str> = integrations
                .items()
                .iter()
                .filter_map(|i| Some((i.integration_id()?, i.integration_uri()?)))
                .collect();
            // The `$default` stage's per-route throttles.
            let mut throttles: HashMap<String, (f64, u32)> = HashMap::new();
            for stage in apigw.get_stages().api_id(api_id).send().await?.items() {
                for (key, settings) in stage.route_settings().into_iter().flatten() {
                    if let (Some(rate), Some(burst)) = (
                        settings.throttling_rate_limit(),
                        settings.throttling_burst_limit(),
                    ) {
                        throttles.insert(key.clone(), (rate, u32::try_from(burst).unwrap_or(0)));
                    }
                }
            }
            for r in apigw.get_routes().api_id(api_id).send().await?.items() {
                let Some(target) = r.target().and_then(|t| t.strip_prefix("integrations/")) else {
                    continue;
                };
                let Some(uri) = by_id.get(target) else {
                    continue;
                };
                routes.push(Route {
                    route_key: r.route_key().unwrap_or_default().to_owned(),
                    authorization_type: r
                        .authorization_type()
                        .map_or_else(|| "NONE".to_owned(), |a| a.as_str().to_owned()),
                    api_id: api_id.to_owned(),
                    function_arn: function_arn_of_invoke_uri(uri),
                    throttle: throttles.get(r.route_key().unwrap_or_default()).copied(),
                });
            }
        }
        Ok(Deployment {
            functions,
            mappings,
            schedules,
            routes,
        })
    }

    pub fn function_by_arn(&self, arn: &str) -> Option<&Function> {
        self.functions
            .iter()
            .find(|f| f.arn == arn || arn.starts_with(&format!("{}:", f.arn)))
    }
}

/// `arn:aws:apigateway:…:lambda:path/2015-03-31/functions/{function arn}/invocations` → the
/// function's ARN; a plain function ARN is returned as it is.
fn function_arn_of_invoke_uri(uri: &str) -> String {
    uri.split_once("/functions/")
        .map(|(_, rest)| rest.trim_end_matches("/invocations").to_owned())
        .unwrap_or_else(|| uri.to_owned())
}

#[cfg(test)]
mod tests {
    /// A policy as Lambda answers `GetPolicy` for two `aws_lambda_permission`s.
    #[test]
    fn a_resource_policy_grants_api_gateway_for_its_source_arns_only() {
        let policy = r#"{"Version":"2012-10-17","Id":"default","Statement":[
            {"Sid":"AllowApiGatewayInvokeApi","Effect":"Allow","Principal":{"Service":"apigateway.amazonaws.com"},"Action":"lambda:InvokeFunction","Resource":"arn:aws:lambda:eu-west-2:123456789012:function:c-api","Condition":{"ArnLike":{"AWS:SourceArn":"arn:aws:execute-api:eu-west-2:123456789012:abc123/*/*/v1/*"}}},
            {"Sid":"Ui","Effect":"Allow","Principal":{"Service":"apigateway.amazonaws.com"},"Action":"lambda:InvokeFunction","Resource":"x","Condition":{"ArnLike":{"AWS:SourceArn":"arn:aws:execute-api:eu-west-2:123456789012:abc123/*/*/ui"}}}
        ]}"#;
        let f = super::Function {
            name: "c-api".into(),
            arn: "arn".into(),
            environment: Default::default(),
            timeout: 3,
            grants: super::Grant::of_policy(policy).unwrap(),
        };
        let arn = |path: &str| {
            format!("arn:aws:execute-api:eu-west-2:123456789012:abc123/$default/GET/{path}")
        };
        let gw = "apigateway.amazonaws.com";
        assert!(f.allows(gw, &arn("v1/runs")));
        assert!(f.allows(gw, &arn("iam/v1/runs")), "* spans slashes");
        assert!(f.allows(gw, &arn("ui")));
        assert!(!f.allows(gw, &arn("ui/login")), "no grant for /ui/*");
        assert!(!f.allows("events.amazonaws.com", &arn("v1/runs")));
        assert!(!f.allows(
            gw,
            "arn:aws:execute-api:eu-west-2:123456789012:other/$default/GET/v1/runs"
        ));
        assert!(super::arn_like("a?c*", "abcdef") && !super::arn_like("a?c", "abcd"));
    }

    #[test]
    fn invoke_uris_name_their_function() {
        let uri = "arn:aws:apigateway:eu-west-2:lambda:path/2015-03-31/functions/arn:aws:lambda:eu-west-2:123456789012:function:x/invocations";
        assert_eq!(
            super::function_arn_of_invoke_uri(uri),
            "arn:aws:lambda:eu-west-2:123456789012:function:x"
        );
    }
}
