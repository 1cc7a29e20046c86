import Foundation
import HVGuest
import Testing

/// An assembler for a Multiboot 1 kernel loaded at 4 MiB by the a.out kludge, its header
/// written (Multiboot 0.6.96, 3.1.1-3.1.3: magic, flags page-align + memory info + a.out kludge,
/// checksum, then header/load/load-end/bss-end/entry addresses), positioned at the entry.
private func multibootKernel() -> X86Assembler {
    var a = X86Assembler(bits: .bits32, origin: 0x40_0000)
    let entry = a.label()
    let flags: UInt32 = 0x0001_0003
    a.u32(0x1BAD_B002); a.u32(flags); a.u32(0 &- (0x1BAD_B002 &+ flags))
    a.u32(0x40_0000); a.u32(0x40_0000); a.u32(0); a.u32(0); a.u32(entry)
    a.bind(entry)
    return a
}

/// A Multiboot 1 kernel (a.out kludge, loaded at 4 MiB, entered in 32-bit protected mode with
/// paging off) that probes the PC platform the way small test kernels do, and reports one bit
/// per probe that passed in its debug-exit code, with fw_cfg's CPU count in bits 8-15:
/// bit 0 fw_cfg signature "QEMU", bit 1 fw_cfg RAM size 64 MiB, bit 2 RTC in 24-hour mode with a
/// BCD seconds value, bit 3 the i440FX host bridge at 00:00.0, bit 4 an empty slot 1 reading
/// all-ones, bit 5 the ACPI RSDP found by the standard scan of 0xE0000-0xFFFFF, bit 6 the FADT
/// found through the XSDT with PM_TMR_BLK = 0x608, bit 7 the PM timer advancing, bit 16 the PM
/// timer counting 3,579,545 ± 2% ticks in one RTC second, bit 17 a second boot (the first stores
/// a boot count in CMOS NVRAM byte 0x38, leaves PCI CONFIG_ADDRESS set and resets through the
/// i8042), bit 18 CONFIG_ADDRESS back to 0 after the reset.
private func platformProbeKernel() throws -> [UInt8] {
    var a = multibootKernel()
    a.printString("multiboot platform probe\n")
    a.mov(Register32.edi, 0)
    // First boot: count it in CMOS NVRAM (battery-backed, it survives a reset), leave PCI
    // CONFIG_ADDRESS pointing at slot 1, and pulse the reset line through the i8042.
    let secondBoot = a.label(), addressKept = a.label()
    a.mov(Register8.al, 0x38); a.out(0x70, Register8.al); a.in(Register8.al, 0x71)
    a.cmp(Register8.al, 1); a.je(secondBoot)
    a.mov(Register8.al, 0x38); a.out(0x70, Register8.al); a.mov(Register8.al, 1); a.out(0x71, Register8.al)
    a.mov(Register32.eax, 0x8000_0800); a.mov(Register16.dx, 0xCF8); a.out(Register16.dx, Register32.eax)
    a.printString("rebooting\n")
    a.mov(Register8.al, 0xFE); a.out(0x64, Register8.al)
    a.hlt()
    a.bind(secondBoot)
    a.or(Register32.edi, 0x2_0000)
    a.mov(Register16.dx, 0xCF8); a.in(Register32.eax, Register16.dx)
    a.test(Register32.eax, Register32.eax); a.jnz(addressKept)
    a.or(Register32.edi, 0x4_0000)
    a.bind(addressKept)
    // fw_cfg signature (key 0x00): "QEMU".
    let notQEMU = a.label()
    a.mov(Register16.dx, 0x510); a.mov(Register16.ax, 0x00); a.out(Register16.dx, Register16.ax)
    a.mov(Register16.dx, 0x511)
    for byte: UInt8 in [0x51, 0x45, 0x4D, 0x55] {
        a.in(Register8.al, Register16.dx); a.cmp(Register8.al, Immediate(byte)); a.jne(notQEMU)
    }
    a.or(Register32.edi, 0x01)
    a.bind(notQEMU)
    // fw_cfg CPU count (key 0x05, u16) into bits 8-15.
    a.mov(Register16.dx, 0x510); a.mov(Register16.ax, 0x05); a.out(Register16.dx, Register16.ax)
    a.mov(Register16.dx, 0x511); a.in(Register8.al, Register16.dx)
    a.mov(Register32.ecx, 0); a.mov(Register8.cl, Register8.al); a.shl(Register32.ecx, 8); a.or(Register32.edi, Register32.ecx)
    // fw_cfg RAM size (key 0x03, u64): 64 MiB = 00 00 00 04 00 00 00 00.
    let notRAM = a.label()
    a.mov(Register16.dx, 0x510); a.mov(Register16.ax, 0x03); a.out(Register16.dx, Register16.ax)
    a.mov(Register16.dx, 0x511)
    for byte: UInt8 in [0, 0, 0, 4, 0, 0, 0, 0] {
        a.in(Register8.al, Register16.dx); a.cmp(Register8.al, Immediate(byte)); a.jne(notRAM)
    }
    a.or(Register32.edi, 0x02)
    a.bind(notRAM)
    // RTC: status register B (0x0B) in 24-hour mode, seconds (0x00) a BCD value below 0x60.
    let rtcDone = a.label()
    a.mov(Register8.al, 0x0B); a.out(0x70, Register8.al); a.in(Register8.al, 0x71)
    a.test(Register8.al, 0x02); a.jz(rtcDone)
    a.mov(Register8.al, 0x00); a.out(0x70, Register8.al); a.in(Register8.al, 0x71)
    a.cmp(Register8.al, 0x60); a.jae(rtcDone)
    a.or(Register32.edi, 0x04)
    a.bind(rtcDone)
    // PCI configuration mechanism #1: 00:00.0 is the i440FX, slot 1 is empty.
    let notBridge = a.label(), notEmpty = a.label()
    a.mov(Register32.eax, 0x8000_0000); a.mov(Register16.dx, 0xCF8); a.out(Register16.dx, Register32.eax)
    a.mov(Register16.dx, 0xCFC); a.in(Register32.eax, Register16.dx)
    a.cmp(Register32.eax, Immediate(UInt32(0x1237_8086))); a.jne(notBridge); a.or(Register32.edi, 0x08)
    a.bind(notBridge)
    a.mov(Register32.eax, 0x8000_0800); a.mov(Register16.dx, 0xCF8); a.out(Register16.dx, Register32.eax)
    a.mov(Register16.dx, 0xCFC); a.in(Register32.eax, Register16.dx)
    a.cmp(Register32.eax, -1); a.jne(notEmpty); a.or(Register32.edi, 0x10)
    a.bind(notEmpty)
    // ACPI: scan 0xE0000-0xFFFFF on 16-byte boundaries for "RSD PTR " (ACPI 6.5, 5.2.5.1), then
    // walk the XSDT (RSDP + 24) for "FACP" and read PM_TMR_BLK (FADT + 76).
    let scan = a.label(), next = a.label(), found = a.label(), entries = a.label(), fadt = a.label(), acpiDone = a.label()
    a.mov(Register32.esi, 0xE_0000)
    a.bind(scan)
    a.mov(Register32.eax, .at(Register32.esi)); a.cmp(Register32.eax, 0x2044_5352); a.jne(next)
    a.mov(Register32.eax, .at(Register32.esi, 4)); a.cmp(Register32.eax, 0x2052_5450); a.je(found)
    a.bind(next)
    a.add(Register32.esi, 16); a.cmp(Register32.esi, 0x10_0000); a.jb(scan); a.jmp(acpiDone)
    a.bind(found)
    a.or(Register32.edi, 0x20)
    a.mov(Register32.ebx, .at(Register32.esi, 24))               // XSDT (below 4 GiB)
    a.mov(Register32.ecx, .at(Register32.ebx, 4)); a.add(Register32.ecx, Register32.ebx)   // end
    a.mov(Register32.edx, Register32.ebx); a.add(Register32.edx, 36)                     // first entry
    a.bind(entries)
    a.cmp(Register32.edx, Register32.ecx); a.jae(acpiDone)
    a.mov(Register32.eax, .at(Register32.edx))
    a.mov(Register32.ebp, .at(Register32.eax)); a.cmp(Register32.ebp, 0x5043_4146); a.je(fadt)
    a.add(Register32.edx, 8); a.jmp(entries)
    a.bind(fadt)
    a.mov(Register32.ebp, .at(Register32.eax, 76)); a.cmp(Register32.ebp, 0x608); a.jne(acpiDone)
    a.or(Register32.edi, 0x40)
    a.bind(acpiDone)
    // The ACPI PM timer (3.579545 MHz) advances between two reads.
    let wait = a.label(), still = a.label()
    a.mov(Register16.dx, 0x608); a.in(Register32.eax, Register16.dx); a.mov(Register32.ebx, Register32.eax)
    a.mov(Register32.ecx, 2000)
    a.bind(wait); a.dec(Register32.ecx); a.jnz(wait)
    a.in(Register32.eax, Register16.dx); a.cmp(Register32.eax, Register32.ebx); a.je(still)
    a.or(Register32.edi, 0x80)
    a.bind(still)
    // The PM timer's rate: its ticks between two edges of the RTC's seconds register (ACPI 6.5,
    // 4.8.3.3: 3.579545 MHz), within 2%.
    let edge = a.label(), nextEdge = a.label(), rateDone = a.label()
    a.mov(Register8.al, 0x00); a.out(0x70, Register8.al); a.in(Register8.al, 0x71); a.mov(Register8.bl, Register8.al)
    a.bind(edge)
    a.in(Register8.al, 0x71); a.cmp(Register8.al, Register8.bl); a.je(edge)
    a.mov(Register8.bl, Register8.al)
    a.mov(Register16.dx, 0x608); a.in(Register32.eax, Register16.dx); a.mov(Register32.esi, Register32.eax)
    a.bind(nextEdge)
    a.in(Register8.al, 0x71); a.cmp(Register8.al, Register8.bl); a.je(nextEdge)
    a.in(Register32.eax, Register16.dx); a.sub(Register32.eax, Register32.esi); a.and(Register32.eax, 0x00FF_FFFF)
    a.cmp(Register32.eax, Immediate(UInt32(3_507_954))); a.jb(rateDone)
    a.cmp(Register32.eax, Immediate(UInt32(3_651_136))); a.ja(rateDone)
    a.or(Register32.edi, 0x1_0000)
    a.bind(rateDone)
    a.mov(Register32.eax, Register32.edi)
    a.out(0xF4, Register32.eax)
    a.hlt()
    return try a.assemble()
}

@Suite("hv run: a Multiboot kernel probes the PC platform")
struct HVRunPlatformKernelTests {
    @Test("fw_cfg, RTC, PCI and ACPI answer a Multiboot test kernel under hv run, before and after it reboots", .needsKVM)
    func probes() throws {
        let url = try PackageExecutable.temporaryDirectory().appendingPathComponent("probe.mb")
        try Data(try platformProbeKernel()).write(to: url)
        let result = try PackageExecutable.run(["run", "--multiboot", url.path, "--mem", "64M", "--cpus", "2", "--timeout", "60"])
        #expect(result.stdout == "multiboot platform probe\nrebooting\nmultiboot platform probe\n")
        // Every probe bit set, two CPUs, rebooted once: 0x702FF; status (v << 1 | 1) & 0xFF.
        #expect(result.stderr.contains("the guest wrote 459519 (0x702ff)"), "stderr: \(result.stderr)")
        #expect(result.stderr.contains("(1 reset)"), "stderr: \(result.stderr)")
        #expect(result.status == Int32((0x702FF << 1 | 1) & 0xFF))
    }

    @Test("with --on-reset stop the kernel's reboot ends the run with status 2", .needsKVM)
    func resetStops() throws {
        let url = try PackageExecutable.temporaryDirectory().appendingPathComponent("probe.mb")
        try Data(try platformProbeKernel()).write(to: url)
        let result = try PackageExecutable.run(["run", "--multiboot", url.path, "--on-reset", "stop", "--timeout", "60"])
        #expect(result.stdout == "multiboot platform probe\nrebooting\n")
        #expect(result.stderr.contains("the guest asked for a reset"), "stderr: \(result.stderr)")
        #expect(result.status == 2)
    }

    @Test("a one-vCPU Multiboot kernel gets the local APIC by default: its read of the version register at 0xFEE00030 answers (kvm-unit-tests' first LAPIC access)", .needsKVM)
    func kernelImagesGetInterruptControllers() throws {
        var a = multibootKernel()
        a.mov(Register32.eax, .absolute(0xFEE0_0030))  // LAPIC version: 0x14 (KVM's), max LVT in 16-23
        a.and(Register32.eax, 0xFF)
        a.out(0xF4, Register32.eax)
        a.hlt()
        let url = try PackageExecutable.temporaryDirectory().appendingPathComponent("lapic.mb")
        try Data(try a.assemble()).write(to: url)
        let result = try PackageExecutable.run(["run", "--multiboot", url.path, "--timeout", "60"])
        #expect(result.stderr.contains("the guest wrote 20 (0x14)"), "stderr: \(result.stderr)")
        let bare = try PackageExecutable.run(["run", "--multiboot", url.path, "--irqchip", "none", "--timeout", "60"])
        #expect(bare.status == 2 && bare.stderr.contains("0xfee00030"), "without one the read hits unmapped MMIO: \(bare.stderr)")
    }
}
