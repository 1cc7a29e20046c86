// Labels, branch relaxation, errors and data directives, checked against hand-computed bytes.

import HVGuest
import Testing

struct AssemblerLabelTests {
    @Test func forwardAndBackwardLabelsResolveToAbsoluteAddresses() throws {
        var asm = X86Assembler(bits: .bits64, origin: 0x10_0000)
        let start = asm.label("start")
        let end = asm.label("end")
        asm.bind(start)
        asm.jmp(end)         // EB 01
        asm.nop()            // 90
        asm.bind(end)
        asm.jmp(start)       // EB FB
        #expect(try asm.assemble() == [0xEB, 0x01, 0x90, 0xEB, 0xFB])
        #expect(try asm.address(of: start) == 0x10_0000)
        #expect(try asm.address(of: end) == 0x10_0003)
    }

    @Test func jumpWidensExactlyWhenRel8CannotReach() throws {
        for (padding, expectedSize) in [(127, 2), (128, 5)] {
            var asm = X86Assembler(bits: .bits64)
            let target = asm.label()
            asm.jmp(target)
            asm.zeros(padding)
            asm.bind(target)
            let code = try asm.assemble()
            #expect(code.count == padding + expectedSize)
            #expect(try asm.address(of: target) == UInt64(padding + expectedSize))
            if expectedSize == 5 {
                #expect(Array(code[0..<5]) == [0xE9, 0x80, 0x00, 0x00, 0x00])
            } else {
                #expect(Array(code[0..<2]) == [0xEB, 0x7F])
            }
        }
    }

    @Test func widenedBranchesMoveLaterLabelsAndFixups() throws {
        var asm = X86Assembler(bits: .bits64, origin: 0x1000)
        let far = asm.label("far")
        let data = asm.label("data")
        asm.jz(far)                 // becomes 0F 84 rel32
        asm.zeros(200)
        asm.bind(far)
        asm.lea(.rax, .label(data)) // 48 8D 05 rel32
        asm.bind(data)
        let code = try asm.assemble()
        #expect(Array(code[0..<6]) == [0x0F, 0x84, 200, 0, 0, 0])
        #expect(try asm.address(of: far) == 0x1000 + 6 + 200)
        #expect(Array(code[206..<213]) == [0x48, 0x8D, 0x05, 0, 0, 0, 0])
        #expect(try asm.address(of: data) == 0x1000 + 213)
    }

    @Test func callAndRipRelativeAddressesCountFromTheNextInstruction() throws {
        var asm = X86Assembler(bits: .bits64)
        let function = asm.label()
        let value = asm.label()
        asm.call(function)                  // E8 rel32: 15 - 5 = 10
        asm.mov(.dword, .label(value), 7)   // C7 05 rel32 imm32: 18 - 15 = 3
        asm.bind(function)
        asm.ret()
        asm.zeros(2)
        asm.bind(value)
        asm.u32(0)
        let code = try asm.assemble()
        #expect(Array(code[0..<5]) == [0xE8, 0x0A, 0, 0, 0])
        #expect(Array(code[5..<15]) == [0xC7, 0x05, 0x03, 0, 0, 0, 0x07, 0, 0, 0])
    }

    @Test func alignmentCountsFromTheOrigin() throws {
        var asm = X86Assembler(bits: .bits16, origin: 0x7C03)
        let after = asm.label()
        asm.align(4, fill: 0xCC)
        asm.bind(after)
        asm.nop()
        #expect(try asm.assemble() == [0xCC, 0x90])
        #expect(try asm.address(of: after) == 0x7C04)
    }

    @Test func printStringJumpsOverItsInlineText() throws {
        var asm = X86Assembler(bits: .bits64)
        asm.printString("ok")
        let code = try asm.assemble()
        #expect(Array(code[0..<5]) == [0xEB, 0x03, UInt8(ascii: "o"), UInt8(ascii: "k"), 0])
        // lea rsi, [rip - x] points back at the text at offset 2.
        #expect(Array(code[6..<9]) == [0x48, 0x8D, 0x35])
        let displacement = Int32(littleEndian: code[9..<13].withUnsafeBytes { $0.loadUnaligned(as: Int32.self) })
        #expect(13 + Int(displacement) == 2)
    }
}

struct AssemblerErrorTests {
    @Test func unboundLabelNamesTheLabelAndTheInstruction() {
        for (instruction, use) in [
            ("jmp", { (asm: inout X86Assembler, l: Label) in asm.jmp(l) }),
            ("jne", { (asm: inout X86Assembler, l: Label) in asm.jne(l) }),
            ("call", { (asm: inout X86Assembler, l: Label) in asm.call(l) }),
            ("lea", { (asm: inout X86Assembler, l: Label) in asm.lea(.rsi, .label(l)) }),
            ("mov", { (asm: inout X86Assembler, l: Label) in asm.mov(.rsi, l) }),
            ("u64", { (asm: inout X86Assembler, l: Label) in asm.u64(l) }),
        ] {
            var asm = X86Assembler(bits: .bits64)
            let missing = asm.label("missing")
            use(&asm, missing)
            #expect(throws: AssemblerError.unboundLabel(label: "missing", usedBy: instruction)) { try asm.assemble() }
        }
        let error = AssemblerError.unboundLabel(label: "missing", usedBy: "jmp")
        #expect(error.description == "label 'missing' is used by 'jmp' but never bound")
    }

    @Test func addressOfUnboundLabelThrows() {
        var asm = X86Assembler(bits: .bits64)
        let label = asm.label("nowhere")
        #expect(throws: AssemblerError.unboundLabel(label: "nowhere", usedBy: "address(of:)")) {
            try asm.address(of: label)
        }
    }

    @Test func bindingTwiceAndForeignLabelsAreErrors() {
        var asm = X86Assembler(bits: .bits64)
        let label = asm.label("twice")
        asm.bind(label)
        asm.bind(label)
        #expect(throws: AssemblerError.labelAlreadyBound(label: "twice")) { try asm.assemble() }

        var other = X86Assembler(bits: .bits64)
        _ = other.label()
        let foreign = other.label()
        var asm2 = X86Assembler(bits: .bits64)
        asm2.jmp(foreign)
        #expect(throws: AssemblerError.foreignLabel(usedBy: "jmp")) { try asm2.assemble() }
    }

    @Test func loopBeyondRel8IsOutOfRange() {
        var asm = X86Assembler(bits: .bits64)
        let top = asm.label("top")
        asm.bind(top)
        asm.zeros(200)
        asm.loop(top)
        #expect(throws: AssemblerError.branchOutOfRange(instruction: "loop", label: "top", distance: -202,
                                                        displacementBits: 8)) { try asm.assemble() }
    }

    @Test func labelAddressesMustFitTheirField() {
        var asm = X86Assembler(bits: .bits64, origin: 0x8000_0000)
        let here = asm.label("high")
        asm.bind(here)
        asm.mov(.rsi, here)  // sign-extended imm32 reaches only below 2 GiB
        #expect(throws: AssemblerError.addressOutOfRange(instruction: "mov", label: "high", address: 0x8000_0000,
                                                         fieldBits: 32)) { try asm.assemble() }

        var real = X86Assembler(bits: .bits16, origin: 0x1_0000)
        let message = real.label("message")
        real.bind(message)
        real.mov(.si, message)
        #expect(throws: AssemblerError.addressOutOfRange(instruction: "mov", label: "message", address: 0x1_0000,
                                                         fieldBits: 16)) { try real.assemble() }
    }

    @Test func immediatesMustFitTheOperand() {
        let cases: [(AssemblerError, (inout X86Assembler) -> Void)] = [
            (.immediateOutOfRange(instruction: "mov", value: "0x100", bits: 8), { $0.mov(.al, 0x100) }),
            (.immediateOutOfRange(instruction: "mov", value: "-129", bits: 8), { $0.mov(.al, -129) }),
            (.immediateOutOfRange(instruction: "mov", value: "0x10000", bits: 16), { $0.mov(.ax, 0x10000) }),
            (.immediateOutOfRange(instruction: "mov", value: "0x10000000000000000", bits: 64),
             { $0.mov(.rax, 0x1_0000_0000_0000_0000) }),
            (.immediateOutOfRange(instruction: "add", value: "0x80000000", bits: 32), { $0.add(.rax, 0x8000_0000) }),
            (.immediateOutOfRange(instruction: "mov", value: "0x100000000", bits: 32),
             { $0.mov(.qword, .at(.rbx), 0x1_0000_0000) }),
        ]
        for (expected, build) in cases {
            var asm = X86Assembler(bits: .bits64)
            build(&asm)
            #expect(throws: expected) { try asm.assemble() }
        }
    }

    @Test func operandsTheCodeSizeCannotEncodeAreRejected() {
        let cases: [(CodeSize, String, (inout X86Assembler) -> Void)] = [
            (.bits16, "64-bit operands need 64-bit code", { $0.mov(.rax, .rbx) }),
            (.bits16, "r8d exists only in 64-bit code", { $0.mov(.r8d, 1) }),
            (.bits32, "sil exists only in 64-bit code", { $0.mov(.sil, .al) }),
            (.bits64, "ah cannot be encoded in an instruction that needs a REX prefix", { $0.mov(.ah, .sil) }),
            (.bits64, "16-bit addressing [bx] is not available in 64-bit code", { $0.mov(.al, .at(.bx)) }),
            (.bits16, "16-bit addressing takes bx, si, di or bp as base, not ax", { $0.mov(.al, .at(.ax)) }),
            (.bits16, "64-bit register rbx can address memory only in 64-bit code", { $0.mov(.al, .at(.rbx)) }),
            (.bits64, "8-bit register cl cannot address memory", { $0.mov(.al, .at(.cl)) }),
            (.bits64, "absolute address 0x100000000 is above 4 GiB; load it into a register",
             { $0.mov(.eax, .absolute(0x1_0000_0000)) }),
            (.bits16, "absolute address 0x10000 is above 64 KiB; load it into a register",
             { $0.mov(.bx, .absolute(0x10000)) }),
            (.bits64, "the data register must be al, ax or eax, not bl", { $0.in(.bl, .dx) }),
            (.bits64, "the port register must be dx, not cx", { $0.out(.cx, .al) }),
            (.bits64, "eax cannot be pushed or popped in this code size", { $0.push(.eax) }),
            (.bits16, "rax cannot be pushed or popped in this code size", { $0.pop(.rax) }),
            (.bits64, "the destination cannot be 8-bit", { $0.lea(.al, .at(.rbx)) }),
            (.bits16, "displacement 70000 does not fit 16 bits", { $0.mov(.al, .at(.si, 70000)) }),
        ]
        for (bits, reason, build) in cases {
            var asm = X86Assembler(bits: bits)
            build(&asm)
            #expect(throws: AssemblerError.self) { try asm.assemble() }
            do {
                _ = try asm.assemble()
            } catch {
                guard case .invalidOperands(_, let actual) = error else {
                    Issue.record("expected invalidOperands(\(reason)), got \(error)")
                    continue
                }
                #expect(actual == reason)
            }
        }
    }

    @Test func theFirstErrorIsTheOneReported() {
        var asm = X86Assembler(bits: .bits16)
        asm.mov(.al, 0x1FF)
        asm.mov(.rax, .rbx)
        #expect(throws: AssemblerError.immediateOutOfRange(instruction: "mov", value: "0x1FF", bits: 8)) {
            try asm.assemble()
        }
    }

    @Test func badDirectivesAreErrors() {
        var asm = X86Assembler(bits: .bits64)
        asm.align(3)
        #expect(throws: AssemblerError.invalidDirective(directive: "align", reason: "boundary 3 is not a power of two")) {
            try asm.assemble()
        }
        var negative = X86Assembler(bits: .bits64)
        negative.zeros(-1)
        #expect(throws: AssemblerError.invalidDirective(directive: "zeros", reason: "count -1 is negative")) {
            try negative.assemble()
        }
    }
}

struct AssemblerDataTests {
    @Test func dataDirectivesAreLittleEndianAndUTF8() throws {
        var asm = X86Assembler(bits: .bits64)
        asm.bytes([0xAA])
        asm.ascii("é")
        asm.asciz("A")
        asm.u16(0x0102)
        asm.u32(0x0304_0506)
        asm.u64(0x0708_090A_0B0C_0D0E)
        asm.zeros(2)
        #expect(try asm.assemble() == [
            0xAA, 0xC3, 0xA9, 0x41, 0x00, 0x02, 0x01, 0x06, 0x05, 0x04, 0x03,
            0x0E, 0x0D, 0x0C, 0x0B, 0x0A, 0x09, 0x08, 0x07, 0x00, 0x00,
        ])
    }

    @Test func labelAddressDataUsesTheOrigin() throws {
        var asm = X86Assembler(bits: .bits16, origin: 0x7C00)
        let table = asm.label()
        asm.u16(table)
        asm.u32(table)
        asm.bind(table)
        #expect(try asm.assemble() == [0x06, 0x7C, 0x06, 0x7C, 0x00, 0x00])
    }

    @Test func immediatesAcceptSignedAndUnsignedSpellings() throws {
        var asm = X86Assembler(bits: .bits64)
        asm.mov(.al, 0xFF)
        asm.mov(.al, -1)
        asm.mov(.eax, Immediate(UInt32.max))
        asm.mov(.eax, Immediate(Int32(-1)))
        #expect(try asm.assemble() == [0xB0, 0xFF, 0xB0, 0xFF, 0xB8, 0xFF, 0xFF, 0xFF, 0xFF, 0xB8, 0xFF, 0xFF, 0xFF, 0xFF])
    }

    @Test func registersDescribeThemselves() {
        #expect(Register64.r9.description == "r9")
        #expect(Register32.r9d.description == "r9d")
        #expect(Register16.si.description == "si")
        #expect(Register8.ah.description == "ah")
        #expect(Register8.sil.description == "sil")
        #expect(Register8.r15b.description == "r15b")
    }
}
