// The VMCS writes a plan makes besides the controls: structure addresses, CR masks, host
// state (SDM 25.5) and the initial guest state (25.4) for the chosen guest mode.

extension VMXPlanner {
    /// Offsets of the VMM's 4-KByte structures from `structureBase`.
    enum Slot: UInt64 {
        case msrBitmap = 0, ioBitmapA, ioBitmapB, virtualAPIC, apicAccess, postedDescriptor, eptPML4
        case vmreadBitmap, vmwriteBitmap
        var offset: UInt64 { rawValue * 0x1000 }
    }

    func address(_ slot: Slot) -> UInt64 { config.structureBase &+ slot.offset }

    /// The span of the VMM's structures from `structureBase` (16 pages: the bitmaps, the APIC
    /// pages, EPT's PML4 and the host's page tables at 0xF000).
    static let structureSpan: UInt64 = 0x10000
    /// Where the plan puts the host stack (it grows down from base + size).
    static let hostStackBase: UInt64 = 0xFFFF_FFFF_8300_0000
    /// The guest stack's distance above the guest entry point.
    static let guestStackOffset: UInt64 = 0x10_0000
    /// A long-mode guest's page tables sit this far below its entry point.
    static let guestPageTableOffset: UInt64 = 0x10000

    mutating func writeStructures(into vmcs: inout VMCSImage, controls: [ReconciledControl]) -> (MSRBitmap?, IOBitmaps?) {
        let pin = PinBasedControls(rawValue: UInt32(controls[VMXControlField.pinBased.rawValue].value))
        let primary = PrimaryProcessorBasedControls(rawValue: UInt32(controls[VMXControlField.primaryProcessorBased.rawValue].value))
        let secondary = primary.contains(.activateSecondaryControls)
            ? SecondaryProcessorBasedControls(rawValue: UInt32(controls[VMXControlField.secondaryProcessorBased.rawValue].value)) : []
        if config.structureBase & 0xFFF != 0 || config.structureBase > UInt64.max - Self.structureSpan
            || config.structureBase + Self.structureSpan > 1 << UInt64(caps.physicalAddressWidth) {
            problems.append(.invalid(knob: "structure-base", reason: "\(hexString(config.structureBase)) must be 4-KByte aligned and below 2^\(caps.physicalAddressWidth)"))
        }
        vmcs[.vmcsLinkPointer] = UInt64.max
        vmcs[.exceptionBitmap] = UInt64(config.exceptionBitmap)
        note("debug", "exception bitmap \(hexString(UInt64(config.exceptionBitmap), digits: 8))\(config.movDRExiting ? ", MOV-DR exiting" : "")\(config.monitorTrapFlag ? ", monitor trap flag" : "")")
        vmcs[.cr3TargetCount] = 0

        // CR0/CR4 ownership (SDM 26.3): masked bits read from the shadow and trap on change.
        var cr0Mask = config.cr0GuestHostMask | caps.cr0MustBeOne | ~caps.cr0MayBeOne & 0xFFFF_FFFF
        if secondary.contains(.unrestrictedGuest) { cr0Mask &= ~(1 << 0 | 1 << 31) }
        var cr4Mask = config.cr4GuestHostMask | caps.cr4MustBeOne | ~caps.cr4MayBeOne & 0xFFFF_FFFF
        let guest = initialControlRegisters()
        if config.enforceSMEP { cr4Mask |= 1 << 20; note("smep", "CR4.SMEP pinned to 1: in the CR4 guest/host mask, so clearing it exits") }
        if config.enforceSMAP { cr4Mask |= 1 << 21; note("smap", "CR4.SMAP pinned to 1: in the CR4 guest/host mask, so clearing it exits") }
        vmcs[.cr0GuestHostMask] = cr0Mask
        vmcs[.cr4GuestHostMask] = cr4Mask
        vmcs[.cr0ReadShadow] = guest.cr0Shadow
        vmcs[.cr4ReadShadow] = guest.cr4Shadow
        note("cr-access", "CR0 mask \(hexString(cr0Mask, digits: 8)), CR4 mask \(hexString(cr4Mask, digits: 8)): the VMX-fixed bits and any pinned bits are host-owned")

        if let interval = config.preemptionTimerTSC, pin.contains(.activateVMXPreemptionTimer) {
            vmcs[.vmxPreemptionTimerValue] = min(interval >> UInt64(caps.preemptionTimerRate), 0xFFFF_FFFF)
        }
        if secondary.contains(.enableVPID) { vmcs[.virtualProcessorID] = UInt64(config.vpidValue) }
        if secondary.contains(.enableEPT) {
            let ad: UInt64 = config.eptAccessedDirty ? 1 << 6 : 0
            vmcs[.eptPointer] = address(.eptPML4) | ad | 3 << 3 | UInt64(config.eptMemoryType)
            note("ept", "EPTP \(hexString(vmcs[.eptPointer])): PML4 at \(hexString(address(.eptPML4))), 4-level walk, memory type \(config.eptMemoryType == 6 ? "WB" : "UC")\(ad != 0 ? ", A/D flags" : "")")
        }
        var msrBitmap: MSRBitmap? = nil
        if primary.contains(.useMSRBitmaps) {
            var bitmap = MSRBitmap(trapAll: config.trapInvalidMSRs)
            if !config.trapInvalidMSRs { note("msr-bitmap", "MSRs outside 0-1FFFH and C0000000H-C0001FFFH always exit, whatever the bitmap says (SDM 26.1.3)") }
            for msr in config.passThroughMSRs where !bitmap.passThrough(msr) {
                problems.append(.invalid(knob: "msr-bitmap", reason: "MSR \(hexString(UInt64(msr))) is outside the bitmap's ranges and always exits"))
            }
            for msr in config.trappedMSRs { bitmap.trap(msr) }
            if config.enforceNX { bitmap.setExits(0xC000_0080, .write, true); note("nx", "EFER.NXE pinned: WRMSR to IA32_EFER exits") }
            vmcs[.msrBitmap] = address(.msrBitmap)
            note("msr-bitmap", "\(config.passThroughMSRs.count) MSRs pass through, \(bitmap.passThroughCount) of 32768 (MSR, access) pairs in all")
            msrBitmap = bitmap
        }
        var ioBitmaps: IOBitmaps? = nil
        if primary.contains(.useIOBitmaps), case .bitmap(let ports) = config.io {
            var bitmaps = IOBitmaps(trapAll: false)
            for range in ports { bitmaps.setTrap(IOPort(range.lowerBound), count: range.count, true) }
            vmcs[.ioBitmapA] = address(.ioBitmapA)
            vmcs[.ioBitmapB] = address(.ioBitmapB)
            note("io-bitmap", "\(ports.reduce(0) { $0 + $1.count }) ports trapped; every other port is the guest's")
            ioBitmaps = bitmaps
        }
        if primary.contains(.useTPRShadow) {
            vmcs[.virtualAPICAddress] = address(.virtualAPIC)
            vmcs[.tprThreshold] = 0
        }
        if secondary.contains(.virtualizeAPICAccesses) { vmcs[.apicAccessAddress] = address(.apicAccess) }
        if pin.contains(.processPostedInterrupts) {
            vmcs[.postedInterruptNotificationVector] = UInt64(config.apic.postedInterruptVector)
            vmcs[.postedInterruptDescriptorAddress] = address(.postedDescriptor)
        }
        if secondary.contains(.vmcsShadowing) {
            vmcs[.vmreadBitmapAddress] = address(.vmreadBitmap)
            vmcs[.vmwriteBitmapAddress] = address(.vmwriteBitmap)
        }
        note("stacks", "host stack \(config.hostStackSize) bytes (host RSP = its top), guest stack \(config.guestStackSize) bytes")
        return (msrBitmap, ioBitmaps)
    }

    struct ControlRegisters { var cr0: UInt64; var cr4: UInt64; var cr0Shadow: UInt64; var cr4Shadow: UInt64 }

    /// The guest's CR0/CR4 and what it should read back (SDM 27.3.1.1, A.7-A.8).
    func initialControlRegisters() -> ControlRegisters {
        let wantedCR0: UInt64
        var wantedCR4: UInt64
        switch config.guestMode {
        case .longMode: wantedCR0 = 0x8005_0033; wantedCR4 = 0x20 | 0x600  // PG WP NE ET MP PE; PAE OSFXSR OSXMMEXCPT
        case .protectedMode: wantedCR0 = 0x31; wantedCR4 = 0
        case .realMode: wantedCR0 = 0x10; wantedCR4 = 0
        }
        if config.enforceSMEP { wantedCR4 |= 1 << 20 }
        if config.enforceSMAP { wantedCR4 |= 1 << 21 }
        var cr0MustBeOne = caps.cr0MustBeOne
        if config.unrestrictedGuest { cr0MustBeOne &= ~(1 << 0 | 1 << 31) }
        return ControlRegisters(cr0: wantedCR0 | cr0MustBeOne, cr4: (wantedCR4 | caps.cr4MustBeOne) & caps.cr4MayBeOne,
                                cr0Shadow: wantedCR0, cr4Shadow: wantedCR4)
    }

    static let hostDataSelectors: [VMCSField] = [.hostSSSelector, .hostDSSelector, .hostESSelector, .hostFSSelector, .hostGSSelector]
    static let guestDataSegments: [(VMCSField, VMCSField, VMCSField, VMCSField)] = [
        (.guestESSelector, .guestESBase, .guestESLimit, .guestESAccessRights),
        (.guestSSSelector, .guestSSBase, .guestSSLimit, .guestSSAccessRights),
        (.guestDSSelector, .guestDSBase, .guestDSLimit, .guestDSAccessRights),
        (.guestFSSelector, .guestFSBase, .guestFSLimit, .guestFSAccessRights),
        (.guestGSSelector, .guestGSBase, .guestGSLimit, .guestGSAccessRights),
    ]

    func writeHostState(into vmcs: inout VMCSImage) {
        vmcs[.hostCR0] = 0x8005_0033 | caps.cr0MustBeOne
        vmcs[.hostCR3] = config.structureBase &+ 0xF000
        vmcs[.hostCR4] = (0x2620 | caps.cr4MustBeOne) & caps.cr4MayBeOne
        for field in Self.hostDataSelectors { vmcs[field] = 0x10 }
        vmcs[.hostCSSelector] = 0x08
        vmcs[.hostTRSelector] = 0x18
        vmcs[.hostGDTRBase] = 0xFFFF_FFFF_8200_0000
        vmcs[.hostIDTRBase] = 0xFFFF_FFFF_8200_1000
        vmcs[.hostTRBase] = 0xFFFF_FFFF_8200_2000
        vmcs[.hostRSP] = Self.hostStackBase &+ config.hostStackSize  // checkLayout: no wrap
        vmcs[.hostRIP] = config.hostEntry
        vmcs[.hostIA32PAT] = 0x0007_0406_0007_0406
        vmcs[.hostIA32EFER] = 0xD01  // SCE, LME, LMA, NXE
    }

    func writeGuestState(into vmcs: inout VMCSImage) {
        let registers = initialControlRegisters()
        vmcs[.guestCR0] = registers.cr0
        vmcs[.guestCR4] = registers.cr4
        vmcs[.guestDR7] = 0x400
        vmcs[.guestRFLAGS] = 0x2
        vmcs[.guestIA32PAT] = 0x0007_0406_0007_0406
        vmcs[.guestLDTRAccessRights] = 1 << 16  // unusable
        vmcs[.guestRSP] = config.guestEntry &+ Self.guestStackOffset &+ config.guestStackSize  // checkLayout: no wrap
        vmcs[.guestRIP] = config.guestEntry
        let segments = Self.guestDataSegments
        switch config.guestMode {
        case .longMode, .protectedMode:
            let long = config.guestMode == .longMode
            vmcs[.guestCSSelector] = 0x08
            vmcs[.guestCSLimit] = 0xFFFF_FFFF
            vmcs[.guestCSAccessRights] = long ? 0xA09B : 0xC09B  // accessed execute/read code, P, G, and L or D
            for (selector, _, limit, rights) in segments {
                vmcs[selector] = 0x10
                vmcs[limit] = 0xFFFF_FFFF
                vmcs[rights] = 0xC093  // accessed read/write data, P, D/B, G
            }
            vmcs[.guestTRSelector] = 0x18
            vmcs[.guestTRLimit] = 0x67
            vmcs[.guestTRAccessRights] = 0x8B  // busy 32/64-bit TSS, P
            vmcs[.guestGDTRLimit] = 0x1F
            vmcs[.guestCR3] = long ? config.guestEntry &- Self.guestPageTableOffset : 0
            if long {
                vmcs[.guestIA32EFER] = 0x500 | (config.enforceNX ? 0x800 : 0)
            }
        case .realMode:
            vmcs[.guestCSSelector] = UInt64(config.guestEntry >> 4) & 0xF000
            vmcs[.guestCSBase] = vmcs[.guestCSSelector] << 4
            vmcs[.guestCSLimit] = 0xFFFF
            vmcs[.guestCSAccessRights] = 0x9B
            for (_, _, limit, rights) in segments {
                vmcs[limit] = 0xFFFF
                vmcs[rights] = 0x93
            }
            vmcs[.guestTRLimit] = 0xFFFF
            vmcs[.guestTRAccessRights] = 0x8B
            vmcs[.guestGDTRLimit] = 0xFFFF
            vmcs[.guestRIP] = config.guestEntry & 0xFFFF
            vmcs[.guestRSP] = 0x7000
        }
        vmcs[.guestIDTRLimit] = config.guestMode == .realMode ? 0x3FF : 0
    }
}
