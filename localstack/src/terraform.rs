//! Runs Terraform on `infra/envs/local` against the emulator, with its own state and data
//! folders per run (so several runs on one machine never share state), and the provider from
//! the machine's filesystem mirror when there is one.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};

use crate::project;

const MIRROR: &str = "/opt/tf-plugins";

pub struct Terraform {
    env_dir: PathBuf,
    work_dir: PathBuf,
    vars: Vec<(String, String)>,
}

impl Terraform {
    /// `work_dir` holds this run's state and `.terraform`; `vars` are `-var` values.
    pub fn new(work_dir: &Path, vars: Vec<(String, String)>) -> anyhow::Result<Self> {
        std::fs::create_dir_all(work_dir)?;
        Ok(Terraform {
            env_dir: project::root().join("infra/envs/local"),
            work_dir: work_dir.to_path_buf(),
            vars,
        })
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("terraform");
        cmd.current_dir(&self.env_dir)
            .args(args)
            .env("TF_DATA_DIR", self.work_dir.join(".terraform"))
            .env("TF_IN_AUTOMATION", "1")
            .env("TF_INPUT", "0");
        if Path::new(MIRROR).is_dir() {
            cmd.env(
                "TF_CLI_CONFIG_FILE",
                project::root().join("infra/terraformrc.mirror"),
            );
        }
        cmd
    }

    fn var_args(&self) -> Vec<String> {
        let mut out = vec![format!(
            "-state={}",
            self.work_dir.join("terraform.tfstate").display()
        )];
        for (k, v) in &self.vars {
            out.push("-var".into());
            out.push(format!("{k}={v}"));
        }
        out
    }

    fn run(&self, what: &str, args: &[String]) -> anyhow::Result<std::process::Output> {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let log = self.work_dir.join(format!("{what}.log"));
        let out = self
            .command(&refs)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running terraform {what} (is terraform installed?)"))?;
        std::fs::write(&log, [&out.stdout[..], &out.stderr[..]].concat())?;
        Ok(out)
    }

    pub fn init(&self) -> anyhow::Result<()> {
        let out = self.run(
            "init",
            &["init".into(), "-input=false".into(), "-no-color".into()],
        )?;
        if !out.status.success() {
            bail!(
                "terraform init failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Applies and returns the seconds it took.
    pub fn apply(&self) -> anyhow::Result<f64> {
        let start = Instant::now();
        let mut args = vec![
            "apply".into(),
            "-auto-approve".into(),
            "-input=false".into(),
            "-no-color".into(),
        ];
        args.extend(self.var_args());
        let out = self.run("apply", &args)?;
        if !out.status.success() {
            bail!(
                "terraform apply failed (log: {}):\n{}",
                self.work_dir.join("apply.log").display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(start.elapsed().as_secs_f64())
    }

    /// True when a plan finds nothing to change (`-detailed-exitcode` 0); the plan text otherwise.
    pub fn plan_is_noop(&self) -> anyhow::Result<Result<(), String>> {
        let mut args = vec![
            "plan".into(),
            "-detailed-exitcode".into(),
            "-input=false".into(),
            "-no-color".into(),
        ];
        args.extend(self.var_args());
        let out = self.run("plan", &args)?;
        match out.status.code() {
            Some(0) => Ok(Ok(())),
            Some(2) => Ok(Err(String::from_utf8_lossy(&out.stdout).into_owned())),
            _ => bail!(
                "terraform plan failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }

    pub fn output_json(&self) -> anyhow::Result<serde_json::Value> {
        let args = vec![
            "output".into(),
            "-json".into(),
            format!(
                "-state={}",
                self.work_dir.join("terraform.tfstate").display()
            ),
        ];
        let out = self.run("output", &args)?;
        if !out.status.success() {
            bail!(
                "terraform output failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }
}
