// HVModel's instruction decoder (the MMIO path of a backend whose hardware reports only the
// faulting address) against GNU as: each instruction is assembled by `as`, and the decoder must
// say what it does with memory, how wide the access is, and exactly how long it is.
import HVGuest
import HVModel
import HVTestSupport
import Testing

/// One instruction in GNU `as` Intel syntax and what the decoder must make of it.
struct DecodingCase: Sendable, CustomStringConvertible {
    var gas: String
    var operation: MemoryOperation
    var width: UInt8
    var registerWidth: UInt8?
    var description: String { gas }

    init(_ gas: String, _ operation: MemoryOperation, width: UInt8, registerWidth: UInt8? = nil) {
        self.gas = gas
        self.operation = operation
        self.width = width
        self.registerWidth = registerWidth
    }
}

private func r(_ index: UInt8, high: Bool = false) -> OperandRegister { OperandRegister(index, highByte: high) }

@Suite("x86 instruction decoder for MMIO exits, checked against GNU as",
       .enabled(if: GNUToolchain.isAvailable || Requirement.tools, "GNU binutils (as, ld, nm, objcopy) not found in /usr/bin"))
struct InstructionDecoderTests {
    static let long: [DecodingCase] = [
        DecodingCase("mov qword ptr [rbx], rax", .store(r(0)), width: 8),
        DecodingCase("mov rcx, qword ptr [rbx]", .load(r(1), extension: .none), width: 8),
        DecodingCase("mov dword ptr [rip + 0x1234], 0x12345678", .storeImmediate(0x1234_5678), width: 4),
        DecodingCase("mov byte ptr [rax + rbx*4 + 0x10], 0xAB", .storeImmediate(0xAB), width: 1),
        DecodingCase("mov r9w, word ptr [r10 + 8]", .load(r(9), extension: .none), width: 2),
        DecodingCase("mov ah, byte ptr [rsi]", .load(r(0, high: true), extension: .none), width: 1),
        DecodingCase("mov sil, byte ptr [rdi]", .load(r(6), extension: .none), width: 1),
        DecodingCase("mov byte ptr [r13 + 0x7f], r15b", .store(r(15)), width: 1),
        DecodingCase("mov qword ptr [rsp + 0x100], -5", .storeImmediate(0xFFFF_FFFF_FFFF_FFFB), width: 8),
        DecodingCase("mov dword ptr [rbp + r12*2 - 0x80], ebp", .store(r(5)), width: 4),
        DecodingCase("mov eax, dword ptr [0xFEB00000]", .load(r(0), extension: .none), width: 4),
        DecodingCase("movabs eax, dword ptr [0xFEE000B0]", .load(r(0), extension: .none), width: 4),
        DecodingCase("movabs qword ptr [0xFEB00000], rax", .store(r(0)), width: 8),
        DecodingCase("movzx eax, byte ptr [rbx]", .load(r(0), extension: .zero), width: 1, registerWidth: 4),
        DecodingCase("movzx r11d, word ptr [rbx + rcx]", .load(r(11), extension: .zero), width: 2, registerWidth: 4),
        DecodingCase("movsx r8, word ptr [rbp - 2]", .load(r(8), extension: .sign), width: 2, registerWidth: 8),
        DecodingCase("movsx ecx, byte ptr [rdx + 1]", .load(r(1), extension: .sign), width: 1, registerWidth: 4),
        DecodingCase("movsxd rax, dword ptr [rbx]", .load(r(0), extension: .sign), width: 4, registerWidth: 8),
        DecodingCase("add dword ptr [rbx], ecx", .arithmetic(.add, source: .register(r(1)), memoryIsDestination: true), width: 4),
        DecodingCase("or rax, qword ptr [r12 + r13*8]", .arithmetic(.or, source: .register(r(0)), memoryIsDestination: false), width: 8),
        DecodingCase("and byte ptr [rbx], 0x0F", .arithmetic(.and, source: .immediate(0x0F), memoryIsDestination: true), width: 1),
        DecodingCase("sub qword ptr [rbx], 1", .arithmetic(.sub, source: .immediate(1), memoryIsDestination: true), width: 8),
        DecodingCase("cmp dword ptr [rbx + 4], 0x12345678", .arithmetic(.cmp, source: .immediate(0x1234_5678), memoryIsDestination: true), width: 4),
        DecodingCase("xor word ptr [rbx], 0x1234", .arithmetic(.xor, source: .immediate(0x1234), memoryIsDestination: true), width: 2),
        DecodingCase("or dword ptr [rbx], -1", .arithmetic(.or, source: .immediate(0xFFFF_FFFF), memoryIsDestination: true), width: 4),
        DecodingCase("test byte ptr [rbx], 0x80", .arithmetic(.test, source: .immediate(0x80), memoryIsDestination: false), width: 1),
        DecodingCase("test qword ptr [rbx], rdx", .arithmetic(.test, source: .register(r(2)), memoryIsDestination: false), width: 8),
        DecodingCase("lock add dword ptr [rbx], eax", .arithmetic(.add, source: .register(r(0)), memoryIsDestination: true), width: 4),
        DecodingCase("mov eax, dword ptr fs:[rbx]", .load(r(0), extension: .none), width: 4),
        DecodingCase("rep movsb", .string(.movs, repeated: true), width: 1),
        DecodingCase("rep stosq", .string(.stos, repeated: true), width: 8),
        DecodingCase("stosd", .string(.stos, repeated: false), width: 4),
        DecodingCase("lodsw", .string(.lods, repeated: false), width: 2),
    ]

    static let protected: [DecodingCase] = [
        DecodingCase("mov eax, dword ptr [ebx + 8]", .load(r(0), extension: .none), width: 4),
        DecodingCase("mov word ptr [esi], ax", .store(r(0)), width: 2),
        DecodingCase("mov dword ptr [0xFEC00000], 5", .storeImmediate(5), width: 4),
        DecodingCase("mov dword ptr [esp + 4], 0x10", .storeImmediate(0x10), width: 4),
        DecodingCase("mov al, byte ptr [0x3F8]", .load(r(0), extension: .none), width: 1),
        DecodingCase("movzx edx, word ptr [bx + si]", .load(r(2), extension: .zero), width: 2, registerWidth: 4),
    ]

    static let real: [DecodingCase] = [
        DecodingCase("mov ax, word ptr [bx + si + 4]", .load(r(0), extension: .none), width: 2),
        DecodingCase("mov byte ptr [0x1234], 0x56", .storeImmediate(0x56), width: 1),
        DecodingCase("mov eax, dword ptr [bx]", .load(r(0), extension: .none), width: 4),
        DecodingCase("mov word ptr [bp], 0x1234", .storeImmediate(0x1234), width: 2),
        DecodingCase("mov dword ptr [eax + ecx*4 + 8], edx", .store(r(2)), width: 4),
    ]

    static func check(_ cases: [DecodingCase], bits: CodeSize, mode: InstructionDecoder.Mode) throws {
        let encoded = try GNUToolchain.assemble(cases.map { EncodingCase($0.gas) { _ in } }, bits: bits, origin: 0x10_0000)
        for (testCase, (_, bytes)) in zip(cases, encoded) {
            let decoded = bytes.withUnsafeBytes { buffer in Result { () throws(InstructionDecodingError) in try InstructionDecoder.decode(buffer, size: mode) } }
            switch decoded {
            case .success(let instruction):
                #expect(instruction.operation == testCase.operation, "\(testCase.gas) [\(hexString(bytes))]")
                #expect(instruction.width == testCase.width, "\(testCase.gas) [\(hexString(bytes))]: width \(instruction.width)")
                #expect(instruction.registerWidth == testCase.registerWidth ?? testCase.width, "\(testCase.gas): register width \(instruction.registerWidth)")
                #expect(Int(instruction.length) == bytes.count, "\(testCase.gas) [\(hexString(bytes))]: length \(instruction.length)")
                // Every shorter prefix of the bytes is truncated, never misread.
                for cut in 0..<bytes.count {
                    let short = Array(bytes.prefix(cut)).withUnsafeBytes { buffer in
                        Result { () throws(InstructionDecodingError) in try InstructionDecoder.decode(buffer, size: mode) }
                    }
                    if case .success(let misread) = short { Issue.record("\(testCase.gas): \(cut) of \(bytes.count) bytes decoded as \(misread)") }
                }
            case .failure(let error):
                Issue.record("\(testCase.gas) [\(hexString(bytes))]: \(error)")
            }
        }
    }

    @Test("64-bit code: MOV of every width and form (ModRM with SIB, RIP-relative, moffs), MOVZX, MOVSX, MOVSXD, the ALU operations and TEST against memory, string instructions")
    func longMode() throws { try Self.check(Self.long, bits: .bits64, mode: .bits64) }

    @Test("32-bit code, and 16-bit addressing through the address-size prefix")
    func protectedMode() throws { try Self.check(Self.protected, bits: .bits32, mode: .bits32) }

    @Test("16-bit code: 16-bit addressing, and 32-bit operands and addresses through the prefixes")
    func realMode() throws { try Self.check(Self.real, bits: .bits16, mode: .bits16) }

    @Test("a register operand, an instruction that touches no memory, and bytes that end early are refused by kind")
    func refusals() throws {
        func decode(_ bytes: [UInt8]) -> InstructionDecodingError? {
            bytes.withUnsafeBytes { buffer in
                do throws(InstructionDecodingError) {
                    _ = try InstructionDecoder.decode(buffer, size: .bits64)
                    return nil
                } catch { return error }
            }
        }
        #expect(decode([0x48, 0x89, 0xD8]) == .notMemory)                   // mov rax, rbx
        #expect(decode([0x90]) == .unsupported(opcode: 0x90))                // nop
        #expect(decode([0x0F, 0xA2]) == .unsupported(opcode: 0x0FA2))        // cpuid
        #expect(decode([0xC7, 0x08, 0, 0, 0, 0]) == .unsupported(opcode: 0xC7))  // C7 /1 is no MOV
        #expect(decode([]) == .truncated)
        #expect(decode([UInt8](repeating: 0x66, count: 16)) == .truncated)  // past 15 bytes
    }

    @Test("a load writes its register as the CPU does: 32-bit zero-extends in 64-bit code, 8- and 16-bit merge, AH is bits 8-15, MOVSX sign-extends; a store takes the register's low bytes")
    func registerEffects() throws {
        func instruction(_ bytes: [UInt8], _ mode: InstructionDecoder.Mode = .bits64) throws -> DecodedInstruction {
            try bytes.withUnsafeBytes { buffer throws(InstructionDecodingError) in try InstructionDecoder.decode(buffer, size: mode) }
        }
        let old: UInt64 = 0xFFFF_FFFF_FFFF_FFFF
        #expect(try instruction([0x8B, 0x03]).registerAfterLoad(old: old, loaded: 0x1234, codeSize: .bits64) == 0x1234)
        #expect(try instruction([0x8B, 0x03], .bits32).registerAfterLoad(old: old, loaded: 0x1234, codeSize: .bits32) == 0xFFFF_FFFF_0000_1234)
        #expect(try instruction([0x66, 0x8B, 0x03]).registerAfterLoad(old: old, loaded: 0x1234, codeSize: .bits64) == 0xFFFF_FFFF_FFFF_1234)
        #expect(try instruction([0x8A, 0x26]).registerAfterLoad(old: 0x1111, loaded: 0xAB, codeSize: .bits64) == 0xAB11)  // mov ah, [rsi]
        #expect(try instruction([0x48, 0x0F, 0xBE, 0x03]).registerAfterLoad(old: 0, loaded: 0x80, codeSize: .bits64) == 0xFFFF_FFFF_FFFF_FF80)
        #expect(try instruction([0x0F, 0xB7, 0x03]).registerAfterLoad(old: old, loaded: 0xFFFF_8000, codeSize: .bits64) == 0x8000)
        #expect(try instruction([0x88, 0x23]).storedValue(register: 0xABCD) == 0xAB)  // mov [rbx], ah
        #expect(try instruction([0x48, 0x89, 0x03]).storedValue(register: 0x0123_4567_89AB_CDEF) == 0x0123_4567_89AB_CDEF)
        #expect(try instruction([0xC6, 0x03, 0x7F]).storedValue(register: 0) == 0x7F)
    }

    @Test("a string instruction's address size and segment prefix: what the emulator steps RSI, RDI and RCX by and reads through")
    func stringOperands() throws {
        func instruction(_ bytes: [UInt8], _ mode: InstructionDecoder.Mode) throws -> DecodedInstruction {
            try bytes.withUnsafeBytes { buffer throws(InstructionDecodingError) in try InstructionDecoder.decode(buffer, size: mode) }
        }
        let repMovsw = try instruction([0xF3, 0xA5], .bits16)  // rep movsw
        #expect(repMovsw.operation == .string(.movs, repeated: true) && repMovsw.width == 2 && repMovsw.addressWidth == 2)
        #expect(repMovsw.segmentOverride == nil)
        let esLods = try instruction([0x26, 0x67, 0xAD], .bits16)  // lodsw es:[esi]
        #expect(esLods.addressWidth == 4 && esLods.segmentOverride == .es && esLods.length == 3)
        let stosq = try instruction([0xF3, 0x48, 0xAB], .bits64)  // rep stosq
        #expect(stosq.addressWidth == 8 && stosq.width == 8)
        let fsMov = try instruction([0x64, 0x8B, 0x03], .bits32)  // mov eax, fs:[ebx]
        #expect(fsMov.segmentOverride == .fs && fsMov.addressWidth == 4)
    }
}
