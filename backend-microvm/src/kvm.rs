//! Is KVM real here? `/dev/kvm` existing is not enough: inside some cloud VMs it is PVM
//! (`kvm_pvm`, a page-table-based hypervisor nested in the VM), under which guest kernels
//! run hundreds of times slower than QEMU's software emulation and then fail. Real means a
//! KVM device, the CPU's virtualization flag (`vmx` or `svm`) and no `kvm_pvm` module.

use std::path::Path;

/// What the probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvmProbe {
    /// `/dev/kvm` exists.
    pub device: bool,
    /// The CPU virtualization flag `/proc/cpuinfo` shows (`vmx`, `svm`), if any.
    pub cpu_flag: Option<&'static str>,
    /// The `kvm_pvm` module is loaded.
    pub pvm: bool,
    /// The CPU says it runs under a hypervisor.
    pub nested: bool,
}

impl KvmProbe {
    /// Probes this machine.
    pub fn detect() -> KvmProbe {
        KvmProbe::from_parts(
            Path::new("/dev/kvm").exists(),
            &std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default(),
            Path::new("/sys/module/kvm_pvm").exists(),
        )
    }

    /// The verdict from the pieces (for tests and other sources).
    pub fn from_parts(device: bool, cpuinfo: &str, pvm: bool) -> KvmProbe {
        let flags: Vec<&str> = cpuinfo
            .lines()
            .find(|l| l.starts_with("flags"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, f)| f.split_whitespace().collect())
            .unwrap_or_default();
        KvmProbe {
            device,
            cpu_flag: ["vmx", "svm"].into_iter().find(|f| flags.contains(f)),
            pvm,
            nested: flags.contains(&"hypervisor"),
        }
    }

    /// Whether hardware-accelerated KVM is usable.
    pub fn is_real(&self) -> bool {
        self.device && self.cpu_flag.is_some() && !self.pvm
    }

    /// Why (not), in one line, for `doctor`.
    pub fn reason(&self) -> String {
        let under = if self.nested {
            " (this machine is itself a VM)"
        } else {
            ""
        };
        match (self.device, self.cpu_flag, self.pvm) {
            (false, _, _) => {
                format!("no /dev/kvm{under}: microVMs run under QEMU software emulation (TCG)")
            }
            (true, _, true) => format!(
                "/dev/kvm is PVM (kvm_pvm loaded), not hardware virtualization{under}: guests under it crawl and fail, so microVMs run under QEMU software emulation (TCG)"
            ),
            (true, None, false) => format!(
                "/dev/kvm exists but the CPU shows no vmx/svm flag{under}: microVMs run under QEMU software emulation (TCG)"
            ),
            (true, Some(flag), false) => format!("hardware KVM ({flag})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTEL: &str = "processor\t: 0\nflags\t\t: fpu vme vmx sse2\n";
    const PVM_GUEST: &str = "processor\t: 0\nflags\t\t: fpu sse2 hypervisor\n";

    #[test]
    fn hardware_kvm_needs_the_device_the_flag_and_no_pvm() {
        let real = KvmProbe::from_parts(true, INTEL, false);
        assert!(real.is_real());
        assert_eq!(real.reason(), "hardware KVM (vmx)");
        assert!(!KvmProbe::from_parts(true, INTEL, true).is_real());
        assert!(!KvmProbe::from_parts(false, INTEL, false).is_real());
        let pvm = KvmProbe::from_parts(true, PVM_GUEST, true);
        assert!(!pvm.is_real());
        assert!(pvm.reason().contains("PVM"), "{}", pvm.reason());
        assert!(pvm.reason().contains("itself a VM"), "{}", pvm.reason());
        let no_flag = KvmProbe::from_parts(true, PVM_GUEST, false);
        assert!(
            no_flag.reason().contains("no vmx/svm"),
            "{}",
            no_flag.reason()
        );
    }

    #[test]
    fn this_machine_gets_a_verdict() {
        let probe = KvmProbe::detect();
        println!("KVM probe: {probe:?}: {}", probe.reason());
        if Path::new("/sys/module/kvm_pvm").exists() {
            assert!(!probe.is_real(), "PVM must never count as real KVM");
        }
    }
}
