// `hv vmx caps`: a processor's VMX capability MSRs in words (SDM Vol. 3D, Appendix A).
import ArgumentParser
import HVCore

struct VMXCapsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "caps",
        abstract: "Decode VMX capability MSRs: VMCS revision and size, allowed control bits, CR0/CR4 fixed bits, EPT/VPID features.")

    @OptionGroup var source: VMXSourceOptions

    func run() throws {
        let (caps, profile) = try source.load()
        if let profile {
            print("\(profile.name): \(profile.processor)")
            print("source: \(profile.source)")
        } else {
            print("capabilities from \(source.sourceName)")
        }
        for line in Self.describe(caps) { print(line) }
    }

    static let cr0Bits = [(0, "PE"), (1, "MP"), (2, "EM"), (3, "TS"), (4, "ET"), (5, "NE"), (16, "WP"), (18, "AM"),
                          (29, "NW"), (30, "CD"), (31, "PG")]
    static let cr4Bits = [(0, "VME"), (1, "PVI"), (2, "TSD"), (3, "DE"), (4, "PSE"), (5, "PAE"), (6, "MCE"), (7, "PGE"),
                          (8, "PCE"), (9, "OSFXSR"), (10, "OSXMMEXCPT"), (11, "UMIP"), (12, "LA57"), (13, "VMXE"),
                          (14, "SMXE"), (16, "FSGSBASE"), (17, "PCIDE"), (18, "OSXSAVE"), (19, "KL"), (20, "SMEP"),
                          (21, "SMAP"), (22, "PKE"), (23, "CET"), (24, "PKS"), (25, "UINTR"), (28, "LAM_SUP")]

    /// The capabilities as lines of text, section by section of Appendix A.
    static func describe(_ caps: VMXCapabilities) -> [String] {
        func yes(_ flag: Bool) -> String { flag ? "yes" : "no" }
        func raw(_ msr: VMXCapabilityMSR) -> String {
            "\(msr.name) (\(hexString(UInt64(msr.rawValue)))) = \(caps[msr].map { hexString($0, digits: 16) } ?? "not reported") (SDM \(msr.section))"
        }
        var out: [String] = [""]
        out.append(raw(.basic))
        let memoryType = caps.vmcsMemoryType == 6 ? "write-back" : caps.vmcsMemoryType == 0 ? "uncacheable" : "reserved type"
        out.append("  VMCS revision identifier \(caps.vmcsRevisionID); VMXON and VMCS regions are \(caps.vmcsRegionSize) bytes; memory type \(caps.vmcsMemoryType) (\(memoryType))")
        out.append("  TRUE control MSRs: \(yes(caps.hasTrueControls))\(caps.hasTrueControls ? " (some default1 bits may be 0, SDM A.2)" : " (every default1 bit stays 1, SDM A.2)")")
        out.append("  INS/OUTS exits report instruction information: \(yes(caps.reportsINSOUTSInformation)); dual-monitor SMM: \(yes(caps.supportsDualMonitorSMM)); 32-bit address limit: \(yes(caps.addressesLimitedTo32Bits))")
        out.append("  hardware exceptions may be injected with or without an error code: \(yes(caps.relaxedErrorCodeInjection))")
        out.append(raw(.misc))
        if caps[.misc] != nil {
            out.append("  VMX-preemption timer: counts down once every 2^\(caps.preemptionTimerRate) = \(1 << caps.preemptionTimerRate) TSC ticks")
            var states: [String] = []
            if caps.activityStates.contains(.hlt) { states.append("HLT") }
            if caps.activityStates.contains(.shutdown) { states.append("shutdown") }
            if caps.activityStates.contains(.waitForSIPI) { states.append("wait-for-SIPI") }
            out.append("  activity states besides active: \(states.isEmpty ? "none" : states.joined(separator: ", "))")
            out.append("  CR3-target values: \(caps.cr3TargetCount); MSR load/store lists: up to \(caps.maxMSRListCount) entries each")
            out.append("  VM exits store EFER.LMA in 'IA-32e mode guest': \(yes(caps.storesLMAOnExit)); VMWRITE to exit-information fields: \(yes(caps.canWriteExitInformation)); zero-length software injection: \(yes(caps.allowsZeroLengthInjection))")
        }
        out.append("physical-address width (MAXPHYADDR, CPUID 80000008H:EAX[7:0]): \(caps.physicalAddressWidth) bits")
        out.append("CR0 in VMX operation (IA32_VMX_CR0_FIXED0/1, SDM A.7): must be 1: \(VMXText.bitNames(caps.cr0MustBeOne, cr0Bits)) (\(hexString(caps.cr0MustBeOne, digits: 8))); may be 1: \(hexString(caps.cr0MayBeOne, digits: 8))")
        out.append("CR4 in VMX operation (IA32_VMX_CR4_FIXED0/1, SDM A.8): must be 1: \(VMXText.bitNames(caps.cr4MustBeOne, cr4Bits)) (\(hexString(caps.cr4MustBeOne, digits: 8))); may be 1: \(VMXText.bitNames(caps.cr4MayBeOne, cr4Bits)) (\(hexString(caps.cr4MayBeOne, digits: 8)))")
        out.append("highest VMCS field index (IA32_VMX_VMCS_ENUM, SDM A.9): \(caps.highestVMCSFieldIndex)")

        out.append("")
        out.append("Controls: what each control field allows (SDM A.3-A.5)")
        for field in VMXControlField.allCases {
            let settings = caps.allowedSettings(field)
            guard let msr = settings.msr else {
                let reason: String = switch field {
                case .secondaryProcessorBased: "IA32_VMX_PROCBASED_CTLS bit 63 ('activate secondary controls' may be 1) is 0"
                case .tertiaryProcessorBased: "IA32_VMX_PROCBASED_CTLS bit 49 ('activate tertiary controls' may be 1) is 0, or IA32_VMX_PROCBASED_CTLS3 is not reported"
                case .secondaryExit: "IA32_VMX_EXIT_CTLS bit 63 ('activate secondary controls' may be 1) is 0, or IA32_VMX_EXIT_CTLS2 is not reported"
                default: "\(field.capabilityMSR(useTrue: caps.hasTrueControls).name) is not reported"
                }
                out.append("\(field.name): not available: \(reason)")
                continue
            }
            out.append("\(field.name), from \(msr.name) (\(hexString(UInt64(msr.rawValue)))):")
            let width = field.is64Bit ? 64 : 32
            var mustBeOne: [String] = [], free: [String] = [], unsupported: [String] = []
            for bit in 0..<width {
                let mask: UInt64 = 1 << UInt64(bit)
                let name = field.describeBit(bit)
                if settings.mustBeOne & mask != 0 {
                    mustBeOne.append(name)
                } else if settings.mayBeOne & mask != 0 {
                    free.append(name)
                } else if field.bitName(bit) != nil {
                    unsupported.append(name)
                }
            }
            out.append("  must be 1:      \(mustBeOne.isEmpty ? "none" : mustBeOne.joined(separator: ", "))")
            out.append("  may be 0 or 1:  \(free.isEmpty ? "none" : free.joined(separator: ", "))")
            out.append("  not supported:  \(unsupported.isEmpty ? "none" : unsupported.joined(separator: ", "))")
        }

        out.append("")
        out.append(raw(.eptVPIDCapabilities))
        if caps[.eptVPIDCapabilities] != nil {
            let features = EPTVPIDCapabilities.named.filter { caps.eptVPID.contains($0.0) }.map(\.1)
            out.append("  supported: \(features.isEmpty ? "none" : features.joined(separator: ", "))")
        }
        out.append(raw(.vmFunctions))
        if caps[.vmFunctions] != nil {
            out.append("  VM functions: \(caps.vmFunctions & 1 != 0 ? "EPTP switching (function 0)" : "none")")
        }
        return out
    }
}
