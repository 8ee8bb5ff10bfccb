//! The commit a git directory's `HEAD` names, read from its files alone (no `git` binary):
//! for builds where git is missing or refuses the checkout, such as an image build that
//! copies only `HEAD`, `packed-refs` and `refs/` of the checkout. Shared by `build.rs` and
//! its tests.

use std::path::{Path, PathBuf};

/// The full commit id `HEAD` names in `git_dir` (a `.git` directory, or a `.git` file that
/// points to one with `gitdir:`), or None when it cannot be read.
pub fn head_commit(git_dir: &Path) -> Option<String> {
    let git_dir = resolve(git_dir)?;
    let head = std::fs::read_to_string(git_dir.join("HEAD")).ok()?;
    let head = head.trim();
    match head.strip_prefix("ref:") {
        Some(name) => ref_commit(&git_dir, name.trim()),
        None => is_commit(head).then(|| head.to_owned()),
    }
}

/// The files whose change means another commit (for `cargo:rerun-if-changed`), those that exist.
pub fn watched_files(git_dir: &Path) -> Vec<PathBuf> {
    let Some(git_dir) = resolve(git_dir) else {
        return Vec::new();
    };
    let common = common_dir(&git_dir);
    let mut files = vec![git_dir.join("HEAD"), common.join("packed-refs")];
    if let Ok(head) = std::fs::read_to_string(git_dir.join("HEAD")) {
        if let Some(name) = head.trim().strip_prefix("ref:") {
            files.push(common.join(name.trim()));
        }
    }
    files.into_iter().filter(|f| f.exists()).collect()
}

/// A `.git` directory as it is, or the directory a `.git` file (`gitdir: …`) points to.
fn resolve(git_dir: &Path) -> Option<PathBuf> {
    if git_dir.is_dir() {
        return Some(git_dir.to_owned());
    }
    let text = std::fs::read_to_string(git_dir).ok()?;
    let target = text.trim().strip_prefix("gitdir:")?.trim();
    let target = git_dir.parent().unwrap_or(Path::new(".")).join(target);
    target.is_dir().then_some(target)
}

/// Where a worktree's shared refs live (`commondir`), else the directory itself.
fn common_dir(git_dir: &Path) -> PathBuf {
    match std::fs::read_to_string(git_dir.join("commondir")) {
        Ok(common) => git_dir.join(common.trim()),
        Err(_) => git_dir.to_owned(),
    }
}

/// The commit of the reference `name` (`refs/heads/main`): its loose file, else `packed-refs`.
fn ref_commit(git_dir: &Path, name: &str) -> Option<String> {
    if name.contains("..") {
        return None;
    }
    for dir in [git_dir.to_owned(), common_dir(git_dir)] {
        if let Ok(text) = std::fs::read_to_string(dir.join(name)) {
            let commit = text.trim();
            if is_commit(commit) {
                return Some(commit.to_owned());
            }
        }
        if let Ok(packed) = std::fs::read_to_string(dir.join("packed-refs")) {
            let found = packed.lines().find_map(|line| {
                let (commit, reference) = line.split_once(' ')?;
                (reference.trim() == name && is_commit(commit)).then(|| commit.to_owned())
            });
            if found.is_some() {
                return found;
            }
        }
    }
    None
}

/// A full SHA-1 or SHA-256 commit id.
fn is_commit(text: &str) -> bool {
    matches!(text.len(), 40 | 64) && text.bytes().all(|b| b.is_ascii_hexdigit())
}
