// A VM's configuration is a plain value, validated before anything is created
// (Documentation/Architecture.md, Conventions: "configuration as values, validated before anything runs").

/// A configuration field that is out of range, with what would be valid.
public struct ConfigurationError: Error, Equatable, CustomStringConvertible {
    /// The field, as the API spells it ("memorySize", "cpuCount").
    public var field: String
    /// The rejected value, as text.
    public var value: String
    /// What would be accepted.
    public var expected: String

    public init(field: String, value: String, expected: String) {
        self.field = field
        self.value = value
        self.expected = expected
    }

    public var description: String { "\(field): \(value) is invalid; expected \(expected)" }
}

/// Where a VM's interrupt controllers live (Documentation/Interrupts.md).
public enum InterruptControllerMode: String, Sendable, CaseIterable {
    /// No interrupt controllers: guests poll, and `HLT` exits to the monitor.
    case none
    /// LAPICs, I/O APIC and PICs emulated in the kernel (KVM_CREATE_IRQCHIP). `HLT` waits in
    /// the kernel for an interrupt; APs wait for INIT-SIPI-SIPI.
    case kernel
    /// LAPICs in the kernel, HV's I/O APIC model in user space at 0xFEC00000, no PIC
    /// (KVM_CAP_SPLIT_IRQCHIP), as QEMU's `kernel-irqchip=split`.
    case split
}

/// Where the PC's 8254 programmable interval timer (PIT, ports 0x40-0x43, with the PC speaker
/// port 0x61 that gates channel 2) lives. Linux needs it: its timer check wants IRQ 0 ticking and
/// it calibrates the TSC against channel 2 (Documentation/Interrupts.md, "The PIT").
public enum PITMode: String, Sendable, CaseIterable {
    /// The kernel's PIT where the kernel owns the interrupt controllers (`kernel`), none otherwise.
    case automatic
    /// No PIT: ports 0x40-0x43 and 0x61 reach the device bus like any other port.
    case none
    /// KVM's in-kernel 8254 (KVM_CREATE_PIT2) with the speaker port; needs `interruptController = kernel`,
    /// since it raises IRQ 0 on the in-kernel PIC and I/O APIC.
    case kernel
}

/// The shape of a VM. Build one, `validate()` it, hand it to a backend.
public struct VirtualMachineConfiguration: Sendable, Equatable {
    /// Guest RAM in bytes: a multiple of 4 KiB.
    public var memorySize: UInt64
    /// Number of vCPUs, at least 1 (and at most what the backend reports).
    public var cpuCount: Int
    /// What `HLT` does when nothing can wake the vCPU.
    public var haltPolicy: HaltPolicy
    /// Accesses to guest-physical addresses with no RAM and no device.
    public var unmappedMMIO: UnmappedAccessPolicy
    /// Accesses to I/O ports with no device (a PC ignores them; default `ignore`).
    public var unmappedPorts: UnmappedAccessPolicy
    /// Stop the VM after this many seconds of running (nil: no limit).
    public var timeLimit: Double?
    /// Stop the VM after this many exits over all vCPUs (nil: no limit).
    public var exitLimit: UInt64?
    /// Intercept RDMSR/WRMSR of MSRs the backend does not know, so handlers see them as
    /// `VMExit.msrRead`/`.msrWrite` (invalid-MSR trapping). Unhandled ones fault (#GP).
    public var trapUnknownMSRs: Bool
    /// Keep per-exit-kind counts and latency histograms.
    public var collectExitStatistics: Bool
    /// Where the interrupt controllers live.
    public var interruptController: InterruptControllerMode
    /// The VMX-preemption timer, emulated on hosted backends by a host timer that kicks every
    /// vCPU out of the guest this often (seconds) and hands it a `VMExit.preemptionTimer`. Unlike
    /// the hardware timer it counts wall-clock time, not time spent in the guest.
    public var preemptionTimerInterval: Double?
    /// What a guest reset does (default: stop the VM and report it).
    public var resetPolicy: ResetPolicy
    /// Where the 8254 PIT lives (default: in the kernel when the interrupt controllers are).
    public var pit: PITMode
    /// The CPU the guest sees (CPUID): nil for everything the backend can give (`CPUModel.Base.host`).
    public var cpuModel: CPUModel?
    /// Back guest RAM with the host's transparent huge pages where it can (2 MiB-aligned,
    /// `MADV_HUGEPAGE`; `MemoryRegion`), so KVM maps it with 2 MiB EPT/NPT entries (default on,
    /// as QEMU does). Off: 4 KiB pages only, each touched page faulted in on its own.
    public var hugePages: Bool = true
    /// vCPU pinning: vCPU index -> the host CPUs its thread may run on (`sched_setaffinity(2)`,
    /// set by the vCPU thread itself as it starts). vCPUs not named run anywhere.
    public var vcpuAffinity: [Int: [Int]] = [:]
    #if os(Linux)
    /// Seccomp allow-lists from `Machine.start` on: the VMM list on every thread of the
    /// process, the vCPU list on each vCPU thread (Documentation/Confinement.md). nil (the
    /// SDK's default) confines nothing; `hv run` confines unless told `--seccomp off`. The
    /// filters stay for the life of the process: confine a process that runs one VM.
    public var confinement: Confinement?
    #endif

    /// The PIT the backend creates: `pit` with `automatic` resolved.
    public var effectivePIT: PITMode {
        pit == .automatic ? (interruptController == .kernel ? .kernel : .none) : pit
    }

    /// Host CPUs a pinning may name: glibc's cpu_set_t (CPU_SETSIZE).
    public static let maximumHostCPU = 1024

    /// The smallest and largest RAM sizes accepted.
    public static let memoryRange: ClosedRange<UInt64> = 4096...(1 << 40)
    /// The most vCPUs a configuration can name (8-bit xAPIC IDs); backends may allow fewer.
    public static let maximumCPUCount = 255
    /// The longest time limit or timer interval (about 31 years): any longer one is a mistake.
    public static let maximumSeconds: Double = 1e9

    public init(memorySize: UInt64 = 2 << 20, cpuCount: Int = 1, haltPolicy: HaltPolicy = .stop,
                unmappedMMIO: UnmappedAccessPolicy = .stop, unmappedPorts: UnmappedAccessPolicy = .ignore,
                timeLimit: Double? = nil, exitLimit: UInt64? = nil, trapUnknownMSRs: Bool = true,
                collectExitStatistics: Bool = true, interruptController: InterruptControllerMode = .none)
    {
        self.memorySize = memorySize
        self.cpuCount = cpuCount
        self.haltPolicy = haltPolicy
        self.unmappedMMIO = unmappedMMIO
        self.unmappedPorts = unmappedPorts
        self.timeLimit = timeLimit
        self.exitLimit = exitLimit
        self.trapUnknownMSRs = trapUnknownMSRs
        self.collectExitStatistics = collectExitStatistics
        self.interruptController = interruptController
        self.preemptionTimerInterval = nil
        self.resetPolicy = .stop
        self.pit = .automatic
        self.cpuModel = nil
    }

    /// Checks every field; the error names the first invalid one and what would be valid.
    public func validate() throws(ConfigurationError) {
        guard memorySize > 0 else {
            throw ConfigurationError(field: "memorySize", value: "0", expected: "at least 4096 bytes (4 KiB)")
        }
        // The range first: the suggestion below rounds up, which must not overflow.
        guard Self.memoryRange.contains(memorySize) else {
            throw ConfigurationError(field: "memorySize", value: "\(memorySize)", expected: "4096 (4 KiB) to 1 TiB")
        }
        guard memorySize % 4096 == 0 else {
            throw ConfigurationError(field: "memorySize", value: "\(memorySize)",
                                     expected: "a multiple of 4096 (4 KiB pages), e.g. \((memorySize / 4096 + 1) * 4096)")
        }
        // The PC platform gives each vCPU an 8-bit xAPIC ID (MADT Local APIC entries, APIC ID 255
        // is the broadcast): 255 at most, and the backend may allow fewer.
        guard (1...Self.maximumCPUCount).contains(cpuCount) else {
            throw ConfigurationError(field: "cpuCount", value: "\(cpuCount)", expected: cpuCount < 1 ? "at least 1" : "at most \(Self.maximumCPUCount)")
        }
        // Bounded, so that deadlines and nanosecond counts made from them cannot overflow.
        if let timeLimit, !(timeLimit > 0) || !(timeLimit <= Self.maximumSeconds) {
            throw ConfigurationError(field: "timeLimit", value: "\(timeLimit)", expected: "a positive number of seconds, at most 1e9 (about 31 years)")
        }
        if let interval = preemptionTimerInterval, !(interval > 0) || !(interval <= Self.maximumSeconds) {
            throw ConfigurationError(field: "preemptionTimerInterval", value: "\(interval)", expected: "a positive number of seconds, at most 1e9 (about 31 years)")
        }
        if preemptionTimerInterval != nil, cpuCount > 64 {
            throw ConfigurationError(field: "cpuCount", value: "\(cpuCount)", expected: "at most 64 with a preemption timer")
        }
        for (vcpu, cpus) in vcpuAffinity.sorted(by: { $0.key < $1.key }) {
            guard (0..<cpuCount).contains(vcpu) else {
                throw ConfigurationError(field: "vcpuAffinity", value: "vCPU \(vcpu)", expected: "a vCPU of 0...\(cpuCount - 1)")
            }
            guard !cpus.isEmpty, cpus.allSatisfy({ (0..<Self.maximumHostCPU).contains($0) }) else {
                throw ConfigurationError(field: "vcpuAffinity", value: "vCPU \(vcpu): \(cpus)", expected: "one or more host CPUs of 0...\(Self.maximumHostCPU - 1)")
            }
        }
        if pit == .kernel, interruptController != .kernel {
            throw ConfigurationError(field: "pit", value: "kernel",
                                     expected: "none or automatic with interruptController \(interruptController.rawValue) (the in-kernel PIT needs interruptController kernel)")
        }
        if let exitLimit, exitLimit == 0 {
            throw ConfigurationError(field: "exitLimit", value: "0", expected: "at least 1 (or no limit)")
        }
    }
}
