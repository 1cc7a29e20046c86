import HVModel
import Testing

/// One passing and one failing VMCS per VM-entry check: the passing one is a planned Broadwell
/// VMCS (every check passes), the failing one changes just what the rule forbids.
@Suite("VM-entry checks")
struct VMXEntryCheckTests {
    static let caps = VMXProfile.broadwellI7_5600U.capabilities

    static func baseline() -> VMCSImage {
        var config = VMXConfiguration()
        config.apic.tprShadow = true
        config.apic.apicAccessPage = true
        config.preemptionTimerTSC = 1_000_000
        return try! config.plan(for: caps).vmcs
    }

    static func setBits(_ vmcs: inout VMCSImage, _ field: VMCSField, _ bits: UInt64) { vmcs[field] = vmcs[field] | bits }
    static func clearBits(_ vmcs: inout VMCSImage, _ field: VMCSField, _ bits: UInt64) { vmcs[field] = vmcs[field] & ~bits }
    static func secondary(_ vmcs: inout VMCSImage, _ bits: SecondaryProcessorBasedControls) { setBits(&vmcs, .secondaryProcessorBasedControls, UInt64(bits.rawValue)) }
    static func inject(_ vmcs: inout VMCSImage, _ info: UInt32) { vmcs[.entryInterruptionInformation] = UInt64(info) }

    /// Breaks exactly `check` in a valid VMCS (on Broadwell capabilities).
    static func breaking(_ check: VMEntryCheck, _ v: inout VMCSImage) {
        switch check {
        case .pinBasedReserved: clearBits(&v, .pinBasedControls, 0x2)
        case .primaryReserved: setBits(&v, .primaryProcessorBasedControls, 1 << 17)  // tertiary not allowed here
        case .secondaryReserved: secondary(&v, .virtualInterruptDelivery)
        case .tertiaryReserved: setBits(&v, .primaryProcessorBasedControls, 1 << 17); v[.tertiaryProcessorBasedControls] = 1
        case .cr3TargetCount: v[.cr3TargetCount] = 5
        case .ioBitmapAddresses: v[.ioBitmapB] = 0x1234
        case .msrBitmapAddress: v[.msrBitmap] = 1 << 40
        case .virtualAPICAddress: v[.virtualAPICAddress] = 0x20_3010
        case .tprThresholdReserved: v[.tprThreshold] = 0x10
        case .tprThresholdAboveVTPR: clearBits(&v, .secondaryProcessorBasedControls, 1); v[.tprThreshold] = 3
        case .apicVirtualizationNeedsTPRShadow: clearBits(&v, .primaryProcessorBasedControls, 1 << 21); clearBits(&v, .secondaryProcessorBasedControls, 1); secondary(&v, .virtualizeX2APICMode)
        case .virtualNMIsNeedNMIExiting: clearBits(&v, .pinBasedControls, 1 << 3)
        case .nmiWindowNeedsVirtualNMIs: clearBits(&v, .pinBasedControls, 1 << 5); setBits(&v, .primaryProcessorBasedControls, 1 << 22)
        case .apicAccessAddress: v[.apicAccessAddress] = 0x20_4001
        case .x2APICExcludesAPICAccesses: secondary(&v, .virtualizeX2APICMode)
        case .virtualInterruptDeliveryNeedsExternalInterruptExiting: clearBits(&v, .pinBasedControls, 1); secondary(&v, .virtualInterruptDelivery)
        case .postedInterruptsPrerequisites: setBits(&v, .pinBasedControls, 1 << 7)
        case .postedInterruptVector: setBits(&v, .pinBasedControls, 1 << 7); v[.postedInterruptNotificationVector] = 0x1F2
        case .postedInterruptDescriptor: setBits(&v, .pinBasedControls, 1 << 7); v[.postedInterruptDescriptorAddress] = 0x20_5020
        case .vpidNonZero: v[.virtualProcessorID] = 0
        case .eptPointerMemoryType: v[.eptPointer] = v[.eptPointer] & ~7 | 1
        case .eptPointerWalkLength: v[.eptPointer] = v[.eptPointer] & ~0x38 | 4 << 3
        case .eptPointerAccessedDirty: break  // Broadwell supports A/D: see the Ivy Bridge test
        case .eptPointerReservedBits: v[.eptPointer] |= 1 << 8
        case .pmlNeedsEPT: clearBits(&v, .secondaryProcessorBasedControls, 1 << 1 | 1 << 7); secondary(&v, .enablePML)
        case .pmlAddress: secondary(&v, .enablePML); v[.pmlAddress] = 0x800
        case .unrestrictedGuestNeedsEPT: clearBits(&v, .secondaryProcessorBasedControls, 1 << 1); secondary(&v, .unrestrictedGuest)
        case .subPagePermissionsNeedEPT: clearBits(&v, .secondaryProcessorBasedControls, 1 << 1); secondary(&v, .subPageWritePermissionsForEPT)
        case .vmFunctionControls: secondary(&v, .enableVMFunctions); v[.vmFunctionControls] = 2
        case .eptpSwitching: secondary(&v, .enableVMFunctions); v[.vmFunctionControls] = 1; v[.eptpListAddress] = 0x10
        case .vmcsShadowingBitmaps: secondary(&v, .vmcsShadowing); v[.vmreadBitmapAddress] = 0x1000; v[.vmwriteBitmapAddress] = 0x1008
        case .virtualizationExceptionAddress: secondary(&v, .eptViolationVE); v[.virtualizationExceptionInformationAddress] = 0x10
        case .exitReserved: setBits(&v, .primaryExitControls, 1 << 28)
        case .exitSecondaryReserved: setBits(&v, .primaryExitControls, 1 << 31); v[.secondaryExitControls] = 1
        case .savePreemptionTimerNeedsTimer: clearBits(&v, .pinBasedControls, 1 << 6); setBits(&v, .primaryExitControls, 1 << 22)
        case .exitMSRStoreAddress: v[.exitMSRStoreCount] = 1; v[.exitMSRStoreAddress] = 0x1008
        case .exitMSRLoadAddress: v[.exitMSRLoadCount] = 2; v[.exitMSRLoadAddress] = (1 << 39) - 16
        case .entryReserved: setBits(&v, .entryControls, 1 << 20)
        case .injectionType: inject(&v, 1 << 31 | 1 << 8)
        case .injectionVector: inject(&v, 1 << 31 | 2 << 8 | 3)
        case .injectionErrorCodeConsistency: inject(&v, InterruptionInformation(vector: 13, type: .hardwareException).rawValue)
        case .injectionReservedBits: inject(&v, 1 << 31 | 1 << 20 | 32)
        case .injectionErrorCode: inject(&v, InterruptionInformation(vector: 14, type: .hardwareException, deliverErrorCode: true).rawValue); v[.entryExceptionErrorCode] = 0x10000
        case .injectionInstructionLength: inject(&v, InterruptionInformation(vector: 0x80, type: .softwareInterrupt).rawValue); v[.entryInstructionLength] = 16
        case .entryMSRLoadAddress: v[.entryMSRLoadCount] = 1; v[.entryMSRLoadAddress] = 0x4
        case .entryToSMMOutsideSMM: setBits(&v, .entryControls, 1 << 10)
        case .hostCR0Fixed: clearBits(&v, .hostCR0, 1 << 5)
        case .hostCR4Fixed: clearBits(&v, .hostCR4, 1 << 13)
        case .hostCR3Width: v[.hostCR3] = 1 << 45
        case .hostSysenterCanonical: v[.hostIA32SysenterEIP] = 0x0000_8000_0000_0000
        case .hostPAT: v[.hostIA32PAT] = 0x02
        case .hostEFER: v[.hostIA32EFER] = 0x101
        case .hostSelectorRPLAndTI: v[.hostDSSelector] = 0x13
        case .hostCSNotNull: v[.hostCSSelector] = 0
        case .hostTRNotNull: v[.hostTRSelector] = 0
        case .hostSSNotNullWithout64BitHost: break  // needs a 32-bit host: see hostLegacy test
        case .hostBasesCanonical: v[.hostGSBase] = 0x0001_0000_0000_0000
        case .hostAddressSpaceSize: clearBits(&v, .primaryExitControls, 1 << 9)
        case .hostLongModeState: clearBits(&v, .hostCR4, 1 << 5)
        case .guestCR0Fixed: clearBits(&v, .guestCR0, 1 << 5)
        case .guestCR0PagingNeedsProtection: secondary(&v, .unrestrictedGuest); clearBits(&v, .guestCR0, 1)
        case .guestCR4Fixed: setBits(&v, .guestCR4, 1 << 22)
        case .guestDebugCtl: v[.guestIA32DebugCtl] = 1 << 3
        case .guestIA32eModeNeedsPaging: clearBits(&v, .guestCR4, 1 << 5)
        case .guestPCIDENeedsIA32eMode: clearBits(&v, .entryControls, 1 << 9); v[.guestIA32EFER] = 0; setBits(&v, .guestCR4, 1 << 17)
        case .guestCR3Width: v[.guestCR3] = 1 << 39
        case .guestDR7: v[.guestDR7] = 1 << 32 | 0x400
        case .guestSysenterCanonical: v[.guestIA32SysenterESP] = 0x00F0_0000_0000_0000
        case .guestPAT: v[.guestIA32PAT] = 0x03
        case .guestEFER: v[.guestIA32EFER] = 0x100
        case .guestSelectorTI: v[.guestTRSelector] = 0x1C
        case .guestSSRPL: v[.guestSSSelector] = 0x13; v[.guestSSAccessRights] = 0xC0F3
        case .guestVirtual8086Segments: break  // see the virtual-8086 test
        case .guestSegmentBases: v[.guestCSBase] = 1 << 32
        case .guestCSType: v[.guestCSAccessRights] = 0xA093
        case .guestSSType: v[.guestSSAccessRights] = 0xC091
        case .guestDataSegmentTypes: v[.guestDSAccessRights] = 0xC092
        case .guestSegmentDescriptorType: v[.guestFSAccessRights] = 0xC083
        case .guestCSDPL: v[.guestCSAccessRights] = 0xA0BB
        case .guestSSDPL: v[.guestSSAccessRights] = 0xC0B3
        case .guestDataDPL: v[.guestESSelector] = 0x13
        case .guestSegmentPresent: v[.guestGSAccessRights] = 0xC013
        case .guestSegmentReservedBits: v[.guestDSAccessRights] = 0xC193
        case .guestCSLongMode: v[.guestCSAccessRights] = 0xE09B
        case .guestSegmentGranularity: v[.guestTRLimit] = 0x10_0067
        case .guestTRType: v[.guestTRAccessRights] = 0x89
        case .guestLDTRType: v[.guestLDTRAccessRights] = 0x83
        case .guestDescriptorTableBases: v[.guestIDTRBase] = 0x0000_8000_0000_0000
        case .guestDescriptorTableLimits: v[.guestGDTRLimit] = 0x10000
        case .guestRIP: v[.guestRIP] = 0x0000_9000_0000_0000
        case .guestRFLAGSReserved: v[.guestRFLAGS] = 0
        case .guestRFLAGSVirtual8086: v[.guestRFLAGS] = 0x2_0002
        case .guestRFLAGSInterruptFlag: inject(&v, InterruptionInformation(vector: 0x30, type: .externalInterrupt).rawValue)
        case .guestActivityState: v[.guestActivityState] = 4
        case .guestActivityHLTNeedsDPL0: v[.guestActivityState] = 1; v[.guestSSAccessRights] = 0xC0F3; v[.guestSSSelector] = 0x13; v[.guestCSSelector] = 0x0B; v[.guestCSAccessRights] = 0xA0FB
        case .guestActivityInjection: v[.guestActivityState] = 3; inject(&v, InterruptionInformation(vector: 2, type: .nmi).rawValue)
        case .guestInterruptibilityReserved: v[.guestInterruptibilityState] = 1 << 5
        case .guestSTIAndMOVSSBlocking: setBits(&v, .guestRFLAGS, 1 << 9); v[.guestInterruptibilityState] = 3
        case .guestSTIBlockingNeedsIF: v[.guestInterruptibilityState] = 1
        case .guestInjectionWhileBlocked: v[.guestInterruptibilityState] = 2; inject(&v, InterruptionInformation(vector: 2, type: .nmi).rawValue)
        case .guestSMIBlockingOutsideSMM: v[.guestInterruptibilityState] = 4
        case .guestVirtualNMIBlocking: v[.guestInterruptibilityState] = 8; inject(&v, InterruptionInformation(vector: 2, type: .nmi).rawValue)
        case .guestPendingDebugExceptions: v[.guestPendingDebugExceptions] = 1 << 4
        case .guestVMCSLinkPointer: v[.vmcsLinkPointer] = 0x1234
        case .guestPDPTEs: break  // see the PAE test
        }
    }

    /// Checks whose failing case needs a different starting state, each tested below.
    static let special: Set<VMEntryCheck> = [.eptPointerAccessedDirty, .hostSSNotNullWithout64BitHost, .guestVirtual8086Segments, .guestPDPTEs]

    @Test("the planned baseline passes every check")
    func baselinePasses() {
        let failures = VMEntryValidator(capabilities: Self.caps).validate(Self.baseline())
        #expect(failures.isEmpty, "\(failures.map(\.message))")
    }

    @Test("each check fails for the VMCS that breaks it", arguments: VMEntryCheck.allCases.filter { !special.contains($0) })
    func eachCheckFails(check: VMEntryCheck) {
        var vmcs = Self.baseline()
        Self.breaking(check, &vmcs)
        let failures = VMEntryValidator(capabilities: Self.caps).validate(vmcs)
        #expect(failures.map(\.check).contains(check), "\(failures.map(\.message))")
    }

    @Test("EPTP bit 6 passes where A/D flags exist (Broadwell) and fails where they do not (Ivy Bridge)")
    func eptAccessedDirty() {
        let ivy = VMXProfile.ivyBridgeI5_3570.capabilities
        var vmcs = try! VMXConfiguration().plan(for: ivy).vmcs
        #expect(VMEntryValidator(capabilities: ivy).validate(vmcs).isEmpty)
        vmcs[.eptPointer] |= 1 << 6
        #expect(VMEntryValidator(capabilities: ivy).validate(vmcs).map(\.check) == [.eptPointerAccessedDirty])
        #expect(VMEntryValidator(capabilities: Self.caps).validate(vmcs).map(\.check).contains(.eptPointerAccessedDirty) == false)
    }

    @Test("a 32-bit host may not have a null SS; with one it passes")
    func hostLegacy() {
        var vmcs = Self.baseline()
        Self.clearBits(&vmcs, .primaryExitControls, 1 << 9 | 1 << 21)
        Self.clearBits(&vmcs, .entryControls, 1 << 9)
        vmcs[.hostRIP] = 0x10_0000
        let validator = VMEntryValidator(capabilities: Self.caps, environment: VMEntryEnvironment(hostInIA32eMode: false))
        #expect(!validator.validate(vmcs).map(\.check).contains(.hostSSNotNullWithout64BitHost))
        vmcs[.hostSSSelector] = 0
        #expect(validator.validate(vmcs).map(\.check).contains(.hostSSNotNullWithout64BitHost))
    }

    static func protectedModeVMCS() -> VMCSImage {
        var config = VMXConfiguration()
        config.guestMode = .protectedMode
        return try! config.plan(for: caps).vmcs
    }

    @Test("virtual-8086 segments must be selector×16 / FFFFH / F3H")
    func virtual8086() {
        var vmcs = Self.protectedModeVMCS()
        #expect(VMEntryValidator(capabilities: Self.caps).validate(vmcs).isEmpty)
        vmcs[.guestRFLAGS] = 0x2_0002
        for (selector, base, limit, rights) in [(VMCSField.guestCSSelector, VMCSField.guestCSBase, VMCSField.guestCSLimit, VMCSField.guestCSAccessRights),
                                                (.guestSSSelector, .guestSSBase, .guestSSLimit, .guestSSAccessRights), (.guestDSSelector, .guestDSBase, .guestDSLimit, .guestDSAccessRights),
                                                (.guestESSelector, .guestESBase, .guestESLimit, .guestESAccessRights), (.guestFSSelector, .guestFSBase, .guestFSLimit, .guestFSAccessRights),
                                                (.guestGSSelector, .guestGSBase, .guestGSLimit, .guestGSAccessRights)] {
            vmcs[selector] = 0x1000; vmcs[base] = 0x10000; vmcs[limit] = 0xFFFF; vmcs[rights] = 0xF3
        }
        #expect(!VMEntryValidator(capabilities: Self.caps).validate(vmcs).map(\.check).contains(.guestVirtual8086Segments))
        vmcs[.guestDSBase] = 0x2000
        #expect(VMEntryValidator(capabilities: Self.caps).validate(vmcs).map(\.check).contains(.guestVirtual8086Segments))
    }

    @Test("PAE PDPTEs with reserved bits fail under EPT")
    func pdptes() {
        var vmcs = Self.protectedModeVMCS()
        Self.setBits(&vmcs, .guestCR0, 1 << 31)
        Self.setBits(&vmcs, .guestCR4, 1 << 5)
        vmcs[.guestPDPTE0] = 0x5001
        #expect(VMEntryValidator(capabilities: Self.caps).validate(vmcs).isEmpty)
        vmcs[.guestPDPTE1] = 0x6003
        #expect(VMEntryValidator(capabilities: Self.caps).validate(vmcs).map(\.check) == [.guestPDPTEs])
    }

    @Test("checks run in manual order and map to the hardware's outcome")
    func orderAndOutcome() {
        var vmcs = Self.baseline()
        vmcs[.guestRFLAGS] = 0          // 27.3.1.4
        vmcs[.hostTRSelector] = 0       // 27.2.3
        vmcs[.virtualProcessorID] = 0   // 27.2.1.1
        let validator = VMEntryValidator(capabilities: Self.caps)
        #expect(validator.validate(vmcs).map(\.check) == [.vpidNonZero, .hostTRNotNull, .guestRFLAGSReserved])
        #expect(validator.firstFailure(vmcs)?.check.outcome == .vmInstructionError(.invalidControlFields))
        #expect(VMEntryCheck.hostTRNotNull.outcome == .vmInstructionError(.invalidHostStateFields))
        #expect(VMEntryCheck.guestRFLAGSReserved.outcome == .entryFailureExit(qualification: 0))
        let sections = VMEntryCheck.allCases.map(\.section)
        #expect(sections == sections.sorted { $0.split(separator: ".").map { Int($0)! }.lexicographicallyPrecedes($1.split(separator: ".").map { Int($0)! }) })
    }
}
