// From `VMXConfiguration` to a plan: control requests per knob, reconciliation (SDM A.3-A.5),
// the VMCS writes for controls, host and initial guest state, and the VM-entry verdict.

extension VMXConfiguration {
    /// Plans this configuration for `capabilities`, or throws every problem found.
    public func plan(for capabilities: VMXCapabilities, environment: VMEntryEnvironment = VMEntryEnvironment()) throws(VMXPlanError) -> VMXPlan {
        var planner = VMXPlanner(configuration: self, capabilities: capabilities)
        return try planner.run(environment: environment)
    }
}

struct VMXPlanner {
    let config: VMXConfiguration
    let caps: VMXCapabilities
    var requests: [ControlRequest] = Array(repeating: ControlRequest(), count: VMXControlField.allCases.count)
    /// Which knob asked for each required bit, for error messages: (field, bit) -> knob.
    var owners: [(VMXControlField, Int, String)] = []
    var problems: [VMXPlanProblem] = []
    var decisions: [VMXPlanDecision] = []

    init(configuration: VMXConfiguration, capabilities: VMXCapabilities) {
        config = configuration
        caps = capabilities
        owners.reserveCapacity(32)
        decisions.reserveCapacity(16)
    }

    mutating func require(_ field: VMXControlField, _ bit: UInt64, _ knob: String) {
        requests[field.rawValue].required |= bit
        own(field, bit, knob)
    }
    mutating func prefer(_ field: VMXControlField, _ bit: UInt64) { requests[field.rawValue].optional |= bit }
    mutating func forbid(_ field: VMXControlField, _ bit: UInt64, _ knob: String) {
        requests[field.rawValue].forbidden |= bit
        own(field, bit, knob)
    }
    /// Records `knob` as the owner of every bit in `bits` (a request may name several, e.g. save and load IA32_PAT).
    mutating func own(_ field: VMXControlField, _ bits: UInt64, _ knob: String) {
        var rest = bits
        while rest != 0 {
            owners.append((field, rest.trailingZeroBitCount, knob))
            rest &= rest - 1
        }
    }
    mutating func note(_ knob: String, _ text: String) { decisions.append(VMXPlanDecision(knob: knob, text: text)) }
    mutating func fail(_ problem: VMXPlanProblem) { problems.append(problem) }

    func knob(for field: VMXControlField, bit: Int) -> String {
        owners.last { $0.0 == field && $0.1 == bit }?.2 ?? "baseline"
    }

    // MARK: requests per knob

    mutating func gatherRequests() {
        // Baseline every VMM needs: see external interrupts and NMIs, HLT, a 64-bit host.
        require(.pinBased, UInt64(PinBasedControls.externalInterruptExiting.rawValue), "baseline")
        require(.pinBased, UInt64(PinBasedControls.nmiExiting.rawValue), "baseline")
        prefer(.pinBased, UInt64(PinBasedControls.virtualNMIs.rawValue))
        require(.primaryProcessorBased, UInt64(PrimaryProcessorBasedControls.hltExiting.rawValue), "baseline")
        require(.primaryExit, UInt64(VMExitControls.hostAddressSpaceSize.rawValue), "baseline")
        prefer(.primaryExit, UInt64(VMExitControls.acknowledgeInterruptOnExit.rawValue))
        if config.guestMode == .longMode { require(.entry, UInt64(VMEntryControls.ia32eModeGuest.rawValue), "guest-mode") }

        if let interval = config.preemptionTimerTSC {
            require(.pinBased, UInt64(PinBasedControls.activateVMXPreemptionTimer.rawValue), "preemption-timer")
            prefer(.primaryExit, UInt64(VMExitControls.saveVMXPreemptionTimerValue.rawValue))
            let ticks = interval >> UInt64(caps.preemptionTimerRate)
            if ticks == 0 || ticks > 0xFFFF_FFFF {
                fail(.invalid(knob: "preemption-timer", reason: "\(interval) TSC ticks is \(ticks) timer ticks at rate 2^\(caps.preemptionTimerRate); it must be 1...0xffffffff"))
            }
            note("preemption-timer", "interval \(interval) TSC ticks = \(ticks) timer ticks (IA32_VMX_MISC rate: TSC bit \(caps.preemptionTimerRate); SDM 26.5.1)")
        }
        let secondary = VMXControlField.secondaryProcessorBased
        if config.ept {
            require(secondary, UInt64(SecondaryProcessorBasedControls.enableEPT.rawValue), "ept")
            // With EPT the guest owns CR3: no CR3 exits unless asked (both are default1, SDM A.2).
            if !config.cr3LoadExiting { forbid(.primaryProcessorBased, UInt64(PrimaryProcessorBasedControls.cr3LoadExiting.rawValue), "ept") }
            if !config.cr3StoreExiting { forbid(.primaryProcessorBased, UInt64(PrimaryProcessorBasedControls.cr3StoreExiting.rawValue), "ept") }
            prefer(secondary, UInt64(SecondaryProcessorBasedControls.enableRDTSCP.rawValue))
            prefer(secondary, UInt64(SecondaryProcessorBasedControls.enableINVPCID.rawValue))
        } else {
            require(.primaryProcessorBased, UInt64(PrimaryProcessorBasedControls.cr3LoadExiting.rawValue), "ept")
            require(.primaryProcessorBased, UInt64(PrimaryProcessorBasedControls.invlpgExiting.rawValue), "ept")
            note("ept", "off: shadow paging needs CR3-load and INVLPG exiting")
        }
        if config.unrestrictedGuest { require(secondary, UInt64(SecondaryProcessorBasedControls.unrestrictedGuest.rawValue), "unrestricted-guest") }
        if config.guestMode == .realMode && !config.unrestrictedGuest {
            fail(.invalid(knob: "guest-mode", reason: "a real-mode guest needs 'unrestricted-guest' (SDM 27.3.1.1 exempts CR0.PE/PG only then)"))
        }
        if config.vpid { require(secondary, UInt64(SecondaryProcessorBasedControls.enableVPID.rawValue), "vpid") }
        if config.loadSavePAT {
            require(.primaryExit, UInt64(VMExitControls.saveIA32PAT.rawValue | VMExitControls.loadIA32PAT.rawValue), "pat")
            require(.entry, UInt64(VMEntryControls.loadIA32PAT.rawValue), "pat")
        }
        if config.loadSaveEFER {
            require(.primaryExit, UInt64(VMExitControls.saveIA32EFER.rawValue | VMExitControls.loadIA32EFER.rawValue), "efer")
            require(.entry, UInt64(VMEntryControls.loadIA32EFER.rawValue), "efer")
        }
        if config.msrBitmap { require(.primaryProcessorBased, UInt64(PrimaryProcessorBasedControls.useMSRBitmaps.rawValue), "msr-bitmap") }
        if config.movDRExiting { require(.primaryProcessorBased, UInt64(PrimaryProcessorBasedControls.movDRExiting.rawValue), "mov-dr-exiting") }
        if config.monitorTrapFlag { require(.primaryProcessorBased, UInt64(PrimaryProcessorBasedControls.monitorTrapFlag.rawValue), "monitor-trap-flag") }
        if config.cr3LoadExiting { require(.primaryProcessorBased, UInt64(PrimaryProcessorBasedControls.cr3LoadExiting.rawValue), "cr3-exiting") }
        if config.cr3StoreExiting { require(.primaryProcessorBased, UInt64(PrimaryProcessorBasedControls.cr3StoreExiting.rawValue), "cr3-exiting") }
        if config.cr8Exiting {
            if config.apic.tprShadow {
                fail(.invalid(knob: "cr8-exiting", reason: "CR8 exiting and 'tpr-shadow' exclude each other in this planner: with a TPR shadow, CR8 accesses use the virtual-APIC page"))
            }
            require(.primaryProcessorBased, UInt64(PrimaryProcessorBasedControls.cr8LoadExiting.rawValue | PrimaryProcessorBasedControls.cr8StoreExiting.rawValue), "cr8-exiting")
        }
        switch config.io {
        case .unconditional: require(.primaryProcessorBased, UInt64(PrimaryProcessorBasedControls.unconditionalIOExiting.rawValue), "unconditional-io")
        case .bitmap: require(.primaryProcessorBased, UInt64(PrimaryProcessorBasedControls.useIOBitmaps.rawValue), "io-bitmap")
        case .none: note("io", "no I/O exiting: the guest reaches every port directly")
        }
        let apic = config.apic
        if apic.tprShadow { require(.primaryProcessorBased, UInt64(PrimaryProcessorBasedControls.useTPRShadow.rawValue), "tpr-shadow") }
        if apic.apicAccessPage { require(secondary, UInt64(SecondaryProcessorBasedControls.virtualizeAPICAccesses.rawValue), "apic-access") }
        if apic.x2APICMode { require(secondary, UInt64(SecondaryProcessorBasedControls.virtualizeX2APICMode.rawValue), "x2apic") }
        if apic.registerVirtualization { require(secondary, UInt64(SecondaryProcessorBasedControls.apicRegisterVirtualization.rawValue), "apic-register-virtualization") }
        if apic.virtualInterruptDelivery { require(secondary, UInt64(SecondaryProcessorBasedControls.virtualInterruptDelivery.rawValue), "virtual-interrupt-delivery") }
        if apic.postedInterrupts {
            require(.pinBased, UInt64(PinBasedControls.processPostedInterrupts.rawValue), "posted-interrupts")
            require(.primaryExit, UInt64(VMExitControls.acknowledgeInterruptOnExit.rawValue), "posted-interrupts")
        }
        if (apic.x2APICMode || apic.registerVirtualization || apic.virtualInterruptDelivery) && !apic.tprShadow {
            fail(.invalid(knob: "tpr-shadow", reason: "x2APIC mode, APIC-register virtualization and virtual-interrupt delivery need 'tpr-shadow' (SDM 27.2.1.1)"))
        }
        if apic.x2APICMode && apic.apicAccessPage {
            fail(.invalid(knob: "x2apic", reason: "'x2apic' and 'apic-access' exclude each other (SDM 27.2.1.1)"))
        }
        if apic.postedInterrupts && !apic.virtualInterruptDelivery {
            fail(.invalid(knob: "posted-interrupts", reason: "posted interrupts need 'virtual-interrupt-delivery' (SDM 27.2.1.1)"))
        }
        if config.vmcsShadowing { require(secondary, UInt64(SecondaryProcessorBasedControls.vmcsShadowing.rawValue), "vmcs-shadowing") }
        if requests[secondary.rawValue].required | requests[secondary.rawValue].optional != 0 {
            // 25.6.2: the secondary controls count only with this bit set.
            if requests[secondary.rawValue].required != 0 {
                require(.primaryProcessorBased, UInt64(PrimaryProcessorBasedControls.activateSecondaryControls.rawValue), knob(for: secondary, bit: Int(requests[secondary.rawValue].required.trailingZeroBitCount)))
            } else {
                prefer(.primaryProcessorBased, UInt64(PrimaryProcessorBasedControls.activateSecondaryControls.rawValue))
            }
        }
    }

    // MARK: capability checks outside the control MSRs

    mutating func checkOtherCapabilities() {
        let ept = caps.eptVPID
        if config.ept {
            if config.eptMemoryType == 6 && !ept.contains(.writeBackEPTPointer) { fail(.capability(knob: "ept", reason: "WB EPT paging structures not supported (IA32_VMX_EPT_VPID_CAP bit 14 is 0)")) }
            if config.eptMemoryType == 0 && !ept.contains(.uncacheableEPTPointer) { fail(.capability(knob: "ept", reason: "UC EPT paging structures not supported (IA32_VMX_EPT_VPID_CAP bit 8 is 0)")) }
            if config.eptMemoryType != 0 && config.eptMemoryType != 6 { fail(.invalid(knob: "ept", reason: "EPT memory type must be 0 (UC) or 6 (WB)")) }
            if caps[.eptVPIDCapabilities] != nil && !ept.contains(.pageWalkLength4) { fail(.capability(knob: "ept", reason: "4-level EPT not supported (IA32_VMX_EPT_VPID_CAP bit 6 is 0)")) }
            switch config.hugePages {
            case .pages1GiB where !ept.contains(.pages1GiB):
                fail(.capability(knob: "huge-pages-1g", reason: "1-GByte EPT pages not supported (IA32_VMX_EPT_VPID_CAP bit 17 is 0)"))
            case .pages2MiB where !ept.contains(.pages2MiB) && caps[.eptVPIDCapabilities] != nil:
                note("huge-pages", "2-MByte EPT pages not supported (IA32_VMX_EPT_VPID_CAP bit 16 is 0): the EPT builder uses 4-KByte pages")
            default:
                note("huge-pages", config.hugePages == .none ? "4-KByte EPT pages only" : "EPT may map \(config.hugePages == .pages1GiB ? "1-GByte and 2-MByte" : "2-MByte") pages (IA32_VMX_EPT_VPID_CAP bits 16-17)")
            }
            if config.eptAccessedDirty && !ept.contains(.accessedDirtyFlags) { fail(.capability(knob: "ept-ad", reason: "EPT accessed/dirty flags not supported (IA32_VMX_EPT_VPID_CAP bit 21 is 0)")) }
            let invept = ept.contains(.singleContextINVEPT) ? "single-context" : ept.contains(.allContextINVEPT) ? "all-context" : "none"
            note("tlb", "INVEPT type after EPT changes: \(invept) (IA32_VMX_EPT_VPID_CAP bits 25-26)")
        } else if config.unrestrictedGuest {
            fail(.invalid(knob: "unrestricted-guest", reason: "needs 'ept' (SDM 27.2.1.1)"))
        }
        if config.vpid {
            if config.vpidValue == 0 { fail(.invalid(knob: "vpid", reason: "VPID 0 is the VMM's own (SDM 27.2.1.1)")) }
            let invvpid = ept.contains(.singleContextINVVPID) ? "single-context" : ept.contains(.allContextINVVPID) ? "all-context" : ept.contains(.individualAddressINVVPID) ? "individual-address" : "none"
            note("tlb", "VPID \(config.vpidValue): no TLB flush on VM entry/exit; INVVPID type for guest TLB flushes: \(invvpid) (IA32_VMX_EPT_VPID_CAP bits 40-43)")
        }
        checkStackSize("host-stack-size", config.hostStackSize)
        checkStackSize("guest-stack-size", config.guestStackSize)
        checkLayout()
        if config.guestMode == .longMode && !config.loadSaveEFER {
            note("efer", "a long-mode guest without 'load IA32_EFER' starts with the EFER the VMM left in the MSR")
        }
        if config.enforceSMAP && caps.cr4MayBeOne & (1 << 21) == 0 { fail(.capability(knob: "smap", reason: "CR4.SMAP cannot be 1 in VMX operation (IA32_VMX_CR4_FIXED1 bit 21 is 0)")) }
        if config.enforceSMEP && caps.cr4MayBeOne & (1 << 20) == 0 { fail(.capability(knob: "smep", reason: "CR4.SMEP cannot be 1 in VMX operation (IA32_VMX_CR4_FIXED1 bit 20 is 0)")) }
        if config.enforceNX && !config.msrBitmap { fail(.invalid(knob: "nx", reason: "pinning EFER.NXE needs 'msr-bitmap' to trap WRMSR to IA32_EFER")) }
    }

    /// Where the plan puts things must fit the 64-bit address space: a configuration near 2^64
    /// is a mistake named by its knob, never an arithmetic trap.
    mutating func checkLayout() {
        if config.hostStackSize > UInt64.max - Self.hostStackBase {
            fail(.invalid(knob: "host-stack-size", reason: "\(config.hostStackSize) bytes above the host stack's base \(hexString(Self.hostStackBase)) runs past 2^64"))
        }
        let (guestStackBase, baseOverflow) = config.guestEntry.addingReportingOverflow(Self.guestStackOffset)
        if baseOverflow || config.guestStackSize > UInt64.max - guestStackBase {
            fail(.invalid(knob: "guest-stack-size", reason: "the guest stack (guest-entry \(hexString(config.guestEntry)) + \(hexString(Self.guestStackOffset)) + \(config.guestStackSize) bytes) runs past 2^64"))
        }
        if config.guestMode == .longMode, config.guestEntry < Self.guestPageTableOffset {
            fail(.invalid(knob: "guest-entry", reason: "\(hexString(config.guestEntry)) leaves no room for the long-mode page tables \(hexString(Self.guestPageTableOffset)) below it"))
        }
        if config.structureBase > UInt64.max - Self.structureSpan {
            fail(.invalid(knob: "structure-base", reason: "\(hexString(config.structureBase)) + \(hexString(Self.structureSpan)) for the VMM's structures runs past 2^64"))
        }
    }

    mutating func checkStackSize(_ name: String, _ size: UInt64) {
        if size < 4096 || size % 16 != 0 {
            fail(.invalid(knob: name, reason: "stack size \(size) must be at least 4096 bytes and a multiple of 16"))
        }
    }

    // MARK: run

    /// The plan; its VM-entry checks are run when `validate` (a caller that changes the VMCS
    /// further validates the result itself, once).
    mutating func run(environment: VMEntryEnvironment, validate: Bool = true) throws(VMXPlanError) -> VMXPlan {
        gatherRequests()
        checkOtherCapabilities()
        var controls: [ReconciledControl] = []
        controls.reserveCapacity(VMXControlField.allCases.count)
        for field in VMXControlField.allCases {
            do {
                controls.append(try caps.reconcile(field, requests[field.rawValue]))
            } catch {
                for problem in error.problems {
                    let bit: Int = switch problem {
                    case .unsupported(_, let bit, _), .cannotBeZero(_, let bit, _), .contradiction(_, let bit): bit
                    }
                    problems.append(.control(knob: knob(for: field, bit: bit), problem))
                }
            }
        }
        if !problems.isEmpty { throw VMXPlanError(problems: problems) }
        for control in controls {
            for decision in control.decisions where decision.reason == .droppedOptional {
                note("optional", "'\(control.field.describeBit(decision.bit))' dropped: \(caps.decidingMSR(control.field).name) does not allow it")
            }
        }
        var vmcs = VMCSImage()
        for control in controls where control.field != .secondaryExit || control.value != 0 {
            if control.field == .tertiaryProcessorBased && control.value == 0 { continue }
            if control.field == .secondaryProcessorBased && controls[VMXControlField.primaryProcessorBased.rawValue].value & (1 << 31) == 0 { continue }
            vmcs[control.field.vmcsField] = control.value
        }
        let (msrBitmap, ioBitmaps) = writeStructures(into: &vmcs, controls: controls)
        if !problems.isEmpty { throw VMXPlanError(problems: problems) }
        writeHostState(into: &vmcs)
        writeGuestState(into: &vmcs)
        let failures = validate ? VMEntryValidator(capabilities: caps, environment: environment).validate(vmcs) : []
        return VMXPlan(controls: controls, vmcs: vmcs, msrBitmap: msrBitmap, ioBitmaps: ioBitmaps, decisions: decisions, entryFailures: failures)
    }
}
