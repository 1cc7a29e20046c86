// What a VMM on the bare CPU adds to a plan before VMLAUNCH: the capability MSRs read from the
// CPU itself (SDM Vol. 3D, Appendix A says which exist), its own host state (SDM 25.5 "Host-State
// Area"), a loaded guest's registers (25.4 "Guest-State Area") and its EPT root, with the
// VM-entry checks (27.2-27.3) run again on the VMCS it will write.

extension VMXCapabilities {
    /// The capability MSRs this processor has, read through `rdmsr`, which is only asked for
    /// MSRs that exist (reading one that does not is a #GP): IA32_VMX_BASIC to CR4_FIXED1 and
    /// VMCS_ENUM always; the TRUE_* controls when BASIC bit 55 says so; the secondary controls
    /// when the primary ones may set bit 31; EPT/VPID capabilities when the secondary controls
    /// may enable EPT or VPID; VM functions when they may enable them; the tertiary controls
    /// when the primary ones may set bit 17 (SDM A.1, A.3.2, A.3.3, A.10, A.11).
    public static func read(physicalAddressWidth: Int, rdmsr: (VMXCapabilityMSR) -> UInt64) -> VMXCapabilities {
        var capabilities = VMXCapabilities(physicalAddressWidth: physicalAddressWidth, msrs: [])
        let always: [VMXCapabilityMSR] = [.basic, .pinBasedControls, .processorBasedControls, .exitControls, .entryControls, .misc,
                                          .cr0Fixed0, .cr0Fixed1, .cr4Fixed0, .cr4Fixed1, .vmcsEnumeration]
        for msr in always { capabilities[msr] = rdmsr(msr) }
        if capabilities.hasTrueControls {
            for msr in [VMXCapabilityMSR.truePinBasedControls, .trueProcessorBasedControls, .trueExitControls, .trueEntryControls] {
                capabilities[msr] = rdmsr(msr)
            }
        }
        let primaryMayBeOne = (capabilities[.processorBasedControls] ?? 0) >> 32
        if primaryMayBeOne & (1 << 31) != 0 {
            let secondary = rdmsr(.processorBasedControls2)
            capabilities[.processorBasedControls2] = secondary
            let secondaryMayBeOne = secondary >> 32
            let ept = UInt64(SecondaryProcessorBasedControls.enableEPT.rawValue), vpid = UInt64(SecondaryProcessorBasedControls.enableVPID.rawValue)
            if secondaryMayBeOne & (ept | vpid) != 0 { capabilities[.eptVPIDCapabilities] = rdmsr(.eptVPIDCapabilities) }
            if secondaryMayBeOne & UInt64(SecondaryProcessorBasedControls.enableVMFunctions.rawValue) != 0 {
                capabilities[.vmFunctions] = rdmsr(.vmFunctions)
            }
        }
        if primaryMayBeOne & (1 << 17) != 0 { capabilities[.processorBasedControls3] = rdmsr(.processorBasedControls3) }
        return capabilities
    }
}

/// The VMM's own state, which every VM exit loads (SDM 25.5, 28.5 "Loading Host State"): what
/// it runs with when it executes VMLAUNCH, read from the CPU by a bare-metal VMM.
public struct VMXHostState: Sendable, Hashable {
    public var cr0: UInt64, cr3: UInt64, cr4: UInt64
    public var codeSelector: UInt16 = 0x08, dataSelector: UInt16 = 0x10, taskSelector: UInt16 = 0x18
    /// FS and GS selectors (0 in a 64-bit kernel that uses their bases only).
    public var fsSelector: UInt16 = 0, gsSelector: UInt16 = 0
    public var fsBase: UInt64 = 0, gsBase: UInt64 = 0
    public var taskBase: UInt64, gdtBase: UInt64, idtBase: UInt64
    public var efer: UInt64, pat: UInt64
    /// Where a VM exit resumes the VMM, and its stack (the world switch writes the stack pointer
    /// again before each entry: it is wherever the VMM's call left it).
    public var entry: UInt64, stack: UInt64

    public init(cr0: UInt64, cr3: UInt64, cr4: UInt64, taskBase: UInt64, gdtBase: UInt64, idtBase: UInt64,
                efer: UInt64, pat: UInt64, entry: UInt64, stack: UInt64) {
        self.cr0 = cr0
        self.cr3 = cr3
        self.cr4 = cr4
        self.taskBase = taskBase
        self.gdtBase = gdtBase
        self.idtBase = idtBase
        self.efer = efer
        self.pat = pat
        self.entry = entry
        self.stack = stack
    }
}

/// A guest's registers at its first VM entry: a loaded guest image's, or a CPU's after reset.
public struct VMXGuestStart: Sendable {
    public var special: SpecialRegisters
    public var rip: UInt64, rsp: UInt64, rflags: UInt64

    public init(special: SpecialRegisters, rip: UInt64, rsp: UInt64, rflags: UInt64 = 0x2) {
        self.special = special
        self.rip = rip
        self.rsp = rsp
        self.rflags = rflags
    }
}

extension VMXConfiguration {
    /// Plans this configuration for `capabilities` as a bare-metal VMM runs it: the plan's
    /// controls and structures (`plan(for:environment:)`), then `host` as the host state,
    /// `guest`'s registers as the guest state (CR0 and CR4 with the bits VMX operation fixes,
    /// the guest's own values in the read shadows), and `eptPointer` (the EPT the VMM built) in
    /// place of the plan's model layout. The plan's `entryFailures` are those of this VMCS.
    public func plan(for capabilities: VMXCapabilities, host: VMXHostState, guest: VMXGuestStart, eptPointer: UInt64?,
                     environment: VMEntryEnvironment = VMEntryEnvironment()) throws(VMXPlanError) -> VMXPlan {
        var planner = VMXPlanner(configuration: self, capabilities: capabilities)
        var plan = try planner.run(environment: environment, validate: false)
        plan.vmcs.setHostState(host)
        plan.vmcs.setGuestState(guest, capabilities: capabilities, unrestricted: unrestrictedGuest)
        if let eptPointer, plan.vmcs.wasWritten(.eptPointer) {
            plan.vmcs[.eptPointer] = eptPointer
            plan.decisions.removeAll { $0.knob == "ept" && $0.text.hasPrefix("EPTP") }
            plan.decisions.append(VMXPlanDecision(knob: "ept", text: "EPTP \(hexString(eptPointer)): the VMM's own EPT hierarchy"))
        }
        plan.decisions.removeAll { $0.knob == "stacks" }
        let hostStack = host.stack == 0 ? "host RSP written by the world switch before each entry (the VMM's stack where it runs the guest)"
            : "host RSP \(hexString(host.stack))"
        plan.decisions.append(VMXPlanDecision(knob: "stacks", text: "\(hostStack), guest RSP \(hexString(guest.rsp))"))
        plan.entryFailures = VMEntryValidator(capabilities: capabilities, environment: environment).validate(plan.vmcs)
        return plan
    }
}

extension VMCSImage {
    /// The host-state area from `host` (SDM 25.5.1-25.5.2).
    public mutating func setHostState(_ host: VMXHostState) {
        self[.hostCR0] = host.cr0
        self[.hostCR3] = host.cr3
        self[.hostCR4] = host.cr4
        self[.hostCSSelector] = UInt64(host.codeSelector)
        for field in [VMCSField.hostSSSelector, .hostDSSelector, .hostESSelector] { self[field] = UInt64(host.dataSelector) }
        self[.hostFSSelector] = UInt64(host.fsSelector)
        self[.hostGSSelector] = UInt64(host.gsSelector)
        self[.hostTRSelector] = UInt64(host.taskSelector)
        self[.hostFSBase] = host.fsBase
        self[.hostGSBase] = host.gsBase
        self[.hostTRBase] = host.taskBase
        self[.hostGDTRBase] = host.gdtBase
        self[.hostIDTRBase] = host.idtBase
        self[.hostIA32EFER] = host.efer
        self[.hostIA32PAT] = host.pat
        self[.hostRIP] = host.entry
        self[.hostRSP] = host.stack
    }

    /// The guest-state area from `guest` (SDM 25.4.1): segments in access-rights form (a null
    /// selector other than CS's is unusable, as after a load of a null selector), descriptor
    /// tables, RIP/RSP/RFLAGS, EFER, and CR0/CR4 with IA32_VMX_CR{0,4}_FIXED0 bits set and
    /// FIXED1 bits clear (CR0.PE and PG may stay clear with unrestricted guest, SDM 27.3.1.1);
    /// the read shadows hold the guest's own values, so a MOV from CR0/CR4 reads what it wrote.
    public mutating func setGuestState(_ guest: VMXGuestStart, capabilities: VMXCapabilities, unrestricted: Bool) {
        let special = guest.special
        let segments: [(Segment, VMCSField, VMCSField, VMCSField, VMCSField)] = [
            (special.cs, .guestCSSelector, .guestCSBase, .guestCSLimit, .guestCSAccessRights),
            (special.ss, .guestSSSelector, .guestSSBase, .guestSSLimit, .guestSSAccessRights),
            (special.ds, .guestDSSelector, .guestDSBase, .guestDSLimit, .guestDSAccessRights),
            (special.es, .guestESSelector, .guestESBase, .guestESLimit, .guestESAccessRights),
            (special.fs, .guestFSSelector, .guestFSBase, .guestFSLimit, .guestFSAccessRights),
            (special.gs, .guestGSSelector, .guestGSBase, .guestGSLimit, .guestGSAccessRights),
            (special.tr, .guestTRSelector, .guestTRBase, .guestTRLimit, .guestTRAccessRights),
            (special.ldt, .guestLDTRSelector, .guestLDTRBase, .guestLDTRLimit, .guestLDTRAccessRights),
        ]
        let protected = special.cr0 & ControlBits.cr0PE != 0
        for (index, (segment, selector, base, limit, rights)) in segments.enumerated() {
            var segment = segment
            // In protected mode a null selector in a data segment register or LDTR is unusable;
            // CS, SS (in 64-bit mode it may be null but usable) and TR keep their descriptors.
            if protected && segment.selector & 0xFFFC == 0 && (index >= 2 && index != 6) { segment.unusable = true }
            self[selector] = UInt64(segment.selector)
            self[base] = segment.base
            self[limit] = UInt64(segment.limit)
            self[rights] = UInt64(segment.vmxAccessRights)
        }
        self[.guestGDTRBase] = special.gdt.base
        self[.guestGDTRLimit] = UInt64(special.gdt.limit)
        self[.guestIDTRBase] = special.idt.base
        self[.guestIDTRLimit] = UInt64(special.idt.limit)
        var cr0MustBeOne = capabilities.cr0MustBeOne
        if unrestricted { cr0MustBeOne &= ~(ControlBits.cr0PE | ControlBits.cr0PG) }
        self[.guestCR0] = (special.cr0 | cr0MustBeOne) & (capabilities.cr0MayBeOne | 0xFFFF_FFFF_0000_0000)
        self[.guestCR4] = (special.cr4 | capabilities.cr4MustBeOne) & (capabilities.cr4MayBeOne | 0xFFFF_FFFF_0000_0000)
        self[.cr0ReadShadow] = special.cr0
        self[.cr4ReadShadow] = special.cr4
        self[.guestCR3] = special.cr3
        if wasWritten(.guestIA32EFER) || special.efer != 0 { self[.guestIA32EFER] = special.efer }
        self[.guestRIP] = guest.rip
        self[.guestRSP] = guest.rsp
        self[.guestRFLAGS] = guest.rflags
    }
}

extension VMXConfiguration {
    /// The configuration HV's bare-metal VMX engine runs a guest with (BareMetal/Kernel/VMX.swift):
    /// EPT (2-MByte pages where the CPU has them) with VPID 1, unrestricted guest for a guest that
    /// starts in real mode, the MSR bitmap (FS, GS and KERNEL_GS base pass through, as the
    /// default says; every other MSR exits), the I/O bitmaps trapping every port (the guest
    /// reaches no port of the machine), `preemptionTimerTSC` TSC ticks per slice of the VMX
    /// preemption timer, and the VMM's 4-KByte structures at `structureBase`.
    public static func bareMetal(guestMode: VMXGuestMode, structureBase: UInt64, preemptionTimerTSC: UInt64?) -> VMXConfiguration {
        var configuration = VMXConfiguration()
        configuration.guestMode = guestMode
        configuration.unrestrictedGuest = guestMode == .realMode
        configuration.structureBase = structureBase
        configuration.preemptionTimerTSC = preemptionTimerTSC
        configuration.io = .bitmap(trappedPorts: [0...0xFFFF])
        return configuration
    }

    /// CR0 and CR4 for VMX operation: `cr0` and `cr4` with the bits IA32_VMX_CR{0,4}_FIXED0
    /// require set (CR0.NE, PE, PG; CR4.VMXE), as VMXON needs them (SDM 24.8, A.7-A.8).
    public static func controlRegistersForVMXON(cr0: UInt64, cr4: UInt64, capabilities: VMXCapabilities) -> (cr0: UInt64, cr4: UInt64) {
        (cr0 | capabilities.cr0MustBeOne, cr4 | capabilities.cr4MustBeOne)
    }
}
