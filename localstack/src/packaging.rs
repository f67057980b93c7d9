//! Lambda zips from the workspace's function binaries: `<fn>.zip` holding `bootstrap`, the layout
//! of the `provided.al2023` runtime (and of `cargo lambda build --output-format zip`).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use zip::write::SimpleFileOptions;

use charlie::stages::STAGES;

/// Zips `<bin_dir>/<fn>` into `<out_dir>/<fn>.zip` for every stage; returns `out_dir`.
/// A zip newer than its binary is kept.
pub fn package_functions(bin_dir: &Path, out_dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    for name in STAGES {
        let bin = bin_dir.join(name);
        if !bin.exists() {
            bail!(
                "{} is missing: build the functions first (cargo build --workspace --bins)",
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
        let tmp = zip_path.with_extension("zip.tmp");
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
