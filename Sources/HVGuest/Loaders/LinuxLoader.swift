// Loading a Linux bzImage by the x86 boot protocol (Documentation/arch/x86/boot.rst in the
// kernel tree): check the real-mode setup header, load the protected-mode kernel, fill a zero
// page (struct boot_params) with the header, command line, initrd and an E820 map, and enter
// the kernel's 64-bit entry point ("64-bit boot protocol").

import HVModel

extension GuestImage {
    /// Where HV puts the zero page (struct boot_params, 4 KiB; RSI at entry) when the kernel and
    /// initrd leave it free; else `BootStructurePlacer` finds another place.
    public static let linuxZeroPageAddress: UInt64 = 0x9000
    /// Where HV puts the kernel command line (at most `linuxCommandLineLimit` bytes with the NUL),
    /// when free.
    public static let linuxCommandLineAddress: UInt64 = 0x2_0000
    static let linuxCommandLineLimit: UInt64 = 0x1_0000
    /// The oldest boot protocol HV accepts: 2.12 brings xloadflags and XLF_KERNEL_64.
    public static let linuxMinimumProtocol: UInt16 = 0x020C

    /// An image that boots the bzImage `kernel` through its 64-bit entry point (boot.rst,
    /// "64-bit boot protocol") with `commandLine` and an optional `initrd`.
    ///
    /// - Checks: boot_flag 0xAA55, header "HdrS", version >= 2.12, loadflags LOADED_HIGH,
    ///   xloadflags XLF_KERNEL_64, setup_sects and the kernel inside the file, cmdline_size.
    /// - Kernel: the file after the (setup_sects + 1) * 512 setup bytes, at pref_address (chunk
    ///   "kernel"); pref_address + init_size must fit in memory.
    /// - Zero page (chunk "zero page") at 0x9000 when free, else where `BootStructurePlacer`
    ///   finds room; the command line (chunk "command line") at 0x20000 when free, likewise.
    ///   The zero page holds the file's setup header copied in,
    ///   type_of_loader 0xFF, cmd_line_ptr, ramdisk_image/size, and the E820 map of
    ///   `PCMemoryMap` (RAM below 640 KiB, reserved to 1 MiB, RAM to 3 GiB, RAM above 4 GiB).
    /// - initrd: page-aligned as high as possible below min(initrd_addr_max, memory) and above
    ///   the kernel (chunk "initrd").
    /// - Entry: long mode, identity paging, GDT with __BOOT_CS 0x10 and __BOOT_DS 0x18,
    ///   RIP = pref_address + 0x200, RSI = the zero page, interrupts off.
    public static func linux(
        _ kernel: [UInt8], commandLine: String = "", initrd: [UInt8]? = nil, memorySize: UInt64
    ) throws(LoaderError) -> GuestImage {
        let reader = ByteReader(bytes: kernel)
        try reader.require(field: "setup header", offset: 0, count: 0x268)
        guard reader.u16(0x1FE) == 0xAA55 else {
            throw .unsupported(field: "boot_flag", value: UInt64(reader.u16(0x1FE)), expected: "0xAA55 (not a bzImage)")
        }
        guard reader.u32(0x202) == 0x5372_6448 else {
            throw .unsupported(field: "header", value: UInt64(reader.u32(0x202)), expected: "0x53726448 (\"HdrS\")")
        }
        let version = reader.u16(0x206)
        guard version >= linuxMinimumProtocol else {
            throw .unsupported(field: "version", value: UInt64(version), expected: "boot protocol 2.12 (0x20C) or later")
        }
        guard kernel[0x211] & 0x1 != 0 else {
            throw .unsupported(field: "loadflags", value: UInt64(kernel[0x211]), expected: "LOADED_HIGH (bit 0) set: a bzImage")
        }
        guard reader.u16(0x236) & 0x1 != 0 else {
            throw .unsupported(field: "xloadflags", value: UInt64(reader.u16(0x236)), expected: "XLF_KERNEL_64 (bit 0) set")
        }
        // boot.rst: "If this field is 0, the real value is 4."
        let setupSectors = UInt64(kernel[0x1F1] == 0 ? 4 : kernel[0x1F1])
        let setupSize = (setupSectors + 1) * 512
        try reader.require(field: "setup_sects", offset: 0, count: setupSize + 1)
        let load = reader.u64(0x258), initSize = UInt64(reader.u32(0x260))
        let payload = Array(kernel[Int(setupSize)...])
        let loadSize = max(UInt64(payload.count), initSize)
        let (kernelEnd, overflow) = load.addingReportingOverflow(loadSize)
        let lowRAM = PCMemoryMap.lowRAMEnd(memorySize: memorySize)
        guard !overflow, kernelEnd <= lowRAM else {
            throw .outsideMemory(field: "pref_address/init_size", what: "the kernel", start: load, size: loadSize,
                                 memorySize: lowRAM)
        }
        do { try checkLongModeMemory(memorySize) } catch { throw .setUp(error) }
        let reserved = longModeReservedRegions(memorySize: memorySize) + [("gdt", gdtAddress, gdtAddress + 4 * 8)]
        for region in reserved where load < region.end && region.start < kernelEnd {
            throw .overlapsSetUpStructure(field: "pref_address", what: "the kernel", start: load, end: kernelEnd,
                                          structure: region.name, structureStart: region.start, structureEnd: region.end)
        }
        let line = Array(commandLine.utf8) + [0]
        let lineLimit = min(UInt64(reader.u32(0x238)), linuxCommandLineLimit - 1) + 1
        guard UInt64(line.count) <= lineLimit else {
            throw .unsupportedSize(field: "cmdline_size", bytes: UInt64(line.count - 1),
                               expected: "a command line of at most \(lineLimit - 1) bytes")
        }

        // The zero page: the setup header from 0x1F1 to its end (0x202 + the byte at 0x201).
        var zeroPage = [UInt8](repeating: 0, count: 0x1000)
        let headerEnd = min(0x202 + Int(kernel[0x201]), Int(setupSize), 0x1000)
        zeroPage.replaceSubrange(0x1F1..<headerEnd, with: kernel[0x1F1..<headerEnd])
        func put(_ value: UInt64, _ offset: Int, _ count: Int) { zeroPage.putLittleEndian(value, at: offset, count: count) }
        put(0xFF, 0x210, 1)                                   // type_of_loader: undefined loader
        var chunks = [Chunk(address: GuestPhysicalAddress(load), bytes: payload, name: "kernel")]
        if let initrd {
            let size = UInt64(initrd.count)
            let address = try BootStructurePlacer.highestPage(for: "the initrd", field: "initrd_addr_max", size: size, floor: kernelEnd,
                                                              ceiling: min(UInt64(reader.u32(0x22C)) + 1, lowRAM))
            put(address, 0x218, 4)                             // ramdisk_image
            put(size, 0x21C, 4)                                // ramdisk_size
            chunks.append(Chunk(address: GuestPhysicalAddress(address), bytes: initrd, name: "initrd"))
        }
        let e820 = PCMemoryMap.ranges(memorySize: memorySize)
        put(UInt64(e820.count), 0x1E8, 1)                     // e820_entries
        for (index, entry) in e820.enumerated() {             // e820_table: addr, size, type
            put(entry.address, 0x2D0 + index * 20, 8)
            put(entry.size, 0x2D0 + index * 20 + 8, 8)
            put(UInt64(entry.type), 0x2D0 + index * 20 + 16, 4)
        }
        var placer = BootStructurePlacer(memorySize: memorySize, occupied: reserved)
        placer.occupy(chunks)
        placer.occupy("kernel (init_size)", start: load, end: kernelEnd)
        let zeroPageAddress = try placer.place("zero page", size: 0x1000, alignment: 0x1000, preferred: linuxZeroPageAddress)
        let lineAddress = try placer.place("command line", size: UInt64(line.count), alignment: 16, preferred: linuxCommandLineAddress)
        put(lineAddress, 0x228, 4)                            // cmd_line_ptr
        chunks.append(Chunk(address: GuestPhysicalAddress(zeroPageAddress), bytes: zeroPage, name: "zero page"))
        chunks.append(Chunk(address: GuestPhysicalAddress(lineAddress), bytes: line, name: "command line"))

        // 64-bit entry: startup_64 is 0x200 bytes into the loaded kernel (boot.rst).
        var image = longModeImage(program: chunks[0], entry: load + 0x200, memorySize: memorySize)
        image.chunks.insert(contentsOf: chunks.dropFirst(), at: 1)
        linuxBootSegments(&image)
        image.registers.rsi = zeroPageAddress
        return image
    }

    /// The 64-bit boot protocol wants __BOOT_CS = 0x10 and __BOOT_DS = 0x18 in the GDT; HV's
    /// long-mode GDT gets a fourth entry and the selectors move up by one entry.
    static func linuxBootSegments(_ image: inout GuestImage) {
        var code = longModeCodeSegment, data = longModeDataSegment
        code.selector = 0x10
        data.selector = 0x18
        var gdt = [UInt8](repeating: 0, count: 4 * 8)
        for (segment, offset) in [(code, 0x10), (data, 0x18)] {
            let value = descriptor(for: segment)
            for index in 0..<8 { gdt[offset + index] = UInt8(truncatingIfNeeded: value >> UInt64(index * 8)) }
        }
        if let index = image.chunks.firstIndex(where: { $0.name == "gdt" }) { image.chunks[index].bytes = gdt }
        image.specialRegisters.gdt = DescriptorTable(base: gdtAddress, limit: UInt16(gdt.count - 1))
        image.specialRegisters.cs = code
        image.specialRegisters.ds = data
        image.specialRegisters.es = data
        image.specialRegisters.fs = data
        image.specialRegisters.gs = data
        image.specialRegisters.ss = data
    }
}
