// Capability profiles of real processors, and reading capabilities from a text file.

/// A named set of capability MSRs read from a real processor.
public struct VMXProfile: Sendable {
    /// The name used on the command line (`hv vmx caps --profile NAME`).
    public var name: String
    /// The processor, its microarchitecture and year.
    public var processor: String
    /// Where the values were published.
    public var source: String
    /// The capabilities.
    public var capabilities: VMXCapabilities

    /// The built-in profiles, oldest first.
    public static let all: [VMXProfile] = [core2X6800, ivyBridgeI5_3570, broadwellI7_5600U]

    /// The profile called `name` (case-insensitive), or nil.
    public static func named(_ name: String) -> VMXProfile? {
        all.first { asciiUppercased($0.name) == asciiUppercased(name) }
    }

    /// Intel Core 2 X6800 (Merom/Conroe, family 6 model 15, 2006): the first VT-x generation,
    /// with no secondary controls, so no EPT, VPID or unrestricted guest, and no TRUE MSRs.
    ///
    /// Source: VirtualBox CPU database, `src/VBox/VMM/VMMR3/cpus/Intel_Core2_X6800_2_93GHz.h`
    /// (values read from the processor by VBoxCpuReport), MSRs 0x480-0x48A; MAXPHYADDR 36 from
    /// the same file's `cMaxPhysAddrWidth`.
    public static let core2X6800 = VMXProfile(
        name: "core2-x6800", processor: "Intel Core 2 X6800 (Merom, 2006)",
        source: "VirtualBox src/VBox/VMM/VMMR3/cpus/Intel_Core2_X6800_2_93GHz.h (VBoxCpuReport dump)",
        capabilities: VMXCapabilities(physicalAddressWidth: 36, msrs: [
            (.basic, 0x001A_0400_0000_0007),
            (.pinBasedControls, 0x0000_001F_0000_0016),
            (.processorBasedControls, 0x77B9_FFFE_0401_E172),
            (.exitControls, 0x0003_EFFF_0003_6DFF),
            (.entryControls, 0x0000_1FFF_0000_11FF),
            (.misc, 0x0000_0000_0004_03C0),
            (.cr0Fixed0, 0x8000_0021), (.cr0Fixed1, 0xFFFF_FFFF),
            (.cr4Fixed0, 0x2000), (.cr4Fixed1, 0x27FF),
            (.vmcsEnumeration, 0x2C),
        ]))

    /// Intel Core i5-3570 (Ivy Bridge, family 6 model 58, 2012): EPT with 2 MiB pages, VPID,
    /// unrestricted guest and the preemption timer; no APIC virtualisation beyond TPR shadow
    /// and APIC-access page, no VMCS shadowing, no VM functions.
    ///
    /// Source: VirtualBox CPU database, `src/VBox/VMM/VMMR3/cpus/Intel_Core_i5_3570.h`
    /// (VBoxCpuReport on Linux, 2013), MSRs 0x480-0x490; MAXPHYADDR 36 (CPUID 0x80000008 EAX=0x3024).
    public static let ivyBridgeI5_3570 = VMXProfile(
        name: "ivybridge-i5-3570", processor: "Intel Core i5-3570 (Ivy Bridge, 2012)",
        source: "VirtualBox src/VBox/VMM/VMMR3/cpus/Intel_Core_i5_3570.h (VBoxCpuReport dump)",
        capabilities: VMXCapabilities(physicalAddressWidth: 36, msrs: [
            (.basic, 0x00DA_0400_0000_0010),
            (.pinBasedControls, 0x0000_007F_0000_0016),
            (.processorBasedControls, 0xFFF9_FFFE_0401_E172),
            (.exitControls, 0x007F_FFFF_0003_6DFF),
            (.entryControls, 0x0000_FFFF_0000_11FF),
            (.misc, 0x0000_0000_1004_01E5),
            (.cr0Fixed0, 0x8000_0021), (.cr0Fixed1, 0xFFFF_FFFF),
            (.cr4Fixed0, 0x2000), (.cr4Fixed1, 0x0017_67FF),
            (.vmcsEnumeration, 0x2A),
            (.processorBasedControls2, 0x0000_08FF_0000_0000),
            (.eptVPIDCapabilities, 0x0000_0F01_0611_4141),
            (.truePinBasedControls, 0x0000_007F_0000_0016),
            (.trueProcessorBasedControls, 0xFFF9_FFFE_0400_6172),
            (.trueExitControls, 0x007F_FFFF_0003_6DFB),
            (.trueEntryControls, 0x0000_FFFF_0000_11FB),
        ]))

    /// Intel Core i7-5600U (Broadwell, family 6 model 61, 2015): adds 1 GiB EPT pages, EPT
    /// accessed/dirty flags, VMCS shadowing, VM functions (EPTP switching), EPT-violation #VE,
    /// INVPCID and RDSEED exiting; as a client part it lacks APIC-register virtualisation,
    /// virtual-interrupt delivery and posted interrupts.
    ///
    /// Source: VirtualBox CPU database, `src/VBox/VMM/VMMR3/cpus/Intel_Core_i7_5600U.h`
    /// (VBoxCpuReport on Windows, 2015), MSRs 0x480-0x491; MAXPHYADDR 39 (CPUID 0x80000008 EAX=0x3027).
    public static let broadwellI7_5600U = VMXProfile(
        name: "broadwell-i7-5600u", processor: "Intel Core i7-5600U (Broadwell, 2015)",
        source: "VirtualBox src/VBox/VMM/VMMR3/cpus/Intel_Core_i7_5600U.h (VBoxCpuReport dump)",
        capabilities: VMXCapabilities(physicalAddressWidth: 39, msrs: [
            (.basic, 0x00DA_0400_0000_0012),
            (.pinBasedControls, 0x0000_007F_0000_0016),
            (.processorBasedControls, 0xFFF9_FFFE_0401_E172),
            (.exitControls, 0x007F_FFFF_0003_6DFF),
            (.entryControls, 0x0000_FFFF_0000_11FF),
            (.misc, 0x0000_0000_3004_81E5),
            (.cr0Fixed0, 0x8000_0021), (.cr0Fixed1, 0xFFFF_FFFF),
            (.cr4Fixed0, 0x2000), (.cr4Fixed1, 0x0037_67FF),
            (.vmcsEnumeration, 0x2A),
            (.processorBasedControls2, 0x0005_7CFF_0000_0000),
            (.eptVPIDCapabilities, 0x0000_0F01_0633_4141),
            (.truePinBasedControls, 0x0000_007F_0000_0016),
            (.trueProcessorBasedControls, 0xFFF9_FFFE_0400_6172),
            (.trueExitControls, 0x007F_FFFF_0003_6DFB),
            (.trueEntryControls, 0x0000_FFFF_0000_11FB),
            (.vmFunctions, 0x1),
        ]))
}

/// Why a capability text could not be read; `line` counts from 1.
public struct VMXCapabilityParseError: Error, Hashable, Sendable {
    public var line: Int
    public var message: String
    public init(line: Int, message: String) {
        self.line = line
        self.message = message
    }
}

extension VMXCapabilities {
    /// Reads `MSR VALUE` pairs, one a line: the MSR as hex index (`0x480`) or name
    /// (`IA32_VMX_BASIC`), the value in hex (`0x` optional, `_` and `` ` `` allowed as
    /// separators); `#` starts a comment. `MAXPHYADDR N` (decimal) sets the physical-address
    /// width, 36 when absent. IA32_VMX_BASIC is required, with a value a processor could report
    /// (VMCS region size 1-4096, bit 31 clear, memory type UC or WB).
    public static func parse(_ text: String) throws(VMXCapabilityParseError) -> VMXCapabilities {
        var capabilities = VMXCapabilities(physicalAddressWidth: 36, msrs: [])
        var lineNumber = 0, basicLine = 0
        for rawLine in text.split(separator: "\n", omittingEmptySubsequences: false) {
            lineNumber += 1
            var line = Substring(rawLine)
            if let hash = line.firstIndex(of: "#") { line = line[..<hash] }
            let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\r" || $0 == "=" || $0 == ":" })
            if words.isEmpty { continue }
            guard words.count == 2 else {
                throw VMXCapabilityParseError(line: lineNumber, message: "expected 'MSR VALUE', found \(words.count) words")
            }
            let key = String(words[0])
            if asciiUppercased(key) == "MAXPHYADDR" {
                guard let width = Int(String(words[1])), (32...52).contains(width) else {
                    throw VMXCapabilityParseError(line: lineNumber, message: "MAXPHYADDR must be a decimal number from 32 to 52")
                }
                capabilities.physicalAddressWidth = width
                continue
            }
            let msr: VMXCapabilityMSR
            if let named = VMXCapabilityMSR(name: key) {
                msr = named
            } else if let index = parseHex(key), index <= UInt64(UInt32.max),
                      let byIndex = VMXCapabilityMSR(rawValue: UInt32(index)) {
                msr = byIndex
            } else {
                throw VMXCapabilityParseError(line: lineNumber, message: "'\(key)' is not a VMX capability MSR (0x480-0x493 or a name such as IA32_VMX_BASIC)")
            }
            guard let value = parseHex(String(words[1])) else {
                throw VMXCapabilityParseError(line: lineNumber, message: "'\(words[1])' is not a hexadecimal value")
            }
            capabilities[msr] = value
            if msr == .basic { basicLine = lineNumber }
        }
        guard let basic = capabilities[.basic] else {
            throw VMXCapabilityParseError(line: lineNumber, message: "IA32_VMX_BASIC (0x480) is missing")
        }
        // SDM Appendix A.1: a value no processor reports is a mistake in the file, not a CPU.
        let regionSize = (basic >> 32) & 0x1FFF, memoryType = (basic >> 50) & 0xF
        let problem: String? = if regionSize == 0 || regionSize > 4096 {
            "the VMCS region size (bits 44:32) is \(regionSize); processors report 1 to 4096 bytes (SDM A.1)"
        } else if basic & (1 << 31) != 0 {
            "bit 31 is 1; it is always 0 (SDM A.1)"
        } else if memoryType != 0 && memoryType != 6 {
            "the VMCS memory type (bits 53:50) is \(memoryType); processors report 0 (UC) or 6 (WB) (SDM A.1)"
        } else {
            nil
        }
        if let problem {
            throw VMXCapabilityParseError(line: basicLine, message: "IA32_VMX_BASIC \(hexString(basic, digits: 16)): \(problem)")
        }
        return capabilities
    }

    /// The capabilities as text `parse` reads back.
    public var text: String {
        var lines = ["MAXPHYADDR \(physicalAddressWidth)"]
        for (msr, value) in reported { lines.append("\(hexString(UInt64(msr.rawValue))) \(hexString(value, digits: 16))  # \(msr.name)") }
        return lines.joined(separator: "\n") + "\n"
    }
}

/// A hex number with optional `0x` and `_`/`` ` `` separators, or nil.
func parseHex(_ text: String) -> UInt64? {
    var digits = Substring(text)
    if digits.hasPrefix("0x") || digits.hasPrefix("0X") { digits = digits.dropFirst(2) }
    var value: UInt64 = 0
    var count = 0
    for byte in digits.utf8 {
        let digit: UInt64
        switch byte {
        case 0x30...0x39: digit = UInt64(byte - 0x30)
        case 0x41...0x46: digit = UInt64(byte - 0x41 + 10)
        case 0x61...0x66: digit = UInt64(byte - 0x61 + 10)
        case 0x5F, 0x60: continue
        default: return nil
        }
        guard value >> 60 == 0 else { return nil }
        value = value << 4 | digit
        count += 1
    }
    return count > 0 ? value : nil
}
