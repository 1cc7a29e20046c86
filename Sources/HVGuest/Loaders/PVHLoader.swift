// Loading an ELF kernel by its PVH entry point: the direct boot Xen defined for HVM guests and
// that QEMU (`-kernel vmlinux`), Firecracker and cloud-hypervisor use to start an uncompressed
// Linux without firmware or a decompressor. The kernel announces a 32-bit entry point in an ELF
// note (owner "Xen", type XEN_ELFNOTE_PHYS32_ENTRY = 18); the loader hands it a
// `struct hvm_start_info` in EBX. Sources: Xen's docs/misc/pvh.pandoc and
// xen/include/public/arch-x86/hvm/start_info.h; Linux's arch/x86/platform/pvh/enlighten.c.

import HVModel

extension ELFFile {
    /// XEN_ELFNOTE_PHYS32_ENTRY (xen/include/public/elfnote.h).
    static let xenPhys32EntryNote: UInt32 = 18

    /// The 32-bit physical PVH entry point from the first "Xen" note of type 18 in `bytes` (the
    /// file this was parsed from), if it has one. The descriptor holds it in its low 32 bits
    /// (Linux writes 4 bytes, some kernels 8).
    public func pvhEntry(in bytes: [UInt8]) throws(LoaderError) -> UInt32? {
        var entry: UInt32?
        try forEachNote(in: bytes) { name, type, descriptor in
            guard type == Self.xenPhys32EntryNote, name.elementsEqual(Array("Xen".utf8) + [0]) || name.elementsEqual("Xen".utf8),
                  descriptor.count >= 4 else { return true }
            let start = descriptor.startIndex
            entry = (0..<4).reduce(UInt32(0)) { $0 | UInt32(descriptor[start + $1]) << UInt32($1 * 8) }
            return false
        }
        return entry
    }
}

extension GuestImage {
    /// Where HV puts `struct hvm_start_info` (EBX at entry), the memory map and the module list
    /// when the kernel leaves it free; else `BootStructurePlacer` finds another place.
    public static let pvhStartInfoAddress: UInt64 = 0x9000
    /// Where HV puts the kernel command line (at most `pvhCommandLineLimit` bytes with the NUL),
    /// when free.
    public static let pvhCommandLineAddress: UInt64 = 0x2_0000
    static let pvhCommandLineLimit: UInt64 = 0x1_0000
    /// hvm_start_info.magic ("xEn3" with the 0x80 bit set).
    public static let pvhStartInfoMagic: UInt32 = 0x336E_C578

    /// An image that boots the ELF kernel `kernel` at its PVH entry point, with `commandLine`,
    /// an optional `initrd` (module 0, as Linux expects) and the ACPI RSDP at `rsdpAddress`
    /// (0: the kernel scans for it).
    ///
    /// - Segments load at p_paddr (chunks "segment N"), checked as `elf(_:memorySize:)` does.
    /// - hvm_start_info version 1 (chunk "start info", 56 bytes) at 0x9000 when free, else where
    ///   `BootStructurePlacer` finds room: magic 0x336EC578, nr_modules, modlist_paddr,
    ///   cmdline_paddr (chunk "command line", 0x20000 when free), rsdp_paddr, memmap_paddr and
    ///   memmap_entries (`PCMemoryMap`, E820 types). The memory map follows it (24-byte
    ///   entries), the module list after that.
    /// - initrd: page-aligned as high as possible below the 3 GiB hole, above every segment and
    ///   1 MiB (chunk "initrd").
    /// - Entry (pvh.pandoc): 32-bit protected mode, paging off, flat CS (0x08) and DS/ES/SS
    ///   (0x10), CR0 = PE | ET, CR4 = 0, EFLAGS = 0x2, EBX = the start info's address.
    ///
    /// Throws `LoaderError` for everything `elf` rejects, an ELF without the PVH note, an entry
    /// outside the loaded segments, or a command line or initrd that does not fit.
    public static func pvh(
        _ kernel: [UInt8], commandLine: String = "", initrd: [UInt8]? = nil, rsdpAddress: UInt64 = 0,
        memorySize: UInt64
    ) throws(LoaderError) -> GuestImage {
        let file = try ELFFile(parsing: kernel)
        guard let entry = try file.pvhEntry(in: kernel) else {
            throw .unsupported(field: "XEN_ELFNOTE_PHYS32_ENTRY", value: 0,
                               expected: "a PT_NOTE with a \"Xen\" note of type 18 holding the 32-bit entry (a kernel built with CONFIG_PVH)")
        }
        guard memorySize >= 0x10_0000 else {
            throw .outsideMemory(field: "memory size", what: "the PVH memory map (RAM to 640 KiB, reserved to 1 MiB)",
                                 start: 0, size: 0x10_0000, memorySize: memorySize)
        }
        let line = Array(commandLine.utf8) + [0]
        guard UInt64(line.count) <= pvhCommandLineLimit else {
            throw .unsupportedSize(field: "command line", bytes: UInt64(line.count - 1),
                               expected: "at most \(pvhCommandLineLimit - 1) bytes")
        }
        let memoryMap = PCMemoryMap.ranges(memorySize: memorySize)
        let lowRAM = PCMemoryMap.lowRAMEnd(memorySize: memorySize)
        let moduleCount: UInt64 = initrd == nil ? 0 : 1
        let mapOffset: UInt64 = 56
        let moduleListOffset = mapOffset + UInt64(memoryMap.count) * 24
        let infoSize = moduleListOffset + moduleCount * 32
        let reserved = protectedModeReservedRegions
        var chunks = try loadSegments(of: file, from: kernel, memorySize: lowRAM, reserved: reserved)
        guard chunks.contains(where: { chunk in
            UInt64(entry) >= chunk.address.rawValue && UInt64(entry) - chunk.address.rawValue < chunk.size
        }) else {
            throw .entryOutsideLoadedMemory(field: "XEN_ELFNOTE_PHYS32_ENTRY", entry: UInt64(entry))
        }

        var info = [UInt8](repeating: 0, count: Int(infoSize))
        func put(_ value: UInt64, _ offset: Int, _ count: Int) { info.putLittleEndian(value, at: offset, count: count) }
        var initrdRange: (address: UInt64, size: UInt64)?
        if let initrd {
            // Above the kernel and 1 MiB (clear of every low structure), as high as possible below the hole.
            let size = UInt64(initrd.count)
            let floor = max(chunks.map { $0.address.rawValue + $0.size }.max() ?? 0, PCMemoryMap.extendedStart)
            let address = try BootStructurePlacer.highestPage(for: "the initrd", field: "initrd", size: size, floor: floor, ceiling: lowRAM)
            initrdRange = (address, size)
            chunks.append(Chunk(address: GuestPhysicalAddress(address), bytes: initrd, name: "initrd"))
        }
        var placer = BootStructurePlacer(memorySize: memorySize, occupied: reserved)
        placer.occupy(chunks)
        let infoAddress = try placer.place("start info", size: infoSize, alignment: 8, preferred: pvhStartInfoAddress)
        let lineAddress = try placer.place("command line", size: UInt64(line.count), alignment: 16, preferred: pvhCommandLineAddress)
        let mapAddress = infoAddress + mapOffset, moduleListAddress = infoAddress + moduleListOffset
        put(UInt64(pvhStartInfoMagic), 0, 4)               // magic
        put(1, 4, 4)                                        // version: the memory map fields are valid
        put(moduleCount, 12, 4)                             // nr_modules
        put(moduleCount == 0 ? 0 : moduleListAddress, 16, 8) // modlist_paddr
        put(lineAddress, 24, 8)                             // cmdline_paddr
        put(rsdpAddress, 32, 8)                             // rsdp_paddr
        put(mapAddress, 40, 8)                              // memmap_paddr
        put(UInt64(memoryMap.count), 48, 4)                 // memmap_entries
        for (index, entry) in memoryMap.enumerated() {      // struct hvm_memmap_table_entry
            let at = 56 + index * 24
            put(entry.address, at, 8)
            put(entry.size, at + 8, 8)
            put(UInt64(entry.type), at + 16, 4)
        }
        if let initrdRange {                                // struct hvm_modlist_entry
            put(initrdRange.address, Int(moduleListOffset), 8)
            put(initrdRange.size, Int(moduleListOffset) + 8, 8)
        }
        chunks.append(Chunk(address: GuestPhysicalAddress(infoAddress), bytes: info, name: "start info"))
        chunks.append(Chunk(address: GuestPhysicalAddress(lineAddress), bytes: line, name: "command line"))

        var image = protectedModeImage(chunks: chunks, entry: UInt64(entry))
        image.registers.rbx = infoAddress
        return image
    }
}
