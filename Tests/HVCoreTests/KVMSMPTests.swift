import HVCore
import HVKVM
import Testing

/// How the two processors talk to their local APICs in an SMP test.
enum APICMode: String, CaseIterable, Sendable {
    /// Memory-mapped registers at 0xFEE00000 (SDM Vol. 3A, 11.4).
    case xAPIC
    /// MSRs 0x800-0x8FF after setting IA32_APIC_BASE.EXTD (SDM Vol. 3A, 11.12).
    case x2APIC
}

extension X86Assembler {
    /// Turns on x2APIC mode (IA32_APIC_BASE bits 10 and 11) and software-enables the APIC.
    mutating func enableX2APIC() {
        mov(Register32.ecx, 0x1B)
        rdmsr()
        or(Register32.eax, 0xC00)
        wrmsr()
        writeMSR(0x80F, low: 0x1FF, high: 0)
    }

    /// `wrmsr` of `high:low` to `index`. Clobbers eax, ecx, edx.
    mutating func writeMSR(_ index: UInt32, low: UInt32, high: UInt32) {
        mov(Register32.ecx, Immediate(index))
        mov(Register32.eax, Immediate(low))
        mov(Register32.edx, Immediate(high))
        wrmsr()
    }

    /// Sends an IPI with ICR value `command` to APIC `destination` (SDM Vol. 3A, 11.6.1).
    mutating func sendIPI(_ command: UInt32, to destination: UInt32, mode: APICMode) {
        switch mode {
        case .xAPIC:
            writeRegister(InterruptGuest.lapic + 0x310, destination << 24)
            writeRegister(InterruptGuest.lapic + 0x300, command)
        case .x2APIC:
            writeMSR(0x830, low: command, high: destination)
        }
    }
}

@Suite("KVM SMP bring-up", .requiresKVM, .serialized)
struct KVMSMPTests {
    static let trampoline: UInt64 = 0x8000        // SIPI vector 0x08
    static let protectedEntry: UInt64 = 0x8800    // the AP's 32-bit code (xAPIC)
    static let gdt: UInt64 = 0x8F00

    @Test("the BSP wakes an AP with INIT-SIPI-SIPI; the AP prints and sends the BSP an IPI",
          arguments: [APICMode.xAPIC, .x2APIC], [InterruptControllerMode.kernel, .split])
    func initSIPISIPI(apic: APICMode, irqchip: InterruptControllerMode) throws {
        let vm = try KVMHost.machine(memory: 4 << 20, cpus: 2) { $0.interruptController = irqchip }
        let console = try attachConsole(vm)
        // The BSP, in long mode: IPI handler on vector 0x50, then INIT-SIPI-SIPI to APIC 1.
        try vm.load(GuestProgram.longMode { a in
            let handler = a.label(), start = a.label()
            a.jmp(start)
            a.bind(handler)
            a.push(Register64.rax)
            a.push(Register64.rbx)
            a.push(Register64.rcx)
            a.push(Register64.rdx)
            a.mov(Register64.rbx, Immediate(InterruptGuest.flag))
            a.mov(.qword, .at(Register64.rbx), 1)
            if apic == .xAPIC { a.writeRegister(InterruptGuest.eoiRegister, 0) } else { a.writeMSR(0x80B, low: 0, high: 0) }
            a.pop(Register64.rdx)
            a.pop(Register64.rcx)
            a.pop(Register64.rbx)
            a.pop(Register64.rax)
            a.iret()
            a.bind(start)
            a.maskPICs()
            a.installGate(vector: 0x50, handler: handler)
            a.loadIDT()
            if apic == .xAPIC { a.enableLocalAPIC() } else { a.enableX2APIC() }
            a.sti()
            a.sendIPI(0x4500, to: 1, mode: apic)               // INIT, level assert
            a.sendIPI(0x4600 | UInt32(Self.trampoline >> 12), to: 1, mode: apic)   // SIPI
            a.sendIPI(0x4600 | UInt32(Self.trampoline >> 12), to: 1, mode: apic)   // SIPI again
            a.waitUntil(InterruptGuest.flag, reaches: 1)
            a.printString("BSP received the AP's IPI\n")
            a.debugExit(code: 0x5A)
        })
        // The AP starts in real mode at 0x8000 (CS 0x0800, IP 0; DS base 0).
        let ap = try GuestProgram.realMode(loadAddress: Self.trampoline) { a in
            a.cli()
            a.printString("AP is up\n")
            switch apic {
            case .x2APIC:
                a.enableX2APIC()                               // MSRs work in real mode
                a.sendIPI(0x4050, to: 0, mode: .x2APIC)        // fixed, vector 0x50, to the BSP
                let spin = a.label()
                a.bind(spin)
                a.hlt()
                a.jmp(spin)
            case .xAPIC:
                // The xAPIC page is above 1 MiB: switch to flat 32-bit protected mode first.
                a.lgdt(.absolute(Self.gdt + 0x20))
                a.bytes([0x0F, 0x20, 0xC0, 0x0C, 0x01, 0x0F, 0x22, 0xC0])   // mov eax,cr0; or al,1; mov cr0,eax
                a.bytes([0x66, 0xEA]); a.u32(UInt32(Self.protectedEntry)); a.u16(0x08)   // jmp far 0x08:entry
            }
        }
        for chunk in try ap.image(memorySize: 1 << 20).chunks where chunk.name == "program" {
            try vm.memory.write(bytes: chunk.bytes, at: chunk.address)
        }
        if apic == .xAPIC {
            var pm = X86Assembler(bits: .bits32, origin: Self.protectedEntry)
            pm.bytes([0x66, 0xB8, 0x10, 0x00, 0x8E, 0xD8])     // mov ax, 0x10; mov ds, ax
            pm.mov(.dword, .absolute(InterruptGuest.lapic + 0xF0), 0x1FF)
            pm.mov(.dword, .absolute(InterruptGuest.lapic + 0x310), 0)
            pm.mov(.dword, .absolute(InterruptGuest.lapic + 0x300), 0x4050)
            let spin = pm.label()
            pm.bind(spin)
            pm.hlt()
            pm.jmp(spin)
            try vm.memory.write(bytes: try pm.assemble(), at: GuestPhysicalAddress(Self.protectedEntry))
            // A flat GDT (null, 32-bit code 0x08, data 0x10; SDM Vol. 3A, 3.4.5) and its GDTR.
            try vm.memory.write(UInt64(0), at: GuestPhysicalAddress(Self.gdt))
            try vm.memory.write(UInt64(0x00CF_9A00_0000_FFFF), at: GuestPhysicalAddress(Self.gdt + 8))
            try vm.memory.write(UInt64(0x00CF_9200_0000_FFFF), at: GuestPhysicalAddress(Self.gdt + 16))
            try vm.memory.write(UInt16(23), at: GuestPhysicalAddress(Self.gdt + 0x20))
            try vm.memory.write(UInt32(Self.gdt), at: GuestPhysicalAddress(Self.gdt + 0x22))
        }
        let result = try vm.run()
        #expect(result.reason == .debugExit(code: 0x5A))
        #expect(console.text == "AP is up\nBSP received the AP's IPI\n")
    }
}

@Suite("KVM LAPIC state", .requiresKVM)
struct KVMLAPICStateTests {
    @Test("an AP waits for INIT-SIPI and each vCPU's in-kernel LAPIC reports its own id")
    func apWaitsAndIDs() throws {
        let vm = try KVMHost.machine(cpus: 2) { $0.interruptController = .kernel }
        #expect(try vm.vcpus[1].multiprocessingState() == .uninitialized)
        #expect(try vm.vcpus[0].multiprocessingState() == .runnable)
        // xAPIC ID register (offset 0x20) holds the APIC id in bits 31:24 (SDM Vol. 3A, 11.4.6).
        #expect(try vm.vcpus[0].localAPICRegister(0x20) >> 24 == 0)
        #expect(try vm.vcpus[1].localAPICRegister(0x20) >> 24 == 1)
        // Version register: 0x14 (integrated APIC) in bits 7:0.
        #expect(try vm.vcpus[0].localAPICRegister(0x30) & 0xFF == 0x14)
    }

    @Test("a guest's LAPIC settings read back through KVM_GET_LAPIC into HV's model")
    func lapicIntoModel() throws {
        let vm = try KVMHost.machine { $0.interruptController = .kernel }
        _ = try attachConsole(vm)
        try vm.load(GuestProgram.longMode { a in
            a.enableLocalAPIC()                                           // SVR = 0x1FF
            a.writeRegister(InterruptGuest.lapic + 0x80, 0x20)            // TPR = 0x20
            a.writeRegister(InterruptGuest.lapic + 0x320, 0x1_0040)       // LVT timer masked, vector 0x40
            a.debugExit(code: 0)
        })
        #expect(try vm.run().reason == .debugExit(code: 0))
        let apic = try vm.vcpus[0].localAPIC()
        #expect(apic.value(of: .taskPriority) == 0x20)
        #expect(apic.value(of: .spuriousVector) == 0x1FF)
        #expect(apic.value(of: .lvtTimer) == 0x1_0040)
        #expect(apic.value(of: .id) >> 24 == 0)
    }
}
