//! Rebuilds the crate when a migration is added or changed: `sqlx::migrate!` embeds the files of
//! `migrations/` at compile time, and cargo does not watch that folder by itself.
//!
//! Also stamps the build for `pdq --version`: `PDQ_COMMIT` (the short commit from `git rev-parse
//! --short HEAD` when the source is a git checkout and git runs; else the `PDQ_COMMIT`
//! environment variable unless it is empty or "unknown"; else the commit `HEAD` names, read
//! from the files of the git directory `PDQ_GIT_DIR` or `.git` (the image build copies only
//! those); else "unknown") and `PDQ_BUILD_DATE` (UTC, `YYYY-MM-DD`; `SOURCE_DATE_EPOCH` when
//! set, for reproducible builds).

use std::path::PathBuf;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

#[path = "build/git_head.rs"]
mod git_head;

fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-changed=build/git_head.rs");
    println!("cargo:rerun-if-env-changed=PDQ_COMMIT");
    println!("cargo:rerun-if-env-changed=PDQ_GIT_DIR");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    let git_dir = std::env::var_os("PDQ_GIT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".git"));
    for file in git_head::watched_files(&git_dir) {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    // A new commit moves HEAD or the branch it names; watch whichever files exist (a missing
    // path would make cargo rerun this script, and rebuild the crate, on every build).
    let branch = git(&["rev-parse", "--symbolic-full-name", "HEAD"]);
    for name in ["HEAD", "packed-refs"].into_iter().chain(branch.as_deref()) {
        if let Some(path) = git(&["rev-parse", "--git-path", name]) {
            if std::path::Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
    let commit = git(&["rev-parse", "--short", "HEAD"])
        .or_else(|| {
            std::env::var("PDQ_COMMIT")
                .ok()
                .filter(|c| !c.trim().is_empty() && c.trim() != "unknown")
        })
        .or_else(|| git_head::head_commit(&git_dir).map(|commit| commit[..7].to_owned()))
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=PDQ_COMMIT={}", commit.trim());
    println!("cargo:rustc-env=PDQ_BUILD_DATE={}", build_date());
}

/// A git command's trimmed output, or None when git or the repository is missing.
fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    let text = text.trim();
    (output.status.success() && !text.is_empty()).then(|| text.to_owned())
}

/// Today's date in UTC (or SOURCE_DATE_EPOCH's), without a date crate in build-dependencies.
fn build_date() -> String {
    let seconds = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        });
    let (year, month, day) = civil_from_days((seconds / 86_400) as i64);
    format!("{year:04}-{month:02}-{day:02}")
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}
