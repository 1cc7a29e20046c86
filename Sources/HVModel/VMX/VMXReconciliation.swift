// Turning "what I want" into a control value the processor accepts, by the algorithm of
// SDM Vol. 3D, Appendix A.2-A.5 (compare bhyve's vmx_set_ctlreg): explicit ones and zeros,
// a contradiction is an error, a dropped optional bit and a kept default1 bit are reported.

/// What a caller asks of one control field. Bits are positions in the field.
public struct ControlRequest: Hashable, Sendable {
    /// Bits that must be 1: unsupported means an error.
    public var required: UInt64
    /// Bits that must be 0: a processor that forces them to 1 means an error.
    public var forbidden: UInt64
    /// Bits wanted if the processor allows them; otherwise dropped and reported.
    public var optional: UInt64

    public init(required: UInt64 = 0, forbidden: UInt64 = 0, optional: UInt64 = 0) {
        self.required = required
        self.forbidden = forbidden
        self.optional = optional
    }
}

/// Why a bit of a reconciled control has its value.
public enum ControlBitReason: Int, Sendable, Hashable {
    /// Asked for as required, and allowed.
    case required
    /// Asked for as optional, and allowed.
    case optional
    /// Asked for as optional, but the capability MSR does not allow 1: left 0.
    case droppedOptional
    /// Asked to be 0, and allowed.
    case forbidden
    /// Not asked for, but the capability MSR requires 1 (its allowed 0-setting bit is 1).
    case fixedOne
    /// Not asked for, a default1 bit (SDM A.2) that may be 1: kept at 1 as the SDM recommends
    /// for software that does not know the bit's future meaning.
    case defaultOne

    /// A few words for reports.
    public var text: String {
        switch self {
        case .required: "required"
        case .optional: "optional, allowed"
        case .droppedOptional: "optional, DROPPED: not allowed by this CPU"
        case .forbidden: "asked to be 0"
        case .fixedOne: "fixed to 1 by this CPU"
        case .defaultOne: "default1 class, kept at 1 (SDM A.2)"
        }
    }
}

/// One reported bit of a reconciled control.
public struct ControlBitDecision: Hashable, Sendable {
    public var field: VMXControlField
    public var bit: Int
    public var value: Bool
    public var reason: ControlBitReason
}

/// A control field's value and the decisions that made it.
public struct ReconciledControl: Hashable, Sendable {
    public var field: VMXControlField
    public var value: UInt64
    public var settings: AllowedControlSettings
    /// Every bit that ended up 1, every dropped optional bit and every bit asked to be 0.
    public var decisions: [ControlBitDecision]
    /// The optional bits that were dropped.
    public var dropped: UInt64 { decisions.reduce(0) { $1.reason == .droppedOptional ? $0 | 1 << UInt64($1.bit) : $0 } }
}

/// A request the processor cannot satisfy, naming the bit and the capability MSR.
public enum VMXControlProblem: Error, Hashable, Sendable {
    /// A required bit whose allowed 1-setting is 0 in `msr` (or whose field does not exist).
    case unsupported(field: VMXControlField, bit: Int, msr: VMXCapabilityMSR)
    /// A bit asked to be 0 whose allowed 0-setting is 1 in `msr`.
    case cannotBeZero(field: VMXControlField, bit: Int, msr: VMXCapabilityMSR)
    /// A bit asked to be both 1 and 0.
    case contradiction(field: VMXControlField, bit: Int)

    /// The field the problem is in.
    public var field: VMXControlField {
        switch self {
        case .unsupported(let field, _, _), .cannotBeZero(let field, _, _), .contradiction(let field, _): field
        }
    }

    /// A sentence naming the bit, the field and the capability MSR.
    public var message: String {
        switch self {
        case .unsupported(let field, let bit, let msr):
            let msrBit = field.is64Bit ? bit : bit + 32
            return "'\(field.describeBit(bit))' (\(field.name) bit \(bit)) is not supported: bit \(msrBit) of \(msr.name) (\(hexString(UInt64(msr.rawValue)))) is 0 (SDM \(msr.section))"
        case .cannotBeZero(let field, let bit, let msr):
            return "'\(field.describeBit(bit))' (\(field.name) bit \(bit)) must be 1 on this CPU: bit \(bit) of \(msr.name) (\(hexString(UInt64(msr.rawValue)))) is 1 (SDM \(msr.section))"
        case .contradiction(let field, let bit):
            return "'\(field.describeBit(bit))' (\(field.name) bit \(bit)) is asked to be both 1 and 0"
        }
    }
}

/// Every problem found while reconciling, in field and bit order.
public struct VMXReconcileError: Error, Hashable, Sendable {
    public var problems: [VMXControlProblem]
    public init(problems: [VMXControlProblem]) { self.problems = problems }
}

extension VMXCapabilities {
    /// Reconciles `request` for `field` against this processor's allowed settings (SDM A.3-A.5).
    ///
    /// Bits nobody asked about are 1 only when the processor requires it or when they are in
    /// the default1 class and may be 1; every other unasked bit is 0.
    public func reconcile(_ field: VMXControlField, _ request: ControlRequest) throws(VMXReconcileError) -> ReconciledControl {
        let settings = allowedSettings(field)
        let msr = settings.msr ?? field.capabilityMSR(useTrue: hasTrueControls)
        let width = field.is64Bit ? 64 : 32
        var value: UInt64 = 0
        var decisions: [ControlBitDecision] = []
        var problems: [VMXControlProblem] = []
        let interesting = request.required | request.forbidden | request.optional | settings.mustBeOne | field.defaultOneBits
        decisions.reserveCapacity(interesting.nonzeroBitCount)  // at most one decision per interesting bit: one allocation
        var bit = 0
        while bit < width {
            let mask: UInt64 = 1 << UInt64(bit)
            defer { bit += 1 }
            guard interesting & mask != 0 else { continue }
            let mustBeOne = settings.mustBeOne & mask != 0
            let mayBeOne = settings.mayBeOne & mask != 0
            if request.required & mask != 0 {
                if request.forbidden & mask != 0 {
                    problems.append(.contradiction(field: field, bit: bit))
                } else if !mayBeOne {
                    problems.append(.unsupported(field: field, bit: bit, msr: msr))
                } else {
                    value |= mask
                    decisions.append(ControlBitDecision(field: field, bit: bit, value: true, reason: .required))
                }
            } else if request.forbidden & mask != 0 {
                if mustBeOne {
                    problems.append(.cannotBeZero(field: field, bit: bit, msr: msr))
                } else {
                    decisions.append(ControlBitDecision(field: field, bit: bit, value: false, reason: .forbidden))
                }
            } else if request.optional & mask != 0 {
                if mayBeOne {
                    value |= mask
                    decisions.append(ControlBitDecision(field: field, bit: bit, value: true, reason: mustBeOne ? .fixedOne : .optional))
                } else {
                    decisions.append(ControlBitDecision(field: field, bit: bit, value: false, reason: .droppedOptional))
                }
            } else if mustBeOne {
                value |= mask
                decisions.append(ControlBitDecision(field: field, bit: bit, value: true, reason: .fixedOne))
            } else if field.defaultOneBits & mask != 0 && mayBeOne {
                value |= mask
                decisions.append(ControlBitDecision(field: field, bit: bit, value: true, reason: .defaultOne))
            }
        }
        if !problems.isEmpty { throw VMXReconcileError(problems: problems) }
        return ReconciledControl(field: field, value: value, settings: settings, decisions: decisions)
    }
}
