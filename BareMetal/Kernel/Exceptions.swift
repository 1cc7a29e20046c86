// The image's own exceptions: an IDT whose first 32 gates lead to Entry/exceptions.S, and the report
// a fault makes (vector and mnemonic, error code, RIP, CS, RFLAGS, RSP, CR2 for a page fault,
// every general-purpose register) before the image stops with exit code 3. A hypervisor that
// faults must say where, not reboot silently.
import BareMetalSupport

enum Exceptions {
    static let mnemonics: [StaticString] = ["#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "#MF(9)", "#TS", "#NP", "#SS",
                                            "#GP", "#PF", "reserved", "#MF", "#AC", "#MC", "#XM", "#VE", "#CP", "reserved", "reserved",
                                            "reserved", "reserved", "reserved", "reserved", "#HV", "#VC", "#SX", "reserved"]

    /// Builds the IDT (256 16-byte interrupt gates in long mode: SDM Vol. 3A, 6.14.1; the 32
    /// exceptions, the host timer's vector and the APIC's spurious vector) and loads it.
    static func install() {
        let idt = allocatePages(4096)
        func gate(_ vector: Int, _ handler: UInt64) {
            let low = (handler & 0xFFFF) | UInt64(0x08) << 16 | UInt64(0x8E) << 40 | (handler >> 16 & 0xFFFF) << 48
            idt.storeBytes(of: low, toByteOffset: 16 * vector, as: UInt64.self)
            idt.storeBytes(of: handler >> 32, toByteOffset: 16 * vector + 8, as: UInt64.self)
        }
        let stubs = hv_exception_stub_table()!
        for vector in 0..<32 { gate(vector, stubs[vector]) }
        gate(Int(HostTimer.vector), hv_host_timer_interrupt_address())
        gate(Int(HostTimer.spuriousVector), hv_spurious_interrupt_address())
        hv_lidt(UInt64(UInt(bitPattern: idt)), 256 * 16 - 1)
    }
}

@_cdecl("hv_exception")
public func exceptionReport(_ frame: UnsafePointer<UInt64>) {
    let vector = Int(frame[16]), error = frame[17], rip = frame[18], cs = frame[19], rflags = frame[20], rsp = frame[21]
    print("")
    print("exception \(vector) (\(vector < 32 ? Exceptions.mnemonics[vector] : "?")), error code \(hex(error)) at RIP \(hex(rip)) (CS \(hex(cs)), RFLAGS \(hex(rflags)), RSP \(hex(rsp)))")
    if vector == 14 { print("CR2 \(hex(hv_read_cr2())): the address that faulted") }
    let names: [StaticString] = ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"]
    var line = ""
    for index in 0..<16 {
        // RSP as it was at the fault (the CPU pushed it), not the handler's own.
        line += "\(names[index])=\(hex(index == 4 ? rsp : frame[index])) "
        if index % 4 == 3 {
            print(line)
            line = ""
        }
    }
    DebugExit.leave(code: 3)
}
