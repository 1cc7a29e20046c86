// The Multiboot information structure a boot loader hands the kernel in EBX (Multiboot 0.6.96,
// 3.3 "Boot information format"), with the tables and strings it points to, laid out in one block.

/// Builds the info block: the 88-byte structure, the memory map, the module list, then the
/// NUL-terminated strings (boot loader name, command line, module names).
struct MultibootInfoBuilder {
    /// Info flags HV sets (3.3): 0 mem_*, 2 cmdline, 3 mods, 6 mmap, 9 boot_loader_name.
    static let flags: UInt32 = 1 << 0 | 1 << 2 | 1 << 3 | 1 << 6 | 1 << 9
    static let structureSize: UInt64 = 88
    /// One memory-map entry: size (u32, = 20, not counting itself), base_addr, length, type.
    static let mapEntrySize: UInt64 = 24
    static let moduleEntrySize: UInt64 = 16
    static let bootLoaderName = "HV"

    let commandLine: String
    let moduleNames: [String]
    /// The memory map (`PCMemoryMap`), one 24-byte entry per range.
    let memoryMap: [PCMemoryRange]

    init(commandLine: String, moduleNames: [String], memorySize: UInt64) {
        self.commandLine = commandLine
        self.moduleNames = moduleNames
        self.memoryMap = PCMemoryMap.ranges(memorySize: memorySize)
    }

    private var mapOffset: UInt64 { Self.structureSize }
    private var modulesOffset: UInt64 { mapOffset + UInt64(memoryMap.count) * Self.mapEntrySize }
    private var stringsOffset: UInt64 { modulesOffset + UInt64(moduleNames.count) * Self.moduleEntrySize }
    private var strings: [String] { [Self.bootLoaderName, commandLine] + moduleNames }

    /// Bytes the block needs.
    var size: UInt64 { stringsOffset + strings.reduce(0) { $0 + UInt64($1.utf8.count) + 1 } }

    /// The block for guest-physical `base`; `modules` are the [start, end) of each module
    /// (mod_end is exclusive, as GRUB writes it).
    func build(at base: UInt64, memorySize: UInt64, modules: [(start: UInt64, end: UInt64)]) -> [UInt8] {
        precondition(memoryMap == PCMemoryMap.ranges(memorySize: memorySize), "built for another memory size")
        var bytes = [UInt8](repeating: 0, count: Int(size))
        func put32(_ value: UInt64, _ offset: UInt64) { bytes.putLittleEndian(value, at: Int(offset), count: 4) }
        func put64(_ value: UInt64, _ offset: UInt64) { bytes.putLittleEndian(value, at: Int(offset), count: 8) }
        // Strings first, remembering each one's address.
        var stringAddresses: [UInt64] = []
        var cursor = stringsOffset
        for string in strings {
            stringAddresses.append(base + cursor)
            for byte in string.utf8 {
                bytes[Int(cursor)] = byte
                cursor += 1
            }
            cursor += 1  // the NUL
        }

        // 3.3: mem_lower counts KiB from 0 (at most 640), mem_upper KiB from 1 MiB to the hole.
        let kib = PCMemoryMap.multibootKiB(memorySize: memorySize)
        put32(UInt64(Self.flags), 0)
        put32(kib.lower, 4)
        put32(kib.upper, 8)
        put32(stringAddresses[1], 16)                        // cmdline
        put32(UInt64(modules.count), 20)                     // mods_count
        put32(base + modulesOffset, 24)                      // mods_addr
        put32(UInt64(memoryMap.count) * Self.mapEntrySize, 44)  // mmap_length
        put32(base + mapOffset, 48)                          // mmap_addr
        put32(stringAddresses[0], 64)                        // boot_loader_name

        // mmap (3.3): type 1 = available RAM, 2 = reserved. The legacy 640 KiB-1 MiB hole is
        // reported reserved, as on a PC.
        for (index, range) in memoryMap.enumerated() {
            let offset = mapOffset + UInt64(index) * Self.mapEntrySize
            put32(Self.mapEntrySize - 4, offset)
            put64(range.address, offset + 4)
            put64(range.size, offset + 12)
            put32(UInt64(range.type), offset + 20)
        }
        for (index, module) in modules.enumerated() {
            let offset = modulesOffset + UInt64(index) * Self.moduleEntrySize
            put32(module.start, offset)
            put32(module.end, offset + 4)
            put32(stringAddresses[2 + index], offset + 8)
        }
        return bytes
    }
}
