// Generated from SDM Vol. 3D, Appendix B ("Field Encoding in VMCS"), Tables B-1 to B-14.
// Each 64-bit field also has a "high" encoding (full + 1) for its upper 32 bits.

extension VMCSField {
    /// Virtual-processor identifier (VPID) (encoding 0x0000).
    public static let virtualProcessorID = VMCSField(0x0000)
    /// Posted-interrupt notification vector (encoding 0x0002).
    public static let postedInterruptNotificationVector = VMCSField(0x0002)
    /// EPTP index (encoding 0x0004).
    public static let eptpIndex = VMCSField(0x0004)
    /// HLAT prefix size (encoding 0x0006).
    public static let hlatPrefixSize = VMCSField(0x0006)
    /// Last PID-pointer index (encoding 0x0008).
    public static let lastPIDPointerIndex = VMCSField(0x0008)
    /// Guest ES selector (encoding 0x0800).
    public static let guestESSelector = VMCSField(0x0800)
    /// Guest CS selector (encoding 0x0802).
    public static let guestCSSelector = VMCSField(0x0802)
    /// Guest SS selector (encoding 0x0804).
    public static let guestSSSelector = VMCSField(0x0804)
    /// Guest DS selector (encoding 0x0806).
    public static let guestDSSelector = VMCSField(0x0806)
    /// Guest FS selector (encoding 0x0808).
    public static let guestFSSelector = VMCSField(0x0808)
    /// Guest GS selector (encoding 0x080a).
    public static let guestGSSelector = VMCSField(0x080A)
    /// Guest LDTR selector (encoding 0x080c).
    public static let guestLDTRSelector = VMCSField(0x080C)
    /// Guest TR selector (encoding 0x080e).
    public static let guestTRSelector = VMCSField(0x080E)
    /// Guest interrupt status (encoding 0x0810).
    public static let guestInterruptStatus = VMCSField(0x0810)
    /// PML index (encoding 0x0812).
    public static let pmlIndex = VMCSField(0x0812)
    /// Guest UINV (encoding 0x0814).
    public static let guestUINV = VMCSField(0x0814)
    /// Host ES selector (encoding 0x0c00).
    public static let hostESSelector = VMCSField(0x0C00)
    /// Host CS selector (encoding 0x0c02).
    public static let hostCSSelector = VMCSField(0x0C02)
    /// Host SS selector (encoding 0x0c04).
    public static let hostSSSelector = VMCSField(0x0C04)
    /// Host DS selector (encoding 0x0c06).
    public static let hostDSSelector = VMCSField(0x0C06)
    /// Host FS selector (encoding 0x0c08).
    public static let hostFSSelector = VMCSField(0x0C08)
    /// Host GS selector (encoding 0x0c0a).
    public static let hostGSSelector = VMCSField(0x0C0A)
    /// Host TR selector (encoding 0x0c0c).
    public static let hostTRSelector = VMCSField(0x0C0C)
    /// Address of I/O bitmap A (encoding 0x2000).
    public static let ioBitmapA = VMCSField(0x2000)
    /// Address of I/O bitmap B (encoding 0x2002).
    public static let ioBitmapB = VMCSField(0x2002)
    /// Address of MSR bitmaps (encoding 0x2004).
    public static let msrBitmap = VMCSField(0x2004)
    /// VM-exit MSR-store address (encoding 0x2006).
    public static let exitMSRStoreAddress = VMCSField(0x2006)
    /// VM-exit MSR-load address (encoding 0x2008).
    public static let exitMSRLoadAddress = VMCSField(0x2008)
    /// VM-entry MSR-load address (encoding 0x200a).
    public static let entryMSRLoadAddress = VMCSField(0x200A)
    /// Executive-VMCS pointer (encoding 0x200c).
    public static let executiveVMCSPointer = VMCSField(0x200C)
    /// PML address (encoding 0x200e).
    public static let pmlAddress = VMCSField(0x200E)
    /// TSC offset (encoding 0x2010).
    public static let tscOffset = VMCSField(0x2010)
    /// Virtual-APIC address (encoding 0x2012).
    public static let virtualAPICAddress = VMCSField(0x2012)
    /// APIC-access address (encoding 0x2014).
    public static let apicAccessAddress = VMCSField(0x2014)
    /// Posted-interrupt descriptor address (encoding 0x2016).
    public static let postedInterruptDescriptorAddress = VMCSField(0x2016)
    /// VM-function controls (encoding 0x2018).
    public static let vmFunctionControls = VMCSField(0x2018)
    /// EPT pointer (encoding 0x201a).
    public static let eptPointer = VMCSField(0x201A)
    /// EOI-exit bitmap 0 (encoding 0x201c).
    public static let eoiExitBitmap0 = VMCSField(0x201C)
    /// EOI-exit bitmap 1 (encoding 0x201e).
    public static let eoiExitBitmap1 = VMCSField(0x201E)
    /// EOI-exit bitmap 2 (encoding 0x2020).
    public static let eoiExitBitmap2 = VMCSField(0x2020)
    /// EOI-exit bitmap 3 (encoding 0x2022).
    public static let eoiExitBitmap3 = VMCSField(0x2022)
    /// EPTP-list address (encoding 0x2024).
    public static let eptpListAddress = VMCSField(0x2024)
    /// VMREAD-bitmap address (encoding 0x2026).
    public static let vmreadBitmapAddress = VMCSField(0x2026)
    /// VMWRITE-bitmap address (encoding 0x2028).
    public static let vmwriteBitmapAddress = VMCSField(0x2028)
    /// Virtualization-exception information address (encoding 0x202a).
    public static let virtualizationExceptionInformationAddress = VMCSField(0x202A)
    /// XSS-exiting bitmap (encoding 0x202c).
    public static let xssExitingBitmap = VMCSField(0x202C)
    /// ENCLS-exiting bitmap (encoding 0x202e).
    public static let enclsExitingBitmap = VMCSField(0x202E)
    /// Sub-page-permission-table pointer (encoding 0x2030).
    public static let subPagePermissionTablePointer = VMCSField(0x2030)
    /// TSC multiplier (encoding 0x2032).
    public static let tscMultiplier = VMCSField(0x2032)
    /// Tertiary processor-based VM-execution controls (encoding 0x2034).
    public static let tertiaryProcessorBasedControls = VMCSField(0x2034)
    /// ENCLV-exiting bitmap (encoding 0x2036).
    public static let enclvExitingBitmap = VMCSField(0x2036)
    /// Low PASID directory address (encoding 0x2038).
    public static let lowPASIDDirectoryAddress = VMCSField(0x2038)
    /// High PASID directory address (encoding 0x203a).
    public static let highPASIDDirectoryAddress = VMCSField(0x203A)
    /// Shared EPT pointer (encoding 0x203c).
    public static let sharedEPTPointer = VMCSField(0x203C)
    /// PCONFIG-exiting bitmap (encoding 0x203e).
    public static let pconfigExitingBitmap = VMCSField(0x203E)
    /// Hypervisor-managed linear-address translation pointer (encoding 0x2040).
    public static let hlatPointer = VMCSField(0x2040)
    /// PID-pointer table address (encoding 0x2042).
    public static let pidPointerTableAddress = VMCSField(0x2042)
    /// Secondary VM-exit controls (encoding 0x2044).
    public static let secondaryExitControls = VMCSField(0x2044)
    /// IA32_SPEC_CTRL mask (encoding 0x204a).
    public static let ia32SpecCtrlMask = VMCSField(0x204A)
    /// IA32_SPEC_CTRL shadow (encoding 0x204c).
    public static let ia32SpecCtrlShadow = VMCSField(0x204C)
    /// Guest-physical address (encoding 0x2400).
    public static let guestPhysicalAddress = VMCSField(0x2400)
    /// VMCS link pointer (encoding 0x2800).
    public static let vmcsLinkPointer = VMCSField(0x2800)
    /// Guest IA32_DEBUGCTL (encoding 0x2802).
    public static let guestIA32DebugCtl = VMCSField(0x2802)
    /// Guest IA32_PAT (encoding 0x2804).
    public static let guestIA32PAT = VMCSField(0x2804)
    /// Guest IA32_EFER (encoding 0x2806).
    public static let guestIA32EFER = VMCSField(0x2806)
    /// Guest IA32_PERF_GLOBAL_CTRL (encoding 0x2808).
    public static let guestIA32PerfGlobalCtrl = VMCSField(0x2808)
    /// Guest PDPTE0 (encoding 0x280a).
    public static let guestPDPTE0 = VMCSField(0x280A)
    /// Guest PDPTE1 (encoding 0x280c).
    public static let guestPDPTE1 = VMCSField(0x280C)
    /// Guest PDPTE2 (encoding 0x280e).
    public static let guestPDPTE2 = VMCSField(0x280E)
    /// Guest PDPTE3 (encoding 0x2810).
    public static let guestPDPTE3 = VMCSField(0x2810)
    /// Guest IA32_BNDCFGS (encoding 0x2812).
    public static let guestIA32BNDCFGS = VMCSField(0x2812)
    /// Guest IA32_RTIT_CTL (encoding 0x2814).
    public static let guestIA32RTITCtl = VMCSField(0x2814)
    /// Guest IA32_LBR_CTL (encoding 0x2816).
    public static let guestIA32LBRCtl = VMCSField(0x2816)
    /// Guest IA32_PKRS (encoding 0x2818).
    public static let guestIA32PKRS = VMCSField(0x2818)
    /// Host IA32_PAT (encoding 0x2c00).
    public static let hostIA32PAT = VMCSField(0x2C00)
    /// Host IA32_EFER (encoding 0x2c02).
    public static let hostIA32EFER = VMCSField(0x2C02)
    /// Host IA32_PERF_GLOBAL_CTRL (encoding 0x2c04).
    public static let hostIA32PerfGlobalCtrl = VMCSField(0x2C04)
    /// Host IA32_PKRS (encoding 0x2c06).
    public static let hostIA32PKRS = VMCSField(0x2C06)
    /// Pin-based VM-execution controls (encoding 0x4000).
    public static let pinBasedControls = VMCSField(0x4000)
    /// Primary processor-based VM-execution controls (encoding 0x4002).
    public static let primaryProcessorBasedControls = VMCSField(0x4002)
    /// Exception bitmap (encoding 0x4004).
    public static let exceptionBitmap = VMCSField(0x4004)
    /// Page-fault error-code mask (encoding 0x4006).
    public static let pageFaultErrorCodeMask = VMCSField(0x4006)
    /// Page-fault error-code match (encoding 0x4008).
    public static let pageFaultErrorCodeMatch = VMCSField(0x4008)
    /// CR3-target count (encoding 0x400a).
    public static let cr3TargetCount = VMCSField(0x400A)
    /// Primary VM-exit controls (encoding 0x400c).
    public static let primaryExitControls = VMCSField(0x400C)
    /// VM-exit MSR-store count (encoding 0x400e).
    public static let exitMSRStoreCount = VMCSField(0x400E)
    /// VM-exit MSR-load count (encoding 0x4010).
    public static let exitMSRLoadCount = VMCSField(0x4010)
    /// VM-entry controls (encoding 0x4012).
    public static let entryControls = VMCSField(0x4012)
    /// VM-entry MSR-load count (encoding 0x4014).
    public static let entryMSRLoadCount = VMCSField(0x4014)
    /// VM-entry interruption-information field (encoding 0x4016).
    public static let entryInterruptionInformation = VMCSField(0x4016)
    /// VM-entry exception error code (encoding 0x4018).
    public static let entryExceptionErrorCode = VMCSField(0x4018)
    /// VM-entry instruction length (encoding 0x401a).
    public static let entryInstructionLength = VMCSField(0x401A)
    /// TPR threshold (encoding 0x401c).
    public static let tprThreshold = VMCSField(0x401C)
    /// Secondary processor-based VM-execution controls (encoding 0x401e).
    public static let secondaryProcessorBasedControls = VMCSField(0x401E)
    /// PLE_Gap (encoding 0x4020).
    public static let pleGap = VMCSField(0x4020)
    /// PLE_Window (encoding 0x4022).
    public static let pleWindow = VMCSField(0x4022)
    /// Instruction-timeout control (encoding 0x4024).
    public static let instructionTimeoutControl = VMCSField(0x4024)
    /// VM-instruction error (encoding 0x4400).
    public static let vmInstructionError = VMCSField(0x4400)
    /// Exit reason (encoding 0x4402).
    public static let exitReason = VMCSField(0x4402)
    /// VM-exit interruption information (encoding 0x4404).
    public static let exitInterruptionInformation = VMCSField(0x4404)
    /// VM-exit interruption error code (encoding 0x4406).
    public static let exitInterruptionErrorCode = VMCSField(0x4406)
    /// IDT-vectoring information field (encoding 0x4408).
    public static let idtVectoringInformation = VMCSField(0x4408)
    /// IDT-vectoring error code (encoding 0x440a).
    public static let idtVectoringErrorCode = VMCSField(0x440A)
    /// VM-exit instruction length (encoding 0x440c).
    public static let exitInstructionLength = VMCSField(0x440C)
    /// VM-exit instruction information (encoding 0x440e).
    public static let exitInstructionInformation = VMCSField(0x440E)
    /// Guest ES limit (encoding 0x4800).
    public static let guestESLimit = VMCSField(0x4800)
    /// Guest CS limit (encoding 0x4802).
    public static let guestCSLimit = VMCSField(0x4802)
    /// Guest SS limit (encoding 0x4804).
    public static let guestSSLimit = VMCSField(0x4804)
    /// Guest DS limit (encoding 0x4806).
    public static let guestDSLimit = VMCSField(0x4806)
    /// Guest FS limit (encoding 0x4808).
    public static let guestFSLimit = VMCSField(0x4808)
    /// Guest GS limit (encoding 0x480a).
    public static let guestGSLimit = VMCSField(0x480A)
    /// Guest LDTR limit (encoding 0x480c).
    public static let guestLDTRLimit = VMCSField(0x480C)
    /// Guest TR limit (encoding 0x480e).
    public static let guestTRLimit = VMCSField(0x480E)
    /// Guest GDTR limit (encoding 0x4810).
    public static let guestGDTRLimit = VMCSField(0x4810)
    /// Guest IDTR limit (encoding 0x4812).
    public static let guestIDTRLimit = VMCSField(0x4812)
    /// Guest ES access rights (encoding 0x4814).
    public static let guestESAccessRights = VMCSField(0x4814)
    /// Guest CS access rights (encoding 0x4816).
    public static let guestCSAccessRights = VMCSField(0x4816)
    /// Guest SS access rights (encoding 0x4818).
    public static let guestSSAccessRights = VMCSField(0x4818)
    /// Guest DS access rights (encoding 0x481a).
    public static let guestDSAccessRights = VMCSField(0x481A)
    /// Guest FS access rights (encoding 0x481c).
    public static let guestFSAccessRights = VMCSField(0x481C)
    /// Guest GS access rights (encoding 0x481e).
    public static let guestGSAccessRights = VMCSField(0x481E)
    /// Guest LDTR access rights (encoding 0x4820).
    public static let guestLDTRAccessRights = VMCSField(0x4820)
    /// Guest TR access rights (encoding 0x4822).
    public static let guestTRAccessRights = VMCSField(0x4822)
    /// Guest interruptibility state (encoding 0x4824).
    public static let guestInterruptibilityState = VMCSField(0x4824)
    /// Guest activity state (encoding 0x4826).
    public static let guestActivityState = VMCSField(0x4826)
    /// Guest SMBASE (encoding 0x4828).
    public static let guestSMBASE = VMCSField(0x4828)
    /// Guest IA32_SYSENTER_CS (encoding 0x482a).
    public static let guestIA32SysenterCS = VMCSField(0x482A)
    /// VMX-preemption timer value (encoding 0x482e).
    public static let vmxPreemptionTimerValue = VMCSField(0x482E)
    /// Host IA32_SYSENTER_CS (encoding 0x4c00).
    public static let hostIA32SysenterCS = VMCSField(0x4C00)
    /// CR0 guest/host mask (encoding 0x6000).
    public static let cr0GuestHostMask = VMCSField(0x6000)
    /// CR4 guest/host mask (encoding 0x6002).
    public static let cr4GuestHostMask = VMCSField(0x6002)
    /// CR0 read shadow (encoding 0x6004).
    public static let cr0ReadShadow = VMCSField(0x6004)
    /// CR4 read shadow (encoding 0x6006).
    public static let cr4ReadShadow = VMCSField(0x6006)
    /// CR3-target value 0 (encoding 0x6008).
    public static let cr3TargetValue0 = VMCSField(0x6008)
    /// CR3-target value 1 (encoding 0x600a).
    public static let cr3TargetValue1 = VMCSField(0x600A)
    /// CR3-target value 2 (encoding 0x600c).
    public static let cr3TargetValue2 = VMCSField(0x600C)
    /// CR3-target value 3 (encoding 0x600e).
    public static let cr3TargetValue3 = VMCSField(0x600E)
    /// Exit qualification (encoding 0x6400).
    public static let exitQualification = VMCSField(0x6400)
    /// I/O RCX (encoding 0x6402).
    public static let ioRCX = VMCSField(0x6402)
    /// I/O RSI (encoding 0x6404).
    public static let ioRSI = VMCSField(0x6404)
    /// I/O RDI (encoding 0x6406).
    public static let ioRDI = VMCSField(0x6406)
    /// I/O RIP (encoding 0x6408).
    public static let ioRIP = VMCSField(0x6408)
    /// Guest-linear address (encoding 0x640a).
    public static let guestLinearAddress = VMCSField(0x640A)
    /// Guest CR0 (encoding 0x6800).
    public static let guestCR0 = VMCSField(0x6800)
    /// Guest CR3 (encoding 0x6802).
    public static let guestCR3 = VMCSField(0x6802)
    /// Guest CR4 (encoding 0x6804).
    public static let guestCR4 = VMCSField(0x6804)
    /// Guest ES base (encoding 0x6806).
    public static let guestESBase = VMCSField(0x6806)
    /// Guest CS base (encoding 0x6808).
    public static let guestCSBase = VMCSField(0x6808)
    /// Guest SS base (encoding 0x680a).
    public static let guestSSBase = VMCSField(0x680A)
    /// Guest DS base (encoding 0x680c).
    public static let guestDSBase = VMCSField(0x680C)
    /// Guest FS base (encoding 0x680e).
    public static let guestFSBase = VMCSField(0x680E)
    /// Guest GS base (encoding 0x6810).
    public static let guestGSBase = VMCSField(0x6810)
    /// Guest LDTR base (encoding 0x6812).
    public static let guestLDTRBase = VMCSField(0x6812)
    /// Guest TR base (encoding 0x6814).
    public static let guestTRBase = VMCSField(0x6814)
    /// Guest GDTR base (encoding 0x6816).
    public static let guestGDTRBase = VMCSField(0x6816)
    /// Guest IDTR base (encoding 0x6818).
    public static let guestIDTRBase = VMCSField(0x6818)
    /// Guest DR7 (encoding 0x681a).
    public static let guestDR7 = VMCSField(0x681A)
    /// Guest RSP (encoding 0x681c).
    public static let guestRSP = VMCSField(0x681C)
    /// Guest RIP (encoding 0x681e).
    public static let guestRIP = VMCSField(0x681E)
    /// Guest RFLAGS (encoding 0x6820).
    public static let guestRFLAGS = VMCSField(0x6820)
    /// Guest pending debug exceptions (encoding 0x6822).
    public static let guestPendingDebugExceptions = VMCSField(0x6822)
    /// Guest IA32_SYSENTER_ESP (encoding 0x6824).
    public static let guestIA32SysenterESP = VMCSField(0x6824)
    /// Guest IA32_SYSENTER_EIP (encoding 0x6826).
    public static let guestIA32SysenterEIP = VMCSField(0x6826)
    /// Guest IA32_S_CET (encoding 0x6828).
    public static let guestIA32SCET = VMCSField(0x6828)
    /// Guest SSP (encoding 0x682a).
    public static let guestSSP = VMCSField(0x682A)
    /// Guest IA32_INTERRUPT_SSP_TABLE_ADDR (encoding 0x682c).
    public static let guestIA32InterruptSSPTableAddress = VMCSField(0x682C)
    /// Host CR0 (encoding 0x6c00).
    public static let hostCR0 = VMCSField(0x6C00)
    /// Host CR3 (encoding 0x6c02).
    public static let hostCR3 = VMCSField(0x6C02)
    /// Host CR4 (encoding 0x6c04).
    public static let hostCR4 = VMCSField(0x6C04)
    /// Host FS base (encoding 0x6c06).
    public static let hostFSBase = VMCSField(0x6C06)
    /// Host GS base (encoding 0x6c08).
    public static let hostGSBase = VMCSField(0x6C08)
    /// Host TR base (encoding 0x6c0a).
    public static let hostTRBase = VMCSField(0x6C0A)
    /// Host GDTR base (encoding 0x6c0c).
    public static let hostGDTRBase = VMCSField(0x6C0C)
    /// Host IDTR base (encoding 0x6c0e).
    public static let hostIDTRBase = VMCSField(0x6C0E)
    /// Host IA32_SYSENTER_ESP (encoding 0x6c10).
    public static let hostIA32SysenterESP = VMCSField(0x6C10)
    /// Host IA32_SYSENTER_EIP (encoding 0x6c12).
    public static let hostIA32SysenterEIP = VMCSField(0x6C12)
    /// Host RSP (encoding 0x6c14).
    public static let hostRSP = VMCSField(0x6C14)
    /// Host RIP (encoding 0x6c16).
    public static let hostRIP = VMCSField(0x6C16)
    /// Host IA32_S_CET (encoding 0x6c18).
    public static let hostIA32SCET = VMCSField(0x6C18)
    /// Host SSP (encoding 0x6c1a).
    public static let hostSSP = VMCSField(0x6C1A)
    /// Host IA32_INTERRUPT_SSP_TABLE_ADDR (encoding 0x6c1c).
    public static let hostIA32InterruptSSPTableAddress = VMCSField(0x6C1C)

    /// Every field of Appendix B (full encodings only), sorted by encoding, with its name.
    public static let all: [(field: VMCSField, name: String)] = [
        (.virtualProcessorID, "virtual-processor identifier (VPID)"),
        (.postedInterruptNotificationVector, "posted-interrupt notification vector"),
        (.eptpIndex, "EPTP index"),
        (.hlatPrefixSize, "HLAT prefix size"),
        (.lastPIDPointerIndex, "last PID-pointer index"),
        (.guestESSelector, "guest ES selector"),
        (.guestCSSelector, "guest CS selector"),
        (.guestSSSelector, "guest SS selector"),
        (.guestDSSelector, "guest DS selector"),
        (.guestFSSelector, "guest FS selector"),
        (.guestGSSelector, "guest GS selector"),
        (.guestLDTRSelector, "guest LDTR selector"),
        (.guestTRSelector, "guest TR selector"),
        (.guestInterruptStatus, "guest interrupt status"),
        (.pmlIndex, "PML index"),
        (.guestUINV, "guest UINV"),
        (.hostESSelector, "host ES selector"),
        (.hostCSSelector, "host CS selector"),
        (.hostSSSelector, "host SS selector"),
        (.hostDSSelector, "host DS selector"),
        (.hostFSSelector, "host FS selector"),
        (.hostGSSelector, "host GS selector"),
        (.hostTRSelector, "host TR selector"),
        (.ioBitmapA, "address of I/O bitmap A"),
        (.ioBitmapB, "address of I/O bitmap B"),
        (.msrBitmap, "address of MSR bitmaps"),
        (.exitMSRStoreAddress, "VM-exit MSR-store address"),
        (.exitMSRLoadAddress, "VM-exit MSR-load address"),
        (.entryMSRLoadAddress, "VM-entry MSR-load address"),
        (.executiveVMCSPointer, "executive-VMCS pointer"),
        (.pmlAddress, "PML address"),
        (.tscOffset, "TSC offset"),
        (.virtualAPICAddress, "virtual-APIC address"),
        (.apicAccessAddress, "APIC-access address"),
        (.postedInterruptDescriptorAddress, "posted-interrupt descriptor address"),
        (.vmFunctionControls, "VM-function controls"),
        (.eptPointer, "EPT pointer"),
        (.eoiExitBitmap0, "EOI-exit bitmap 0"),
        (.eoiExitBitmap1, "EOI-exit bitmap 1"),
        (.eoiExitBitmap2, "EOI-exit bitmap 2"),
        (.eoiExitBitmap3, "EOI-exit bitmap 3"),
        (.eptpListAddress, "EPTP-list address"),
        (.vmreadBitmapAddress, "VMREAD-bitmap address"),
        (.vmwriteBitmapAddress, "VMWRITE-bitmap address"),
        (.virtualizationExceptionInformationAddress, "virtualization-exception information address"),
        (.xssExitingBitmap, "XSS-exiting bitmap"),
        (.enclsExitingBitmap, "ENCLS-exiting bitmap"),
        (.subPagePermissionTablePointer, "sub-page-permission-table pointer"),
        (.tscMultiplier, "TSC multiplier"),
        (.tertiaryProcessorBasedControls, "tertiary processor-based VM-execution controls"),
        (.enclvExitingBitmap, "ENCLV-exiting bitmap"),
        (.lowPASIDDirectoryAddress, "low PASID directory address"),
        (.highPASIDDirectoryAddress, "high PASID directory address"),
        (.sharedEPTPointer, "shared EPT pointer"),
        (.pconfigExitingBitmap, "PCONFIG-exiting bitmap"),
        (.hlatPointer, "hypervisor-managed linear-address translation pointer"),
        (.pidPointerTableAddress, "PID-pointer table address"),
        (.secondaryExitControls, "secondary VM-exit controls"),
        (.ia32SpecCtrlMask, "IA32_SPEC_CTRL mask"),
        (.ia32SpecCtrlShadow, "IA32_SPEC_CTRL shadow"),
        (.guestPhysicalAddress, "guest-physical address"),
        (.vmcsLinkPointer, "VMCS link pointer"),
        (.guestIA32DebugCtl, "guest IA32_DEBUGCTL"),
        (.guestIA32PAT, "guest IA32_PAT"),
        (.guestIA32EFER, "guest IA32_EFER"),
        (.guestIA32PerfGlobalCtrl, "guest IA32_PERF_GLOBAL_CTRL"),
        (.guestPDPTE0, "guest PDPTE0"),
        (.guestPDPTE1, "guest PDPTE1"),
        (.guestPDPTE2, "guest PDPTE2"),
        (.guestPDPTE3, "guest PDPTE3"),
        (.guestIA32BNDCFGS, "guest IA32_BNDCFGS"),
        (.guestIA32RTITCtl, "guest IA32_RTIT_CTL"),
        (.guestIA32LBRCtl, "guest IA32_LBR_CTL"),
        (.guestIA32PKRS, "guest IA32_PKRS"),
        (.hostIA32PAT, "host IA32_PAT"),
        (.hostIA32EFER, "host IA32_EFER"),
        (.hostIA32PerfGlobalCtrl, "host IA32_PERF_GLOBAL_CTRL"),
        (.hostIA32PKRS, "host IA32_PKRS"),
        (.pinBasedControls, "pin-based VM-execution controls"),
        (.primaryProcessorBasedControls, "primary processor-based VM-execution controls"),
        (.exceptionBitmap, "exception bitmap"),
        (.pageFaultErrorCodeMask, "page-fault error-code mask"),
        (.pageFaultErrorCodeMatch, "page-fault error-code match"),
        (.cr3TargetCount, "CR3-target count"),
        (.primaryExitControls, "primary VM-exit controls"),
        (.exitMSRStoreCount, "VM-exit MSR-store count"),
        (.exitMSRLoadCount, "VM-exit MSR-load count"),
        (.entryControls, "VM-entry controls"),
        (.entryMSRLoadCount, "VM-entry MSR-load count"),
        (.entryInterruptionInformation, "VM-entry interruption-information field"),
        (.entryExceptionErrorCode, "VM-entry exception error code"),
        (.entryInstructionLength, "VM-entry instruction length"),
        (.tprThreshold, "TPR threshold"),
        (.secondaryProcessorBasedControls, "secondary processor-based VM-execution controls"),
        (.pleGap, "PLE_Gap"),
        (.pleWindow, "PLE_Window"),
        (.instructionTimeoutControl, "instruction-timeout control"),
        (.vmInstructionError, "VM-instruction error"),
        (.exitReason, "exit reason"),
        (.exitInterruptionInformation, "VM-exit interruption information"),
        (.exitInterruptionErrorCode, "VM-exit interruption error code"),
        (.idtVectoringInformation, "IDT-vectoring information field"),
        (.idtVectoringErrorCode, "IDT-vectoring error code"),
        (.exitInstructionLength, "VM-exit instruction length"),
        (.exitInstructionInformation, "VM-exit instruction information"),
        (.guestESLimit, "guest ES limit"),
        (.guestCSLimit, "guest CS limit"),
        (.guestSSLimit, "guest SS limit"),
        (.guestDSLimit, "guest DS limit"),
        (.guestFSLimit, "guest FS limit"),
        (.guestGSLimit, "guest GS limit"),
        (.guestLDTRLimit, "guest LDTR limit"),
        (.guestTRLimit, "guest TR limit"),
        (.guestGDTRLimit, "guest GDTR limit"),
        (.guestIDTRLimit, "guest IDTR limit"),
        (.guestESAccessRights, "guest ES access rights"),
        (.guestCSAccessRights, "guest CS access rights"),
        (.guestSSAccessRights, "guest SS access rights"),
        (.guestDSAccessRights, "guest DS access rights"),
        (.guestFSAccessRights, "guest FS access rights"),
        (.guestGSAccessRights, "guest GS access rights"),
        (.guestLDTRAccessRights, "guest LDTR access rights"),
        (.guestTRAccessRights, "guest TR access rights"),
        (.guestInterruptibilityState, "guest interruptibility state"),
        (.guestActivityState, "guest activity state"),
        (.guestSMBASE, "guest SMBASE"),
        (.guestIA32SysenterCS, "guest IA32_SYSENTER_CS"),
        (.vmxPreemptionTimerValue, "VMX-preemption timer value"),
        (.hostIA32SysenterCS, "host IA32_SYSENTER_CS"),
        (.cr0GuestHostMask, "CR0 guest/host mask"),
        (.cr4GuestHostMask, "CR4 guest/host mask"),
        (.cr0ReadShadow, "CR0 read shadow"),
        (.cr4ReadShadow, "CR4 read shadow"),
        (.cr3TargetValue0, "CR3-target value 0"),
        (.cr3TargetValue1, "CR3-target value 1"),
        (.cr3TargetValue2, "CR3-target value 2"),
        (.cr3TargetValue3, "CR3-target value 3"),
        (.exitQualification, "exit qualification"),
        (.ioRCX, "I/O RCX"),
        (.ioRSI, "I/O RSI"),
        (.ioRDI, "I/O RDI"),
        (.ioRIP, "I/O RIP"),
        (.guestLinearAddress, "guest-linear address"),
        (.guestCR0, "guest CR0"),
        (.guestCR3, "guest CR3"),
        (.guestCR4, "guest CR4"),
        (.guestESBase, "guest ES base"),
        (.guestCSBase, "guest CS base"),
        (.guestSSBase, "guest SS base"),
        (.guestDSBase, "guest DS base"),
        (.guestFSBase, "guest FS base"),
        (.guestGSBase, "guest GS base"),
        (.guestLDTRBase, "guest LDTR base"),
        (.guestTRBase, "guest TR base"),
        (.guestGDTRBase, "guest GDTR base"),
        (.guestIDTRBase, "guest IDTR base"),
        (.guestDR7, "guest DR7"),
        (.guestRSP, "guest RSP"),
        (.guestRIP, "guest RIP"),
        (.guestRFLAGS, "guest RFLAGS"),
        (.guestPendingDebugExceptions, "guest pending debug exceptions"),
        (.guestIA32SysenterESP, "guest IA32_SYSENTER_ESP"),
        (.guestIA32SysenterEIP, "guest IA32_SYSENTER_EIP"),
        (.guestIA32SCET, "guest IA32_S_CET"),
        (.guestSSP, "guest SSP"),
        (.guestIA32InterruptSSPTableAddress, "guest IA32_INTERRUPT_SSP_TABLE_ADDR"),
        (.hostCR0, "host CR0"),
        (.hostCR3, "host CR3"),
        (.hostCR4, "host CR4"),
        (.hostFSBase, "host FS base"),
        (.hostGSBase, "host GS base"),
        (.hostTRBase, "host TR base"),
        (.hostGDTRBase, "host GDTR base"),
        (.hostIDTRBase, "host IDTR base"),
        (.hostIA32SysenterESP, "host IA32_SYSENTER_ESP"),
        (.hostIA32SysenterEIP, "host IA32_SYSENTER_EIP"),
        (.hostRSP, "host RSP"),
        (.hostRIP, "host RIP"),
        (.hostIA32SCET, "host IA32_S_CET"),
        (.hostSSP, "host SSP"),
        (.hostIA32InterruptSSPTableAddress, "host IA32_INTERRUPT_SSP_TABLE_ADDR"),
    ]
}
