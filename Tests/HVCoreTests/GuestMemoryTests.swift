import Foundation
import HVCore
import Testing

@Suite("Guest memory")
struct GuestMemoryTests {
    @Test("zero(count:at:) clears exactly the range, whole pages by handing them back, partial pages by hand; neighbours keep their bytes")
    func zeroClearsExactlyTheRange() throws {
        let memory = try GuestMemory.pcLayout(size: 1 << 20)
        try memory.fill(0xAB, count: 0x8000, at: GuestPhysicalAddress(0x1_0000))
        try memory.zero(count: 0x5000, at: GuestPhysicalAddress(0x1_0800))  // 0x10800 ..< 0x15800: two partial pages, four whole
        #expect(try memory.read(UInt8.self, at: GuestPhysicalAddress(0x1_07FF)) == 0xAB)
        #expect(try memory.readBytes(at: GuestPhysicalAddress(0x1_0800), count: 0x5000).allSatisfy { $0 == 0 })
        #expect(try memory.read(UInt8.self, at: GuestPhysicalAddress(0x1_5800)) == 0xAB)
        // Within one page.
        try memory.zero(count: 3, at: GuestPhysicalAddress(0x1_6001))
        #expect(try memory.readBytes(at: GuestPhysicalAddress(0x1_6000), count: 5) == [0xAB, 0, 0, 0, 0xAB])
        #expect(throws: GuestMemoryError.self) { try memory.zero(count: 2, at: GuestPhysicalAddress((1 << 20) - 1)) }
    }

    /// The VMA of /proc/self/smaps that holds `address` (the kernel merges neighbouring
    /// mappings with the same flags): its range and its "Name: value" lines.
    static func smaps(containing address: UInt) throws -> [String: String] {
        // procfs files report size 0, so read them to the end rather than by their size.
        let file = try #require(FileHandle(forReadingAtPath: "/proc/self/smaps"))
        let text = String(decoding: file.readDataToEndOfFile(), as: UTF8.self)
        var fields: [String: String] = [:], inside = false
        for line in text.split(separator: "\n") {
            if let range = line.split(separator: " ").first, let match = range.wholeMatch(of: /([0-9a-f]+)-([0-9a-f]+)/) {
                if inside { break }
                let start = UInt(match.1, radix: 16) ?? 0, end = UInt(match.2, radix: 16) ?? 0
                inside = start <= address && address < end
                if inside { fields["range"] = String(range) }
                continue
            }
            if inside, let colon = line.firstIndex(of: ":") {
                fields[String(line[..<colon])] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            }
        }
        return fields
    }

    @Test("huge pages: RAM starts on a 2 MiB boundary and is THP-eligible (MADV_HUGEPAGE); without, only where the host's THP is 'always'")
    func hugePages() throws {
        let setting = (try? String(contentsOfFile: "/sys/kernel/mm/transparent_hugepage/enabled", encoding: .utf8)) ?? ""
        let huge = try MemoryRegion(guestAddress: 0, size: 8 << 20, hugePages: true)
        #expect(UInt(bitPattern: huge.hostAddress) % UInt(MemoryRegion.hugePageSize) == 0)
        let plain = try MemoryRegion(guestAddress: 0, size: 8 << 20, hugePages: false)
        let hugeFields = try Self.smaps(containing: UInt(bitPattern: huge.hostAddress))
        #expect(hugeFields["VmFlags"]?.split(separator: " ").contains("hg") == true, "MADV_HUGEPAGE: \(hugeFields)")
        if !setting.contains("[never]") {
            #expect(hugeFields["THPeligible"] == "1", "\(hugeFields)")
        }
        let plainFields = try Self.smaps(containing: UInt(bitPattern: plain.hostAddress))
        #expect(plainFields["VmFlags"]?.split(separator: " ").contains("hg") == false, "\(plainFields)")
        if setting.contains("[madvise]") { #expect(plainFields["THPeligible"] == "0") }
        // A small region is mapped as it is: nothing to align, no advice.
        let small = try MemoryRegion(guestAddress: 0, size: 64 << 10, hugePages: true)
        #expect(try Self.smaps(containing: UInt(bitPattern: small.hostAddress))["VmFlags"]?.split(separator: " ").contains("hg") == false)
    }

    @Test("typed reads and writes are little-endian and round-trip")
    func typedAccess() throws {
        let memory = try GuestMemory.pcLayout(size: 64 << 10)
        try memory.write(UInt32(0xDEAD_BEEF), at: 0x100)
        #expect(try memory.read(UInt32.self, at: 0x100) == 0xDEAD_BEEF)
        #expect(try memory.read(UInt8.self, at: 0x100) == 0xEF)
        try memory.write(bytes: [1, 2, 3], at: 0xFFFD)
        #expect(try memory.readBytes(at: 0xFFFD, count: 3) == [1, 2, 3])
    }

    @Test("an access that runs past the end of RAM is refused, not truncated")
    func bounds() throws {
        let memory = try GuestMemory.pcLayout(size: 64 << 10)
        #expect(throws: GuestMemoryError.outOfBounds(address: 0xFFFE, length: 4)) {
            try memory.write(UInt32(1), at: 0xFFFE)
        }
        #expect(throws: GuestMemoryError.outOfBounds(address: 0x1_0000, length: 1)) {
            _ = try memory.read(UInt8.self, at: 0x1_0000)
        }
        #expect(throws: GuestMemoryError.self) { _ = try memory.readBytes(at: GuestPhysicalAddress(UInt64.max), count: 2) }
        #expect(!memory.contains(0xFFFF, length: 2))
        #expect(memory.contains(0xFFFF, length: 1))
    }

    @Test("RAM above 3 GiB moves above 4 GiB, leaving the MMIO hole empty")
    func pcHole() throws {
        let memory = try GuestMemory.pcLayout(size: (3 << 30) + (1 << 20))
        #expect(memory.regions.count == 2)
        #expect(memory.regions[1].guestAddress == 0x1_0000_0000)
        #expect(memory.regions[1].size == 1 << 20)
        #expect(!memory.contains(0xD000_0000))
        #expect(memory.size == (3 << 30) + (1 << 20))
    }

    @Test("overlapping or unaligned regions are refused")
    func layoutErrors() throws {
        #expect(throws: GuestMemoryError.self) { _ = try MemoryRegion(guestAddress: 0x10, size: 4096) }
        #expect(throws: GuestMemoryError.self) { _ = try MemoryRegion(guestAddress: 0, size: 100) }
        let a = try MemoryRegion(guestAddress: 0, size: 8192)
        let b = try MemoryRegion(guestAddress: 4096, size: 4096)
        #expect(throws: GuestMemoryError.self) { _ = try GuestMemory(regions: [a, b]) }
    }

    @Test("an image whose chunks lie past RAM or near 2^64 is an error when loaded, not a trap")
    func extremeChunks() throws {
        let machine = try Machine(configuration: VirtualMachineConfiguration(memorySize: 1 << 20), backend: ScriptedBackend(script: [.halt]))
        let registers = Registers(), special = SpecialRegisters()
        for chunk in [GuestImage.Chunk(address: 0xFFFF_FFFF_FFFF_FFFF, bytes: [1], name: "top"),
                      GuestImage.Chunk(address: 0x1000, bytes: [1], zeroFill: UInt64.max, name: "huge zero fill"),
                      GuestImage.Chunk(address: 0xFFFF_FFFF_FFFF_F000, bytes: [], zeroFill: 0x2000, name: "wrapping zero fill")] {
            #expect(chunk.size >= chunk.zeroFill)
            #expect(throws: HVError.self, "\(chunk.name)") {
                try machine.load(GuestImage(chunks: [chunk], registers: registers, specialRegisters: special, mode: .long))
            }
        }
    }

    @Test("extreme regions are errors, not traps: an end past 2^64 is named as such, a size no host can map is refused")
    func extremeRegions() throws {
        do {
            _ = try MemoryRegion(guestAddress: 0xFFFF_FFFF_FFFF_F000, size: 0x2000)
            Issue.record("a region wrapping past 2^64 was accepted")
        } catch {
            #expect("\(error)".contains("wraps past the end of the 64-bit address space"), "\(error)")
        }
        #expect(throws: GuestMemoryError.self) { _ = try MemoryRegion(guestAddress: 0, size: 1 << 63) }
        #expect(throws: GuestMemoryError.self) { _ = try MemoryRegion(guestAddress: 0, size: 0xFFFF_FFFF_FFFF_F000) }
        #expect(throws: GuestMemoryError.self) { _ = try GuestMemory.pcLayout(size: 0xFFFF_FFFF_FFFF_F000) }
        // The highest page that does not wrap is a region; beside another it is checked without overflow.
        let top = try MemoryRegion(guestAddress: 0xFFFF_FFFF_FFFF_E000, size: 4096)
        let low = try MemoryRegion(guestAddress: 0, size: 4096)
        let memory = try GuestMemory(regions: [top, low])
        #expect(throws: GuestMemoryError.self) { try memory.write(bytes: [1, 2], at: 0xFFFF_FFFF_FFFF_EFFF) }
        #expect(throws: GuestMemoryError.self) { try memory.zero(count: UInt64.max, at: 0xFFFF_FFFF_FFFF_E000) }
        #expect(throws: GuestMemoryError.self) { _ = try memory.hostPointer(for: 0xFFFF_FFFF_FFFF_FFFF, length: UInt64.max) }
    }
}
