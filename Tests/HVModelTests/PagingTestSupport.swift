import HVModel

/// Sparse physical memory for tests: every 8-byte word reads 0 until written; addresses at or
/// above `limit` are unbacked.
struct SparseMemory: PhysicalMemory {
    var words: [UInt64: UInt64] = [:]
    var limit: UInt64 = 1 << 40

    func read64(at address: UInt64) throws(PhysicalMemoryFault) -> UInt64 {
        guard address < limit else { throw .unbacked(address: address) }
        return words[address & ~7] ?? 0
    }

    mutating func write64(_ value: UInt64, at address: UInt64) throws(PhysicalMemoryFault) {
        guard address < limit else { throw .unbacked(address: address) }
        words[address & ~7] = value
    }

    mutating func set(_ address: UInt64, _ value: UInt64) { words[address] = value }
}

/// SplitMix64: a small deterministic generator so property tests replay from their seed.
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

extension EPTFault {
    var violation: EPTViolation? { if case .violation(let v) = self { v } else { nil } }
    var misconfiguration: EPTMisconfiguration? { if case .misconfiguration(let m) = self { m } else { nil } }
}

/// The EPT fault `body` throws, nil when it succeeds.
func eptFault(_ body: () throws -> Void) -> EPTFault? {
    do { try body() } catch { return error as? EPTFault }
    return nil
}
