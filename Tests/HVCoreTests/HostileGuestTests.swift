// A guest that attacks the PC platform the way a hostile one would, under KVM: every device of
// `attachPCPlatform` with every index and odd widths, string I/O with huge counts across the
// end of RAM, MMIO to addresses with nothing behind them. Afterwards the guest must still run
// and print, and the host process must not have grown.
import Foundation
import Glibc
import HVCore
import HVGuest
import Testing

@Suite("A hostile guest against the PC platform", .requiresKVM)
struct HostileGuestTests {
    static let memory: UInt64 = 16 << 20

    /// The guest: each attack in turn, then a line on COM1 and debug-exit code 0.
    static func program() throws -> GuestProgram {
        try GuestProgram.longMode { a in
            // CMOS/RTC: every index (NMI bit included), read, then write all-ones.
            a.xor(Register32.ebx, Register32.ebx)
            let cmos = a.label("cmos")
            a.bind(cmos)
            a.mov(Register8.al, Register8.bl)
            a.out(0x70, Register8.al)
            a.in(Register8.al, 0x71)
            a.mov(Register8.al, 0xFF)
            a.out(0x71, Register8.al)
            a.inc(Register32.ebx)
            a.cmp(Register32.ebx, 0x100)
            a.jb(cmos)

            // PCI configuration mechanism #1: every bus, device and function (offset 0, dword),
            // with a byte read at an odd data port and a word write at another.
            a.mov(Register32.ebx, 0x8000_0000)
            let pci = a.label("pci")
            a.bind(pci)
            a.mov(Register32.eax, Register32.ebx)
            a.mov(Register16.dx, 0xCF8)
            a.out(Register16.dx, Register32.eax)
            a.mov(Register16.dx, 0xCFC)
            a.in(Register32.eax, Register16.dx)
            a.mov(Register16.dx, 0xCFD)
            a.in(Register8.al, Register16.dx)
            a.add(Register32.ebx, 0x100)
            a.cmp(Register32.ebx, 0x8100_0000)
            a.jb(pci)
            // Bus 0, device 0: every offset, every width, odd ports, writes of all-ones.
            a.mov(Register32.ebx, 0x8000_0000)
            let header = a.label("header")
            a.bind(header)
            a.mov(Register32.eax, Register32.ebx)
            a.mov(Register16.dx, 0xCF8)
            a.out(Register16.dx, Register32.eax)
            a.mov(Register16.dx, 0xCFE)
            a.in(Register16.ax, Register16.dx)
            a.mov(Register16.dx, 0xCFF)
            a.mov(Register8.al, 0xFF)
            a.out(Register16.dx, Register8.al)
            a.mov(Register16.dx, 0xCFC)
            a.mov(Register32.eax, 0xFFFF_FFFF)
            a.out(Register16.dx, Register32.eax)
            a.add(Register32.ebx, 1)
            a.cmp(Register32.ebx, 0x8000_0100)
            a.jb(header)

            // i8042: 20,000 keyboard echo commands never read (a queue that must stay bounded),
            // then every controller command byte except the pulses (0xF0-0xFF reset the machine).
            a.mov(Register32.ecx, 20_000)
            let echo = a.label("echo")
            a.bind(echo)
            a.mov(Register8.al, 0xEE)
            a.out(0x60, Register8.al)
            a.loop(echo)
            a.xor(Register32.ebx, Register32.ebx)
            let commands = a.label("commands")
            a.bind(commands)
            a.mov(Register8.al, Register8.bl)
            a.cmp(Register8.al, 0xD1)  // write output port: its data byte could pull the reset line
            let skip = a.label("skip")
            a.je(skip)
            a.out(0x64, Register8.al)
            a.in(Register8.al, 0x60)
            a.bind(skip)
            a.inc(Register32.ebx)
            a.cmp(Register32.ebx, 0xF0)
            a.jb(commands)

            // fw_cfg: every selector's first bytes, then DMA: a 4 GiB read to the end of RAM and
            // 1,000 skips of ~4 GiB each (the descriptor at 0x30_0000, big-endian fields).
            a.xor(Register32.ebx, Register32.ebx)
            let selectors = a.label("selectors")
            a.bind(selectors)
            a.mov(Register32.eax, Register32.ebx)
            a.mov(Register16.dx, 0x510)
            a.out(Register16.dx, Register16.ax)
            a.mov(Register16.dx, 0x511)
            a.in(Register8.al, Register16.dx)
            a.in(Register8.al, Register16.dx)
            a.add(Register32.ebx, 7)
            a.cmp(Register32.ebx, 0x1_0000)
            a.jb(selectors)
            a.mov(Register64.rdi, 0x30_0000)
            a.mov(.dword, .at(Register64.rdi), Immediate(UInt64(UInt32(0x0000_000A | (0x19 << 16)).byteSwapped)))  // select 0x19 (the file directory) + read
            a.mov(.dword, .at(Register64.rdi, 4), Immediate(UInt64(UInt32(0xFFFF_FFFF))))  // length
            a.mov(.dword, .at(Register64.rdi, 8), 0)
            a.mov(.dword, .at(Register64.rdi, 12), Immediate(UInt64(UInt32(UInt32(memory - 16)).byteSwapped)))  // address
            a.mov(Register32.eax, 0)
            a.mov(Register16.dx, 0x514)
            a.out(Register16.dx, Register32.eax)
            a.mov(Register32.eax, Immediate(UInt64(UInt32(0x30_0000).byteSwapped)))
            a.mov(Register16.dx, 0x518)
            a.out(Register16.dx, Register32.eax)
            a.mov(Register32.ecx, 1000)
            let skips = a.label("skips")
            a.bind(skips)
            a.mov(.dword, .at(Register64.rdi), Immediate(UInt64(UInt32(0x0000_0004).byteSwapped)))  // skip
            a.mov(.dword, .at(Register64.rdi, 4), Immediate(UInt64(UInt32(0xFFFF_FFFF))))
            a.mov(Register32.eax, Immediate(UInt64(UInt32(0x30_0000).byteSwapped)))
            a.mov(Register16.dx, 0x518)
            a.out(Register16.dx, Register32.eax)
            a.loop(skips)

            // ACPI PM block and the power-off port: every register, every width, but no
            // SLP_EN (bit 13 of PM1 control at 0x604) and no complete "Shutdown".
            a.mov(Register16.dx, 0x600)
            let pm = a.label("pm")
            a.bind(pm)
            a.in(Register32.eax, Register16.dx)
            a.in(Register8.al, Register16.dx)
            a.cmp(Register16.dx, 0x604)
            let notControl = a.label("notControl")
            a.jne(notControl)
            a.mov(Register16.ax, 0x1C01)  // SLP_TYP 7, SCI_EN: no SLP_EN
            a.out(Register16.dx, Register16.ax)
            a.bind(notControl)
            a.inc(Register16.dx)
            a.cmp(Register16.dx, 0x60C)
            a.jb(pm)
            a.mov(Register16.dx, 0x8900)
            a.mov(Register8.al, Immediate(UInt64(UInt8(ascii: "S"))))
            a.out(Register16.dx, Register8.al)
            a.mov(Register8.al, Immediate(UInt64(UInt8(ascii: "x"))))
            a.out(Register16.dx, Register8.al)

            // String I/O with huge counts across the end of RAM: REP INSB from the UART's receive
            // register into the last 16 bytes of RAM and 4 KiB beyond; REP OUTSD from there to an
            // unused port.
            a.cld()
            a.mov(Register64.rdi, Immediate(memory - 16))
            a.mov(Register64.rcx, 0x1000)
            a.mov(Register16.dx, 0x3F8)
            a.rep(.insb)
            a.mov(Register64.rsi, Immediate(memory - 16))
            a.mov(Register64.rcx, 0x400)
            a.mov(Register16.dx, 0x80)
            a.rep(.outsd)

            // MMIO where nothing is: below the I/O APIC, the HPET, the TIS window, the top of
            // the 32-bit space; reads and writes of every width.
            for address: UInt64 in [0xD000_0000, 0xFEC0_0000, 0xFED0_0000, 0xFED4_0000, 0xFFFF_FFF8] {
                a.mov(Register64.rbx, Immediate(address))
                a.mov(Register64.rax, .at(Register64.rbx))
                a.mov(Register32.eax, .at(Register64.rbx))
                a.mov(Register8.al, .at(Register64.rbx))
                a.mov(.at(Register64.rbx), Register64.rax)
                a.mov(.at(Register64.rbx, 3), Register16.ax)
            }

            // The UART itself: garbage in every register, loopback with its FIFO overrun, then
            // put back to 8N1, FIFOs on, so the last line prints.
            a.mov(Register16.dx, 0x3F8)
            let uart = a.label("uart")
            a.bind(uart)
            a.mov(Register8.al, 0xFF)
            a.out(Register16.dx, Register8.al)
            a.in(Register8.al, Register16.dx)
            a.inc(Register16.dx)
            a.cmp(Register16.dx, 0x400)
            a.jb(uart)
            a.mov(Register8.al, 0x10)  // MCR loopback
            a.mov(Register16.dx, 0x3FC)
            a.out(Register16.dx, Register8.al)
            a.mov(Register32.ecx, 64)
            let loopback = a.label("loopback")
            a.bind(loopback)
            a.mov(Register16.dx, 0x3F8)
            a.out(Register16.dx, Register8.al)
            a.loop(loopback)
            for (port, value): (UInt16, UInt8) in [(0x3FB, 0x03), (0x3FC, 0x00), (0x3F9, 0x00), (0x3FA, 0x07)] {
                a.mov(Register16.dx, Immediate(UInt64(port)))
                a.mov(Register8.al, Immediate(UInt64(value)))
                a.out(Register16.dx, Register8.al)
            }

            a.printString("hostile guest: every attack done, the VM still runs\n")
            a.debugExit(code: 0)
        }
    }

    /// Resident set size of this process: /proc/self/statm's second field, in pages.
    static func residentBytes() -> UInt64 {
        let statm = (try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8)) ?? ""
        let pages = statm.split(separator: " ").dropFirst().first.flatMap { UInt64($0) } ?? 0
        return pages * UInt64(sysconf(Int32(_SC_PAGESIZE)))
    }

    @Test("after hammering every PC device, string I/O past the end of RAM and unmapped MMIO, the guest still prints and exits cleanly, and the host did not grow")
    func hostileGuestCannotHurtTheHost() throws {
        let output = SerialCapture()
        let machine = try KVMHost.machine(memory: Self.memory) { configuration in
            configuration.unmappedMMIO = .ignore  // a PC's open bus: reads all-ones, writes dropped
            configuration.timeLimit = 240
        }
        try machine.devices.register(UART16550(output: .capture(output)), port: .com1, count: UART16550.portCount)
        try machine.devices.register(DebugExitDevice(), port: .debugExit, count: 4)
        try machine.attachPCPlatform()
        try machine.load(try Self.program())
        let before = Self.residentBytes()
        let result = try machine.run()
        let grown = Int64(Self.residentBytes()) - Int64(before)
        #expect(result.reason == .debugExit(code: 0), "stopped: \(result.reason) after \(result.exits) exits")
        #expect(output.text.hasSuffix("hostile guest: every attack done, the VM still runs\n"))
        #expect(grown < 64 << 20, "the host grew by \(grown) bytes")
        // Every attack made its exits: 196,608 for the PCI sweep alone, ~250,000 in all (string
        // I/O is batched by KVM, so its share varies).
        #expect(result.exits > 245_000, "only \(result.exits) exits: an attack did not run")
    }
}
