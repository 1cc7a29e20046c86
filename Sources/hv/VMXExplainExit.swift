// `hv vmx explain-exit`: a VM exit's reason (SDM Appendix C) and its exit qualification
// (SDM 28.2.1) in words.
import ArgumentParser
import HVCore

struct VMXExplainExitCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "explain-exit",
        abstract: "Explain a VMX exit reason and decode its exit qualification.",
        discussion: """
            REASON is a basic exit reason (48, 0x30) or its SDM name ("EPT violation", ept-violation), \
            or a whole 32-bit exit-reason field such as 0x80000021 (bit 31: VM-entry failure). \
            Qualifications are decoded for CR access (28), MOV DR (29), I/O (30), EPT violation (48), \
            debug exceptions (0), task switch (9), APIC access (44), INVLPG (14) and entry failures (33, 34).
            """)

    @Argument(help: ArgumentHelp("The exit reason: a number, a name, or a full exit-reason field.", valueName: "reason"))
    var reason: String?

    @Option(name: .long, help: ArgumentHelp("The exit qualification (VMCS field 0x6400), in hex (0x181) or decimal.", valueName: "hex"))
    var qualification: String?

    @Flag(name: .long, help: "List every basic exit reason with its number.")
    var list = false

    /// The exit-reason field REASON stands for, or nil.
    static func parseReason(_ text: String) -> VMXExitReason? {
        if let number = VMXText.number(text), number <= UInt64(UInt32.max) {
            let field = VMXExitReason(rawValue: UInt32(number))
            return field.basic.name == nil ? nil : field
        }
        let spaced = text.replacingOccurrences(of: "-", with: " ").replacingOccurrences(of: "_", with: " ")
        for candidate in [text, spaced] {
            if let basic = VMXBasicExitReason(name: candidate) { return VMXExitReason(rawValue: UInt32(basic.rawValue)) }
        }
        return nil
    }

    mutating func validate() throws {
        if list { return }
        guard let reason else {
            throw ValidationError("give an exit reason, e.g. `hv vmx explain-exit 48 --qualification 0x181`, or --list")
        }
        if Self.parseReason(reason) == nil {
            throw ValidationError("unknown exit reason '\(reason)'; give a basic exit reason the SDM defines (0-\(VMXBasicExitReason.all.last!.reason), e.g. 48 or \"EPT violation\"); `hv vmx explain-exit --list` lists them all")
        }
        if let qualification, VMXText.number(qualification) == nil {
            throw ValidationError("--qualification '\(qualification)' is not a number; write it in hex (0x181) or decimal")
        }
    }

    func run() {
        if list {
            for entry in VMXBasicExitReason.all { print("\(VMXText.padded(String(entry.reason), 3)) \(entry.name)") }
            return
        }
        guard let reason, let field = Self.parseReason(reason) else { return }
        for line in Self.explain(field, qualification: qualification.flatMap(VMXText.number)) { print(line) }
    }

    static func explain(_ field: VMXExitReason, qualification: UInt64?) -> [String] {
        let basic = field.basic
        var out = ["exit reason \(basic.rawValue) (\(hexString(UInt64(basic.rawValue)))): \(basic.name ?? "undefined") (SDM Appendix C)"]
        if field.rawValue > 0xFFFF {
            out.append("exit-reason field \(hexString(UInt64(field.rawValue), digits: 8)) (SDM 25.9.1):")
            if field.isEntryFailure { out.append("  bit 31: VM-entry failure: the guest never ran; the exit loaded host state (SDM 27.8)") }
            if field.enclaveMode { out.append("  bit 27: the exit happened in enclave mode") }
            if field.pendingMTFExit { out.append("  bit 28: a monitor-trap-flag VM exit was pending") }
            if field.fromVMXRoot { out.append("  bit 29: the exit came from VMX root operation (SMM monitor)") }
        }
        guard let qualification else {
            if describeExitQualification(reason: basic, qualification: 0) != nil {
                out.append("give --qualification (VMCS field 0x6400) to decode this exit's qualification")
            }
            return out
        }
        if let lines = describeExitQualification(reason: basic, qualification: qualification) {
            out.append("exit qualification \(hexString(qualification)) (SDM 28.2.1):")
            out += lines.map { "  " + $0 }
            if basic == .eptViolation {
                out.append("the faulting guest-physical address is in VMCS field 0x2400; the guest-linear address, when valid, in 0x640a")
            }
        } else {
            out.append("exit qualification \(hexString(qualification)): this exit reason does not define one, or HV has no decoder for it (SDM 28.2.1)")
        }
        return out
    }
}
