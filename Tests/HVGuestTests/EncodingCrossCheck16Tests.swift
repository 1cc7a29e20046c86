// 16-bit (real mode) and 32-bit encodings compared byte for byte with GNU `as --32` and
// `.code16` / `.code32`.

import HVGuest
import HVTestSupport
import Testing

@Suite("16- and 32-bit encodings match GNU as", .enabled(if: GNUToolchain.isAvailable || Requirement.tools, "GNU binutils (as, ld, nm, objcopy) not found in /usr/bin"))
struct EncodingCrossCheck16Tests {
    @Test func realModeMovesAndOperandSizePrefixes() throws {
        try crossCheck([
            EncodingCase("mov ax, bx") { $0.mov(.ax, .bx) },
            EncodingCase("mov eax, ebx") { $0.mov(.eax, .ebx) },
            EncodingCase("mov al, ah") { $0.mov(.al, .ah) },
            EncodingCase("mov ax, 0x1234") { $0.mov(.ax, 0x1234) },
            EncodingCase("mov eax, 0x12345678") { $0.mov(.eax, 0x1234_5678) },
            EncodingCase("mov cl, 7") { $0.mov(.cl, 7) },
            EncodingCase("mov sp, 0x7000") { $0.mov(.sp, 0x7000) },
            EncodingCase("mov al, byte ptr [si]") { $0.mov(.al, .at(.si)) },
            EncodingCase("mov ax, word ptr [bx]") { $0.mov(.ax, .at(.bx)) },
            EncodingCase("mov dx, word ptr [di + 2]") { $0.mov(.dx, .at(.di, 2)) },
            EncodingCase("mov cx, word ptr [bp]") { $0.mov(.cx, .at(.bp)) },
            EncodingCase("mov cx, word ptr [bp + 4]") { $0.mov(.cx, .at(.bp, 4)) },
            EncodingCase("mov bx, word ptr [bx + 0x1000]") { $0.mov(.bx, .at(.bx, 0x1000)) },
            EncodingCase("mov word ptr [bx - 2], ax") { $0.mov(.at(.bx, -2), .ax) },
            EncodingCase("mov byte ptr [di], cl") { $0.mov(.at(.di), .cl) },
            EncodingCase("mov dword ptr [si], ebx") { $0.mov(.at(.si), .ebx) },
            EncodingCase("mov eax, dword ptr [ebx]") { $0.mov(.eax, .at(.ebx)) },
            EncodingCase("mov ecx, dword ptr [esp + 8]") { $0.mov(.ecx, .at(.esp, 8)) },
            EncodingCase("mov al, byte ptr [0x1000]") { $0.mov(.al, .absolute(0x1000)) },
            EncodingCase("mov ax, word ptr [0x1000]") { $0.mov(.ax, .absolute(0x1000)) },
            EncodingCase("mov word ptr [0x500], ax") { $0.mov(.absolute(0x500), .ax) },
            EncodingCase("mov bx, word ptr [0x1000]") { $0.mov(.bx, .absolute(0x1000)) },
            EncodingCase("mov byte ptr [bx], 1") { $0.mov(.byte, .at(.bx), 1) },
            EncodingCase("mov word ptr [si + 4], 0x55aa") { $0.mov(.word, .at(.si, 4), 0x55AA) },
            EncodingCase("mov dword ptr [di], 0xdeadbeef") { $0.mov(.dword, .at(.di), 0xDEAD_BEEF) },
            EncodingCase("mov si, offset {L}msg\n{L}msg: .asciz \"hi\"") { asm in
                let message = asm.label()
                asm.mov(.si, message)
                asm.bind(message)
                asm.asciz("hi")
            },
            EncodingCase("mov al, byte ptr [{L}value]\nmov cx, word ptr [{L}value]\n{L}value: .word 7") { asm in
                let value = asm.label()
                asm.mov(.al, .label(value))
                asm.mov(.cx, .label(value))
                asm.bind(value)
                asm.u16(7)
            },
            EncodingCase("lea si, [bx + 3]") { $0.lea(.si, .at(.bx, 3)) },
            EncodingCase("push ax\npush eax\npop bx\npop ebx") { $0.push(.ax); $0.push(.eax); $0.pop(.bx); $0.pop(.ebx) },
        ], bits: .bits16, origin: 0x7C00)
    }

    @Test func realModeArithmeticFlowAndIO() throws {
        try crossCheck([
            EncodingCase("add ax, 0x1234") { $0.add(.ax, 0x1234) },
            EncodingCase("add ax, 1") { $0.add(.ax, 1) },
            EncodingCase("add eax, 0x10000") { $0.add(.eax, 0x10000) },
            EncodingCase("sub bx, cx") { $0.sub(.bx, .cx) },
            EncodingCase("and dl, 0x0f") { $0.and(.dl, 0x0F) },
            EncodingCase("or ebx, ecx") { $0.or(.ebx, .ecx) },
            EncodingCase("xor ax, ax") { $0.xor(.ax, .ax) },
            EncodingCase("cmp al, 0x0a") { $0.cmp(.al, 0x0A) },
            EncodingCase("cmp si, 0x200") { $0.cmp(.si, 0x200) },
            EncodingCase("test al, 0x20") { $0.test(.al, 0x20) },
            EncodingCase("test ax, 0x100") { $0.test(.ax, 0x100) },
            EncodingCase("inc ax\ninc eax\ninc al\ndec di\ndec edi\ndec bl") {
                $0.inc(.ax); $0.inc(.eax); $0.inc(.al); $0.dec(.di); $0.dec(.edi); $0.dec(.bl)
            },
            EncodingCase("shl ax, 1\nshl eax, 5\nshr bl, 2") { $0.shl(.ax, 1); $0.shl(.eax, 5); $0.shr(.bl, 2) },
            EncodingCase("jmp {L}t\nnop\n{L}t:") { asm in
                let t = asm.label()
                asm.jmp(t)
                asm.nop()
                asm.bind(t)
            },
            EncodingCase("jmp {L}t\n.fill 300, 1, 0x90\n{L}t:") { asm in
                let t = asm.label()
                asm.jmp(t)
                asm.bytes([UInt8](repeating: 0x90, count: 300))
                asm.bind(t)
            },
            EncodingCase("{L}t: .fill 300, 1, 0x90\njnz {L}t\njc {L}t") { asm in
                let t = asm.label()
                asm.bind(t)
                asm.bytes([UInt8](repeating: 0x90, count: 300))
                asm.jnz(t)
                asm.jc(t)
            },
            EncodingCase("call {L}f\nhlt\n{L}f: ret") { asm in
                let f = asm.label()
                asm.call(f)
                asm.hlt()
                asm.bind(f)
                asm.ret()
            },
            EncodingCase("mov cx, 10\n{L}top: nop\nloop {L}top") { asm in
                let top = asm.label()
                asm.mov(.cx, 10)
                asm.bind(top)
                asm.nop()
                asm.loop(top)
            },
            EncodingCase("in al, 0x64\nin ax, dx\nin eax, dx\nout 0x80, al\nout dx, ax\nout dx, eax") {
                $0.in(.al, 0x64); $0.in(.ax, .dx); $0.in(.eax, .dx); $0.out(0x80, .al); $0.out(.dx, .ax); $0.out(.dx, .eax)
            },
            EncodingCase("insb\ninsw\ninsd\noutsb\noutsw\noutsd") {
                $0.insb(); $0.insw(); $0.insd(); $0.outsb(); $0.outsw(); $0.outsd()
            },
            EncodingCase("rep insd\nrep outsw\nrep movsb\nlodsb\nstosb") {
                $0.rep(.insd); $0.rep(.outsw); $0.rep(.movsb); $0.lodsb(); $0.stosb()
            },
            EncodingCase("cli\ncld\nhlt\nint 0x10\ncpuid\nrdtsc") {
                $0.cli(); $0.cld(); $0.hlt(); $0.int(0x10); $0.cpuid(); $0.rdtsc()
            },
            EncodingCase("""
                cld
                mov si, offset {L}msg
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
                {L}done: mov eax, 0x10
                out 0xf4, eax
                {L}msg: .asciz "Hi"
                """) { asm in
                let message = asm.label()
                asm.serialPrint(label: message)
                asm.debugExit(code: 0x10)
                asm.bind(message)
                asm.asciz("Hi")
            },
        ], bits: .bits16, origin: 0x7C00)
    }

    @Test func protectedMode32BitEncodings() throws {
        try crossCheck([
            EncodingCase("mov eax, ebx") { $0.mov(.eax, .ebx) },
            EncodingCase("mov ax, 5") { $0.mov(.ax, 5) },
            EncodingCase("mov eax, dword ptr [ebp + 8]") { $0.mov(.eax, .at(.ebp, 8)) },
            EncodingCase("mov eax, dword ptr [0x1000]") { $0.mov(.eax, .absolute(0x1000)) },
            EncodingCase("mov ecx, dword ptr [0x1000]") { $0.mov(.ecx, .absolute(0x1000)) },
            EncodingCase("mov ax, word ptr [bx]") { $0.mov(.ax, .at(.bx)) },
            EncodingCase("inc ecx\ndec ax\npush eax\npop ax") { $0.inc(.ecx); $0.dec(.ax); $0.push(.eax); $0.pop(.ax) },
            EncodingCase("jmp {L}t\n.fill 200, 1, 0x90\n{L}t: call {L}t") { asm in
                let t = asm.label()
                asm.jmp(t)
                asm.bytes([UInt8](repeating: 0x90, count: 200))
                asm.bind(t)
                asm.call(t)
            },
            EncodingCase("mov esi, offset {L}m\nmov al, byte ptr [{L}m]\n{L}m: .byte 0") { asm in
                let m = asm.label()
                asm.mov(.esi, m)
                asm.mov(.al, .label(m))
                asm.bind(m)
                asm.u8(0)
            },
            EncodingCase("in eax, dx\nout dx, ax\ninsw\nrep outsd") { $0.in(.eax, .dx); $0.out(.dx, .ax); $0.insw(); $0.rep(.outsd) },
        ], bits: .bits32, origin: 0x1_0000)
    }
}
