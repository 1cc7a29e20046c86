// The VM-entry checks, one case per rule, in the order SDM Vol. 3C chapter 27 lists them
// (27.2.1-27.2.4 controls and host state, 27.3.1.1-27.3.1.6 guest state). Generated from
// one table so the order, section, field and sentence of a rule cannot drift apart.

/// One VM-entry check (SDM 27.2-27.3). `allCases` is in the manual's order.
public enum VMEntryCheck: Int, CaseIterable, Sendable, Hashable {
    /// The pin-based controls must have every bit the capability MSR forces to 1 set and no bit it forbids set (SDM A.3.1).
    case pinBasedReserved
    /// The primary processor-based controls must match the allowed 0- and 1-settings of IA32_VMX_(TRUE_)PROCBASED_CTLS (SDM A.3.2).
    case primaryReserved
    /// With 'activate secondary controls' set, the secondary controls may only set bits IA32_VMX_PROCBASED_CTLS2 allows (SDM A.3.3).
    case secondaryReserved
    /// With 'activate tertiary controls' set, the tertiary controls may only set bits IA32_VMX_PROCBASED_CTLS3 allows (SDM A.3.4).
    case tertiaryReserved
    /// The CR3-target count may not exceed the number of CR3-target values the CPU supports (IA32_VMX_MISC bits 24:16).
    case cr3TargetCount
    /// With 'use I/O bitmaps', both I/O-bitmap addresses must be 4-KByte aligned and fit the physical-address width.
    case ioBitmapAddresses
    /// With 'use MSR bitmaps', the MSR-bitmap address must be 4-KByte aligned and fit the physical-address width.
    case msrBitmapAddress
    /// With 'use TPR shadow', the virtual-APIC address must be 4-KByte aligned and fit the physical-address width.
    case virtualAPICAddress
    /// With 'use TPR shadow' and no virtual-interrupt delivery, bits 31:4 of the TPR threshold must be 0.
    case tprThresholdReserved
    /// With 'use TPR shadow' and neither APIC-access virtualisation nor virtual-interrupt delivery, TPR threshold bits 3:0 may not exceed VTPR bits 7:4 of the virtual-APIC page.
    case tprThresholdAboveVTPR
    /// Without 'use TPR shadow', 'virtualize x2APIC mode', 'APIC-register virtualization' and 'virtual-interrupt delivery' must be 0: they all work on the virtual-APIC page.
    case apicVirtualizationNeedsTPRShadow
    /// 'Virtual NMIs' requires 'NMI exiting': the VMM can only track virtual NMI blocking if it sees the real NMIs.
    case virtualNMIsNeedNMIExiting
    /// 'NMI-window exiting' requires 'virtual NMIs'.
    case nmiWindowNeedsVirtualNMIs
    /// With 'virtualize APIC accesses', the APIC-access address must be 4-KByte aligned and fit the physical-address width.
    case apicAccessAddress
    /// 'Virtualize x2APIC mode' and 'virtualize APIC accesses' cannot both be 1: the guest's APIC is either MSR-based or memory-mapped.
    case x2APICExcludesAPICAccesses
    /// 'Virtual-interrupt delivery' requires 'external-interrupt exiting'.
    case virtualInterruptDeliveryNeedsExternalInterruptExiting
    /// 'Process posted interrupts' requires 'virtual-interrupt delivery' and the VM-exit control 'acknowledge interrupt on exit'.
    case postedInterruptsPrerequisites
    /// With posted interrupts, the notification vector must fit in 8 bits (bits 15:8 are 0).
    case postedInterruptVector
    /// With posted interrupts, the descriptor address must be 64-byte aligned and fit the physical-address width.
    case postedInterruptDescriptor
    /// With 'enable VPID', the VPID may not be 0: VPID 0 belongs to the VMM itself.
    case vpidNonZero
    /// The EPT pointer's memory type (bits 2:0) must be one IA32_VMX_EPT_VPID_CAP allows: 0 (UC) or 6 (WB).
    case eptPointerMemoryType
    /// The EPT pointer's bits 5:3 (page-walk length minus 1) must be 3 (4 levels), or 4 where 5-level EPT is supported.
    case eptPointerWalkLength
    /// EPT pointer bit 6 (accessed and dirty flags) may be 1 only if IA32_VMX_EPT_VPID_CAP bit 21 is 1.
    case eptPointerAccessedDirty
    /// EPT pointer bits 11:7 (except 7 on CPUs with supervisor shadow-stack control) and bits at or above the physical-address width must be 0.
    case eptPointerReservedBits
    /// 'Enable PML' requires 'enable EPT': page-modification logging records guest-physical addresses.
    case pmlNeedsEPT
    /// With 'enable PML', the PML address must be 4-KByte aligned and fit the physical-address width.
    case pmlAddress
    /// 'Unrestricted guest' requires 'enable EPT': a guest running with paging off needs EPT to translate its addresses.
    case unrestrictedGuestNeedsEPT
    /// 'Sub-page write permissions for EPT' requires 'enable EPT'.
    case subPagePermissionsNeedEPT
    /// With 'enable VM functions', the VM-function controls may only set bits IA32_VMX_VMFUNC allows.
    case vmFunctionControls
    /// EPTP switching (VM function 0) requires 'enable EPT' and a 4-KByte aligned EPTP-list address that fits the physical-address width.
    case eptpSwitching
    /// With 'VMCS shadowing', the VMREAD- and VMWRITE-bitmap addresses must be 4-KByte aligned and fit the physical-address width.
    case vmcsShadowingBitmaps
    /// With 'EPT-violation #VE', the virtualization-exception information address must be 4-KByte aligned and fit the physical-address width.
    case virtualizationExceptionAddress
    /// The primary VM-exit controls must match the allowed settings of IA32_VMX_(TRUE_)EXIT_CTLS (SDM A.4.1).
    case exitReserved
    /// With 'activate secondary controls' in the exit controls, the secondary VM-exit controls may only set bits IA32_VMX_EXIT_CTLS2 allows (SDM A.4.2).
    case exitSecondaryReserved
    /// 'Save VMX-preemption timer value' requires 'activate VMX-preemption timer'.
    case savePreemptionTimerNeedsTimer
    /// With a non-zero VM-exit MSR-store count, the MSR-store address must be 16-byte aligned and the whole list must fit the physical-address width.
    case exitMSRStoreAddress
    /// With a non-zero VM-exit MSR-load count, the MSR-load address must be 16-byte aligned and the whole list must fit the physical-address width.
    case exitMSRLoadAddress
    /// The VM-entry controls must match the allowed settings of IA32_VMX_(TRUE_)ENTRY_CTLS (SDM A.5).
    case entryReserved
    /// An injected event's type (bits 10:8) may not be 1 (reserved), and type 7 (other event) needs a CPU that supports the monitor trap flag.
    case injectionType
    /// An injected NMI must use vector 2, a hardware exception a vector up to 31, and an 'other event' vector 0.
    case injectionVector
    /// 'Deliver error code' must be 1 exactly for hardware exceptions that push one (#DF, #TS, #NP, #SS, #GP, #PF, #AC, #CP) in protected mode, and 0 otherwise.
    case injectionErrorCodeConsistency
    /// Bits 30:12 of the VM-entry interruption-information field are reserved and must be 0.
    case injectionReservedBits
    /// When an error code is delivered, bits 31:16 of the VM-entry exception error code must be 0.
    case injectionErrorCode
    /// A software interrupt or exception needs an instruction length from 1 to 15 (0 only where IA32_VMX_MISC bit 30 allows it).
    case injectionInstructionLength
    /// With a non-zero VM-entry MSR-load count, the MSR-load address must be 16-byte aligned and the whole list must fit the physical-address width.
    case entryMSRLoadAddress
    /// Outside SMM, 'entry to SMM' and 'deactivate dual-monitor treatment' must be 0.
    case entryToSMMOutsideSMM
    /// Host CR0 must have every bit IA32_VMX_CR0_FIXED0 requires and none IA32_VMX_CR0_FIXED1 forbids (SDM A.7).
    case hostCR0Fixed
    /// Host CR4 must have every bit IA32_VMX_CR4_FIXED0 requires (VMXE) and none IA32_VMX_CR4_FIXED1 forbids (SDM A.8).
    case hostCR4Fixed
    /// Host CR3 may not set bits at or above the physical-address width.
    case hostCR3Width
    /// Host IA32_SYSENTER_ESP and IA32_SYSENTER_EIP must be canonical addresses.
    case hostSysenterCanonical
    /// With 'load IA32_PAT' on exit, every byte of host IA32_PAT must be a valid memory type (0, 1, 4, 5, 6 or 7).
    case hostPAT
    /// With 'load IA32_EFER' on exit, host EFER's reserved bits must be 0 and LMA and LME must both equal 'host address-space size'.
    case hostEFER
    /// Host selectors for ES, CS, SS, DS, FS, GS and TR must have RPL 0 and TI 0: the VMM returns to ring 0 and the GDT.
    case hostSelectorRPLAndTI
    /// The host CS selector may not be 0000H.
    case hostCSNotNull
    /// The host TR selector may not be 0000H.
    case hostTRNotNull
    /// Without 'host address-space size', the host SS selector may not be 0000H.
    case hostSSNotNullWithout64BitHost
    /// Host FS, GS, GDTR, IDTR and TR base addresses must be canonical.
    case hostBasesCanonical
    /// A VMM running in IA-32e mode must set 'host address-space size' (and one outside IA-32e mode must clear it and 'IA-32e mode guest').
    case hostAddressSpaceSize
    /// With 'host address-space size', host CR4.PAE must be 1 and host RIP canonical; without it, CR4.PCIDE must be 0 and RIP must fit 32 bits.
    case hostLongModeState
    /// Guest CR0 must respect IA32_VMX_CR0_FIXED0/1, except PE and PG under 'unrestricted guest' (NW and CD are never checked).
    case guestCR0Fixed
    /// Guest CR0.PG = 1 requires CR0.PE = 1: paging exists only in protected mode.
    case guestCR0PagingNeedsProtection
    /// Guest CR4 must respect IA32_VMX_CR4_FIXED0/1 (VMXE must be 1 in VMX operation; SDM A.8).
    case guestCR4Fixed
    /// With 'load debug controls', the reserved bits of guest IA32_DEBUGCTL (5:2 and 63:16) must be 0.
    case guestDebugCtl
    /// 'IA-32e mode guest' requires guest CR0.PG = 1 and CR4.PAE = 1: long mode needs PAE paging.
    case guestIA32eModeNeedsPaging
    /// Without 'IA-32e mode guest', guest CR4.PCIDE must be 0.
    case guestPCIDENeedsIA32eMode
    /// Guest CR3 may not set bits at or above the physical-address width.
    case guestCR3Width
    /// With 'load debug controls', bits 63:32 of guest DR7 must be 0.
    case guestDR7
    /// Guest IA32_SYSENTER_ESP and IA32_SYSENTER_EIP must be canonical addresses.
    case guestSysenterCanonical
    /// With 'load IA32_PAT' on entry, every byte of guest IA32_PAT must be a valid memory type (0, 1, 4, 5, 6 or 7).
    case guestPAT
    /// With 'load IA32_EFER' on entry, guest EFER's reserved bits must be 0, LMA must equal 'IA-32e mode guest', and with CR0.PG set LME must equal LMA.
    case guestEFER
    /// The TI flag of the guest TR selector (and of a usable LDTR selector) must be 0: both live in the GDT.
    case guestSelectorTI
    /// Outside virtual-8086 mode and without 'unrestricted guest', SS.RPL must equal CS.RPL: both are the current privilege level.
    case guestSSRPL
    /// In virtual-8086 mode (RFLAGS.VM = 1) each segment's base must be selector × 16, its limit FFFFH and its access rights F3H.
    case guestVirtual8086Segments
    /// TR, FS and GS bases (and a usable LDTR's) must be canonical; CS's base and usable SS, DS and ES bases must fit 32 bits.
    case guestSegmentBases
    /// CS must be an accessed code segment (type 9, 11, 13 or 15), or an accessed read/write data segment (type 3) under 'unrestricted guest'.
    case guestCSType
    /// A usable SS must be a read/write data segment, accessed (type 3 or 7).
    case guestSSType
    /// Usable DS, ES, FS and GS must be accessed, and a code segment among them must be readable.
    case guestDataSegmentTypes
    /// CS and usable SS, DS, ES, FS and GS must be code or data segments (S = 1), not system descriptors.
    case guestSegmentDescriptorType
    /// CS.DPL must fit CS's type: 0 for type 3, equal to SS.DPL for non-conforming code, at most SS.DPL for conforming code.
    case guestCSDPL
    /// Without 'unrestricted guest' SS.DPL must equal SS.RPL; with real mode or a type-3 CS it must be 0.
    case guestSSDPL
    /// Without 'unrestricted guest', a usable non-conforming DS, ES, FS or GS must have DPL at least its selector's RPL.
    case guestDataDPL
    /// CS and every usable SS, DS, ES, FS and GS must be present (P = 1).
    case guestSegmentPresent
    /// Access-rights bits 11:8 and 31:17 are reserved and must be 0 for CS and every usable segment.
    case guestSegmentReservedBits
    /// In an IA-32e mode guest, a 64-bit code segment (CS.L = 1) must have CS.D = 0.
    case guestCSLongMode
    /// A segment's G bit must match its limit: limit bits 11:0 not all 1 needs G = 0, limit bits 31:20 not all 0 needs G = 1.
    case guestSegmentGranularity
    /// TR must be a usable, present busy TSS: type 11 (or 3, a 16-bit TSS, outside IA-32e mode) with S = 0.
    case guestTRType
    /// A usable LDTR must be a present LDT descriptor: type 2, S = 0, P = 1.
    case guestLDTRType
    /// Guest GDTR and IDTR bases must be canonical.
    case guestDescriptorTableBases
    /// Bits 31:16 of the guest GDTR and IDTR limits must be 0: those limits are 16 bits.
    case guestDescriptorTableLimits
    /// Guest RIP must fit 32 bits unless the guest runs 64-bit code (IA-32e mode and CS.L = 1), where it must be canonical.
    case guestRIP
    /// Guest RFLAGS bits 63:22, 15, 5 and 3 must be 0 and bit 1 must be 1.
    case guestRFLAGSReserved
    /// RFLAGS.VM must be 0 in an IA-32e mode guest and when CR0.PE = 0: virtual-8086 mode exists only in legacy protected mode.
    case guestRFLAGSVirtual8086
    /// Injecting an external interrupt requires RFLAGS.IF = 1: the guest must be able to take it.
    case guestRFLAGSInterruptFlag
    /// The activity state must be 0 (active) or a state IA32_VMX_MISC bits 8:6 report as supported.
    case guestActivityState
    /// The HLT activity state needs SS.DPL = 0: only ring 0 can halt.
    case guestActivityHLTNeedsDPL0
    /// A halted guest may only receive external interrupts, NMIs, #DB, #MC or an MTF event; a shut-down guest only NMIs and #MC; a guest waiting for SIPI nothing.
    case guestActivityInjection
    /// Bits 31:5 of the interruptibility state are reserved and must be 0.
    case guestInterruptibilityReserved
    /// Blocking by STI and blocking by MOV SS cannot both be set.
    case guestSTIAndMOVSSBlocking
    /// Blocking by STI requires RFLAGS.IF = 1: STI only blocks after it set IF.
    case guestSTIBlockingNeedsIF
    /// An external interrupt cannot be injected under STI or MOV-SS blocking, nor an NMI under MOV-SS blocking.
    case guestInjectionWhileBlocked
    /// Blocking by SMI (bit 2) must be 0 outside SMM.
    case guestSMIBlockingOutsideSMM
    /// With 'virtual NMIs', an NMI cannot be injected while blocking by NMI is set.
    case guestVirtualNMIBlocking
    /// Pending-debug-exception bits 11:4, 13, 15 and 63:17 are reserved and must be 0.
    case guestPendingDebugExceptions
    /// A VMCS link pointer other than FFFFFFFF_FFFFFFFFH (the value for 'no link') must be 4-KByte aligned, fit the physical-address width and name a VMCS of the current revision.
    case guestVMCSLinkPointer
    /// With EPT and PAE paging outside IA-32e mode, each present guest PDPTE must have its reserved bits (2:1, 8:5, and above the physical-address width) clear.
    case guestPDPTEs

    /// The SDM section that states the rule.
    public var section: String {
        switch self {
        case .pinBasedReserved, .primaryReserved, .secondaryReserved, .tertiaryReserved, .cr3TargetCount, .ioBitmapAddresses, .msrBitmapAddress, .virtualAPICAddress, .tprThresholdReserved, .tprThresholdAboveVTPR, .apicVirtualizationNeedsTPRShadow, .virtualNMIsNeedNMIExiting, .nmiWindowNeedsVirtualNMIs, .apicAccessAddress, .x2APICExcludesAPICAccesses, .virtualInterruptDeliveryNeedsExternalInterruptExiting, .postedInterruptsPrerequisites, .postedInterruptVector, .postedInterruptDescriptor, .vpidNonZero, .eptPointerMemoryType, .eptPointerWalkLength, .eptPointerAccessedDirty, .eptPointerReservedBits, .pmlNeedsEPT, .pmlAddress, .unrestrictedGuestNeedsEPT, .subPagePermissionsNeedEPT, .vmFunctionControls, .eptpSwitching, .vmcsShadowingBitmaps, .virtualizationExceptionAddress: "27.2.1.1"
        case .exitReserved, .exitSecondaryReserved, .savePreemptionTimerNeedsTimer, .exitMSRStoreAddress, .exitMSRLoadAddress: "27.2.1.2"
        case .entryReserved, .injectionType, .injectionVector, .injectionErrorCodeConsistency, .injectionReservedBits, .injectionErrorCode, .injectionInstructionLength, .entryMSRLoadAddress, .entryToSMMOutsideSMM: "27.2.1.3"
        case .hostCR0Fixed, .hostCR4Fixed, .hostCR3Width, .hostSysenterCanonical, .hostPAT, .hostEFER: "27.2.2"
        case .hostSelectorRPLAndTI, .hostCSNotNull, .hostTRNotNull, .hostSSNotNullWithout64BitHost, .hostBasesCanonical: "27.2.3"
        case .hostAddressSpaceSize, .hostLongModeState: "27.2.4"
        case .guestCR0Fixed, .guestCR0PagingNeedsProtection, .guestCR4Fixed, .guestDebugCtl, .guestIA32eModeNeedsPaging, .guestPCIDENeedsIA32eMode, .guestCR3Width, .guestDR7, .guestSysenterCanonical, .guestPAT, .guestEFER: "27.3.1.1"
        case .guestSelectorTI, .guestSSRPL, .guestVirtual8086Segments, .guestSegmentBases, .guestCSType, .guestSSType, .guestDataSegmentTypes, .guestSegmentDescriptorType, .guestCSDPL, .guestSSDPL, .guestDataDPL, .guestSegmentPresent, .guestSegmentReservedBits, .guestCSLongMode, .guestSegmentGranularity, .guestTRType, .guestLDTRType: "27.3.1.2"
        case .guestDescriptorTableBases, .guestDescriptorTableLimits: "27.3.1.3"
        case .guestRIP, .guestRFLAGSReserved, .guestRFLAGSVirtual8086, .guestRFLAGSInterruptFlag: "27.3.1.4"
        case .guestActivityState, .guestActivityHLTNeedsDPL0, .guestActivityInjection, .guestInterruptibilityReserved, .guestSTIAndMOVSSBlocking, .guestSTIBlockingNeedsIF, .guestInjectionWhileBlocked, .guestSMIBlockingOutsideSMM, .guestVirtualNMIBlocking, .guestPendingDebugExceptions, .guestVMCSLinkPointer: "27.3.1.5"
        case .guestPDPTEs: "27.3.1.6"
        }
    }

    /// The VMCS field the rule is mainly about.
    public var field: VMCSField {
        switch self {
        case .pinBasedReserved: .pinBasedControls
        case .primaryReserved: .primaryProcessorBasedControls
        case .secondaryReserved: .secondaryProcessorBasedControls
        case .tertiaryReserved: .tertiaryProcessorBasedControls
        case .cr3TargetCount: .cr3TargetCount
        case .ioBitmapAddresses: .ioBitmapA
        case .msrBitmapAddress: .msrBitmap
        case .virtualAPICAddress: .virtualAPICAddress
        case .tprThresholdReserved: .tprThreshold
        case .tprThresholdAboveVTPR: .tprThreshold
        case .apicVirtualizationNeedsTPRShadow: .secondaryProcessorBasedControls
        case .virtualNMIsNeedNMIExiting: .pinBasedControls
        case .nmiWindowNeedsVirtualNMIs: .primaryProcessorBasedControls
        case .apicAccessAddress: .apicAccessAddress
        case .x2APICExcludesAPICAccesses: .secondaryProcessorBasedControls
        case .virtualInterruptDeliveryNeedsExternalInterruptExiting: .pinBasedControls
        case .postedInterruptsPrerequisites: .pinBasedControls
        case .postedInterruptVector: .postedInterruptNotificationVector
        case .postedInterruptDescriptor: .postedInterruptDescriptorAddress
        case .vpidNonZero: .virtualProcessorID
        case .eptPointerMemoryType: .eptPointer
        case .eptPointerWalkLength: .eptPointer
        case .eptPointerAccessedDirty: .eptPointer
        case .eptPointerReservedBits: .eptPointer
        case .pmlNeedsEPT: .secondaryProcessorBasedControls
        case .pmlAddress: .pmlAddress
        case .unrestrictedGuestNeedsEPT: .secondaryProcessorBasedControls
        case .subPagePermissionsNeedEPT: .secondaryProcessorBasedControls
        case .vmFunctionControls: .vmFunctionControls
        case .eptpSwitching: .eptpListAddress
        case .vmcsShadowingBitmaps: .vmreadBitmapAddress
        case .virtualizationExceptionAddress: .virtualizationExceptionInformationAddress
        case .exitReserved: .primaryExitControls
        case .exitSecondaryReserved: .secondaryExitControls
        case .savePreemptionTimerNeedsTimer: .primaryExitControls
        case .exitMSRStoreAddress: .exitMSRStoreAddress
        case .exitMSRLoadAddress: .exitMSRLoadAddress
        case .entryReserved: .entryControls
        case .injectionType: .entryInterruptionInformation
        case .injectionVector: .entryInterruptionInformation
        case .injectionErrorCodeConsistency: .entryInterruptionInformation
        case .injectionReservedBits: .entryInterruptionInformation
        case .injectionErrorCode: .entryExceptionErrorCode
        case .injectionInstructionLength: .entryInstructionLength
        case .entryMSRLoadAddress: .entryMSRLoadAddress
        case .entryToSMMOutsideSMM: .entryControls
        case .hostCR0Fixed: .hostCR0
        case .hostCR4Fixed: .hostCR4
        case .hostCR3Width: .hostCR3
        case .hostSysenterCanonical: .hostIA32SysenterESP
        case .hostPAT: .hostIA32PAT
        case .hostEFER: .hostIA32EFER
        case .hostSelectorRPLAndTI: .hostCSSelector
        case .hostCSNotNull: .hostCSSelector
        case .hostTRNotNull: .hostTRSelector
        case .hostSSNotNullWithout64BitHost: .hostSSSelector
        case .hostBasesCanonical: .hostFSBase
        case .hostAddressSpaceSize: .primaryExitControls
        case .hostLongModeState: .hostCR4
        case .guestCR0Fixed: .guestCR0
        case .guestCR0PagingNeedsProtection: .guestCR0
        case .guestCR4Fixed: .guestCR4
        case .guestDebugCtl: .guestIA32DebugCtl
        case .guestIA32eModeNeedsPaging: .guestCR0
        case .guestPCIDENeedsIA32eMode: .guestCR4
        case .guestCR3Width: .guestCR3
        case .guestDR7: .guestDR7
        case .guestSysenterCanonical: .guestIA32SysenterESP
        case .guestPAT: .guestIA32PAT
        case .guestEFER: .guestIA32EFER
        case .guestSelectorTI: .guestTRSelector
        case .guestSSRPL: .guestSSSelector
        case .guestVirtual8086Segments: .guestCSBase
        case .guestSegmentBases: .guestCSBase
        case .guestCSType: .guestCSAccessRights
        case .guestSSType: .guestSSAccessRights
        case .guestDataSegmentTypes: .guestDSAccessRights
        case .guestSegmentDescriptorType: .guestCSAccessRights
        case .guestCSDPL: .guestCSAccessRights
        case .guestSSDPL: .guestSSAccessRights
        case .guestDataDPL: .guestDSAccessRights
        case .guestSegmentPresent: .guestCSAccessRights
        case .guestSegmentReservedBits: .guestCSAccessRights
        case .guestCSLongMode: .guestCSAccessRights
        case .guestSegmentGranularity: .guestCSLimit
        case .guestTRType: .guestTRAccessRights
        case .guestLDTRType: .guestLDTRAccessRights
        case .guestDescriptorTableBases: .guestGDTRBase
        case .guestDescriptorTableLimits: .guestGDTRLimit
        case .guestRIP: .guestRIP
        case .guestRFLAGSReserved: .guestRFLAGS
        case .guestRFLAGSVirtual8086: .guestRFLAGS
        case .guestRFLAGSInterruptFlag: .guestRFLAGS
        case .guestActivityState: .guestActivityState
        case .guestActivityHLTNeedsDPL0: .guestActivityState
        case .guestActivityInjection: .guestActivityState
        case .guestInterruptibilityReserved: .guestInterruptibilityState
        case .guestSTIAndMOVSSBlocking: .guestInterruptibilityState
        case .guestSTIBlockingNeedsIF: .guestInterruptibilityState
        case .guestInjectionWhileBlocked: .guestInterruptibilityState
        case .guestSMIBlockingOutsideSMM: .guestInterruptibilityState
        case .guestVirtualNMIBlocking: .guestInterruptibilityState
        case .guestPendingDebugExceptions: .guestPendingDebugExceptions
        case .guestVMCSLinkPointer: .vmcsLinkPointer
        case .guestPDPTEs: .guestPDPTE0
        }
    }

    /// The rule in a sentence a learner understands.
    public var sentence: String {
        switch self {
        case .pinBasedReserved: "The pin-based controls must have every bit the capability MSR forces to 1 set and no bit it forbids set (SDM A.3.1)."
        case .primaryReserved: "The primary processor-based controls must match the allowed 0- and 1-settings of IA32_VMX_(TRUE_)PROCBASED_CTLS (SDM A.3.2)."
        case .secondaryReserved: "With 'activate secondary controls' set, the secondary controls may only set bits IA32_VMX_PROCBASED_CTLS2 allows (SDM A.3.3)."
        case .tertiaryReserved: "With 'activate tertiary controls' set, the tertiary controls may only set bits IA32_VMX_PROCBASED_CTLS3 allows (SDM A.3.4)."
        case .cr3TargetCount: "The CR3-target count may not exceed the number of CR3-target values the CPU supports (IA32_VMX_MISC bits 24:16)."
        case .ioBitmapAddresses: "With 'use I/O bitmaps', both I/O-bitmap addresses must be 4-KByte aligned and fit the physical-address width."
        case .msrBitmapAddress: "With 'use MSR bitmaps', the MSR-bitmap address must be 4-KByte aligned and fit the physical-address width."
        case .virtualAPICAddress: "With 'use TPR shadow', the virtual-APIC address must be 4-KByte aligned and fit the physical-address width."
        case .tprThresholdReserved: "With 'use TPR shadow' and no virtual-interrupt delivery, bits 31:4 of the TPR threshold must be 0."
        case .tprThresholdAboveVTPR: "With 'use TPR shadow' and neither APIC-access virtualisation nor virtual-interrupt delivery, TPR threshold bits 3:0 may not exceed VTPR bits 7:4 of the virtual-APIC page."
        case .apicVirtualizationNeedsTPRShadow: "Without 'use TPR shadow', 'virtualize x2APIC mode', 'APIC-register virtualization' and 'virtual-interrupt delivery' must be 0: they all work on the virtual-APIC page."
        case .virtualNMIsNeedNMIExiting: "'Virtual NMIs' requires 'NMI exiting': the VMM can only track virtual NMI blocking if it sees the real NMIs."
        case .nmiWindowNeedsVirtualNMIs: "'NMI-window exiting' requires 'virtual NMIs'."
        case .apicAccessAddress: "With 'virtualize APIC accesses', the APIC-access address must be 4-KByte aligned and fit the physical-address width."
        case .x2APICExcludesAPICAccesses: "'Virtualize x2APIC mode' and 'virtualize APIC accesses' cannot both be 1: the guest's APIC is either MSR-based or memory-mapped."
        case .virtualInterruptDeliveryNeedsExternalInterruptExiting: "'Virtual-interrupt delivery' requires 'external-interrupt exiting'."
        case .postedInterruptsPrerequisites: "'Process posted interrupts' requires 'virtual-interrupt delivery' and the VM-exit control 'acknowledge interrupt on exit'."
        case .postedInterruptVector: "With posted interrupts, the notification vector must fit in 8 bits (bits 15:8 are 0)."
        case .postedInterruptDescriptor: "With posted interrupts, the descriptor address must be 64-byte aligned and fit the physical-address width."
        case .vpidNonZero: "With 'enable VPID', the VPID may not be 0: VPID 0 belongs to the VMM itself."
        case .eptPointerMemoryType: "The EPT pointer's memory type (bits 2:0) must be one IA32_VMX_EPT_VPID_CAP allows: 0 (UC) or 6 (WB)."
        case .eptPointerWalkLength: "The EPT pointer's bits 5:3 (page-walk length minus 1) must be 3 (4 levels), or 4 where 5-level EPT is supported."
        case .eptPointerAccessedDirty: "EPT pointer bit 6 (accessed and dirty flags) may be 1 only if IA32_VMX_EPT_VPID_CAP bit 21 is 1."
        case .eptPointerReservedBits: "EPT pointer bits 11:7 (except 7 on CPUs with supervisor shadow-stack control) and bits at or above the physical-address width must be 0."
        case .pmlNeedsEPT: "'Enable PML' requires 'enable EPT': page-modification logging records guest-physical addresses."
        case .pmlAddress: "With 'enable PML', the PML address must be 4-KByte aligned and fit the physical-address width."
        case .unrestrictedGuestNeedsEPT: "'Unrestricted guest' requires 'enable EPT': a guest running with paging off needs EPT to translate its addresses."
        case .subPagePermissionsNeedEPT: "'Sub-page write permissions for EPT' requires 'enable EPT'."
        case .vmFunctionControls: "With 'enable VM functions', the VM-function controls may only set bits IA32_VMX_VMFUNC allows."
        case .eptpSwitching: "EPTP switching (VM function 0) requires 'enable EPT' and a 4-KByte aligned EPTP-list address that fits the physical-address width."
        case .vmcsShadowingBitmaps: "With 'VMCS shadowing', the VMREAD- and VMWRITE-bitmap addresses must be 4-KByte aligned and fit the physical-address width."
        case .virtualizationExceptionAddress: "With 'EPT-violation #VE', the virtualization-exception information address must be 4-KByte aligned and fit the physical-address width."
        case .exitReserved: "The primary VM-exit controls must match the allowed settings of IA32_VMX_(TRUE_)EXIT_CTLS (SDM A.4.1)."
        case .exitSecondaryReserved: "With 'activate secondary controls' in the exit controls, the secondary VM-exit controls may only set bits IA32_VMX_EXIT_CTLS2 allows (SDM A.4.2)."
        case .savePreemptionTimerNeedsTimer: "'Save VMX-preemption timer value' requires 'activate VMX-preemption timer'."
        case .exitMSRStoreAddress: "With a non-zero VM-exit MSR-store count, the MSR-store address must be 16-byte aligned and the whole list must fit the physical-address width."
        case .exitMSRLoadAddress: "With a non-zero VM-exit MSR-load count, the MSR-load address must be 16-byte aligned and the whole list must fit the physical-address width."
        case .entryReserved: "The VM-entry controls must match the allowed settings of IA32_VMX_(TRUE_)ENTRY_CTLS (SDM A.5)."
        case .injectionType: "An injected event's type (bits 10:8) may not be 1 (reserved), and type 7 (other event) needs a CPU that supports the monitor trap flag."
        case .injectionVector: "An injected NMI must use vector 2, a hardware exception a vector up to 31, and an 'other event' vector 0."
        case .injectionErrorCodeConsistency: "'Deliver error code' must be 1 exactly for hardware exceptions that push one (#DF, #TS, #NP, #SS, #GP, #PF, #AC, #CP) in protected mode, and 0 otherwise."
        case .injectionReservedBits: "Bits 30:12 of the VM-entry interruption-information field are reserved and must be 0."
        case .injectionErrorCode: "When an error code is delivered, bits 31:16 of the VM-entry exception error code must be 0."
        case .injectionInstructionLength: "A software interrupt or exception needs an instruction length from 1 to 15 (0 only where IA32_VMX_MISC bit 30 allows it)."
        case .entryMSRLoadAddress: "With a non-zero VM-entry MSR-load count, the MSR-load address must be 16-byte aligned and the whole list must fit the physical-address width."
        case .entryToSMMOutsideSMM: "Outside SMM, 'entry to SMM' and 'deactivate dual-monitor treatment' must be 0."
        case .hostCR0Fixed: "Host CR0 must have every bit IA32_VMX_CR0_FIXED0 requires and none IA32_VMX_CR0_FIXED1 forbids (SDM A.7)."
        case .hostCR4Fixed: "Host CR4 must have every bit IA32_VMX_CR4_FIXED0 requires (VMXE) and none IA32_VMX_CR4_FIXED1 forbids (SDM A.8)."
        case .hostCR3Width: "Host CR3 may not set bits at or above the physical-address width."
        case .hostSysenterCanonical: "Host IA32_SYSENTER_ESP and IA32_SYSENTER_EIP must be canonical addresses."
        case .hostPAT: "With 'load IA32_PAT' on exit, every byte of host IA32_PAT must be a valid memory type (0, 1, 4, 5, 6 or 7)."
        case .hostEFER: "With 'load IA32_EFER' on exit, host EFER's reserved bits must be 0 and LMA and LME must both equal 'host address-space size'."
        case .hostSelectorRPLAndTI: "Host selectors for ES, CS, SS, DS, FS, GS and TR must have RPL 0 and TI 0: the VMM returns to ring 0 and the GDT."
        case .hostCSNotNull: "The host CS selector may not be 0000H."
        case .hostTRNotNull: "The host TR selector may not be 0000H."
        case .hostSSNotNullWithout64BitHost: "Without 'host address-space size', the host SS selector may not be 0000H."
        case .hostBasesCanonical: "Host FS, GS, GDTR, IDTR and TR base addresses must be canonical."
        case .hostAddressSpaceSize: "A VMM running in IA-32e mode must set 'host address-space size' (and one outside IA-32e mode must clear it and 'IA-32e mode guest')."
        case .hostLongModeState: "With 'host address-space size', host CR4.PAE must be 1 and host RIP canonical; without it, CR4.PCIDE must be 0 and RIP must fit 32 bits."
        case .guestCR0Fixed: "Guest CR0 must respect IA32_VMX_CR0_FIXED0/1, except PE and PG under 'unrestricted guest' (NW and CD are never checked)."
        case .guestCR0PagingNeedsProtection: "Guest CR0.PG = 1 requires CR0.PE = 1: paging exists only in protected mode."
        case .guestCR4Fixed: "Guest CR4 must respect IA32_VMX_CR4_FIXED0/1 (VMXE must be 1 in VMX operation; SDM A.8)."
        case .guestDebugCtl: "With 'load debug controls', the reserved bits of guest IA32_DEBUGCTL (5:2 and 63:16) must be 0."
        case .guestIA32eModeNeedsPaging: "'IA-32e mode guest' requires guest CR0.PG = 1 and CR4.PAE = 1: long mode needs PAE paging."
        case .guestPCIDENeedsIA32eMode: "Without 'IA-32e mode guest', guest CR4.PCIDE must be 0."
        case .guestCR3Width: "Guest CR3 may not set bits at or above the physical-address width."
        case .guestDR7: "With 'load debug controls', bits 63:32 of guest DR7 must be 0."
        case .guestSysenterCanonical: "Guest IA32_SYSENTER_ESP and IA32_SYSENTER_EIP must be canonical addresses."
        case .guestPAT: "With 'load IA32_PAT' on entry, every byte of guest IA32_PAT must be a valid memory type (0, 1, 4, 5, 6 or 7)."
        case .guestEFER: "With 'load IA32_EFER' on entry, guest EFER's reserved bits must be 0, LMA must equal 'IA-32e mode guest', and with CR0.PG set LME must equal LMA."
        case .guestSelectorTI: "The TI flag of the guest TR selector (and of a usable LDTR selector) must be 0: both live in the GDT."
        case .guestSSRPL: "Outside virtual-8086 mode and without 'unrestricted guest', SS.RPL must equal CS.RPL: both are the current privilege level."
        case .guestVirtual8086Segments: "In virtual-8086 mode (RFLAGS.VM = 1) each segment's base must be selector × 16, its limit FFFFH and its access rights F3H."
        case .guestSegmentBases: "TR, FS and GS bases (and a usable LDTR's) must be canonical; CS's base and usable SS, DS and ES bases must fit 32 bits."
        case .guestCSType: "CS must be an accessed code segment (type 9, 11, 13 or 15), or an accessed read/write data segment (type 3) under 'unrestricted guest'."
        case .guestSSType: "A usable SS must be a read/write data segment, accessed (type 3 or 7)."
        case .guestDataSegmentTypes: "Usable DS, ES, FS and GS must be accessed, and a code segment among them must be readable."
        case .guestSegmentDescriptorType: "CS and usable SS, DS, ES, FS and GS must be code or data segments (S = 1), not system descriptors."
        case .guestCSDPL: "CS.DPL must fit CS's type: 0 for type 3, equal to SS.DPL for non-conforming code, at most SS.DPL for conforming code."
        case .guestSSDPL: "Without 'unrestricted guest' SS.DPL must equal SS.RPL; with real mode or a type-3 CS it must be 0."
        case .guestDataDPL: "Without 'unrestricted guest', a usable non-conforming DS, ES, FS or GS must have DPL at least its selector's RPL."
        case .guestSegmentPresent: "CS and every usable SS, DS, ES, FS and GS must be present (P = 1)."
        case .guestSegmentReservedBits: "Access-rights bits 11:8 and 31:17 are reserved and must be 0 for CS and every usable segment."
        case .guestCSLongMode: "In an IA-32e mode guest, a 64-bit code segment (CS.L = 1) must have CS.D = 0."
        case .guestSegmentGranularity: "A segment's G bit must match its limit: limit bits 11:0 not all 1 needs G = 0, limit bits 31:20 not all 0 needs G = 1."
        case .guestTRType: "TR must be a usable, present busy TSS: type 11 (or 3, a 16-bit TSS, outside IA-32e mode) with S = 0."
        case .guestLDTRType: "A usable LDTR must be a present LDT descriptor: type 2, S = 0, P = 1."
        case .guestDescriptorTableBases: "Guest GDTR and IDTR bases must be canonical."
        case .guestDescriptorTableLimits: "Bits 31:16 of the guest GDTR and IDTR limits must be 0: those limits are 16 bits."
        case .guestRIP: "Guest RIP must fit 32 bits unless the guest runs 64-bit code (IA-32e mode and CS.L = 1), where it must be canonical."
        case .guestRFLAGSReserved: "Guest RFLAGS bits 63:22, 15, 5 and 3 must be 0 and bit 1 must be 1."
        case .guestRFLAGSVirtual8086: "RFLAGS.VM must be 0 in an IA-32e mode guest and when CR0.PE = 0: virtual-8086 mode exists only in legacy protected mode."
        case .guestRFLAGSInterruptFlag: "Injecting an external interrupt requires RFLAGS.IF = 1: the guest must be able to take it."
        case .guestActivityState: "The activity state must be 0 (active) or a state IA32_VMX_MISC bits 8:6 report as supported."
        case .guestActivityHLTNeedsDPL0: "The HLT activity state needs SS.DPL = 0: only ring 0 can halt."
        case .guestActivityInjection: "A halted guest may only receive external interrupts, NMIs, #DB, #MC or an MTF event; a shut-down guest only NMIs and #MC; a guest waiting for SIPI nothing."
        case .guestInterruptibilityReserved: "Bits 31:5 of the interruptibility state are reserved and must be 0."
        case .guestSTIAndMOVSSBlocking: "Blocking by STI and blocking by MOV SS cannot both be set."
        case .guestSTIBlockingNeedsIF: "Blocking by STI requires RFLAGS.IF = 1: STI only blocks after it set IF."
        case .guestInjectionWhileBlocked: "An external interrupt cannot be injected under STI or MOV-SS blocking, nor an NMI under MOV-SS blocking."
        case .guestSMIBlockingOutsideSMM: "Blocking by SMI (bit 2) must be 0 outside SMM."
        case .guestVirtualNMIBlocking: "With 'virtual NMIs', an NMI cannot be injected while blocking by NMI is set."
        case .guestPendingDebugExceptions: "Pending-debug-exception bits 11:4, 13, 15 and 63:17 are reserved and must be 0."
        case .guestVMCSLinkPointer: "A VMCS link pointer other than FFFFFFFF_FFFFFFFFH (the value for 'no link') must be 4-KByte aligned, fit the physical-address width and name a VMCS of the current revision."
        case .guestPDPTEs: "With EPT and PAE paging outside IA-32e mode, each present guest PDPTE must have its reserved bits (2:1, 8:5, and above the physical-address width) clear."
        }
    }
}
