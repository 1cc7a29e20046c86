// Builds small ELF and Multiboot files byte by byte, so loader tests need no toolchain and can
// break any field on purpose.

import HVGuest

/// One program header for `TestELF`.
struct TestSegment {
    var type: UInt32 = 1  // PT_LOAD
    var physicalAddress: UInt64
    var virtualAddress: UInt64? = nil
    var data: [UInt8]
    /// p_memsz; nil: data.count.
    var memorySize: UInt64? = nil
}

/// A little-endian ELF executable: header, program headers, then each segment's data.
struct TestELF {
    var is64: Bool
    var entry: UInt64
    var segments: [TestSegment]
    var machine: UInt16? = nil

    var headerSize: Int { is64 ? 64 : 52 }
    var programHeaderSize: Int { is64 ? 56 : 32 }
    /// File offset of the program header table.
    var programHeaderOffset: Int { headerSize }
    /// File offset of program header `index`.
    func programHeader(_ index: Int) -> Int { programHeaderOffset + index * programHeaderSize }

    var bytes: [UInt8] {
        var out = [UInt8](repeating: 0, count: headerSize + segments.count * programHeaderSize)
        out[0...3] = [0x7F, 0x45, 0x4C, 0x46]
        out[4] = is64 ? 2 : 1
        out[5] = 1
        out[6] = 1
        put(&out, 16, 2, 2)  // ET_EXEC
        put(&out, 18, UInt64(machine ?? (is64 ? 62 : 3)), 2)
        put(&out, 20, 1, 4)
        if is64 {
            put(&out, 24, entry, 8); put(&out, 32, UInt64(headerSize), 8)
            put(&out, 52, 64, 2); put(&out, 54, 56, 2); put(&out, 56, UInt64(segments.count), 2)
        } else {
            put(&out, 24, entry, 4); put(&out, 28, UInt64(headerSize), 4)
            put(&out, 40, 52, 2); put(&out, 42, 32, 2); put(&out, 44, UInt64(segments.count), 2)
        }
        for (index, segment) in segments.enumerated() {
            let base = programHeader(index), offset = UInt64(out.count)
            let memsz = segment.memorySize ?? UInt64(segment.data.count)
            let vaddr = segment.virtualAddress ?? segment.physicalAddress
            if is64 {
                put(&out, base, UInt64(segment.type), 4); put(&out, base + 4, 5, 4); put(&out, base + 8, offset, 8)
                put(&out, base + 16, vaddr, 8); put(&out, base + 24, segment.physicalAddress, 8)
                put(&out, base + 32, UInt64(segment.data.count), 8); put(&out, base + 40, memsz, 8)
            } else {
                put(&out, base, UInt64(segment.type), 4); put(&out, base + 4, offset, 4); put(&out, base + 8, vaddr, 4)
                put(&out, base + 12, segment.physicalAddress, 4); put(&out, base + 16, UInt64(segment.data.count), 4)
                put(&out, base + 20, memsz, 4); put(&out, base + 24, 5, 4)
            }
            out += segment.data
        }
        return out
    }
}

/// Writes `value` little-endian into `count` bytes at `offset`.
func put(_ bytes: inout [UInt8], _ offset: Int, _ value: UInt64, _ count: Int) {
    for index in 0..<count { bytes[offset + index] = UInt8(truncatingIfNeeded: value >> UInt64(index * 8)) }
}

/// Reads a little-endian u32 at guest-physical `address` from an image's chunks.
func read32(_ image: GuestImage, _ address: UInt64) -> UInt32? {
    for chunk in image.chunks {
        let start = chunk.address.rawValue
        guard address >= start, address + 4 <= start + UInt64(chunk.bytes.count) else { continue }
        let offset = Int(address - start)
        return (0..<4).reduce(UInt32(0)) { $0 | UInt32(chunk.bytes[offset + $1]) << UInt32($1 * 8) }
    }
    return nil
}

/// Reads a NUL-terminated string at guest-physical `address`.
func readString(_ image: GuestImage, _ address: UInt64) -> String? {
    for chunk in image.chunks {
        let start = chunk.address.rawValue
        guard address >= start, address < start + UInt64(chunk.bytes.count) else { continue }
        let tail = chunk.bytes[Int(address - start)...]
        return String(decoding: tail.prefix { $0 != 0 }, as: UTF8.self)
    }
    return nil
}

/// A Multiboot header: magic, flags, checksum, and with flag 16 the five address fields.
func multibootHeader(flags: UInt32, addresses: [UInt32] = [], checksum: UInt32? = nil) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: 12 + 4 * addresses.count)
    put(&out, 0, 0x1BAD_B002, 4)
    put(&out, 4, UInt64(flags), 4)
    put(&out, 8, UInt64(checksum ?? (0 &- 0x1BAD_B002 &- flags)), 4)
    for (index, value) in addresses.enumerated() { put(&out, 12 + 4 * index, UInt64(value), 4) }
    return out
}
