// HVModel's arithmetic emulation (what a bare-metal engine computes for `add [mmio], reg` and
// its kin) against the host CPU running the same instruction (CX86Oracle): results and the six
// status flags, for every operation, width and carry, on edge values and a seeded sweep.
import CX86Oracle
import HVModel
import Testing

@Suite("Arithmetic emulation against the host CPU")
struct ArithmeticEmulationTests {
    static let operations: [ArithmeticOperation] = [.add, .or, .adc, .sbb, .and, .sub, .xor, .cmp, .test]
    static let edges: [UInt64] = [0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF,
                                  0x1_0000_0000, 0x7FFF_FFFF_FFFF_FFFF, 0x8000_0000_0000_0000, .max, 0x0F, 0x10, 0xF0]

    static func check(_ operation: ArithmeticOperation, _ d: UInt64, _ s: UInt64, width: UInt8, carry: Bool) -> String? {
        var cpuFlags: UInt64 = 0
        let cpuResult = hv_oracle_arithmetic(Int32(operation.rawValue), d, s, Int32(width), carry ? 1 : 0, &cpuFlags)
        let mask: UInt64 = width == 8 ? .max : (1 << (8 * UInt64(width))) - 1
        let (result, flags) = operation.apply(d, s, width: width, carryIn: carry)
        // AF is undefined after AND, OR, XOR and TEST (SDM Vol. 2): not compared there.
        let compared = [.and, .or, .xor, .test].contains(operation) ? StatusFlags.all & ~StatusFlags.auxiliaryCarry : StatusFlags.all
        let expected = operation.writesResult ? cpuResult & mask : d & mask
        let got = operation.writesResult ? result : d & mask
        if got != expected || flags & compared != cpuFlags & compared {
            return "\(operation) \(d) \(s) width \(width) carry \(carry): result \(got) vs CPU \(expected), flags \(flags & compared) vs CPU \(cpuFlags & compared)"
        }
        return nil
    }

    @Test("every operation, width and carry on edge values", arguments: [1, 2, 4, 8] as [UInt8])
    func edgeValues(width: UInt8) {
        var failures: [String] = []
        for operation in Self.operations {
            for d in Self.edges {
                for s in Self.edges {
                    for carry in [false, true] {
                        if let failure = Self.check(operation, d, s, width: width, carry: carry) { failures.append(failure) }
                    }
                }
            }
        }
        #expect(failures.isEmpty, "\(failures.prefix(10))")
    }

    @Test("a seeded sweep of 200,000 random cases")
    func randomSweep() {
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        func next() -> UInt64 {  // splitmix64: the same cases every run
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        var failures: [String] = []
        for _ in 0..<200_000 {
            let operation = Self.operations[Int(next() % 9)]
            let width: UInt8 = [1, 2, 4, 8][Int(next() % 4)]
            if let failure = Self.check(operation, next(), next(), width: width, carry: next() & 1 == 1) { failures.append(failure) }
        }
        #expect(failures.isEmpty, "\(failures.prefix(10))")
    }

    @Test("a register written at each width keeps or clears the rest as the CPU does")
    func registerWrites() {
        let old: UInt64 = 0x1122_3344_5566_7788
        #expect(OperandRegister(0).valueAfterWrite(old: old, value: 0xAB, width: 1, codeSize: .bits64) == 0x1122_3344_5566_77AB)
        #expect(OperandRegister(0, highByte: true).valueAfterWrite(old: old, value: 0xAB, width: 1, codeSize: .bits64) == 0x1122_3344_5566_AB88)
        #expect(OperandRegister(0).valueAfterWrite(old: old, value: 0xABCD, width: 2, codeSize: .bits64) == 0x1122_3344_5566_ABCD)
        #expect(OperandRegister(0).valueAfterWrite(old: old, value: 0xDEAD_BEEF, width: 4, codeSize: .bits64) == 0xDEAD_BEEF)
        #expect(OperandRegister(0).valueAfterWrite(old: old, value: 0xDEAD_BEEF, width: 4, codeSize: .bits32) == 0x1122_3344_DEAD_BEEF)
        #expect(OperandRegister(3, highByte: true).operand(of: 0x1234) == 0x12)
    }
}

@Suite("String instructions' registers")
struct StringInstructionTests {
    @Test("RSI/RDI step by the element size, up or down, wrapping at the address size")
    func indexRegisters() {
        #expect(StringInstruction.advanced(0x1000, elements: 3, width: 2, down: false, addressWidth: 8) == 0x1006)
        #expect(StringInstruction.advanced(0x1000, elements: 1, width: 4, down: true, addressWidth: 8) == 0xFFC)
        // 16-bit: DI wraps within 64 KiB and the bits above stay.
        #expect(StringInstruction.advanced(0xAAAA_FFFE, elements: 1, width: 4, down: false, addressWidth: 2) == 0xAAAA_0002)
        // 32-bit: ESI wraps and bits 63:32 clear.
        #expect(StringInstruction.advanced(0x1_FFFF_FFFF, elements: 1, width: 1, down: false, addressWidth: 4) == 0)
    }

    @Test("REP counts RCX at the address size")
    func repeatCount() {
        #expect(StringInstruction.remaining(0x1_0000_0003, addressWidth: 2) == 3)
        #expect(StringInstruction.remaining(0x1_0000_0003, addressWidth: 8) == 0x1_0000_0003)
        #expect(StringInstruction.counted(0xFFFF_0003, elements: 3, addressWidth: 2) == 0xFFFF_0000)
        #expect(StringInstruction.counted(5, elements: 2, addressWidth: 4) == 3)
    }
}
