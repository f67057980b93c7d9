//! Lambda zips from the workspace's function binaries: `<fn>.zip` holding `bootstrap`, the layout
//! of the `provided.al2023` runtime (and of `cargo lambda build --output-format zip`).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use zip::write::SimpleFileOptions;

use charlie::stages::STAGES;

/// Zips `<bin_dir>/<fn>` (a workspace build) into `<out_dir>/<fn>.zip` for every stage;
/// returns `out_dir`. A zip newer than its binary is kept.
pub fn package_functions(bin_dir: &Path, out_dir: &Path) -> anyhow::Result<PathBuf> {
    package(
        |name| bin_dir.join(name),
        out_dir,
        "cargo build --workspace --bins",
    )
}

/// Zips `<lambda_dir>/<fn>/bootstrap` (what `cargo lambda build` writes, under
/// `target/lambda`) into `<out_dir>/<fn>.zip` for every stage: the zips `infra/envs/aws`
/// deploys (`scripts/package`).
pub fn package_lambda_builds(lambda_dir: &Path, out_dir: &Path) -> anyhow::Result<PathBuf> {
    package(
        |name| lambda_dir.join(name).join("bootstrap"),
        out_dir,
        "cargo lambda build --release",
    )
}

fn package(
    bin_of: impl Fn(&str) -> PathBuf,
    out_dir: &Path,
    build: &str,
) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    for name in STAGES {
        let bin = bin_of(name);
        if !bin.exists() {
            bail!(
                "{} is missing: build the functions first ({build})",
                bin.display()
            );
        }
        let zip_path = out_dir.join(format!("{name}.zip"));
        let fresh = match (zip_path.metadata(), bin.metadata()) {
            (Ok(z), Ok(b)) => z.modified()? >= b.modified()?,
            _ => false,
        };
        if fresh {
            continue;
        }
        let bytes = std::fs::read(&bin).with_context(|| format!("reading {}", bin.display()))?;
        // Two test binaries may package at once: each writes its own file, then renames it.
        let tmp = zip_path.with_extension(format!("zip.{}.tmp", std::process::id()));
        let mut zip = zip::ZipWriter::new(File::create(&tmp)?);
        let options = SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .compression_level(Some(1))
            .unix_permissions(0o755);
        zip.start_file("bootstrap", options)?;
        zip.write_all(&bytes)?;
        zip.finish()?;
        std::fs::rename(&tmp, &zip_path)?;
    }
    Ok(out_dir.to_path_buf())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The functions the Terraform module declares (`local.functions` in
    /// `infra/modules/charlie/main.tf`, batch-sender included: it is deployed with a downstream
    /// API).
    fn terraform_functions() -> BTreeSet<String> {
        let main =
            std::fs::read_to_string(crate::project::root().join("infra/modules/charlie/main.tf"))
                .unwrap();
        let start = main
            .find("functions = toset(")
            .expect("local.functions in main.tf");
        let end = start + main[start..].find("\n\n").unwrap();
        main[start..end]
            .split('"')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    }

    /// Packaging makes a zip, `bootstrap` inside, for every function Terraform deploys, from
    /// either build's layout; a missing binary is named with the build that makes it.
    #[test]
    fn every_function_terraform_declares_is_packaged() {
        let declared = terraform_functions();
        assert_eq!(
            declared,
            STAGES
                .iter()
                .map(|s| s.to_string())
                .collect::<BTreeSet<_>>()
        );
        let dir = std::env::temp_dir().join(format!("charlie-package-{}", std::process::id()));
        let (flat, lambda, out) = (dir.join("bin"), dir.join("lambda"), dir.join("zips"));
        for name in &declared {
            std::fs::create_dir_all(lambda.join(name)).unwrap();
            std::fs::create_dir_all(&flat).unwrap();
            std::fs::write(lambda.join(name).join("bootstrap"), format!("#!{name}")).unwrap();
            std::fs::write(flat.join(name), format!("#!{name}")).unwrap();
        }
        for made in [
            package_lambda_builds(&lambda, &out.join("a")).unwrap(),
            package_functions(&flat, &out.join("b")).unwrap(),
        ] {
            for name in &declared {
                let zip = File::open(made.join(format!("{name}.zip"))).unwrap();
                let mut zip = zip::ZipArchive::new(zip).unwrap();
                let mut text = String::new();
                std::io::Read::read_to_string(&mut zip.by_name("bootstrap").unwrap(), &mut text)
                    .unwrap();
                assert_eq!(text, format!("#!{name}"));
            }
        }
        std::fs::remove_file(lambda.join("api/bootstrap")).unwrap();
        let e = package_lambda_builds(&lambda, &out.join("c")).unwrap_err();
        assert!(e.to_string().contains("cargo lambda build"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
