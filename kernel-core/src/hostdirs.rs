//! The host directories AgentKernel keeps its own state in, and the rules that keep another
//! local user (or a sandbox) out of them.
//!
//! - The **data dir** ([`data_dir`]) holds named workspaces, `tasks.db` (programs that run
//!   with your tools and credentials), the session server's socket, locks and logs.
//! - The **cache dir** ([`cache_dir`]) holds built guests, VM images and compiled wasm code
//!   that the kernel loads as native code.
//!
//! Whoever controls either controls what the kernel runs, so neither may ever be a
//! directory someone else could have made: without `$HOME` the user's home comes from the
//! password database, and only when there is none is a per-user directory under `/tmp` used,
//! which [`private_dir`] then refuses unless this user owns it. Files in them are opened
//! with [`private_file`]: mode 0600, never through a symlink.
//!
//! [`check_workspace_dir`] refuses to mount any of these (or a directory holding one) at
//! `/workspace`, where a program could plant files the host later trusts.

use std::fs::OpenOptions;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The effective uid of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The current user's home directory: `$HOME` when set and absolute, else the password
/// database's entry for the effective uid; `None` when neither exists.
pub fn home_dir() -> Option<PathBuf> {
    if let Some(h) = std::env::var_os("HOME").map(PathBuf::from)
        && h.is_absolute()
    {
        return Some(h);
    }
    passwd_home(euid())
}

fn passwd_home(uid: u32) -> Option<PathBuf> {
    use std::ffi::CStr;
    use std::os::unix::ffi::OsStrExt;
    let mut buf = vec![0u8; 4096];
    // SAFETY: `passwd` is plain old data; getpwuid_r fills it in.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call and `buf`'s length is passed with it; on
    // success `result` points at `pw`, whose strings live in `buf`.
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            &mut pw,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() || pw.pw_dir.is_null() {
        return None;
    }
    // SAFETY: pw_dir is a NUL-terminated string inside `buf`, which is still alive.
    let dir = unsafe { CStr::from_ptr(pw.pw_dir) };
    let path = PathBuf::from(std::ffi::OsStr::from_bytes(dir.to_bytes()));
    path.is_absolute().then_some(path)
}

/// The per-user stand-in for a home directory when there is none at all:
/// `/tmp/agentkernel-<uid>`, which [`private_dir`] accepts only if this user owns it and no
/// one else can write it (the scripts use the same rule).
fn no_home_fallback() -> PathBuf {
    std::env::temp_dir().join(format!("agentkernel-{}", euid()))
}

/// AgentKernel's data directory: `$AGENTKERNEL_DATA_DIR`, else `$XDG_DATA_HOME/agentkernel`,
/// else `~/.local/share/agentkernel` (home from `$HOME` or the password database; without
/// either, `/tmp/agentkernel-<uid>`).
pub fn data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("AGENTKERNEL_DATA_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("agentkernel");
    }
    home_dir()
        .unwrap_or_else(no_home_fallback)
        .join(".local/share/agentkernel")
}

/// AgentKernel's cache directory (built guests, VM images and states): `$AGENTKERNEL_CACHE`,
/// else `$XDG_CACHE_HOME/agentkernel`, else `~/.cache/agentkernel` (home as for [`data_dir`]).
/// The scripts use the same rule.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("AGENTKERNEL_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("agentkernel");
    }
    home_dir()
        .unwrap_or_else(no_home_fallback)
        .join(".cache/agentkernel")
}

/// Creates `dir` (and its parents) if missing and checks that it is safe to keep
/// AgentKernel's state in: a real directory (not a symlink), owned by this user, writable by
/// no one else. A new `dir` is made with mode 0711: others cannot list it (sandboxes that
/// run as another uid can still reach the workspaces below it by name). An existing one
/// that others can write is refused, as is one owned by someone else: whoever made it first
/// would control what the kernel runs.
pub fn private_dir(dir: &Path) -> Result<()> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        // The per-user fallback under /tmp must itself be checked, as an ancestor.
        if parent.starts_with(no_home_fallback()) {
            private_dir(parent)?;
        } else {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
        }
    }
    match std::fs::DirBuilder::new().mode(0o711).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::io(format!("creating {}", dir.display()), e)),
    }
    // Checked through the opened directory, not the path, so nothing can be swapped in
    // between the check and what it says.
    let handle = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir)
        .map_err(|e| {
            Error::invalid(
                format!(
                    "{} is not a directory AgentKernel can use ({e}): a symlink or a file is in its place",
                    dir.display()
                ),
                "remove it (AgentKernel recreates it), or set AGENTKERNEL_DATA_DIR / AGENTKERNEL_CACHE to a directory of your own",
            )
        })?;
    let meta = handle
        .metadata()
        .map_err(|e| Error::io(format!("checking {}", dir.display()), e))?;
    let me = euid();
    if meta.uid() != me {
        return Err(Error::invalid(
            format!(
                "{} belongs to uid {}, not to you (uid {me}): whoever owns it controls what AgentKernel runs",
                dir.display(),
                meta.uid()
            ),
            "remove it, or set HOME / AGENTKERNEL_DATA_DIR / AGENTKERNEL_CACHE to a directory of your own",
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(Error::invalid(
            format!(
                "{} is writable by other users (mode {:o}): they could plant files AgentKernel trusts",
                dir.display(),
                meta.mode() & 0o7777
            ),
            format!("restrict it with `chmod go-w {}`", dir.display()),
        ));
    }
    Ok(())
}

/// Options that open (or create) a file of AgentKernel's own state: mode 0600 when created,
/// never through a symlink (`O_NOFOLLOW`), not inherited by child processes.
pub fn private_file() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
    o
}

/// Restricts an existing file of AgentKernel's state (e.g. one made by an older version) to
/// its owner.
pub fn restrict_to_owner(file: &std::fs::File) -> std::io::Result<()> {
    let mode = file.metadata()?.mode() & 0o7777;
    if mode & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(mode & 0o700))?;
    }
    Ok(())
}

/// Refuses `workspace` (a canonical host path about to be mounted read-write at
/// `/workspace`) when it is, or holds, a directory whose files the host trusts: `/`, the
/// user's home, the data dir (`data_dir`, and the default one when that is another; their
/// `workspaces/` subdirectories are fine) or the cache dir, or any path in `protected` (e.g. the configuration file in use). A
/// program could otherwise plant shell start-up files, tasks, compiled code or
/// configuration that the host runs later.
pub fn check_workspace_dir(workspace: &Path, data_dir: &Path, protected: &[PathBuf]) -> Result<()> {
    // The default data dir too, when the caller uses another one: it holds this user's tasks.
    let mut trusted: Vec<PathBuf> = vec![
        PathBuf::from("/"),
        data_dir.to_path_buf(),
        self::data_dir(),
        cache_dir(),
    ];
    trusted.extend(home_dir());
    trusted.extend(protected.iter().cloned());
    for t in trusted {
        // Compare real paths; one that does not exist yet is compared as given.
        let real = std::fs::canonicalize(&t).unwrap_or(t);
        if real.starts_with(workspace) {
            let what = if real == Path::new("/") {
                "the root directory".to_owned()
            } else {
                real.display().to_string()
            };
            return Err(Error::invalid(
                format!(
                    "refusing to let sandboxes write to {}: it holds {what}, and a program could plant files there that the host later trusts (shell start-up files, AgentKernel's tasks, compiled code, configuration or an MCP server's code)",
                    workspace.display()
                ),
                "use a directory of its own, e.g. `.workspace(\"./data\")`, or a named workspace (`.named_workspace(NAME)`)",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_of_another_user_or_writable_by_others_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mine = tmp.path().join("mine");
        private_dir(&mine).expect("a new directory is accepted");
        let mode = std::fs::metadata(&mine).expect("meta").mode() & 0o777;
        assert_eq!(mode, 0o711, "new private dirs are 0711");

        let open = tmp.path().join("open");
        std::fs::create_dir(&open).expect("mkdir");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let err = private_dir(&open).expect_err("a world-writable dir is refused");
        assert!(err.to_string().contains("writable by other users"), "{err}");

        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&mine, &link).expect("symlink");
        let err = private_dir(&link).expect_err("a symlink is refused");
        assert!(err.to_string().contains("symlink"), "{err}");

        if euid() == 0 {
            let theirs = tmp.path().join("theirs");
            std::fs::create_dir(&theirs).expect("mkdir");
            std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).expect("chown");
            let err = private_dir(&theirs).expect_err("another user's dir is refused");
            assert!(err.to_string().contains("belongs to uid 65534"), "{err}");
        } else {
            {
                use std::io::Write as _;
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED host hostdirs::another_users_directory: needs root to chown"
                );
            }
        }
    }

    #[test]
    fn private_files_are_0600_and_never_follow_a_symlink() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let f = tmp.path().join("log");
        private_file()
            .create(true)
            .append(true)
            .open(&f)
            .expect("create");
        assert_eq!(std::fs::metadata(&f).expect("meta").mode() & 0o777, 0o600);
        let target = tmp.path().join("target");
        std::fs::write(&target, "keep").expect("write");
        let link = tmp.path().join("link.log");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        assert!(
            private_file()
                .create(true)
                .append(true)
                .open(&link)
                .is_err(),
            "a symlink is not followed"
        );
        assert_eq!(std::fs::read_to_string(&target).expect("read"), "keep");
    }

    #[test]
    fn workspaces_that_hold_trusted_directories_are_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = tmp.path().join("data");
        std::fs::create_dir_all(data.join("workspaces/w")).expect("mkdir");
        let root = tmp.path().canonicalize().expect("canon");
        let data = root.join("data");
        // The data dir's parent holds it: refused; a named workspace inside it: fine.
        let err = check_workspace_dir(&root, &data, &[]).expect_err("ancestor of data dir");
        assert!(
            err.to_string().contains("refusing to let sandboxes write"),
            "{err}"
        );
        check_workspace_dir(&data.join("workspaces/w"), &data, &[]).expect("named workspace");
        assert!(check_workspace_dir(Path::new("/"), &data, &[]).is_err());
        let config = root.join("other/agentkernel.toml");
        std::fs::create_dir_all(root.join("other")).expect("mkdir");
        std::fs::write(&config, "").expect("config");
        assert!(check_workspace_dir(&root.join("other"), &data, &[config]).is_err());
    }
}
