// The hosted meaning of `VMXConfiguration` on KVM: which knob KVM honours and how
// (Documentation/Architecture.md, "Backends and what they can honour"), and `apply`, which installs
// what can be installed. Kernel docs: Documentation/virt/kvm/api.rst 4.126
// KVM_X86_SET_MSR_FILTER, 4.59 KVM_SET_GUEST_DEBUG, 7.21 KVM_CAP_X86_USER_SPACE_MSR.
#if os(Linux)
import CKVM
import HVCore

/// How the KVM backend honours one VMX knob.
public enum KVMVMXSupport: Sendable, Hashable {
    /// HV installs it through a KVM ioctl (the text says which).
    case applied(String)
    /// KVM already does it on its own; nothing for HV to do.
    case inherent(String)
    /// KVM offers user space no way to ask for it: turning it on is an error.
    case unsupported(String)

    /// Every `VMXConfiguration.knobNames` entry and how KVM honours it.
    public static let table: [String: KVMVMXSupport] = [
        "ept": .inherent("KVM owns the EPT; memory slots are HV's layout (Documentation/Architecture.md, backends table: EPT layout)"),
        "vpid": .inherent("KVM allocates a VPID per vCPU itself (kvm_intel enable_vpid)"),
        "unrestricted-guest": .inherent("KVM uses unrestricted guest itself, or emulates real mode (kvm_intel unrestricted_guest)"),
        "preemption-timer": .applied("a host timer kicks KVM_RUN and the run loop hands out VMExit.preemptionTimer (Documentation/Architecture.md, backends table: preemption timer); set VirtualMachineConfiguration.preemptionTimerInterval"),
        "huge-pages-1g": .inherent("KVM picks EPT page sizes from the host backing of each memory slot"),
        "ept-ad": .inherent("KVM decides EPT accessed/dirty use itself (kvm_intel eptad)"),
        "pat": .inherent("KVM saves and loads the guest PAT on every entry and exit"),
        "efer": .inherent("KVM saves and loads the guest EFER on every entry and exit"),
        "msr-bitmap": .applied("trapped MSRs are denied by KVM_X86_SET_MSR_FILTER (api.rst 4.126) and exit with KVM_MSR_EXIT_REASON_FILTER; the rest KVM handles or passes through"),
        "trap-invalid-msrs": .applied("KVM_CAP_X86_USER_SPACE_MSR with KVM_MSR_EXIT_REASON_UNKNOWN|INVAL (api.rst 7.21), enabled at VM creation by VirtualMachineConfiguration.trapUnknownMSRs"),
        "mov-dr-exiting": .applied("KVM_SET_GUEST_DEBUG with KVM_GUESTDBG_USE_HW_BP and DR7.GD (api.rst 4.59): MOV DR at CPL 0 exits as KVM_EXIT_DEBUG; the guest's own DR7 is shadowed"),
        "monitor-trap-flag": .applied("KVM_SET_GUEST_DEBUG with KVM_GUESTDBG_SINGLESTEP (api.rst 4.59): every instruction exits as KVM_EXIT_DEBUG"),
        "cr3-exiting": .unsupported("KVM offers no CR-access exits to user space (Documentation/Architecture.md, backends table: CR access monitoring, KVM: no)"),
        "cr8-exiting": .unsupported("KVM offers no CR-access exits to user space (Documentation/Architecture.md, backends table: CR access monitoring, KVM: no)"),
        "nx": .unsupported("KVM offers user space no way to pin guest EFER.NXE"),
        "smep": .unsupported("KVM offers user space no way to pin guest CR4.SMEP"),
        "smap": .unsupported("KVM offers user space no way to pin guest CR4.SMAP"),
        "io-bitmap": .inherent("KVM exits every port not claimed by an in-kernel device as KVM_EXIT_IO; ports the bitmap would pass through reach HV's device bus instead"),
        "unconditional-io": .inherent("KVM exits every port not claimed by an in-kernel device as KVM_EXIT_IO"),
        "tpr-shadow": .inherent("KVM uses it with an in-kernel LAPIC (interruptController kernel or split)"),
        "apic-access": .inherent("KVM maps its APIC-access page itself with an in-kernel LAPIC"),
        "x2apic": .inherent("KVM virtualises x2APIC mode with an in-kernel LAPIC (KVM_CAP_X2APIC_API)"),
        "apic-register-virtualization": .inherent("KVM enables APICv itself with an in-kernel LAPIC (kvm_intel enable_apicv)"),
        "virtual-interrupt-delivery": .inherent("KVM enables APICv itself with an in-kernel LAPIC (kvm_intel enable_apicv)"),
        "posted-interrupts": .inherent("KVM enables posted interrupts itself with an in-kernel LAPIC (kvm_intel enable_apicv)"),
        "vmcs-shadowing": .unsupported("VMCS shadowing is KVM's nested-VMX detail (kvm_intel enable_shadow_vmcs); user space cannot ask for it per VM"),
    ]

    /// Knobs that need an in-kernel LAPIC to be honoured.
    static let needsKernelLAPIC: Set<String> = [
        "tpr-shadow", "apic-access", "x2apic", "apic-register-virtualization",
        "virtual-interrupt-delivery", "posted-interrupts",
    ]

    /// Whether knob `name` is on in `vmx` (the reverse of `VMXConfiguration.set`).
    public static func isOn(_ name: String, in vmx: VMXConfiguration) -> Bool {
        switch name {
        case "ept": vmx.ept
        case "vpid": vmx.vpid
        case "unrestricted-guest": vmx.unrestrictedGuest
        case "preemption-timer": vmx.preemptionTimerTSC != nil
        case "huge-pages-1g": vmx.hugePages == .pages1GiB
        case "ept-ad": vmx.eptAccessedDirty
        case "pat": vmx.loadSavePAT
        case "efer": vmx.loadSaveEFER
        case "msr-bitmap": vmx.msrBitmap
        case "trap-invalid-msrs": vmx.trapInvalidMSRs
        case "mov-dr-exiting": vmx.movDRExiting
        case "monitor-trap-flag": vmx.monitorTrapFlag
        case "cr3-exiting": vmx.cr3LoadExiting || vmx.cr3StoreExiting
        case "cr8-exiting": vmx.cr8Exiting
        case "nx": vmx.enforceNX
        case "smep": vmx.enforceSMEP
        case "smap": vmx.enforceSMAP
        case "io-bitmap": if case .bitmap = vmx.io { true } else { false }
        case "unconditional-io": vmx.io == .unconditional
        case "tpr-shadow": vmx.apic.tprShadow
        case "apic-access": vmx.apic.apicAccessPage
        case "x2apic": vmx.apic.x2APICMode
        case "apic-register-virtualization": vmx.apic.registerVirtualization
        case "virtual-interrupt-delivery": vmx.apic.virtualInterruptDelivery
        case "posted-interrupts": vmx.apic.postedInterrupts
        case "vmcs-shadowing": vmx.vmcsShadowing
        default: false
        }
    }
}

extension KVMVirtualMachine {
    /// Checks `vmx` against `KVMVMXSupport.table` and installs what KVM can honour: the MSR
    /// filter for `trappedMSRs` and, on each of `vcpus`, guest debug for the debug knobs. A knob
    /// that is on and that KVM cannot honour throws `.unsupported` naming it, before anything is
    /// installed. Call before the vCPUs run.
    public func apply(_ vmx: VMXConfiguration, vcpus: [KVMVCPU] = []) throws(HVError) {
        // 1. Refuse what KVM cannot do, naming the knob (Documentation/Architecture.md, Conventions: never a silent no-op).
        for name in VMXConfiguration.knobNames where KVMVMXSupport.isOn(name, in: vmx) {
            switch KVMVMXSupport.table[name] {
            case .unsupported(let reason)?:
                throw .unsupported(knob: name, backend: "kvm", reason: reason)
            case nil:
                throw .unsupported(knob: name, backend: "kvm", reason: "no hosted meaning is defined for this knob")
            default:
                if KVMVMXSupport.needsKernelLAPIC.contains(name), configuration.interruptController == .none {
                    throw .unsupported(knob: name, backend: "kvm", reason: "needs an in-kernel LAPIC (interruptController kernel or split)")
                }
            }
        }
        if vmx.preemptionTimerTSC != nil, configuration.preemptionTimerInterval == nil {
            throw .unsupported(knob: "preemption-timer", backend: "kvm",
                               reason: "the host timer that emulates it is part of the VM: set VirtualMachineConfiguration.preemptionTimerInterval")
        }
        if vmx.cr0GuestHostMask != 0 {
            throw .unsupported(knob: "cr0-guest-host-mask", backend: "kvm", reason: "KVM offers no CR-access exits to user space")
        }
        if vmx.cr4GuestHostMask != 0 {
            throw .unsupported(knob: "cr4-guest-host-mask", backend: "kvm", reason: "KVM offers no CR-access exits to user space")
        }
        if vmx.trapInvalidMSRs, !configuration.trapUnknownMSRs {
            throw .unsupported(knob: "trap-invalid-msrs", backend: "kvm",
                               reason: "KVM_CAP_X86_USER_SPACE_MSR is enabled only at VM creation: set VirtualMachineConfiguration.trapUnknownMSRs")
        }
        let trapped = vmx.msrBitmap ? Array(Set(vmx.trappedMSRs)).sorted() : []
        if !trapped.isEmpty, !configuration.trapUnknownMSRs {
            throw .unsupported(knob: "msr-bitmap", backend: "kvm",
                               reason: "filtered MSRs reach user space only with KVM_MSR_EXIT_REASON_FILTER: set VirtualMachineConfiguration.trapUnknownMSRs")
        }
        // Exception bitmap: #DB (1) and #BP (3) via guest debug; #MC (18) KVM intercepts itself.
        var debugFlags: UInt32 = 0
        var dr7: UInt64 = 0
        for vector in 0..<32 where vmx.exceptionBitmap & (1 << UInt32(vector)) != 0 {
            switch vector {
            case 1: debugFlags |= UInt32(KVM_GUESTDBG_USE_HW_BP)
            case 3: debugFlags |= UInt32(KVM_GUESTDBG_USE_SW_BP)
            case 18: break
            default:
                throw .unsupported(knob: "exception-bitmap vector \(vector)", backend: "kvm",
                                   reason: "KVM_SET_GUEST_DEBUG intercepts only #DB and #BP for user space")
            }
        }
        if vmx.monitorTrapFlag { debugFlags |= UInt32(KVM_GUESTDBG_SINGLESTEP) }
        if vmx.movDRExiting {
            debugFlags |= UInt32(KVM_GUESTDBG_USE_HW_BP)
            dr7 |= 1 << 13  // DR7.GD: MOV DR faults, and KVM reports it (SDM 18.2.4)
        }
        if debugFlags != 0, vcpus.isEmpty {
            throw .unsupported(knob: vmx.monitorTrapFlag ? "monitor-trap-flag" : (vmx.movDRExiting ? "mov-dr-exiting" : "exception-bitmap"),
                               backend: "kvm", reason: "KVM_SET_GUEST_DEBUG is per vCPU: pass the vCPUs to apply")
        }
        if trapped.count > Int(KVM_MSR_FILTER_MAX_RANGES) {
            throw .configuration(ConfigurationError(field: "trappedMSRs", value: "\(trapped.count) MSRs",
                                                    expected: "at most \(KVM_MSR_FILTER_MAX_RANGES) (one KVM_MSR_FILTER range each)"))
        }
        // 2. Install.
        if !trapped.isEmpty { try setMSRFilter(denying: trapped) }
        if debugFlags != 0 {
            for vcpu in vcpus { try vcpu.setGuestDebug(flags: UInt32(KVM_GUESTDBG_ENABLE) | debugFlags, dr7: dr7) }
        }
    }

    /// KVM_X86_SET_MSR_FILTER (api.rst 4.126): default allow, and one one-MSR range per entry
    /// of `msrs` whose bitmap bit is 0, so reads and writes of it are denied and exit to user
    /// space with KVM_MSR_EXIT_REASON_FILTER.
    func setMSRFilter(denying msrs: [UInt32]) throws(HVError) {
        // One zero byte per range: bit 0 = 0 denies the range's only MSR.
        let bitmaps = UnsafeMutablePointer<UInt8>.allocate(capacity: max(msrs.count, 1))
        defer { bitmaps.deallocate() }
        bitmaps.initialize(repeating: 0, count: max(msrs.count, 1))
        var filter = kvm_msr_filter()
        filter.flags = UInt32(KVM_MSR_FILTER_DEFAULT_ALLOW)
        withUnsafeMutableBytes(of: &filter.ranges) { raw in
            let ranges = raw.bindMemory(to: kvm_msr_filter_range.self)
            for (index, msr) in msrs.enumerated() {
                ranges[index] = kvm_msr_filter_range(
                    flags: UInt32(KVM_MSR_FILTER_READ | KVM_MSR_FILTER_WRITE), nmsrs: 1, base: msr, bitmap: bitmaps + index)
            }
        }
        try KVMSyscall.ioctl(fd, HV_KVM_X86_SET_MSR_FILTER, &filter, "KVM_X86_SET_MSR_FILTER")
    }
}

extension KVMVCPU {
    /// KVM_SET_GUEST_DEBUG (api.rst 4.59): `flags` are KVM_GUESTDBG_*; `dr7` is the debug
    /// control KVM loads when KVM_GUESTDBG_USE_HW_BP is set (DR0-3 stay zero).
    public func setGuestDebug(flags: UInt32, dr7: UInt64 = 0) throws(HVError) {
        var debug = kvm_guest_debug()
        debug.control = flags
        debug.arch.debugreg.7 = dr7
        try KVMSyscall.ioctl(fd, HV_KVM_SET_GUEST_DEBUG, &debug, "KVM_SET_GUEST_DEBUG")
    }
}
#endif
