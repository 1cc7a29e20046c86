// The x2APIC MSR view of the local APIC and IA32_APIC_BASE mode changes (SDM 11.12 "Extended
// XAPIC (x2APIC)": 11.12.1.2 register address space, 11.12.1.3 reserved bit checking, 11.12.5
// state transitions, 11.12.9 ICR, 11.12.10 logical destinations, 11.12.11 SELF IPI).

extension LocalAPIC {
    /// The logical x2APIC ID derived from an x2APIC ID: cluster `id[19:4]` in bits 31:16 and
    /// `1 << id[3:0]` in bits 15:0 (SDM 11.12.10.2).
    @inlinable public static func x2APICLogicalID(forAPICID id: UInt32) -> UInt32 {
        (id >> 4) << 16 | 1 << (id & 0xF)
    }

    /// Bits a WRMSR may set in each writable x2APIC register; any other bit raises #GP
    /// (SDM 11.12.1.3). Read-only status bits (delivery status, remote IRR) are tolerated.
    func x2APICWritableBits(_ register: APICRegister) -> UInt64? {
        switch register {
        case .taskPriority: 0xFF
        case .endOfInterrupt, .errorStatus: 0  // "WRMSR of a non-zero value causes #GP(0)" (Table 11-6)
        case .spuriousVector: configuration.supportsEOIBroadcastSuppression ? 0x13FF : 0x03FF
        case .interruptCommandLow: 0xFFFF_FFFF_0000_0000 | UInt64(InterruptCommand.writableLowBits)
        case .lvtTimer, .lvtThermal, .lvtPerformance, .lvtLINT0, .lvtLINT1, .lvtError, .lvtCMCI:
            UInt64(LocalVectorTableEntry(register: register)!.writableBits | 0x5000)
        case .timerInitialCount: 0xFFFF_FFFF
        case .timerDivideConfiguration: 0xB
        case .selfIPI: 0xFF
        default: nil  // read-only: ID, version, PPR, LDR, ISR, TMR, IRR, current count
        }
    }

    /// RDMSR of an x2APIC register (MSR 0x800-0x8FF). #GP outside x2APIC mode, for registers
    /// Table 11-6 lacks (APR, RRD, DFR, ICR high, reserved indices) and for write-only EOI and SELF IPI.
    public func readMSR(_ msr: UInt32) throws(APICFault) -> UInt64 {
        guard mode == .x2APIC, let register = APICRegister(x2APICMSR: msr),
            register != .lvtCMCI || configuration.hasCMCI
        else { throw .generalProtection }
        switch register {
        case .endOfInterrupt, .selfIPI: throw .generalProtection
        case .interruptCommandLow: return interruptCommand.rawValue
        default: return UInt64(value(of: register))
        }
    }

    /// WRMSR of an x2APIC register. #GP outside x2APIC mode, for missing and read-only registers,
    /// and for a value with reserved bits set (SDM 11.12.1.3). Writing the ICR (one 64-bit write,
    /// SDM 11.12.9) or SELF IPI (SDM 11.12.11) sends the IPI.
    public mutating func writeMSR(_ msr: UInt32, value: UInt64) throws(APICFault) -> LocalAPICEffect {
        guard mode == .x2APIC, let register = APICRegister(x2APICMSR: msr),
            register != .lvtCMCI || configuration.hasCMCI, let allowed = x2APICWritableBits(register),
            value & ~allowed == 0
        else { throw .generalProtection }
        switch register {
        case .interruptCommandLow:
            interruptCommand = InterruptCommand(rawValue: value)
            return sendIPI(interruptCommand.message(x2APIC: true))
        case .selfIPI:
            // SELF IPI: a fixed, edge-triggered IPI to this APIC only.
            return sendIPI(
                APICInterruptMessage(vector: UInt8(truncatingIfNeeded: value), destination: id, shorthand: .selfOnly))
        default:
            return writeCommon(register, value: UInt32(truncatingIfNeeded: value))
        }
    }

    /// WRMSR of IA32_APIC_BASE (MSR 0x1B). Legal transitions (SDM 11.12.5, Figure 11-27): disabled
    /// -> xAPIC, xAPIC -> x2APIC, any -> disabled. #GP for x2APIC -> xAPIC, disabled -> x2APIC,
    /// EN = 0 with EXTD = 1, and reserved bits (7:0, 9, 63:52).
    ///
    /// Entering x2APIC mode makes the ID the 32-bit initial APIC ID and derives the LDR; disabling
    /// resets the APIC to its power-up state (SDM 11.4.3).
    public mutating func writeAPICBase(_ value: UInt64) throws(APICFault) {
        let newBase = APICBase(rawValue: value)
        guard value & ~(0x000F_FFFF_FFFF_F000 | 0xD00) == 0, let newMode = newBase.mode else {
            throw .generalProtection
        }
        switch (mode, newMode) {
        case (.x2APIC, .xAPIC), (.disabled, .x2APIC): throw .generalProtection
        case (.xAPIC, .x2APIC):
            logicalDestination = Self.x2APICLogicalID(forAPICID: configuration.apicID)
            destinationFormat = 0xFFFF_FFFF
        case (.xAPIC, .disabled), (.x2APIC, .disabled):
            var fresh = LocalAPIC(configuration)
            fresh.xAPICID = xAPICID
            fresh.now = now
            self = fresh
        default: break
        }
        base = newBase
    }
}
