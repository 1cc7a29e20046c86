// Loading a Multiboot2 kernel (Multiboot2 Specification 2.0, the one GRUB 2's `multiboot2`
// command implements): find the header and walk its tags (3.1), load by the address tag or the
// ELF program headers, build the tagged boot information (3.6) and start in the machine state of
// 3.3 (i386: 32-bit protected mode, paging off, EAX = 0x36D76289, EBX = the information).

import HVModel

/// A Multiboot2 header found in a kernel file, with the tags HV acts on.
public struct Multiboot2Header: Sendable, Equatable {
    /// The header's magic field.
    public static let magic: UInt32 = 0xE852_50D6
    /// What EAX holds at entry (3.3).
    public static let bootloaderMagic: UInt32 = 0x36D7_6289
    /// The header must lie in the first 32768 bytes, 8-byte aligned (3.1.1).
    public static let searchLimit = 32768
    /// Information tag types HV can provide (3.6): cmdline 1, boot loader name 2, modules 3,
    /// basic memory 4, memory map 6, and, when the platform has ACPI tables, old and new RSDP
    /// 14 and 15. A request for any other type is refused unless marked optional.
    public static let providedInformation: Set<UInt32> = [0, 1, 2, 3, 4, 6]

    /// File offset of the magic field.
    public var offset: UInt64
    /// The address tag's fields (type 2), as in Multiboot 1's a.out kludge.
    public var addresses: MultibootHeader.Addresses?
    /// The entry address tag (type 3).
    public var entryAddress: UInt32?
    /// Information types the kernel requires (type 1 without the optional flag).
    public var requiredInformation: [UInt32] = []

    /// Finds and checks the first header in `bytes`: architecture 0 (i386), the checksum, the
    /// whole header inside the file and its first 32 KiB, and every tag inside the header up to
    /// the end tag. A magic value whose checksum or architecture is wrong is skipped, as GRUB
    /// does (the error names it when no good header follows). Tags HV cannot honour and the
    /// kernel did not mark optional are errors naming the tag.
    public static func find(in bytes: [UInt8]) throws(LoaderError) -> Multiboot2Header {
        let reader = ByteReader(bytes: bytes)
        let limit = min(bytes.count, searchLimit)
        var rejected: LoaderError?
        var offset = 0
        while offset + 16 <= limit {
            defer { offset += 8 }
            guard reader.u32(offset) == magic else { continue }
            let architecture = reader.u32(offset + 4), length = reader.u32(offset + 8), checksum = reader.u32(offset + 12)
            guard architecture == 0 else {
                rejected = rejected ?? .unsupported(field: "architecture", value: UInt64(architecture), expected: "0 (i386 protected mode)")
                continue
            }
            guard magic &+ architecture &+ length &+ checksum == 0 else {
                rejected = rejected ?? .unsupported(
                    field: "checksum", value: UInt64(checksum),
                    expected: "magic + architecture + header_length + checksum = 0 mod 2^32 (Multiboot2 3.1.2)")
                continue
            }
            guard length >= 24 else {
                throw .unsupportedSize(field: "header_length", bytes: UInt64(length), expected: "at least 24 bytes (16 of fields and the end tag)")
            }
            guard UInt64(offset) + UInt64(length) <= UInt64(searchLimit) else {
                throw .unsupportedSize(field: "header_length", bytes: UInt64(length),
                                       expected: "a header that ends within the first 32768 bytes (3.1.1); it starts at \(hex(UInt64(offset)))")
            }
            try reader.require(field: "header_length", offset: UInt64(offset), count: UInt64(length))
            return try parseTags(reader, header: offset, end: offset + Int(length))
        }
        throw rejected ?? .multiboot2HeaderNotFound(searched: limit)
    }

    private static func parseTags(_ reader: ByteReader, header: Int, end: Int) throws(LoaderError) -> Multiboot2Header {
        var result = Multiboot2Header(offset: UInt64(header))
        var cursor = header + 16
        while true {
            guard end - cursor >= 8 else {
                throw .truncated(field: "header tags (no end tag)", offset: UInt64(cursor), needed: 8, fileSize: UInt64(end))
            }
            let type = reader.u16(cursor), optional = reader.u16(cursor + 2) & 1 != 0
            let size = Int(reader.u32(cursor + 4))
            guard size >= 8, size <= end - cursor else {
                throw .truncated(field: "size of header tag \(type)", offset: UInt64(cursor), needed: UInt64(size),
                                 fileSize: UInt64(end))
            }
            func need(_ bytes: Int) throws(LoaderError) {
                guard size >= bytes else {
                    throw .unsupportedSize(field: "size of header tag \(type)", bytes: UInt64(size), expected: "at least \(bytes) bytes")
                }
            }
            switch type {
            case 0:
                if result.addresses != nil, result.entryAddress == nil {
                    throw .multibootBadAddress(field: "address tag", value: result.addresses!.headerAddress,
                                               reason: "comes without an entry address tag (type 3)")
                }
                return result
            case 1:  // information request
                if !optional {
                    for index in 0..<(size - 8) / 4 { result.requiredInformation.append(reader.u32(cursor + 8 + index * 4)) }
                }
            case 2:  // address
                try need(24)
                result.addresses = MultibootHeader.Addresses(
                    headerAddress: reader.u32(cursor + 8), loadAddress: reader.u32(cursor + 12),
                    loadEndAddress: reader.u32(cursor + 16), bssEndAddress: reader.u32(cursor + 20), entryAddress: 0)
            case 3:  // entry address
                try need(12)
                result.entryAddress = reader.u32(cursor + 8)
            case 4, 5, 6, 7, 8, 9, 10:
                // Console flags, framebuffer (HV has none: the kernel gets no framebuffer tag, as
                // GRUB on a text console), module alignment (HV page-aligns modules anyway), EFI
                // boot services and EFI entry points (no EFI here), relocatable (HV loads at the
                // linked address). GRUB on BIOS accepts all of these the same way.
                break
            default:
                if !optional {
                    throw .unsupported(field: "header tag type", value: UInt64(type), expected: "a tag Multiboot2 defines (0-10), or the optional flag set")
                }
            }
            cursor += (size + 7) & ~7
        }
    }
}

extension GuestImage {
    /// Where HV puts the Multiboot2 boot information (EBX at entry) when the kernel and its
    /// modules leave it free; else `BootStructurePlacer` finds another place.
    public static let multiboot2InfoAddress: UInt64 = 0x9000

    /// An image that boots the Multiboot2 kernel `kernel` (Multiboot2 2.0) with the boot command
    /// line `commandLine` (the arguments only, as GRUB 2 passes them), `modules` and, when given,
    /// the ACPI RSDP bytes `rsdp` (20 bytes: an "old" tag 14; 36: also a "new" tag 15).
    ///
    /// - Loading: by the address tag (load_addr 0xFFFFFFFF: from header_addr and the header's file
    ///   offset; then as Multiboot 1's a.out kludge) or else by the ELF program headers; the entry
    ///   address tag overrides e_entry. Everything must end below 4 GiB and in memory.
    /// - Modules: page-aligned after the kernel (at least 1 MiB), chunks "module N".
    /// - Information (chunk "multiboot2 info") at 0x9000 when free, else where
    ///   `BootStructurePlacer` finds room, 8-byte aligned (3.6.1): total_size, then 8-byte aligned tags:
    ///   command line (1), boot loader name "HV" (2), one module tag per module (3), basic memory
    ///   (4: KiB below 640 KiB and above 1 MiB), memory map (6: RAM below 640 KiB, reserved to
    ///   1 MiB, RAM above; 24-byte entries), the RSDP tags, the end tag.
    /// - Entry (3.3): 32-bit protected mode, paging off, flat CS/DS/ES/FS/GS/SS, EFLAGS = 0x2,
    ///   EAX = 0x36D76289, EBX = the information's address, ESP = 0x80000 (undefined by the spec).
    public static func multiboot2(
        _ kernel: [UInt8], commandLine: String = "", modules: [MultibootModule] = [], rsdp: [UInt8]? = nil,
        memorySize: UInt64
    ) throws(LoaderError) -> GuestImage {
        let header = try Multiboot2Header.find(in: kernel)
        var provided = Multiboot2Header.providedInformation
        if let rsdp {
            guard rsdp.count == 20 || rsdp.count == 36 else {
                throw .unsupportedSize(field: "rsdp", bytes: UInt64(rsdp.count), expected: "20 (ACPI 1.0) or 36 (ACPI 2.0+) bytes")
            }
            provided.formUnion(rsdp.count == 36 ? [14, 15] : [14])
        }
        for type in header.requiredInformation where !provided.contains(type) {
            throw .unsupported(field: "information request", value: UInt64(type),
                               expected: "types HV provides: \(provided.sorted().map(String.init).joined(separator: ", ")), or the tag marked optional")
        }
        // Kernel and modules go in the RAM below the 3 GiB hole (PCMemoryMap).
        let limit = PCMemoryMap.lowRAMEnd(memorySize: memorySize)

        func information(_ ranges: [(start: UInt64, end: UInt64)]) -> [UInt8] {
            var info = Multiboot2InfoBuilder()
            info.string(type: 1, commandLine)
            info.string(type: 2, "HV")
            for (index, module) in modules.enumerated() {
                info.module(start: ranges[index].start, end: ranges[index].end, name: module.name)
            }
            info.basicMemory(memorySize: memorySize)
            info.memoryMap(memorySize: memorySize)
            if let rsdp {
                info.raw(type: 14, Array(rsdp.prefix(20)))
                if rsdp.count == 36 { info.raw(type: 15, rsdp) }
            }
            info.end()
            return info.bytes
        }
        let reserved = protectedModeReservedRegions

        var chunks: [Chunk]
        let entry: UInt64
        if var addresses = header.addresses {
            if addresses.loadAddress == UInt32.max {
                // 3.1.5: load_addr -1 means "the header's address minus its file offset".
                guard UInt64(addresses.headerAddress) >= header.offset else {
                    throw .multibootBadAddress(field: "header_addr", value: addresses.headerAddress,
                                               reason: "is below the header's file offset \(hex(header.offset)) (load_addr is -1)")
                }
                addresses.loadAddress = addresses.headerAddress - UInt32(header.offset)
            }
            let asMultiboot1 = MultibootHeader(offset: header.offset, flags: 1 << 16, addresses: addresses)
            let (chunk, start) = try aoutKludgeChunk(kernel, header: asMultiboot1, addresses: addresses, memoryLimit: limit)
            let end = chunk.address.rawValue + chunk.size
            for region in reserved where start < region.end && region.start < end {
                throw .overlapsSetUpStructure(field: "load_addr", what: "the kernel", start: start, end: end,
                                              structure: region.name, structureStart: region.start, structureEnd: region.end)
            }
            chunks = [chunk]
            entry = UInt64(header.entryAddress ?? 0)
        } else {
            let file = try ELFFile(parsing: kernel)
            chunks = try loadSegments(of: file, from: kernel, memorySize: limit, reserved: reserved)
            if let address = header.entryAddress { entry = UInt64(address) } else { entry = try physicalEntry(of: file) }
        }
        guard chunks.contains(where: { entry >= $0.address.rawValue && entry - $0.address.rawValue < $0.size }) else {
            throw .entryOutsideLoadedMemory(field: header.entryAddress != nil ? "entry_addr" : "e_entry", entry: entry)
        }

        let ranges = try placeModules(modules, after: &chunks, limit: limit)
        var placer = BootStructurePlacer(memorySize: memorySize, occupied: reserved)
        placer.occupy(chunks)
        let info = information(ranges)
        let infoAddress = try placer.place("multiboot2 info", size: UInt64(info.count), alignment: 8, preferred: multiboot2InfoAddress)
        chunks.append(Chunk(address: GuestPhysicalAddress(infoAddress), bytes: info, name: "multiboot2 info"))

        var image = protectedModeImage(chunks: chunks, entry: entry)
        image.registers.rax = UInt64(Multiboot2Header.bootloaderMagic)
        image.registers.rbx = infoAddress
        return image
    }
}

/// The boot information (Multiboot2 3.6): an 8-byte header (total_size, reserved) and tags, each
/// 8-byte aligned, each starting with type and size.
struct Multiboot2InfoBuilder {
    private(set) var bytes = [UInt8](repeating: 0, count: 8)

    private mutating func tag(type: UInt32, body: [UInt8]) {
        let start = bytes.count
        bytes += [UInt8](repeating: 0, count: 8) + body
        bytes.putLittleEndian(UInt64(type), at: start, count: 4)
        bytes.putLittleEndian(UInt64(8 + body.count), at: start + 4, count: 4)
        while bytes.count % 8 != 0 { bytes.append(0) }
        bytes.putLittleEndian(UInt64(bytes.count), at: 0, count: 4)  // total_size so far
    }

    mutating func string(type: UInt32, _ text: String) { tag(type: type, body: Array(text.utf8) + [0]) }
    mutating func raw(type: UInt32, _ body: [UInt8]) { tag(type: type, body: body) }

    /// Tag 3: mod_start, mod_end (exclusive), then the module's string.
    mutating func module(start: UInt64, end: UInt64, name: String) {
        tag(type: 3, body: littleEndian(start, count: 4) + littleEndian(end, count: 4) + Array(name.utf8) + [0])
    }

    /// Tag 4: KiB of RAM below 640 KiB and from 1 MiB to the hole (as Multiboot 1's mem_*).
    mutating func basicMemory(memorySize: UInt64) {
        let kib = PCMemoryMap.multibootKiB(memorySize: memorySize)
        tag(type: 4, body: littleEndian(kib.lower, count: 4) + littleEndian(kib.upper, count: 4))
    }

    /// Tag 6: entry_size 24, entry_version 0, then base, length, type per `PCMemoryMap` range.
    mutating func memoryMap(memorySize: UInt64) {
        var body = littleEndian(24, count: 4) + littleEndian(0, count: 4)
        for range in PCMemoryMap.ranges(memorySize: memorySize) {
            body += littleEndian(range.address, count: 8) + littleEndian(range.size, count: 8)
                + littleEndian(UInt64(range.type), count: 4) + littleEndian(0, count: 4)
        }
        tag(type: 6, body: body)
    }

    mutating func end() { tag(type: 0, body: []) }
}
