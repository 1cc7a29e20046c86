import Foundation
import HVGuest
import Testing

/// A flat long-mode image that brings up the second processor the way an OS does: it copies a
/// real-mode trampoline (embedded in the image) to 0x8000, sends INIT-SIPI-SIPI to APIC 1 in
/// x2APIC mode, and waits for the AP's IPI on vector 0x50 (SDM Vol. 3A, 9.4.4.1).
private func smpImage() throws -> [UInt8] {
    let trampoline = try GuestProgram.realMode(loadAddress: 0x8000) { a in
        a.cli()
        a.printString("AP is up\n")
        a.mov(Register32.ecx, 0x1B)                          // IA32_APIC_BASE: EN | EXTD
        a.rdmsr()
        a.or(Register32.eax, 0xC00)
        a.wrmsr()
        a.mov(Register32.ecx, 0x80F); a.mov(Register32.eax, 0x1FF); a.mov(Register32.edx, 0); a.wrmsr()   // SVR
        a.mov(Register32.ecx, 0x830); a.mov(Register32.eax, 0x4050); a.mov(Register32.edx, 0); a.wrmsr()  // IPI to BSP
        let spin = a.label()
        a.bind(spin)
        a.hlt()
        a.jmp(spin)
    }.code
    let program = try GuestProgram.longMode { a in
        let handler = a.label(), start = a.label(), code = a.label(), wait = a.label(), done = a.label()
        a.jmp(start)
        a.bind(code)
        a.bytes(trampoline)
        a.bind(handler)                                       // vector 0x50: flag, EOI, return
        a.mov(Register64.rbx, 0xA008)
        a.mov(.qword, .at(Register64.rbx), 1)
        a.mov(Register32.ecx, 0x80B); a.mov(Register32.eax, 0); a.mov(Register32.edx, 0); a.wrmsr()
        a.iret()
        a.bind(start)
        a.cld()                                               // copy the trampoline to 0x8000
        a.lea(Register64.rsi, .label(code))
        a.mov(Register64.rdi, 0x8000)
        a.mov(Register64.rcx, Immediate(trampoline.count))
        a.rep(.movsb)
        a.mov(Register8.al, 0xFF); a.out(0x21, Register8.al); a.out(0xA1, Register8.al)   // mask PICs
        a.installInterruptGate(vector: 0x50, handler: handler, table: 0x9000)   // SDM Vol. 3A, 6.14.1
        a.loadInterruptTable(0x9000, descriptor: 0xA100)
        a.mov(Register32.ecx, 0x1B); a.rdmsr(); a.or(Register32.eax, 0xC00); a.wrmsr()   // x2APIC on
        a.mov(Register32.ecx, 0x80F); a.mov(Register32.eax, 0x1FF); a.mov(Register32.edx, 0); a.wrmsr()
        a.sti()
        for command: UInt32 in [0x4500, 0x4608, 0x4608] {   // INIT, SIPI, SIPI to APIC 1
            a.mov(Register32.ecx, 0x830); a.mov(Register32.eax, Immediate(command)); a.mov(Register32.edx, 1); a.wrmsr()
        }
        a.bind(wait)
        a.mov(Register64.rbx, 0xA008)
        a.mov(Register64.rcx, .at(Register64.rbx))
        a.cmp(Register64.rcx, 1)
        a.je(done)
        a.hlt()
        a.jmp(wait)
        a.bind(done)
        a.printString("BSP received the AP's IPI\n")
        a.debugExit(code: 0x2A)
    }
    return program.code
}

@Suite("hv run with several vCPUs")
struct HVRunSMPTests {
    @Test("hv run --cpus 2 starts the BSP, the AP waits for INIT-SIPI-SIPI, in both irqchip modes", .needsKVM,
          arguments: ["kernel", "split"])
    func twoCPUs(irqchip: String) throws {
        let url = try PackageExecutable.temporaryDirectory().appendingPathComponent("smp.bin")
        try Data(try smpImage()).write(to: url)
        let result = try PackageExecutable.run(["run", url.path, "--cpus", "2", "--irqchip", irqchip, "--timeout", "30"])
        #expect(result.status == (0x2A << 1 | 1) & 0xFF, "stderr: \(result.stderr)")
        #expect(result.stdout == "AP is up\nBSP received the AP's IPI\n")
    }
}
