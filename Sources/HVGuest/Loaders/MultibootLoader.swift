// Loading a Multiboot 1 kernel (Multiboot Specification 0.6.96): find the header (3.1.1-3.1.2),
// load by the a.out-kludge address fields (3.1.3) or the ELF program headers, place modules and
// the boot information (3.3), and start in the machine state of 3.2.

import HVModel

/// A Multiboot 1 header found in a kernel file (Multiboot 0.6.96, 3.1.1 and 3.1.2).
public struct MultibootHeader: Sendable, Equatable {
    /// The header's magic field.
    public static let magic: UInt32 = 0x1BAD_B002
    /// What EAX holds at entry: the boot loader's magic (3.2).
    public static let bootloaderMagic: UInt32 = 0x2BAD_B002
    /// The header must lie entirely in the file's first 8192 bytes, 4-byte aligned (3.1.1).
    public static let searchLimit = 8192

    /// The a.out-kludge address fields, offsets 12-28 of the header (3.1.3).
    public struct Addresses: Sendable, Equatable {
        public var headerAddress: UInt32
        public var loadAddress: UInt32
        public var loadEndAddress: UInt32
        public var bssEndAddress: UInt32
        public var entryAddress: UInt32
    }

    /// File offset of the magic field.
    public var offset: UInt64
    /// The flags field: bit 0 page-align modules, bit 1 memory information, bit 2 video mode,
    /// bit 16 the address fields are valid.
    public var flags: UInt32
    /// The address fields, when flags bit 16 is set.
    public var addresses: Addresses?

    /// Finds and checks the first header in `bytes`: the checksum, the required flags (bits
    /// 0-15: HV honours 0 and 1, refuses 2 = video mode and the undefined ones), and with bit 16
    /// that all 32 bytes of it are inside the file and the first 8 KiB.
    public static func find(in bytes: [UInt8]) throws(LoaderError) -> MultibootHeader {
        let reader = ByteReader(bytes: bytes)
        let limit = min(bytes.count, searchLimit)
        var offset = 0
        while offset + 12 <= limit {
            defer { offset += 4 }
            guard reader.u32(offset) == magic else { continue }
            let flags = reader.u32(offset + 4), checksum = reader.u32(offset + 8)
            guard magic &+ flags &+ checksum == 0 else {
                throw .multibootBadChecksum(offset: UInt64(offset), flags: flags, checksum: checksum)
            }
            if flags & 0x4 != 0 {
                throw .unsupported(field: "flags", value: UInt64(flags), expected: "bit 2 (video mode) clear: HV has no framebuffer")
            }
            if flags & 0xFFF8 != 0 {
                throw .unsupported(field: "flags", value: UInt64(flags), expected: "required bits 3-15 clear (3.1.2)")
            }
            var header = MultibootHeader(offset: UInt64(offset), flags: flags, addresses: nil)
            if flags & 1 << 16 != 0 {
                guard offset + 32 <= limit else {
                    throw .truncated(field: "header_addr..entry_addr", offset: UInt64(offset + 12), needed: 20,
                                     fileSize: UInt64(limit))
                }
                header.addresses = Addresses(
                    headerAddress: reader.u32(offset + 12), loadAddress: reader.u32(offset + 16),
                    loadEndAddress: reader.u32(offset + 20), bssEndAddress: reader.u32(offset + 24),
                    entryAddress: reader.u32(offset + 28))
            }
            return header
        }
        throw .multibootHeaderNotFound(searched: limit)
    }
}

/// A boot module (3.3, "mods"): a file placed in guest memory for the kernel, e.g. an
/// environment file of `KEY=VALUE` lines.
public struct MultibootModule: Sendable, Equatable {
    /// The module's string in the info structure (usually its file name).
    public var name: String
    /// The module's contents.
    public var bytes: [UInt8]

    public init(name: String, bytes: [UInt8]) {
        self.name = name
        self.bytes = bytes
    }
}

extension GuestImage {
    /// Where HV puts the Multiboot information structure (EBX at entry) when the kernel and its
    /// modules leave it free; else `BootStructurePlacer` finds another place.
    public static let multibootInfoAddress: UInt64 = 0x9000

    /// An image that boots the Multiboot 1 kernel `kernel` (Multiboot 0.6.96, 3.1-3.3).
    ///
    /// - Loading: by the a.out-kludge fields when header flag 16 is set (3.1.3), else by the ELF
    ///   program headers (chunks "segment N"); everything must lie in the RAM below the 3 GiB hole
    ///   and clear of HV's GDT (0x500) and stack (0x70000-0x80000).
    /// - Modules: page-aligned one after another from the first 4 KiB boundary after the kernel
    ///   (and at least 1 MiB), chunks "module N".
    /// - Info (chunk "multiboot info") at 0x9000 when the kernel and modules leave it free, else
    ///   where `BootStructurePlacer` finds room (low memory first, as a BIOS-era loader would):
    ///   flags 0x24D = mem_lower/mem_upper (bit 0), cmdline (bit 2) = `name`, then a space and
    ///   `arguments` when they are not empty, mods (bit 3), mmap (bit 6: `PCMemoryMap`: RAM below
    ///   640 KiB, reserved 640 KiB-1 MiB, RAM to the 3 GiB hole, RAM above 4 GiB) and
    ///   boot_loader_name "HV" (bit 9).
    /// - Entry (3.2): 32-bit protected mode, paging off, flat CS/DS/ES/FS/GS/SS,
    ///   EAX = 0x2BADB002, EBX = the info's address, EFLAGS = 0x2, ESP = 0x80000 (undefined by the spec).
    public static func multiboot(
        _ kernel: [UInt8], name: String, arguments: String = "", modules: [MultibootModule] = [],
        memorySize: UInt64
    ) throws(LoaderError) -> GuestImage {
        let header = try MultibootHeader.find(in: kernel)
        let info = MultibootInfoBuilder(
            commandLine: arguments.isEmpty ? name : name + " " + arguments, moduleNames: modules.map(\.name),
            memorySize: memorySize)
        let reserved = protectedModeReservedRegions
        // Kernel and modules go in the RAM below the 3 GiB hole (PCMemoryMap).
        let limit = PCMemoryMap.lowRAMEnd(memorySize: memorySize)

        var chunks: [Chunk]
        let entry: UInt64
        if let addresses = header.addresses {
            let (chunk, start) = try aoutKludgeChunk(kernel, header: header, addresses: addresses, memoryLimit: limit)
            let end = chunk.address.rawValue + chunk.size
            for region in reserved where start < region.end && region.start < end {
                throw .overlapsSetUpStructure(field: "load_addr", what: "the kernel", start: start, end: end,
                                              structure: region.name, structureStart: region.start,
                                              structureEnd: region.end)
            }
            entry = UInt64(addresses.entryAddress)
            guard entry >= start, entry < end else { throw .entryOutsideLoadedMemory(field: "entry_addr", entry: entry) }
            chunks = [chunk]
        } else {
            let file = try ELFFile(parsing: kernel)
            chunks = try loadSegments(of: file, from: kernel, memorySize: limit, reserved: reserved)
            entry = try physicalEntry(of: file)
        }

        let ranges = try placeModules(modules, after: &chunks, limit: limit)
        var placer = BootStructurePlacer(memorySize: memorySize, occupied: reserved)
        placer.occupy(chunks)
        let infoAddress = try placer.place("multiboot info", size: info.size, alignment: 8, preferred: multibootInfoAddress)
        chunks.append(Chunk(address: GuestPhysicalAddress(infoAddress),
                            bytes: info.build(at: infoAddress, memorySize: memorySize, modules: ranges),
                            name: "multiboot info"))

        var image = protectedModeImage(chunks: chunks, entry: entry)
        image.registers.rax = UInt64(MultibootHeader.bootloaderMagic)
        image.registers.rbx = infoAddress
        return image
    }

    /// Appends `modules` to `chunks` page-aligned one after another from the first 4 KiB boundary
    /// after the loaded kernel (and at least 1 MiB), chunks "module N"; returns each one's
    /// [start, end) (Multiboot 1 3.3 and Multiboot2 3.6.6 both say page-aligned on request).
    static func placeModules(
        _ modules: [MultibootModule], after chunks: inout [Chunk], limit: UInt64
    ) throws(LoaderError) -> [(start: UInt64, end: UInt64)] {
        let kernelEnd = chunks.map { $0.address.rawValue + $0.size }.max() ?? 0
        var cursor = (max(kernelEnd, PCMemoryMap.extendedStart) + 0xFFF) & ~0xFFF
        var ranges: [(start: UInt64, end: UInt64)] = []
        for (index, module) in modules.enumerated() {
            let size = UInt64(module.bytes.count)
            guard cursor <= limit, size <= limit - cursor else {
                throw .outsideMemory(field: "module \(index)", what: "module \"\(module.name)\"", start: cursor,
                                     size: size, memorySize: limit)
            }
            chunks.append(Chunk(address: GuestPhysicalAddress(cursor), bytes: module.bytes, name: "module \(index)"))
            ranges.append((cursor, cursor + size))
            cursor = (cursor + size + 0xFFF) & ~0xFFF
        }
        return ranges
    }

    /// The kernel loaded by the address fields (3.1.3): file bytes from
    /// header offset - (header_addr - load_addr), (load_end_addr - load_addr) of them (0: to the
    /// end of the file), then zeros up to bss_end_addr (0: none). Returns the chunk and load_addr.
    static func aoutKludgeChunk(
        _ kernel: [UInt8], header: MultibootHeader, addresses a: MultibootHeader.Addresses, memoryLimit: UInt64
    ) throws(LoaderError) -> (Chunk, UInt64) {
        let load = UInt64(a.loadAddress), headerAddress = UInt64(a.headerAddress)
        guard headerAddress >= load else {
            throw .multibootBadAddress(field: "header_addr", value: a.headerAddress,
                                       reason: "is below load_addr \(hex(load)); the header must be in the loaded text")
        }
        guard headerAddress - load <= header.offset else {
            throw .multibootBadAddress(field: "load_addr", value: a.loadAddress,
                                       reason: "puts the start of the text before the start of the file (header at file offset \(hex(header.offset)))")
        }
        let fileStart = header.offset - (headerAddress - load)
        let fileSize = UInt64(kernel.count)
        let loadSize: UInt64
        if a.loadEndAddress == 0 {
            loadSize = fileSize - fileStart
        } else {
            guard UInt64(a.loadEndAddress) > headerAddress else {
                throw .multibootBadAddress(field: "load_end_addr", value: a.loadEndAddress,
                                           reason: "must be above header_addr \(hex(headerAddress))")
            }
            loadSize = UInt64(a.loadEndAddress) - load
            guard loadSize <= fileSize - fileStart else {
                throw .truncated(field: "load_end_addr", offset: fileStart, needed: loadSize, fileSize: fileSize)
            }
        }
        var memorySize = loadSize
        if a.bssEndAddress != 0 {
            guard UInt64(a.bssEndAddress) >= load + loadSize else {
                throw .multibootBadAddress(field: "bss_end_addr", value: a.bssEndAddress,
                                           reason: "is below the end of the loaded text \(hex(load + loadSize))")
            }
            memorySize = UInt64(a.bssEndAddress) - load
        }
        // Checked before allocating: bss_end_addr alone may ask for 4 GiB.
        guard load + memorySize <= memoryLimit else {
            throw .outsideMemory(field: "load_addr/bss_end_addr", what: "the kernel", start: load, size: memorySize,
                                 memorySize: memoryLimit)
        }
        let contents = Array(kernel[Int(fileStart)..<Int(fileStart + loadSize)])
        return (Chunk(address: GuestPhysicalAddress(load), bytes: contents, zeroFill: memorySize - loadSize, name: "kernel"), load)
    }
}
