//! Shared by the VM tests: the guest image, built (or found cached) by the project's script
//! (`microvm_image`, from the workspace's shared test helpers).

use std::path::PathBuf;

include!("../../../testdata/test_deps.rs");

/// The image directory, or `None` (after printing why the test is skipped).
pub fn image() -> Option<PathBuf> {
    microvm_image()
}
