// 64-bit encodings compared byte for byte with GNU `as --64` (Intel syntax).

import HVGuest
import HVTestSupport
import Testing

/// Assembles every case with GNU `as` and with `X86Assembler` at the same address and compares.
func crossCheck(_ cases: [EncodingCase], bits: CodeSize, origin: UInt64) throws {
    let reference = try GNUToolchain.assemble(cases, bits: bits, origin: origin)
    for (testCase, (address, expected)) in zip(cases, reference) {
        var assembler = X86Assembler(bits: bits, origin: address)
        testCase.build(&assembler)
        do {
            let actual = try assembler.assemble()
            #expect(actual == expected, """
                \(testCase.location): '\(testCase.gas)': as gives [\(hexString(expected))], \
                X86Assembler gives [\(hexString(actual))]
                """)
        } catch {
            Issue.record("\(testCase.location): '\(testCase.gas)' failed to assemble: \(error)")
        }
    }
}

@Suite("64-bit encodings match GNU as", .enabled(if: GNUToolchain.isAvailable || Requirement.tools, "GNU binutils (as, ld, nm, objcopy) not found in /usr/bin"))
struct EncodingCrossCheck64Tests {
    @Test func movesBetweenRegistersAndImmediates() throws {
        try crossCheck([
            EncodingCase("mov rax, rbx") { $0.mov(.rax, .rbx) },
            EncodingCase("mov r9, rsp") { $0.mov(.r9, .rsp) },
            EncodingCase("mov eax, r15d") { $0.mov(.eax, .r15d) },
            EncodingCase("mov cx, dx") { $0.mov(.cx, .dx) },
            EncodingCase("mov al, bl") { $0.mov(.al, .bl) },
            EncodingCase("mov sil, dil") { $0.mov(.sil, .dil) },
            EncodingCase("mov ah, bh") { $0.mov(.ah, .bh) },
            EncodingCase("mov r10b, al") { $0.mov(.r10b, .al) },
            EncodingCase("mov al, 0x42") { $0.mov(.al, 0x42) },
            EncodingCase("mov r12b, 0xff") { $0.mov(.r12b, 0xFF) },
            EncodingCase("mov dh, -1") { $0.mov(.dh, -1) },
            EncodingCase("mov ax, 0x1234") { $0.mov(.ax, 0x1234) },
            EncodingCase("mov r8w, 7") { $0.mov(.r8w, 7) },
            EncodingCase("mov eax, 1") { $0.mov(.eax, 1) },
            EncodingCase("mov edi, 0xdeadbeef") { $0.mov(.edi, 0xDEAD_BEEF) },
            EncodingCase("mov r13d, -2") { $0.mov(.r13d, -2) },
            EncodingCase("mov rax, 1") { $0.mov(.rax, 1) },
            EncodingCase("mov rax, -1") { $0.mov(.rax, -1) },
            EncodingCase("mov rbx, 0x7fffffff") { $0.mov(.rbx, 0x7FFF_FFFF) },
            EncodingCase("mov rcx, 0x80000000") { $0.mov(.rcx, 0x8000_0000) },
            EncodingCase("mov rdx, 0xd0000000") { $0.mov(.rdx, 0xD000_0000) },
            EncodingCase("mov r11, 0x123456789abcdef0") { $0.mov(.r11, 0x1234_5678_9ABC_DEF0) },
            EncodingCase("mov rax, 0xffffffffffffffff") { $0.mov(.rax, 0xFFFF_FFFF_FFFF_FFFF) },
            EncodingCase("mov r15, 0x100000000") { $0.mov(.r15, Immediate(UInt64(1) << 32)) },
        ], bits: .bits64, origin: 0x10_0000)
    }

    @Test func movesThroughMemory() throws {
        try crossCheck([
            EncodingCase("mov eax, dword ptr [rbx]") { $0.mov(.eax, .at(.rbx)) },
            EncodingCase("mov rax, qword ptr [rbx + 8]") { $0.mov(.rax, .at(.rbx, 8)) },
            EncodingCase("mov rax, qword ptr [rbx - 8]") { $0.mov(.rax, .at(.rbx, -8)) },
            EncodingCase("mov ecx, dword ptr [rsi + 0x1000]") { $0.mov(.ecx, .at(.rsi, 0x1000)) },
            EncodingCase("mov dword ptr [rbp], eax") { $0.mov(.at(.rbp), .eax) },
            EncodingCase("mov dword ptr [rsp], eax") { $0.mov(.at(.rsp), .eax) },
            EncodingCase("mov qword ptr [rsp + 16], rdi") { $0.mov(.at(.rsp, 16), .rdi) },
            EncodingCase("mov qword ptr [r12 + 8], rax") { $0.mov(.at(.r12, 8), .rax) },
            EncodingCase("mov qword ptr [r13], r14") { $0.mov(.at(.r13), .r14) },
            EncodingCase("mov r8, qword ptr [r9 - 0x200]") { $0.mov(.r8, .at(.r9, -0x200)) },
            EncodingCase("mov al, byte ptr [rsi]") { $0.mov(.al, .at(.rsi)) },
            EncodingCase("mov byte ptr [rdi + 1], dl") { $0.mov(.at(.rdi, 1), .dl) },
            EncodingCase("mov byte ptr [rax], sil") { $0.mov(.at(.rax), .sil) },
            EncodingCase("mov word ptr [rbx], ax") { $0.mov(.at(.rbx), .ax) },
            EncodingCase("mov r10w, word ptr [r11 + 2]") { $0.mov(.r10w, .at(.r11, 2)) },
            EncodingCase("mov eax, dword ptr [ebx]") { $0.mov(.eax, .at(.ebx)) },
            EncodingCase("mov eax, dword ptr [0x1000]") { $0.mov(.eax, .absolute(0x1000)) },
            EncodingCase("mov rbx, qword ptr [0x2000]") { $0.mov(.rbx, .absolute(0x2000)) },
            EncodingCase("mov dword ptr [0x7000], ecx") { $0.mov(.absolute(0x7000), .ecx) },
            EncodingCase("addr32 mov eax, dword ptr [0xd0000000]") { $0.mov(.eax, .absolute(0xD000_0000)) },
            EncodingCase("addr32 mov dword ptr [0xd0000000], eax") { $0.mov(.absolute(0xD000_0000), .eax) },
            EncodingCase("addr32 mov ebx, dword ptr [0xfee00030]") { $0.mov(.ebx, .absolute(0xFEE0_0030)) },
            EncodingCase("mov byte ptr [rbx], 5") { $0.mov(.byte, .at(.rbx), 5) },
            EncodingCase("mov word ptr [rbx + 2], 0x1234") { $0.mov(.word, .at(.rbx, 2), 0x1234) },
            EncodingCase("mov dword ptr [rax], 0xdeadbeef") { $0.mov(.dword, .at(.rax), 0xDEAD_BEEF) },
            EncodingCase("mov qword ptr [rbx], -1") { $0.mov(.qword, .at(.rbx), -1) },
            EncodingCase("mov qword ptr [r8 + 0x80], 0x1000") { $0.mov(.qword, .at(.r8, 0x80), 0x1000) },
            EncodingCase("mov dword ptr [0x5000], 7") { $0.mov(.dword, .absolute(0x5000), 7) },
        ], bits: .bits64, origin: 0x10_0000)
    }

    @Test func leaPushPopAndLabelAddresses() throws {
        try crossCheck([
            EncodingCase("lea rax, [rbx + 8]") { $0.lea(.rax, .at(.rbx, 8)) },
            EncodingCase("lea ecx, [rsp - 4]") { $0.lea(.ecx, .at(.rsp, -4)) },
            EncodingCase("lea rsi, [rip + {L}data]\nnop\n{L}data: .byte 1") { asm in
                let data = asm.label()
                asm.lea(.rsi, .label(data))
                asm.nop()
                asm.bind(data)
                asm.u8(1)
            },
            EncodingCase("{L}back: .byte 0\nlea rdi, [rip + {L}back]") { asm in
                let back = asm.label()
                asm.bind(back)
                asm.u8(0)
                asm.lea(.rdi, .label(back))
            },
            EncodingCase("mov eax, dword ptr [rip + {L}value + 4]\n{L}value: .quad 0") { asm in
                let value = asm.label()
                asm.mov(.eax, .label(value, 4))
                asm.bind(value)
                asm.u64(0)
            },
            EncodingCase("mov dword ptr [rip + {L}value], 3\n{L}value: .long 0") { asm in
                let value = asm.label()
                asm.mov(.dword, .label(value), 3)
                asm.bind(value)
                asm.u32(0)
            },
            EncodingCase("mov rsi, offset {L}message\n{L}message: .ascii \"hi\"") { asm in
                let message = asm.label()
                asm.mov(.rsi, message)
                asm.bind(message)
                asm.ascii("hi")
            },
            EncodingCase("mov esi, offset {L}message\n{L}message: .asciz \"hi\"") { asm in
                let message = asm.label()
                asm.mov(.esi, message)
                asm.bind(message)
                asm.asciz("hi")
            },
            EncodingCase("push rax") { $0.push(.rax) },
            EncodingCase("push r12") { $0.push(.r12) },
            EncodingCase("push ax") { $0.push(.ax) },
            EncodingCase("pop rbp") { $0.pop(.rbp) },
            EncodingCase("pop r15") { $0.pop(.r15) },
        ], bits: .bits64, origin: 0x10_0000)
    }

    @Test func arithmeticAndLogic() throws {
        try crossCheck([
            EncodingCase("add rax, rbx") { $0.add(.rax, .rbx) },
            EncodingCase("add eax, 1") { $0.add(.eax, 1) },
            EncodingCase("add eax, 0x1000") { $0.add(.eax, 0x1000) },
            EncodingCase("add ebx, 0x1000") { $0.add(.ebx, 0x1000) },
            EncodingCase("add rsp, 8") { $0.add(.rsp, 8) },
            EncodingCase("add al, 1") { $0.add(.al, 1) },
            EncodingCase("add bl, 0x80") { $0.add(.bl, 0x80) },
            EncodingCase("add r9, -0x80") { $0.add(.r9, -0x80) },
            EncodingCase("add rax, 0x7fffffff") { $0.add(.rax, 0x7FFF_FFFF) },
            EncodingCase("adc edx, 0") { $0.adc(.edx, 0) },
            EncodingCase("adc r8, r9") { $0.adc(.r8, .r9) },
            EncodingCase("sub rsp, 0x100") { $0.sub(.rsp, 0x100) },
            EncodingCase("sub ecx, edx") { $0.sub(.ecx, .edx) },
            EncodingCase("sbb eax, eax") { $0.sbb(.eax, .eax) },
            EncodingCase("sbb cl, 1") { $0.sbb(.cl, 1) },
            EncodingCase("and eax, 0xff") { $0.and(.eax, 0xFF) },
            EncodingCase("and ecx, 0xff") { $0.and(.ecx, 0xFF) },
            EncodingCase("and rax, -16") { $0.and(.rax, -16) },
            EncodingCase("and al, 0x0f") { $0.and(.al, 0x0F) },
            EncodingCase("or ax, 0x8000") { $0.or(.ax, 0x8000) },
            EncodingCase("or r10d, r11d") { $0.or(.r10d, .r11d) },
            EncodingCase("or dx, 0xffff") { $0.or(.dx, 0xFFFF) },
            EncodingCase("xor eax, eax") { $0.xor(.eax, .eax) },
            EncodingCase("xor r15, r15") { $0.xor(.r15, .r15) },
            EncodingCase("xor al, 0x55") { $0.xor(.al, 0x55) },
            EncodingCase("cmp eax, 0x12345678") { $0.cmp(.eax, 0x1234_5678) },
            EncodingCase("cmp ebx, 0x12345678") { $0.cmp(.ebx, 0x1234_5678) },
            EncodingCase("cmp rax, 5") { $0.cmp(.rax, 5) },
            EncodingCase("cmp al, 0") { $0.cmp(.al, 0) },
            EncodingCase("cmp dil, 10") { $0.cmp(.dil, 10) },
            EncodingCase("cmp rcx, rdx") { $0.cmp(.rcx, .rdx) },
            EncodingCase("cmp eax, 0xffffffff") { $0.cmp(.eax, 0xFFFF_FFFF) },
            EncodingCase("test al, 0x20") { $0.test(.al, 0x20) },
            EncodingCase("test bl, 0x20") { $0.test(.bl, 0x20) },
            EncodingCase("test eax, 1") { $0.test(.eax, 1) },
            EncodingCase("test ecx, 0x100") { $0.test(.ecx, 0x100) },
            EncodingCase("test rax, rax") { $0.test(.rax, .rax) },
            EncodingCase("test al, al") { $0.test(.al, .al) },
            EncodingCase("test r8w, 3") { $0.test(.r8w, 3) },
            EncodingCase("inc eax") { $0.inc(.eax) },
            EncodingCase("inc rax") { $0.inc(.rax) },
            EncodingCase("inc r10") { $0.inc(.r10) },
            EncodingCase("inc al") { $0.inc(.al) },
            EncodingCase("dec cx") { $0.dec(.cx) },
            EncodingCase("dec r12d") { $0.dec(.r12d) },
            EncodingCase("dec bh") { $0.dec(.bh) },
            EncodingCase("shl eax, 1") { $0.shl(.eax, 1) },
            EncodingCase("shl eax, 4") { $0.shl(.eax, 4) },
            EncodingCase("shl r9, 12") { $0.shl(.r9, 12) },
            EncodingCase("shr al, 3") { $0.shr(.al, 3) },
            EncodingCase("shr rdx, 1") { $0.shr(.rdx, 1) },
            EncodingCase("shr cx, 8") { $0.shr(.cx, 8) },
            EncodingCase("sar rax, 63") { $0.sar(.rax, 63) },
        ], bits: .bits64, origin: 0x10_0000)
    }

    @Test func controlFlow() throws {
        try crossCheck([
            EncodingCase("jmp {L}t\nnop\n{L}t:") { asm in
                let target = asm.label()
                asm.jmp(target)
                asm.nop()
                asm.bind(target)
            },
            EncodingCase("{L}t: nop\njmp {L}t") { asm in
                let target = asm.label()
                asm.bind(target)
                asm.nop()
                asm.jmp(target)
            },
            EncodingCase("jmp {L}t\n.fill 200, 1, 0x90\n{L}t:") { asm in
                let target = asm.label()
                asm.jmp(target)
                asm.bytes([UInt8](repeating: 0x90, count: 200))
                asm.bind(target)
            },
            EncodingCase("{L}t: .fill 300, 1, 0x90\njmp {L}t") { asm in
                let target = asm.label()
                asm.bind(target)
                asm.bytes([UInt8](repeating: 0x90, count: 300))
                asm.jmp(target)
            },
            EncodingCase("jz {L}t\njnz {L}t\nje {L}t\njne {L}t\njc {L}t\njnc {L}t\nja {L}t\njae {L}t\njb {L}t\njbe {L}t\n"
                + "jl {L}t\njle {L}t\njg {L}t\njge {L}t\njs {L}t\njns {L}t\njo {L}t\njno {L}t\n{L}t:") { asm in
                let t = asm.label()
                asm.jz(t); asm.jnz(t); asm.je(t); asm.jne(t); asm.jc(t); asm.jnc(t); asm.ja(t); asm.jae(t)
                asm.jb(t); asm.jbe(t); asm.jl(t); asm.jle(t); asm.jg(t); asm.jge(t); asm.js(t); asm.jns(t)
                asm.jo(t); asm.jno(t)
                asm.bind(t)
            },
            EncodingCase("jp {L}t\njnp {L}t\n.fill 130, 1, 0xcc\n{L}t:") { asm in
                let t = asm.label()
                asm.jcc(.parity, t)
                asm.jcc(.notParity, t)
                asm.bytes([UInt8](repeating: 0xCC, count: 130))
                asm.bind(t)
            },
            // Both branches sit at the rel8 limit; widening the first pushes the second over it.
            EncodingCase("jz {L}t\njmp {L}t\n.fill 124, 1, 0x90\n{L}t:") { asm in
                let t = asm.label()
                asm.jz(t)
                asm.jmp(t)
                asm.bytes([UInt8](repeating: 0x90, count: 124))
                asm.bind(t)
            },
            EncodingCase("{L}t: .fill 120, 1, 0x90\njnz {L}t\njmp {L}t\n") { asm in
                let t = asm.label()
                asm.bind(t)
                asm.bytes([UInt8](repeating: 0x90, count: 120))
                asm.jnz(t)
                asm.jmp(t)
            },
            EncodingCase("call {L}f\nret\n{L}f: ret") { asm in
                let function = asm.label()
                asm.call(function)
                asm.ret()
                asm.bind(function)
                asm.ret()
            },
            EncodingCase("{L}top: dec ecx\nloop {L}top") { asm in
                let top = asm.label()
                asm.bind(top)
                asm.dec(.ecx)
                asm.loop(top)
            },
            EncodingCase("jmp {L}a\n.balign 16, 0xcc\n{L}a: nop") { asm in
                let a = asm.label()
                asm.jmp(a)
                asm.align(16, fill: 0xCC)
                asm.bind(a)
                asm.nop()
            },
        ], bits: .bits64, origin: 0x10_0000)
    }

    @Test func portIOStringAndSystemInstructions() throws {
        try crossCheck([
            EncodingCase("in al, 0x60") { $0.in(.al, 0x60) },
            EncodingCase("in ax, 0x60") { $0.in(.ax, 0x60) },
            EncodingCase("in eax, 0x60") { $0.in(.eax, 0x60) },
            EncodingCase("in al, dx") { $0.in(.al, .dx) },
            EncodingCase("in ax, dx") { $0.in(.ax, .dx) },
            EncodingCase("in eax, dx") { $0.in(.eax, .dx) },
            EncodingCase("out 0xf4, al") { $0.out(0xF4, .al) },
            EncodingCase("out 0xf4, eax") { $0.out(0xF4, .eax) },
            EncodingCase("out dx, al") { $0.out(.dx, .al) },
            EncodingCase("out dx, ax") { $0.out(.dx, .ax) },
            EncodingCase("out dx, eax") { $0.out(.dx, .eax) },
            EncodingCase("insb\ninsw\ninsd") { $0.insb(); $0.insw(); $0.insd() },
            EncodingCase("outsb\noutsw\noutsd") { $0.outsb(); $0.outsw(); $0.outsd() },
            EncodingCase("lodsb\nstosb\nmovsb") { $0.lodsb(); $0.stosb(); $0.movsb() },
            EncodingCase("lodsq\nstosd\nmovsq\nmovsw") { $0.string(.lodsq); $0.string(.stosd); $0.string(.movsq); $0.string(.movsw) },
            EncodingCase("rep movsb") { $0.rep(.movsb) },
            EncodingCase("rep insw") { $0.rep(.insw) },
            EncodingCase("rep outsd") { $0.rep(.outsd) },
            EncodingCase("rep stosq") { $0.rep(.stosq) },
            EncodingCase("cld\nstd\nclc\nstc") { $0.cld(); $0.std(); $0.clc(); $0.stc() },
            EncodingCase("hlt\nnop\ncli\nsti") { $0.hlt(); $0.nop(); $0.cli(); $0.sti() },
            EncodingCase("cpuid\nrdmsr\nwrmsr\nrdtsc\nrdtscp") { $0.cpuid(); $0.rdmsr(); $0.wrmsr(); $0.rdtsc(); $0.rdtscp() },
            EncodingCase("lfence\nmfence\nsfence\npause") { $0.lfence(); $0.mfence(); $0.sfence(); $0.pause() },
            EncodingCase("ud2\nint3\nint 0x80\nret") { $0.ud2(); $0.int3(); $0.int(0x80); $0.ret() },
            EncodingCase("lidt [rax]\nlgdt [rbx+8]\niretq") { $0.lidt(.at(.rax)); $0.lgdt(.at(.rbx, 8)); $0.iret() },
        ], bits: .bits64, origin: 0x10_0000)
    }

    @Test func macrosAndData() throws {
        try crossCheck([
            EncodingCase("""
                cld
                lea rsi, [rip + {L}msg]
                {L}next: lodsb
                test al, al
                jz {L}done
                mov bl, al
                mov dx, 0x3fd
                {L}wait: in al, dx
                test al, 0x20
                jz {L}wait
                mov dx, 0x3f8
                mov al, bl
                out dx, al
                jmp {L}next
                {L}done: hlt
                {L}msg: .asciz "Hello"
                """) { asm in
                let message = asm.label()
                asm.serialPrint(label: message)
                asm.hlt()
                asm.bind(message)
                asm.asciz("Hello")
            },
            EncodingCase("mov eax, 0x2a\nout 0xf4, eax") { $0.debugExit(code: 42) },
            EncodingCase("mov eax, 1\nmov dx, 0x501\nout dx, eax") { $0.debugExit(code: 1, port: 0x501) },
            EncodingCase(".byte 1, 2, 3\n.word 0x1234\n.long 0xdeadbeef\n.quad 0x0102030405060708\n.ascii \"ok\"") { asm in
                asm.bytes([1, 2, 3])
                asm.u16(0x1234)
                asm.u32(0xDEAD_BEEF)
                asm.u64(0x0102_0304_0506_0708)
                asm.ascii("ok")
            },
            EncodingCase(".quad {L}d\n.long {L}d\n{L}d: .byte 0") { asm in
                let d = asm.label()
                asm.u64(d)
                asm.u32(d)
                asm.bind(d)
                asm.u8(0)
            },
            EncodingCase(".byte 1\n.balign 8, 0\n.byte 2\n.balign 4, 0xff\n.zero 3") { asm in
                asm.u8(1)
                asm.align(8)
                asm.u8(2)
                asm.align(4, fill: 0xFF)
                asm.zeros(3)
            },
        ], bits: .bits64, origin: 0x10_0000)
    }
}
