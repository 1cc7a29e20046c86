// NOTE from the lead: the EPT-violation qualification type here is named VMXEPTViolationExitQualification
// because Sources/HVModel/Paging/EPTViolation.swift (the EPT engineer, issue 4) already defines
// EPTViolationExitQualification. Prefer reusing the Paging type for EPT violations if it fits.
// Exit-qualification decoders (SDM Vol. 3C, 28.2.1, Tables 28-1 to 28-7) and the
// interruption-information and VMX-instruction-information fields (25.9.2, 28.2.5).

/// The 64-bit general-purpose register names in the order the SDM's 4-bit register fields use.
public let generalPurposeRegisterNames = ["RAX", "RCX", "RDX", "RBX", "RSP", "RBP", "RSI", "RDI",
                                          "R8", "R9", "R10", "R11", "R12", "R13", "R14", "R15"]

/// Debug exceptions (Table 28-1).
public struct DebugExceptionQualification: Hashable, Sendable {
    public var rawValue: UInt64
    public init(_ rawValue: UInt64) { self.rawValue = rawValue }
    /// B3:B0: which breakpoint conditions were met.
    public var breakpointsHit: UInt8 { UInt8(rawValue & 0xF) }
    /// BLD: a bus-lock was detected.
    public var busLockDetected: Bool { rawValue & (1 << 11) != 0 }
    /// BD: a debug-register access was detected.
    public var debugRegisterAccess: Bool { rawValue & (1 << 13) != 0 }
    /// BS: single step (RFLAGS.TF).
    public var singleStep: Bool { rawValue & (1 << 14) != 0 }
    /// RTM: inside an RTM region.
    public var rtm: Bool { rawValue & (1 << 16) != 0 }
    public var lines: [String] {
        var out: [String] = []
        for index in 0..<4 where breakpointsHit & (1 << UInt8(index)) != 0 { out.append("B\(index): breakpoint condition \(index) met (DR\(index))") }
        if busLockDetected { out.append("BLD: bus lock detected") }
        if debugRegisterAccess { out.append("BD: debug-register access detected (DR7.GD)") }
        if singleStep { out.append("BS: single-step trap (RFLAGS.TF)") }
        if rtm { out.append("RTM: debug exception inside an RTM region") }
        return out.isEmpty ? ["no debug condition bits set"] : out
    }
}

/// Task switch (Table 28-2).
public struct TaskSwitchQualification: Hashable, Sendable {
    public var rawValue: UInt64
    public init(_ rawValue: UInt64) { self.rawValue = rawValue }
    public enum Source: Int, Sendable { case call = 0, iret = 1, jmp = 2, taskGateInIDT = 3 }
    public var tssSelector: UInt16 { UInt16(truncatingIfNeeded: rawValue) }
    public var source: Source { Source(rawValue: Int((rawValue >> 30) & 3))! }
    public var lines: [String] {
        let names = ["CALL instruction", "IRET instruction", "JMP instruction", "task gate in the IDT"]
        return ["selector of the new task's TSS: \(hexString(UInt64(tssSelector), digits: 4))",
                "source of the task switch: \(names[source.rawValue])"]
    }
}

/// Control-register accesses (Table 28-3).
public struct ControlRegisterAccessQualification: Hashable, Sendable {
    public var rawValue: UInt64
    public init(_ rawValue: UInt64) { self.rawValue = rawValue }
    public enum AccessType: Int, Sendable { case movToCR = 0, movFromCR = 1, clts = 2, lmsw = 3 }
    public var controlRegister: Int { Int(rawValue & 0xF) }
    public var accessType: AccessType { AccessType(rawValue: Int((rawValue >> 4) & 3))! }
    /// For LMSW: the operand was in memory (true) or a register.
    public var lmswOperandInMemory: Bool { rawValue & (1 << 6) != 0 }
    /// For MOV CR: the general-purpose register (0 = RAX ... 15 = R15).
    public var register: Int { Int((rawValue >> 8) & 0xF) }
    /// For LMSW: the source data.
    public var lmswSourceData: UInt16 { UInt16(truncatingIfNeeded: rawValue >> 16) }
    public var lines: [String] {
        let reg = generalPurposeRegisterNames[register]
        switch accessType {
        case .movToCR: return ["MOV to CR\(controlRegister) from \(reg)"]
        case .movFromCR: return ["MOV from CR\(controlRegister) to \(reg)"]
        case .clts: return ["CLTS (clears CR0.TS)"]
        case .lmsw: return ["LMSW with a \(lmswOperandInMemory ? "memory" : "register") operand, source data \(hexString(UInt64(lmswSourceData), digits: 4))"]
        }
    }
}

/// MOV DR (Table 28-4).
public struct MovDRQualification: Hashable, Sendable {
    public var rawValue: UInt64
    public init(_ rawValue: UInt64) { self.rawValue = rawValue }
    public var debugRegister: Int { Int(rawValue & 7) }
    /// True for MOV from DR (a read).
    public var isRead: Bool { rawValue & (1 << 4) != 0 }
    public var register: Int { Int((rawValue >> 8) & 0xF) }
    public var lines: [String] {
        isRead ? ["MOV from DR\(debugRegister) to \(generalPurposeRegisterNames[register])"]
            : ["MOV to DR\(debugRegister) from \(generalPurposeRegisterNames[register])"]
    }
}

/// I/O instructions (Table 28-5).
public struct IOInstructionQualification: Hashable, Sendable {
    public var rawValue: UInt64
    public init(_ rawValue: UInt64) { self.rawValue = rawValue }
    /// 1, 2 or 4 bytes.
    public var size: Int { Int(rawValue & 7) + 1 }
    public var isIn: Bool { rawValue & (1 << 3) != 0 }
    public var isString: Bool { rawValue & (1 << 4) != 0 }
    public var hasREPPrefix: Bool { rawValue & (1 << 5) != 0 }
    /// The port came from an immediate (true) or DX.
    public var immediateOperand: Bool { rawValue & (1 << 6) != 0 }
    public var port: UInt16 { UInt16(truncatingIfNeeded: rawValue >> 16) }
    public var lines: [String] {
        let instruction = (hasREPPrefix ? "REP " : "") + (isIn ? (isString ? "INS" : "IN") : (isString ? "OUTS" : "OUT"))
        return ["\(instruction) of \(size) byte\(size == 1 ? "" : "s") at port \(hexString(UInt64(port), digits: 4))",
                "port operand: \(immediateOperand ? "immediate" : "DX")"]
    }
}

/// APIC access (Table 28-6).
public struct APICAccessQualification: Hashable, Sendable {
    public var rawValue: UInt64
    public init(_ rawValue: UInt64) { self.rawValue = rawValue }
    public var offset: Int { Int(rawValue & 0xFFF) }
    public var accessType: Int { Int((rawValue >> 12) & 0xF) }
    public var asynchronous: Bool { rawValue & (1 << 16) != 0 }
    public var lines: [String] {
        let kind: String = switch accessType {
        case 0: "linear access for a data read during instruction execution"
        case 1: "linear access for a data write during instruction execution"
        case 2: "linear access for an instruction fetch"
        case 3: "linear access (read or write) during event delivery"
        case 10: "guest-physical access during event delivery"
        case 15: "guest-physical access for an instruction fetch or during instruction execution"
        default: "reserved access type \(accessType)"
        }
        var out = ["\(kind), APIC-page offset \(hexString(UInt64(offset), digits: 3))"]
        if asynchronous { out.append("asynchronous to instruction execution") }
        return out
    }
}

/// EPT violations (Table 28-7).
public struct VMXEPTViolationExitQualification: Hashable, Sendable {
    public var rawValue: UInt64
    public init(_ rawValue: UInt64) { self.rawValue = rawValue }
    public var read: Bool { rawValue & (1 << 0) != 0 }
    public var write: Bool { rawValue & (1 << 1) != 0 }
    public var instructionFetch: Bool { rawValue & (1 << 2) != 0 }
    public var entryReadable: Bool { rawValue & (1 << 3) != 0 }
    public var entryWritable: Bool { rawValue & (1 << 4) != 0 }
    public var entryExecutable: Bool { rawValue & (1 << 5) != 0 }
    public var entryUserExecutable: Bool { rawValue & (1 << 6) != 0 }
    public var guestLinearAddressValid: Bool { rawValue & (1 << 7) != 0 }
    /// With a valid linear address: the access was to the translated address (true) or to a
    /// guest paging-structure entry (false).
    public var accessToTranslatedAddress: Bool { rawValue & (1 << 8) != 0 }
    public var nmiUnblockingDueToIRET: Bool { rawValue & (1 << 12) != 0 }
    public var lines: [String] {
        var access: [String] = []
        if read { access.append("data read") }
        if write { access.append("data write") }
        if instructionFetch { access.append("instruction fetch") }
        var out = ["access: " + (access.isEmpty ? "none recorded" : access.joined(separator: ", "))]
        var allowed: [String] = []
        if entryReadable { allowed.append("readable") }
        if entryWritable { allowed.append("writable") }
        if entryExecutable { allowed.append("executable") }
        if entryUserExecutable { allowed.append("user-mode executable") }
        out.append("the EPT entries allowed: " + (allowed.isEmpty ? "nothing (not present)" : allowed.joined(separator: ", ")))
        if guestLinearAddressValid {
            out.append("guest-linear address valid; the access was "
                + (accessToTranslatedAddress ? "to the translation of that linear address" : "to a guest paging-structure entry"))
            if rawValue & (1 << 9) != 0 { out.append("user-mode linear address (advanced information)") }
            if rawValue & (1 << 10) != 0 { out.append("read/write linear address (advanced information)") }
            if rawValue & (1 << 11) != 0 { out.append("execute-disable linear address (advanced information)") }
        } else {
            out.append("no guest-linear address (e.g. an access during a guest paging walk of PDPTEs or MOV to CR3)")
        }
        if nmiUnblockingDueToIRET { out.append("NMI unblocking due to IRET") }
        if rawValue & (1 << 13) != 0 { out.append("shadow-stack access") }
        if rawValue & (1 << 14) != 0 { out.append("supervisor shadow-stack page") }
        if rawValue & (1 << 15) != 0 { out.append("guest-paging verification") }
        if rawValue & (1 << 16) != 0 { out.append("asynchronous to instruction execution") }
        return out
    }
}

/// Interruption-information fields: VM-exit, IDT-vectoring and VM-entry (SDM 25.9.2, 25.8.3).
public struct InterruptionInformation: Hashable, Sendable {
    public var rawValue: UInt32
    public init(_ rawValue: UInt32) { self.rawValue = rawValue }
    /// Builds a valid field.
    public init(vector: UInt8, type: EventType, deliverErrorCode: Bool = false) {
        rawValue = UInt32(vector) | UInt32(type.rawValue) << 8 | (deliverErrorCode ? 1 << 11 : 0) | 1 << 31
    }
    public enum EventType: UInt8, Sendable, CaseIterable {
        case externalInterrupt = 0, reserved = 1, nmi = 2, hardwareException = 3, softwareInterrupt = 4
        case privilegedSoftwareException = 5, softwareException = 6, otherEvent = 7
        public var name: String {
            switch self {
            case .externalInterrupt: "external interrupt"
            case .reserved: "reserved type 1"
            case .nmi: "non-maskable interrupt (NMI)"
            case .hardwareException: "hardware exception"
            case .softwareInterrupt: "software interrupt (INT n)"
            case .privilegedSoftwareException: "privileged software exception (INT1)"
            case .softwareException: "software exception (INT3 or INTO)"
            case .otherEvent: "other event (pending MTF VM exit)"
            }
        }
    }
    public var vector: UInt8 { UInt8(truncatingIfNeeded: rawValue) }
    public var type: EventType { EventType(rawValue: UInt8((rawValue >> 8) & 7))! }
    public var errorCodeValid: Bool { rawValue & (1 << 11) != 0 }
    public var nmiUnblockingDueToIRET: Bool { rawValue & (1 << 12) != 0 }
    public var isValid: Bool { rawValue & (1 << 31) != 0 }
    public var lines: [String] {
        guard isValid else { return ["not valid (bit 31 clear)"] }
        var out = ["vector \(vector)\(type == .hardwareException ? " (" + exceptionMnemonic(vector) + ")" : ""), \(type.name)"]
        if errorCodeValid { out.append("an error code is delivered") }
        if nmiUnblockingDueToIRET { out.append("NMI unblocking due to IRET") }
        return out
    }
}

/// "#PF" for 14 and so on (SDM Vol. 3A, Table 6-1).
public func exceptionMnemonic(_ vector: UInt8) -> String {
    let names = ["#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "coprocessor segment overrun",
                 "#TS", "#NP", "#SS", "#GP", "#PF", "reserved 15", "#MF", "#AC", "#MC", "#XM", "#VE", "#CP"]
    return Int(vector) < names.count ? names[Int(vector)] : "vector \(vector)"
}

/// VMX-instruction information for VMREAD, VMWRITE, INVEPT, INVVPID, INVPCID and friends (SDM 28.2.5).
public struct VMXInstructionInformation: Hashable, Sendable {
    public var rawValue: UInt32
    public init(_ rawValue: UInt32) { self.rawValue = rawValue }
    public var scaling: Int { 1 << Int(rawValue & 3) }
    /// For VMREAD/VMWRITE with a register operand: register 1.
    public var register1: Int { Int((rawValue >> 3) & 0xF) }
    public var addressSize: Int { [16, 32, 64, 0][Int((rawValue >> 7) & 7) & 3] }
    public var isRegisterOperand: Bool { rawValue & (1 << 10) != 0 }
    public var segment: Int { Int((rawValue >> 15) & 7) }
    public var indexRegister: Int? { rawValue & (1 << 22) == 0 ? Int((rawValue >> 18) & 0xF) : nil }
    public var baseRegister: Int? { rawValue & (1 << 27) == 0 ? Int((rawValue >> 23) & 0xF) : nil }
    /// Register 2: the VMCS-field register of VMREAD/VMWRITE, the type register of INVEPT etc.
    public var register2: Int { Int((rawValue >> 28) & 0xF) }
    public var lines: [String] {
        let segments = ["ES", "CS", "SS", "DS", "FS", "GS", "?", "?"]
        var out: [String] = []
        if isRegisterOperand {
            out.append("register operand: \(generalPurposeRegisterNames[register1])")
        } else {
            var parts: [String] = []
            if let base = baseRegister { parts.append(generalPurposeRegisterNames[base]) }
            if let index = indexRegister { parts.append("\(generalPurposeRegisterNames[index])*\(scaling)") }
            out.append("memory operand: \(segments[segment]):[\(parts.isEmpty ? "displacement" : parts.joined(separator: " + ")) + displacement], \(addressSize)-bit address")
        }
        out.append("register 2: \(generalPurposeRegisterNames[register2])")
        return out
    }
}

/// The exit qualification of `reason` in words, or nil when the reason has no decoder here.
public func describeExitQualification(reason: VMXBasicExitReason, qualification: UInt64) -> [String]? {
    switch reason.rawValue {
    case 0: DebugExceptionQualification(qualification).lines.map { "(if #DB) " + $0 } + ["(if #PF) faulting linear address \(hexString(qualification))"]
    case 9: TaskSwitchQualification(qualification).lines
    case 28: ControlRegisterAccessQualification(qualification).lines
    case 29: MovDRQualification(qualification).lines
    case 30: IOInstructionQualification(qualification).lines
    case 44: APICAccessQualification(qualification).lines
    case 48: VMXEPTViolationExitQualification(qualification).lines
    case 14: ["linear address operand of INVLPG: \(hexString(qualification))"]
    case 33: [qualification == 2 ? "loading the guest PDPTEs failed (SDM 27.8)"
        : qualification == 3 ? "injecting an NMI into a guest blocking events by STI (SDM 27.8)"
        : qualification == 4 ? "the VMCS link pointer is invalid (SDM 27.8)"
        : "qualification \(qualification): not used; the failing check is a guest-state check of SDM 27.3.1"]
    case 34: ["the MSR-load list entry that failed: \(qualification)"]
    default: nil
    }
}
