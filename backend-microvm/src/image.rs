//! The guest image: where `scripts/build-microvm-image` put it, and whether its guest files
//! (init, supervisor, agent) are the ones this build speaks to.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Environment variable naming an image directory to use instead of the published one.
pub const IMAGE_ENV: &str = "AGENTKERNEL_MICROVM_IMAGE";

/// The guest files baked into the image, in the order the script hashes them.
const GUEST_FILES: [&str; 3] = [
    include_str!("../guest/init"),
    include_str!("../guest/supervisor.py"),
    agentkernel_core::guest::AGENT_SOURCE,
];

/// A built image: `vmlinuz`, `initrd.img` and `guest.sha`.
#[derive(Debug, Clone)]
pub struct GuestImage {
    /// Its directory.
    pub dir: PathBuf,
    /// The SHA-256 of its guest files.
    pub guest_sha: String,
}

/// The SHA-256 (hex) of the guest files this build expects.
pub fn expected_guest_sha() -> String {
    let mut hash = Sha256::new();
    for file in GUEST_FILES {
        hash.update(file);
    }
    format!("{:x}", hash.finalize())
}

impl GuestImage {
    /// The image in `$AGENTKERNEL_MICROVM_IMAGE`, else the one the build script published
    /// in `<cache>/microvm/current`; the error says how to get one.
    pub fn find() -> Result<GuestImage, String> {
        if let Some(dir) = std::env::var_os(IMAGE_ENV).filter(|d| !d.is_empty()) {
            return GuestImage::at(Path::new(&dir));
        }
        let current = agentkernel_core::cache_dir()
            .join("microvm")
            .join("current");
        match std::fs::read_to_string(&current) {
            Ok(dir) => GuestImage::at(Path::new(dir.trim())),
            Err(_) => Err(format!(
                "no microVM image has been built ({} is missing): run scripts/build-microvm-image",
                current.display()
            )),
        }
    }

    /// The image in `dir`, if it is complete and matches this build's guest files.
    pub fn at(dir: &Path) -> Result<GuestImage, String> {
        for file in ["vmlinuz", "initrd.img"] {
            if !dir.join(file).is_file() {
                return Err(format!(
                    "{} has no {file}: run scripts/build-microvm-image",
                    dir.display()
                ));
            }
        }
        let guest_sha = std::fs::read_to_string(dir.join("guest.sha"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        if guest_sha != expected_guest_sha() {
            return Err(format!(
                "the image in {} was built from other guest files than this build's: run scripts/build-microvm-image to rebuild it",
                dir.display()
            ));
        }
        Ok(GuestImage {
            dir: dir.to_path_buf(),
            guest_sha,
        })
    }
}
