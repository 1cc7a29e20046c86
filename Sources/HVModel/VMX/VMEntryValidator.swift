// Evaluating the VM-entry checks of SDM Vol. 3C, 27.2-27.3 against a VMCS image, in the
// manual's order, so the first failure is the one the processor reports.

/// What VM entry does when a check fails (SDM 27.1-27.3, 31.4).
public enum VMEntryOutcome: Hashable, Sendable {
    /// VMLAUNCH/VMRESUME fails with this VM-instruction error (7: controls, 8: host state);
    /// the guest never starts and no VM exit happens.
    case vmInstructionError(VMInstructionError)
    /// VM entry fails after loading guest state began: a VM exit with basic reason 33
    /// (invalid guest state) and bit 31 set, with this exit qualification (SDM 27.8).
    case entryFailureExit(qualification: UInt64)

    /// A line for reports.
    public var text: String {
        switch self {
        case .vmInstructionError(let error): "VM-instruction error \(error.rawValue) (\(error.name))"
        case .entryFailureExit(let qualification): "VM exit, reason 33 | 0x80000000 (VM-entry failure due to invalid guest state), qualification \(qualification)"
        }
    }
}

/// Which part of SDM 27.2-27.3 a check belongs to, derived once from its section.
enum VMEntryStage {
    /// 27.2.1: VM-execution, VM-exit and VM-entry controls (VM-instruction error 7).
    case controls
    /// 27.2.2-27.2.4: host state (VM-instruction error 8).
    case host
    /// 27.3.1.1: guest control, debug registers and MSRs.
    case guestRegisters
    /// 27.3.1.2: guest segment registers.
    case guestSegments
    /// 27.3.1.3-27.3.1.6: the rest of the guest state.
    case guestOther
}

extension VMEntryCheck {
    /// Each check's stage by raw value, classified from `section` once (no string work per check).
    static let stages: [VMEntryStage] = allCases.map { check in
        let section = check.section
        if section.hasPrefix("27.2.1") { return .controls }
        if section.hasPrefix("27.2") { return .host }
        if section == "27.3.1.1" { return .guestRegisters }
        if section == "27.3.1.2" { return .guestSegments }
        return .guestOther
    }

    /// The part of the manual's check order this check belongs to.
    var stage: VMEntryStage { Self.stages[rawValue] }

    /// What the processor does when this check fails.
    public var outcome: VMEntryOutcome {
        let stage = stage
        if stage == .controls { return .vmInstructionError(.invalidControlFields) }
        if stage == .host { return .vmInstructionError(.invalidHostStateFields) }
        if self == .guestPDPTEs { return .entryFailureExit(qualification: 2) }
        if self == .guestVMCSLinkPointer { return .entryFailureExit(qualification: 4) }
        return .entryFailureExit(qualification: 0)
    }
}

/// Facts VM entry depends on that are not in the VMCS.
public struct VMEntryEnvironment: Hashable, Sendable {
    /// Whether the VMM runs in IA-32e (64-bit) mode; a 64-bit VMM always does.
    public var hostInIA32eMode: Bool
    /// Whether the VMM runs in SMM (the dual-monitor treatment).
    public var inSMM: Bool
    /// VTPR: byte 80H of the virtual-APIC page (for the TPR-threshold check).
    public var virtualTPR: UInt8
    /// 48 for 4-level paging; 57 with LA57 (canonical addresses sign-extend from bit width-1).
    public var linearAddressWidth: Int

    public init(hostInIA32eMode: Bool = true, inSMM: Bool = false, virtualTPR: UInt8 = 0, linearAddressWidth: Int = 48) {
        self.hostInIA32eMode = hostInIA32eMode
        self.inSMM = inSMM
        self.virtualTPR = virtualTPR
        self.linearAddressWidth = linearAddressWidth
    }
}

/// A failed check: the rule plus what exactly was wrong.
public struct VMEntryFailure: Hashable, Sendable {
    public var check: VMEntryCheck
    /// The offending values, e.g. "guest CR0 = 0x00000020".
    public var detail: String
    public init(check: VMEntryCheck, detail: String) {
        self.check = check
        self.detail = detail
    }
    /// "27.2.1.1 secondary processor-based VM-execution controls: <sentence> (<detail>)".
    public var message: String {
        "SDM \(check.section), \(check.field.name ?? "?"): \(check.sentence) [\(detail)]"
    }
}

/// Checks a VMCS image the way VMLAUNCH/VMRESUME would (SDM 27.2-27.3).
public struct VMEntryValidator: Sendable {
    public var capabilities: VMXCapabilities
    public var environment: VMEntryEnvironment

    public init(capabilities: VMXCapabilities, environment: VMEntryEnvironment = VMEntryEnvironment()) {
        self.capabilities = capabilities
        self.environment = environment
    }

    /// Every failed check, in the manual's order; empty when VM entry would succeed as far as
    /// the VMCS can tell (memory contents other than VTPR are not examined).
    public func validate(_ vmcs: VMCSImage) -> [VMEntryFailure] {
        let context = VMEntryContext(vmcs: vmcs, capabilities: capabilities, environment: environment)
        var failures: [VMEntryFailure] = []
        for check in VMEntryCheck.allCases {
            if let detail = context.violation(check) { failures.append(VMEntryFailure(check: check, detail: detail)) }
        }
        return failures
    }

    /// The first failure (what the processor reports), or nil.
    public func firstFailure(_ vmcs: VMCSImage) -> VMEntryFailure? {
        let context = VMEntryContext(vmcs: vmcs, capabilities: capabilities, environment: environment)
        for check in VMEntryCheck.allCases {
            if let detail = context.violation(check) { return VMEntryFailure(check: check, detail: detail) }
        }
        return nil
    }
}

/// The fields the checks read, fetched once.
struct VMEntryContext {
    let vmcs: VMCSImage
    let caps: VMXCapabilities
    let env: VMEntryEnvironment
    let pin: PinBasedControls
    let primary: PrimaryProcessorBasedControls
    let secondary: SecondaryProcessorBasedControls
    let tertiary: TertiaryProcessorBasedControls
    let exit: VMExitControls
    let entry: VMEntryControls
    let maxPhysical: UInt64
    let injection: InterruptionInformation
    let guestCR0: UInt64
    let guestCR4: UInt64
    let rflags: UInt64
    let unrestricted: Bool
    let ia32eGuest: Bool
    let v86: Bool
    /// ES, CS, SS, DS, FS, GS, LDTR, TR (the order of `GuestSegment.fields`), read once.
    let segments: [GuestSegment]

    init(vmcs: VMCSImage, capabilities: VMXCapabilities, environment: VMEntryEnvironment) {
        self.vmcs = vmcs
        caps = capabilities
        env = environment
        pin = PinBasedControls(rawValue: UInt32(truncatingIfNeeded: vmcs[.pinBasedControls]))
        primary = PrimaryProcessorBasedControls(rawValue: UInt32(truncatingIfNeeded: vmcs[.primaryProcessorBasedControls]))
        // 25.6.2: with the activate bit clear the processor behaves as if the field were 0.
        secondary = primary.contains(.activateSecondaryControls)
            ? SecondaryProcessorBasedControls(rawValue: UInt32(truncatingIfNeeded: vmcs[.secondaryProcessorBasedControls])) : []
        tertiary = primary.contains(.activateTertiaryControls)
            ? TertiaryProcessorBasedControls(rawValue: vmcs[.tertiaryProcessorBasedControls]) : []
        exit = VMExitControls(rawValue: UInt32(truncatingIfNeeded: vmcs[.primaryExitControls]))
        entry = VMEntryControls(rawValue: UInt32(truncatingIfNeeded: vmcs[.entryControls]))
        maxPhysical = capabilities.physicalAddressWidth >= 64 ? UInt64.max : (1 << UInt64(capabilities.physicalAddressWidth)) - 1
        injection = InterruptionInformation(UInt32(truncatingIfNeeded: vmcs[.entryInterruptionInformation]))
        guestCR0 = vmcs[.guestCR0]
        guestCR4 = vmcs[.guestCR4]
        rflags = vmcs[.guestRFLAGS]
        unrestricted = secondary.contains(.unrestrictedGuest)
        ia32eGuest = entry.contains(.ia32eModeGuest)
        v86 = rflags & (1 << 17) != 0
        var segments: [GuestSegment] = []
        segments.reserveCapacity(8)
        for index in 0..<8 { segments.append(GuestSegment(vmcs, index)) }
        self.segments = segments
    }

    // MARK: helpers

    func hex(_ field: VMCSField) -> String { "\(field.name ?? "?") = \(hexString(vmcs[field]))" }

    /// Whether `address` is aligned to `alignment` and, with `length` bytes, fits MAXPHYADDR.
    func physicalOK(_ address: UInt64, alignment: UInt64 = 4096, length: UInt64 = 1) -> Bool {
        guard address & (alignment - 1) == 0 else { return false }
        let (last, overflow) = address.addingReportingOverflow(length == 0 ? 0 : length - 1)
        return !overflow && last <= maxPhysical
    }

    func addressProblem(_ field: VMCSField, alignment: UInt64 = 4096, length: UInt64 = 1) -> String? {
        physicalOK(vmcs[field], alignment: alignment, length: length) ? nil
            : "\(hex(field)): needs \(alignment)-byte alignment below 2^\(caps.physicalAddressWidth)"
    }

    func canonical(_ value: UInt64) -> Bool {
        let shift = UInt64(64 - env.linearAddressWidth)
        return UInt64(bitPattern: Int64(bitPattern: value << shift) >> Int64(shift)) == value
    }

    func reservedProblem(_ field: VMXControlField, _ value: UInt64) -> String? {
        let settings = caps.allowedSettings(field)
        guard !settings.allows(value) else { return nil }
        let missing = settings.mustBeOne & ~value
        let extra = value & ~settings.mayBeOne
        let bad = missing != 0 ? missing : extra
        let bit = bad.trailingZeroBitCount
        let msr = caps.decidingMSR(field)
        return "\(field.name) = \(hexString(value, digits: 8)): '\(field.describeBit(bit))' (bit \(bit)) "
            + (missing != 0 ? "must be 1" : "may not be 1") + " per \(msr.name)"
    }

    static func validPAT(_ value: UInt64) -> Bool {
        for byte in 0..<8 {
            let type = (value >> UInt64(byte * 8)) & 0xFF
            if !(type == 0 || type == 1 || type == 4 || type == 5 || type == 6 || type == 7) { return false }
        }
        return true
    }

    /// The first violated condition of `check`, as a detail string, or nil when it holds.
    func violation(_ check: VMEntryCheck) -> String? {
        switch check.stage {
        case .controls: return controlViolation(check)
        case .host: return hostViolation(check)
        default: return guestViolation(check)
        }
    }

    // MARK: 27.2.1 controls

    func controlViolation(_ check: VMEntryCheck) -> String? {
        switch check {
        case .pinBasedReserved: return reservedProblem(.pinBased, UInt64(pin.rawValue))
        case .primaryReserved: return reservedProblem(.primaryProcessorBased, UInt64(primary.rawValue))
        case .secondaryReserved: return reservedProblem(.secondaryProcessorBased, UInt64(secondary.rawValue))
        case .tertiaryReserved: return reservedProblem(.tertiaryProcessorBased, tertiary.rawValue)
        case .cr3TargetCount:
            return vmcs[.cr3TargetCount] > UInt64(caps.cr3TargetCount)
                ? "\(hex(.cr3TargetCount)), the CPU supports \(caps.cr3TargetCount)" : nil
        case .ioBitmapAddresses:
            guard primary.contains(.useIOBitmaps) else { return nil }
            return addressProblem(.ioBitmapA) ?? addressProblem(.ioBitmapB)
        case .msrBitmapAddress:
            return primary.contains(.useMSRBitmaps) ? addressProblem(.msrBitmap) : nil
        case .virtualAPICAddress:
            return primary.contains(.useTPRShadow) ? addressProblem(.virtualAPICAddress) : nil
        case .tprThresholdReserved:
            guard primary.contains(.useTPRShadow), !secondary.contains(.virtualInterruptDelivery) else { return nil }
            return vmcs[.tprThreshold] & ~0xF != 0 ? hex(.tprThreshold) : nil
        case .tprThresholdAboveVTPR:
            guard primary.contains(.useTPRShadow), !secondary.contains(.virtualInterruptDelivery),
                  !secondary.contains(.virtualizeAPICAccesses) else { return nil }
            return vmcs[.tprThreshold] & 0xF > UInt64(env.virtualTPR >> 4)
                ? "\(hex(.tprThreshold)), VTPR = \(hexString(UInt64(env.virtualTPR), digits: 2))" : nil
        case .apicVirtualizationNeedsTPRShadow:
            guard !primary.contains(.useTPRShadow) else { return nil }
            let needing: SecondaryProcessorBasedControls = [.virtualizeX2APICMode, .apicRegisterVirtualization, .virtualInterruptDelivery]
            return secondary.isDisjoint(with: needing) ? nil : "'use TPR shadow' is 0 but secondary controls = \(hexString(UInt64(secondary.rawValue), digits: 8))"
        case .virtualNMIsNeedNMIExiting:
            return pin.contains(.virtualNMIs) && !pin.contains(.nmiExiting) ? "'virtual NMIs' = 1, 'NMI exiting' = 0" : nil
        case .nmiWindowNeedsVirtualNMIs:
            return primary.contains(.nmiWindowExiting) && !pin.contains(.virtualNMIs) ? "'NMI-window exiting' = 1, 'virtual NMIs' = 0" : nil
        case .apicAccessAddress:
            return secondary.contains(.virtualizeAPICAccesses) ? addressProblem(.apicAccessAddress) : nil
        case .x2APICExcludesAPICAccesses:
            return secondary.contains(.virtualizeX2APICMode) && secondary.contains(.virtualizeAPICAccesses)
                ? "both 'virtualize x2APIC mode' and 'virtualize APIC accesses' are 1" : nil
        case .virtualInterruptDeliveryNeedsExternalInterruptExiting:
            return secondary.contains(.virtualInterruptDelivery) && !pin.contains(.externalInterruptExiting)
                ? "'virtual-interrupt delivery' = 1, 'external-interrupt exiting' = 0" : nil
        case .postedInterruptsPrerequisites:
            guard pin.contains(.processPostedInterrupts) else { return nil }
            if !secondary.contains(.virtualInterruptDelivery) { return "'process posted interrupts' = 1, 'virtual-interrupt delivery' = 0" }
            if !exit.contains(.acknowledgeInterruptOnExit) { return "'process posted interrupts' = 1, 'acknowledge interrupt on exit' = 0" }
            return nil
        case .postedInterruptVector:
            return pin.contains(.processPostedInterrupts) && vmcs[.postedInterruptNotificationVector] & 0xFF00 != 0
                ? hex(.postedInterruptNotificationVector) : nil
        case .postedInterruptDescriptor:
            return pin.contains(.processPostedInterrupts) ? addressProblem(.postedInterruptDescriptorAddress, alignment: 64, length: 64) : nil
        case .vpidNonZero:
            return secondary.contains(.enableVPID) && vmcs[.virtualProcessorID] == 0 ? "VPID = 0" : nil
        case .eptPointerMemoryType:
            guard secondary.contains(.enableEPT) else { return nil }
            let type = vmcs[.eptPointer] & 7
            let ok = (type == 0 && caps.eptVPID.contains(.uncacheableEPTPointer)) || (type == 6 && caps.eptVPID.contains(.writeBackEPTPointer))
            return ok ? nil : "\(hex(.eptPointer)): memory type \(type) not allowed"
        case .eptPointerWalkLength:
            guard secondary.contains(.enableEPT) else { return nil }
            let length = (vmcs[.eptPointer] >> 3) & 7
            let ok = (length == 3 && caps.eptVPID.contains(.pageWalkLength4)) || (length == 4 && caps.eptVPID.contains(.pageWalkLength5))
            return ok ? nil : "\(hex(.eptPointer)): page-walk length \(length + 1) not supported"
        case .eptPointerAccessedDirty:
            guard secondary.contains(.enableEPT) else { return nil }
            return vmcs[.eptPointer] & (1 << 6) != 0 && !caps.eptVPID.contains(.accessedDirtyFlags)
                ? "\(hex(.eptPointer)): bit 6 set without A/D support" : nil
        case .eptPointerReservedBits:
            guard secondary.contains(.enableEPT) else { return nil }
            let eptp = vmcs[.eptPointer]
            let reserved: UInt64 = caps.eptVPID.contains(.supervisorShadowStackControl) ? 0xF00 : 0xF80
            return eptp & reserved != 0 || eptp & ~0xFFF > maxPhysical ? "\(hex(.eptPointer))" : nil
        case .pmlNeedsEPT:
            return secondary.contains(.enablePML) && !secondary.contains(.enableEPT) ? "'enable PML' = 1, 'enable EPT' = 0" : nil
        case .pmlAddress:
            return secondary.contains(.enablePML) ? addressProblem(.pmlAddress) : nil
        case .unrestrictedGuestNeedsEPT:
            return secondary.contains(.unrestrictedGuest) && !secondary.contains(.enableEPT) ? "'unrestricted guest' = 1, 'enable EPT' = 0" : nil
        case .subPagePermissionsNeedEPT:
            return secondary.contains(.subPageWritePermissionsForEPT) && !secondary.contains(.enableEPT)
                ? "'sub-page write permissions for EPT' = 1, 'enable EPT' = 0" : nil
        case .vmFunctionControls:
            guard secondary.contains(.enableVMFunctions) else { return nil }
            return vmcs[.vmFunctionControls] & ~caps.vmFunctions != 0 ? "\(hex(.vmFunctionControls)), IA32_VMX_VMFUNC = \(hexString(caps.vmFunctions))" : nil
        case .eptpSwitching:
            guard secondary.contains(.enableVMFunctions), vmcs[.vmFunctionControls] & 1 != 0 else { return nil }
            if !secondary.contains(.enableEPT) { return "EPTP switching enabled, 'enable EPT' = 0" }
            return addressProblem(.eptpListAddress)
        case .vmcsShadowingBitmaps:
            guard secondary.contains(.vmcsShadowing) else { return nil }
            return addressProblem(.vmreadBitmapAddress) ?? addressProblem(.vmwriteBitmapAddress)
        case .virtualizationExceptionAddress:
            return secondary.contains(.eptViolationVE) ? addressProblem(.virtualizationExceptionInformationAddress) : nil
        case .exitReserved: return reservedProblem(.primaryExit, UInt64(exit.rawValue))
        case .exitSecondaryReserved:
            return exit.contains(.activateSecondaryControls) ? reservedProblem(.secondaryExit, vmcs[.secondaryExitControls]) : nil
        case .savePreemptionTimerNeedsTimer:
            return exit.contains(.saveVMXPreemptionTimerValue) && !pin.contains(.activateVMXPreemptionTimer)
                ? "'save VMX-preemption timer value' = 1, 'activate VMX-preemption timer' = 0" : nil
        case .exitMSRStoreAddress:
            let count = vmcs[.exitMSRStoreCount]
            return count > 0 ? addressProblem(.exitMSRStoreAddress, alignment: 16, length: count * 16) : nil
        case .exitMSRLoadAddress:
            let count = vmcs[.exitMSRLoadCount]
            return count > 0 ? addressProblem(.exitMSRLoadAddress, alignment: 16, length: count * 16) : nil
        case .entryReserved: return reservedProblem(.entry, UInt64(entry.rawValue))
        default: return entryControlViolation(check)
        }
    }
}
