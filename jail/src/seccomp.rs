//! The seccomp policy of the jail, as data.
//!
//! The jail's main walls are namespaces; seccomp removes the kernel interfaces that matter
//! most for escaping them or attacking the kernel: new namespaces, mounts, ptrace, module
//! and keyring calls, BPF, perf, io_uring (which would bypass this filter), vsock (not
//! covered by network namespaces) and terminal injection; and set-id bits on files, which
//! would outlive the sandbox in a host workspace (a set-uid file there runs as its owner
//! for any host user who can reach it). Everything else is allowed, so ordinary Python
//! (threads, subprocess, multiprocessing) works.

use std::collections::BTreeMap;

use agentkernel_core::{Error, Result};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Syscalls denied outright with `EPERM`.
const DENIED: &[(&str, i64)] = &[
    ("acct", libc::SYS_acct),
    ("add_key", libc::SYS_add_key),
    ("bpf", libc::SYS_bpf),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("clock_settime", libc::SYS_clock_settime),
    ("delete_module", libc::SYS_delete_module),
    ("fanotify_init", libc::SYS_fanotify_init),
    ("finit_module", libc::SYS_finit_module),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fsopen", libc::SYS_fsopen),
    ("fspick", libc::SYS_fspick),
    ("init_module", libc::SYS_init_module),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("kcmp", libc::SYS_kcmp),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("kexec_load", libc::SYS_kexec_load),
    ("keyctl", libc::SYS_keyctl),
    ("mount", libc::SYS_mount),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("move_mount", libc::SYS_move_mount),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("open_tree", libc::SYS_open_tree),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("personality", libc::SYS_personality),
    ("pivot_root", libc::SYS_pivot_root),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("ptrace", libc::SYS_ptrace),
    ("quotactl", libc::SYS_quotactl),
    ("reboot", libc::SYS_reboot),
    ("request_key", libc::SYS_request_key),
    ("setns", libc::SYS_setns),
    ("settimeofday", libc::SYS_settimeofday),
    ("swapoff", libc::SYS_swapoff),
    ("swapon", libc::SYS_swapon),
    ("syslog", libc::SYS_syslog),
    ("umount2", libc::SYS_umount2),
    ("unshare", libc::SYS_unshare),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("vhangup", libc::SYS_vhangup),
    #[cfg(target_arch = "x86_64")]
    ("iopl", libc::SYS_iopl),
    #[cfg(target_arch = "x86_64")]
    ("ioperm", libc::SYS_ioperm),
    #[cfg(target_arch = "x86_64")]
    ("uselib", libc::SYS_uselib),
];

/// `clone` flags that would create a namespace: denied (a nested user namespace is the
/// classic way to regain capabilities).
const NAMESPACE_CLONE_FLAGS: &[u64] = &[
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWCGROUP as u64,
];

/// `ioctl` requests that inject input into a terminal.
const DENIED_IOCTLS: &[u64] = &[libc::TIOCSTI, 0x541C /* TIOCLINUX */];

/// `socket` families denied: vsock reaches the hypervisor and is not namespaced.
const DENIED_SOCKET_FAMILIES: &[u64] = &[libc::AF_VSOCK as u64];

/// Mode bits a program may not give a file: set-uid and set-gid.
const SET_ID_BITS: &[u64] = &[libc::S_ISUID as u64, libc::S_ISGID as u64];

/// Calls that set a file's mode, and which argument holds it (`chmod` family, `mknod`).
/// `open`/`openat`/`creat` are handled apart (their mode counts only when creating), and
/// `openat2` (mode in memory a filter cannot read) fails with `ENOSYS`, so libc uses
/// `openat`.
const MODE_SETTERS: &[(&str, i64, u8)] = &[
    #[cfg(target_arch = "x86_64")]
    ("chmod", libc::SYS_chmod, 1),
    ("fchmod", libc::SYS_fchmod, 1),
    ("fchmodat", libc::SYS_fchmodat, 2),
    ("fchmodat2", libc::SYS_fchmodat2, 2),
    #[cfg(target_arch = "x86_64")]
    ("mknod", libc::SYS_mknod, 1),
    ("mknodat", libc::SYS_mknodat, 2),
    #[cfg(target_arch = "x86_64")]
    ("creat", libc::SYS_creat, 1),
];

/// `open` and `openat`, with the arguments holding their flags and mode.
const OPENERS: &[(&str, i64, u8, u8)] = &[
    #[cfg(target_arch = "x86_64")]
    ("open", libc::SYS_open, 1, 2),
    ("openat", libc::SYS_openat, 2, 3),
];

/// Rules matching a set-id bit in the 32-bit `mode` argument (with `extra` conditions).
fn set_id_rules(mode_arg: u8, extra: &[(u8, u64)]) -> Result<Vec<SeccompRule>> {
    let masked = |arg, bits| {
        SeccompCondition::new(
            arg,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(bits),
            bits,
        )
        .map_err(|e| Error::Internal(format!("bad seccomp condition: {e}")))
    };
    SET_ID_BITS
        .iter()
        .map(|bit| {
            let mut conds = vec![masked(mode_arg, *bit)?];
            for (arg, bits) in extra {
                conds.push(masked(*arg, *bits)?);
            }
            rule(conds)
        })
        .collect()
}

/// The names of the syscalls denied outright (for `doctor` and SECURITY.md).
pub fn denied_syscall_names() -> impl Iterator<Item = &'static str> {
    DENIED.iter().map(|(name, _)| *name)
}

fn arch() -> Result<TargetArch> {
    std::env::consts::ARCH
        .try_into()
        .map_err(|e| Error::Unavailable {
            backend: "process",
            reason: format!(
                "seccomp filters are not built for {}: {e:?}",
                std::env::consts::ARCH
            ),
            hint: "use x86_64 or aarch64, or another backend".into(),
        })
}

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value)
        .map_err(|e| Error::Internal(format!("bad seccomp condition: {e}")))
}

fn rule(conds: Vec<SeccompCondition>) -> Result<SeccompRule> {
    SeccompRule::new(conds).map_err(|e| Error::Internal(format!("bad seccomp rule: {e}")))
}

/// One rule per value: the syscall matches when its 32-bit argument `arg` equals it.
fn equal_arg_rules(arg: u8, values: &[u64]) -> Result<Vec<SeccompRule>> {
    values
        .iter()
        .map(|v| {
            let c = SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, *v)
                .map_err(|e| Error::Internal(format!("bad seccomp condition: {e}")))?;
            rule(vec![c])
        })
        .collect()
}

fn compile(rules: BTreeMap<i64, Vec<SeccompRule>>, errno: u32) -> Result<BpfProgram> {
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(errno),
        arch()?,
    )
    .map_err(|e| Error::Internal(format!("bad seccomp filter: {e}")))?;
    filter
        .try_into()
        .map_err(|e| Error::Internal(format!("cannot compile seccomp filter: {e}")))
}

/// The filters to install, in order. On x86_64 the first refuses x32-ABI numbers; then one
/// denies with `EPERM`; the last makes
/// `clone3` and `openat2` fail with `ENOSYS` (their flags live in memory a filter cannot
/// read), so libc falls back to `clone` and `openat`, whose arguments the first filter
/// checks.
pub fn filters() -> Result<Vec<BpfProgram>> {
    let mut deny: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (_, nr) in DENIED {
        deny.insert(*nr, vec![]);
    }
    deny.insert(
        libc::SYS_clone,
        NAMESPACE_CLONE_FLAGS
            .iter()
            .map(|f| rule(vec![cond(0, SeccompCmpOp::MaskedEq(*f), *f)?]))
            .collect::<Result<_>>()?,
    );
    deny.insert(libc::SYS_ioctl, equal_arg_rules(1, DENIED_IOCTLS)?);
    deny.insert(
        libc::SYS_socket,
        equal_arg_rules(0, DENIED_SOCKET_FAMILIES)?,
    );
    for (_, nr, mode_arg) in MODE_SETTERS {
        deny.insert(*nr, set_id_rules(*mode_arg, &[])?);
    }
    for (_, nr, flags_arg, mode_arg) in OPENERS {
        // The mode counts only with O_CREAT or O_TMPFILE (otherwise the register holds
        // whatever the caller left there, which must not be judged).
        let mut rules = set_id_rules(*mode_arg, &[(*flags_arg, libc::O_CREAT as u64)])?;
        rules.extend(set_id_rules(
            *mode_arg,
            &[(*flags_arg, libc::O_TMPFILE as u64)],
        )?);
        deny.insert(*nr, rules);
    }
    let mut enosys: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    enosys.insert(libc::SYS_clone3, vec![]);
    enosys.insert(libc::SYS_openat2, vec![]);
    let mut out = Vec::new();
    if cfg!(target_arch = "x86_64") {
        out.push(deny_x32());
    }
    out.push(compile(deny, libc::EPERM as u32)?);
    out.push(compile(enosys, libc::ENOSYS as u32)?);
    Ok(out)
}

/// On x86_64, system call numbers with bit 30 set are the x32 ABI: the same calls under
/// other numbers, which a filter matching exact numbers would let through. Refuse them all
/// (ENOSYS), whether or not the kernel has x32 enabled.
fn deny_x32() -> BpfProgram {
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    const BPF_LD_W_ABS: u16 = 0x20;
    const BPF_JGE_K: u16 = 0x35;
    const BPF_RET_K: u16 = 0x06;
    const RET_ERRNO: u32 = 0x0005_0000;
    const RET_ALLOW: u32 = 0x7fff_0000;
    let insn = |code, jt, jf, k| seccompiler::sock_filter { code, jt, jf, k };
    vec![
        insn(BPF_LD_W_ABS, 0, 0, 0), // seccomp_data.nr
        insn(BPF_JGE_K, 0, 1, X32_SYSCALL_BIT),
        insn(BPF_RET_K, 0, 0, RET_ERRNO | libc::ENOSYS as u32),
        insn(BPF_RET_K, 0, 0, RET_ALLOW),
    ]
}

/// The reviewed policy for this architecture: the golden file that [`policy_text`] must
/// equal (a test holds it), so that any change to the policy shows in review as a change to
/// this file; `None` on an architecture without one.
#[cfg(test)]
const GOLDEN: Option<&str> = if cfg!(target_arch = "x86_64") {
    Some(include_str!("../seccomp-policy.x86_64.txt"))
} else {
    None
};

/// Where [`GOLDEN`] lives in the repository.
pub const GOLDEN_PATH: &str = "jail/seccomp-policy.x86_64.txt";

/// The SHA-256 of a compiled filter's instructions (each as `code` u16, `jt`, `jf`, `k` u32,
/// little-endian), as the golden file and `doctor` name it.
pub fn digest(program: &[seccompiler::sock_filter]) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for insn in program {
        hash.update(insn.code.to_le_bytes());
        hash.update([insn.jt, insn.jf]);
        hash.update(insn.k.to_le_bytes());
    }
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The policy as reviewable text: every rule of every filter, by syscall name and number,
/// then the digest of each compiled filter in the order the jail installs them.
#[cfg(test)]
fn policy_text() -> Result<String> {
    use std::fmt::Write as _;
    let mut t = String::new();
    let arch = std::env::consts::ARCH;
    let _ = writeln!(
        t,
        "# The process jail's seccomp policy on {arch}, as jail/src/seccomp.rs builds it.\n\
         # A unit test holds this file equal to the policy, and backend-process/tests/jail.rs\n\
         # compares the filters a sandbox runs under with the digests below. After changing the\n\
         # policy: AGENTKERNEL_BLESS=1 cargo test -p agentkernel-jail --lib seccomp,\n\
         # then review the diff of this file."
    );
    let mut filter = 0;
    if cfg!(target_arch = "x86_64") {
        filter += 1;
        let _ = writeln!(
            t,
            "\nfilter {filter}: ENOSYS for every x32-ABI number (bit 30 set)"
        );
    }
    filter += 1;
    let _ = writeln!(t, "\nfilter {filter}: EPERM for");
    for (name, nr) in DENIED {
        let _ = writeln!(t, "  {name} ({nr})");
    }
    let _ = writeln!(t, "  clone ({}) with any of the flags", libc::SYS_clone);
    for f in NAMESPACE_CLONE_FLAGS {
        let _ = writeln!(t, "    {f:#x}");
    }
    let _ = writeln!(t, "  ioctl ({}) with request", libc::SYS_ioctl);
    for r in DENIED_IOCTLS {
        let _ = writeln!(t, "    {r:#x}");
    }
    let _ = writeln!(t, "  socket ({}) with family", libc::SYS_socket);
    for f in DENIED_SOCKET_FAMILIES {
        let _ = writeln!(t, "    {f}");
    }
    let bits: Vec<String> = SET_ID_BITS.iter().map(|b| format!("{b:#o}")).collect();
    for (name, nr, mode_arg) in MODE_SETTERS {
        let _ = writeln!(
            t,
            "  {name} ({nr}) with mode (arg {mode_arg}) holding any of {}",
            bits.join(", ")
        );
    }
    for (name, nr, flags_arg, mode_arg) in OPENERS {
        let _ = writeln!(
            t,
            "  {name} ({nr}) with mode (arg {mode_arg}) holding any of {} and flags (arg {flags_arg}) holding O_CREAT ({:#o}) or O_TMPFILE ({:#o})",
            bits.join(", "),
            libc::O_CREAT,
            libc::O_TMPFILE
        );
    }
    filter += 1;
    let _ = writeln!(
        t,
        "\nfilter {filter}: ENOSYS for\n  clone3 ({})\n  openat2 ({})",
        libc::SYS_clone3,
        libc::SYS_openat2
    );
    let _ = writeln!(t, "\ncompiled, in the order installed (sha256):");
    for (i, program) in filters()?.iter().enumerate() {
        let _ = writeln!(t, "  filter {}: {}", i + 1, digest(program));
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The policy is its reviewed golden file: a change to the policy fails here until the
    /// file is regenerated (`AGENTKERNEL_BLESS=1`), so it shows in review.
    #[test]
    fn the_policy_is_its_golden_file() {
        let text = policy_text().expect("the policy renders");
        let Some(golden) = GOLDEN else {
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED process seccomp_golden (does not apply): no golden file for {}",
                std::env::consts::ARCH
            );
            return;
        };
        if std::env::var_os("AGENTKERNEL_BLESS").is_some() {
            let path =
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("seccomp-policy.x86_64.txt");
            std::fs::write(&path, &text).expect("write the golden file");
            return;
        }
        assert!(
            text == golden,
            "the seccomp policy differs from {GOLDEN_PATH}: regenerate it with AGENTKERNEL_BLESS=1 and review the diff\n--- policy now:\n{text}"
        );
    }

    #[test]
    fn filters_compile_for_this_arch() {
        let f = filters().expect("filters compile");
        assert_eq!(f.len(), if cfg!(target_arch = "x86_64") { 3 } else { 2 });
        assert!(f.iter().all(|p| !p.is_empty()));
    }
}
