//! Version directories a save is filling right now, process-wide: retention
//! never removes one of them as a "partial leftover". Touched only when a
//! save begins or settles, never on the request path.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};

fn saving() -> MutexGuard<'static, HashSet<PathBuf>> {
    static SAVING: OnceLock<Mutex<HashSet<PathBuf>>> = OnceLock::new();
    let set = SAVING.get_or_init(|| Mutex::new(HashSet::new()));
    // A panic elsewhere cannot leave the set half-changed.
    set.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A save begins filling `dir`.
pub fn begin(dir: &Path) {
    saving().insert(dir.to_path_buf());
}

/// The save of `dir` committed or gave up.
pub fn end(dir: &Path) {
    saving().remove(dir);
}

/// Whether a save is filling `dir`.
pub fn contains(dir: &Path) -> bool {
    saving().contains(dir)
}

/// Whether a save is filling a version directory of dataset directory
/// `dataset_dir`.
pub fn any_in(dataset_dir: &Path) -> bool {
    saving().iter().any(|dir| dir.parent() == Some(dataset_dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_is_in_progress_between_begin_and_end() {
        let dir = Path::new("/nonexistent/in-progress-test/v1");
        assert!(!contains(dir));
        begin(dir);
        assert!(contains(dir));
        assert!(any_in(Path::new("/nonexistent/in-progress-test")));
        assert!(!any_in(Path::new("/nonexistent/other")));
        end(dir);
        assert!(!contains(dir));
        assert!(!any_in(Path::new("/nonexistent/in-progress-test")));
    }
}
