// The Multiboot2 loader (Multiboot2 2.0, 3.1-3.6) on kernels built by the tests: the header tags,
// the address and ELF paths, the tagged boot information read back from the image, and each
// malformed header.

import HVGuest
import HVModel
import Testing

private let memory: UInt64 = 16 << 20

/// One header tag: type, flags, size, body, padded to 8 bytes.
private func tag(_ type: UInt16, optional: Bool = false, _ body: [UInt32] = []) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: 8)
    put(&out, 0, UInt64(type), 2)
    put(&out, 2, optional ? 1 : 0, 2)
    put(&out, 4, UInt64(8 + body.count * 4), 4)
    for value in body { out += (0..<4).map { UInt8(truncatingIfNeeded: value >> ($0 * 8)) } }
    while out.count % 8 != 0 { out.append(0) }
    return out
}

/// A Multiboot2 header with `tags` and the end tag; `checksumDelta` breaks the checksum.
private func header(_ tags: [[UInt8]], checksumDelta: UInt32 = 0) -> [UInt8] {
    let body = tags.flatMap { $0 } + tag(0)
    var out = [UInt8](repeating: 0, count: 16)
    let length = UInt32(16 + body.count)
    put(&out, 0, 0xE852_50D6, 4)
    put(&out, 8, UInt64(length), 4)
    put(&out, 12, UInt64((0 &- (0xE852_50D6 &+ length)) &+ checksumDelta), 4)
    return out + body
}

/// A flat kernel loaded by its address tag at 1 MiB: header, then `hlt` at 0x100100.
private func flatKernel(extraTags: [[UInt8]] = []) -> [UInt8] {
    var kernel = header([tag(2, [0x10_0000, 0x10_0000, 0, 0x10_2000]), tag(3, [0x10_0100])] + extraTags)
    kernel += [UInt8](repeating: 0x90, count: max(0x100 - kernel.count, 0)) + [0xF4]
    return kernel
}

/// The information tags of `image`, by type, as (offset in the info chunk, size).
private func infoTags(_ image: GuestImage) throws -> [(type: UInt32, offset: Int, size: Int)] {
    let info = try #require(image.chunk(named: "multiboot2 info")).bytes
    func u32(_ at: Int) -> UInt32 { (0..<4).reduce(UInt32(0)) { $0 | UInt32(info[at + $1]) << UInt32($1 * 8) } }
    #expect(Int(u32(0)) == info.count)
    var tags: [(UInt32, Int, Int)] = []
    var cursor = 8
    while cursor + 8 <= info.count {
        let type = u32(cursor), size = Int(u32(cursor + 4))
        tags.append((type, cursor, size))
        if type == 0 { break }
        cursor += (size + 7) & ~7
    }
    return tags
}

@Suite("Multiboot2 loader")
struct LoaderMultiboot2Tests {
    @Test("an address-tag kernel: 3.3 machine state, every information tag in order")
    func addressTagKernel() throws {
        let rsdp = Array("RSD PTR ".utf8) + [UInt8](repeating: 2, count: 28)
        let image = try GuestImage.multiboot2(flatKernel(extraTags: [tag(1, [1, 2, 3, 4, 6, 15])]), commandLine: "a b",
                                              modules: [MultibootModule(name: "env", bytes: [1, 2, 3])], rsdp: rsdp,
                                              memorySize: memory)
        #expect(image.mode == .protected)
        #expect(image.registers.rax == 0x36D7_6289 && image.registers.rbx == 0x9000 && image.registers.rip == 0x10_0100)
        #expect(image.specialRegisters.cr0 & ControlBits.cr0PG == 0 && image.specialRegisters.cr0 & ControlBits.cr0PE != 0)
        let kernel = try #require(image.chunk(named: "kernel"))
        #expect(kernel.address.rawValue == 0x10_0000 && kernel.size == 0x2000)   // bss to bss_end_addr
        let tags = try infoTags(image)
        #expect(tags.map(\.type) == [1, 2, 3, 4, 6, 14, 15, 0])
        let info = try #require(image.chunk(named: "multiboot2 info")).bytes
        #expect(Array(info[tags[0].offset + 8..<tags[0].offset + 11]) == Array("a b".utf8))
        #expect(Array(info[tags[1].offset + 8..<tags[1].offset + 11]) == Array("HV".utf8) + [0])
        let module = try #require(image.chunk(named: "module 0"))
        #expect(read32(image, 0x9000 + UInt64(tags[2].offset) + 8) == UInt32(module.address.rawValue))
        #expect(read32(image, 0x9000 + UInt64(tags[2].offset) + 12) == UInt32(module.address.rawValue) + 3)
        #expect(module.address.rawValue == 0x10_2000)                                  // page-aligned after the kernel
        #expect(read32(image, 0x9000 + UInt64(tags[3].offset) + 8) == 640)             // mem_lower KiB
        #expect(read32(image, 0x9000 + UInt64(tags[3].offset) + 12) == UInt32(15 * 1024))  // mem_upper KiB
        #expect(tags[4].size == 16 + 3 * 24)                                           // three map entries
        #expect(tags[5].size == 8 + 20 && tags[6].size == 8 + 36)
    }

    @Test("an ELF kernel loads by its program headers; the entry address tag overrides e_entry")
    func elfKernel() throws {
        // Four bytes first so that the header sits 8-byte aligned in the file (data starts at 84).
        let text = [0, 0, 0, 0] + header([tag(3, [0x40_0040])]) + [UInt8](repeating: 0xF4, count: 0x40)
        let elf = TestELF(is64: false, entry: 0x40_0030, segments: [TestSegment(physicalAddress: 0x40_0000, data: text)]).bytes
        let image = try GuestImage.multiboot2(elf, memorySize: memory)
        #expect(image.registers.rip == 0x40_0040)
        #expect(image.chunk(named: "segment 0")?.address.rawValue == 0x40_0000)
        let withoutEntryTag = TestELF(is64: false, entry: 0x40_0030, segments: [
            TestSegment(physicalAddress: 0x40_0000, data: [0, 0, 0, 0] + header([]) + [UInt8](repeating: 0xF4, count: 0x40)),
        ]).bytes
        #expect(try GuestImage.multiboot2(withoutEntryTag, memorySize: memory).registers.rip == 0x40_0030)
    }

    @Test("malformed headers are refused naming the field")
    func malformed() {
        func message(_ kernel: [UInt8], rsdp: [UInt8]? = nil) -> String {
            do throws(LoaderError) {
                _ = try GuestImage.multiboot2(kernel, rsdp: rsdp, memorySize: memory)
                return "accepted"
            } catch { return error.description }
        }
        #expect(message([UInt8](repeating: 0, count: 64)).hasPrefix("magic: no Multiboot2 header"))
        #expect(message(header([], checksumDelta: 1)).hasPrefix("checksum:"))
        var truncated = header([tag(3, [0x10_0000])])
        put(&truncated, 20, 0x1000, 4)                                      // entry tag claims 4 KiB
        #expect(message(truncated).hasPrefix("size of header tag 3"))
        #expect(message(header([tag(2, [0x10_0000, 0x10_0000, 0, 0])])).hasPrefix("address tag:"))   // no entry tag
        #expect(message(flatKernel(extraTags: [tag(1, [8])])).hasPrefix("information request: 8 is not supported"))   // framebuffer info
        #expect(message(flatKernel(extraTags: [tag(1, [15])])).hasPrefix("information request: 0xF"))  // ACPI without tables
        #expect(message(flatKernel(extraTags: [tag(42)])).hasPrefix("header tag type: 0x2A"))
        #expect(message(flatKernel(extraTags: [tag(42, optional: true), tag(1, optional: true, [8])])) == "accepted")
        #expect(message(flatKernel(), rsdp: [1, 2, 3]).hasPrefix("rsdp:"))
        var noEnd = header([])
        noEnd.removeLast(8)
        put(&noEnd, 8, UInt64(noEnd.count), 4)
        put(&noEnd, 12, UInt64(0 &- (0xE852_50D6 &+ UInt32(noEnd.count))), 4)
        noEnd += [UInt8](repeating: 0, count: 8)                            // bytes after the header, not in it
        #expect(message(noEnd).hasPrefix("header_length: 16 bytes is not supported"))
    }

    @Test("a stray magic value is skipped; the header must end within the first 32 KiB")
    func headerSearch() throws {
        // A first "header" with a wrong checksum, then the real one 16 bytes later.
        var stray = [UInt8](repeating: 0, count: 16)
        put(&stray, 0, 0xE852_50D6, 4)
        put(&stray, 8, 24, 4)
        let kernel = header([tag(3, [0x40_0040])]) + [UInt8](repeating: 0xF4, count: 0x40)
        let elf = TestELF(is64: false, entry: 0x40_0030, segments: [
            TestSegment(physicalAddress: 0x40_0000, data: [0, 0, 0, 0] + stray + kernel),
        ]).bytes
        #expect(try GuestImage.multiboot2(elf, memorySize: memory).registers.rip == 0x40_0040)
        // Only the stray one: its checksum is the error.
        do throws(LoaderError) {
            _ = try GuestImage.multiboot2(stray + [UInt8](repeating: 0, count: 64), memorySize: memory)
            Issue.record("accepted")
        } catch {
            #expect(error.description.hasPrefix("checksum:"), "\(error)")
        }
        // A header that starts near the end of the search window and runs past it.
        var late = [UInt8](repeating: 0, count: 32768 - 16) + header([tag(42, optional: true, [UInt32](repeating: 0, count: 8))])
        late += [UInt8](repeating: 0, count: 64)
        do throws(LoaderError) {
            _ = try GuestImage.multiboot2(late, memorySize: memory)
            Issue.record("accepted")
        } catch {
            #expect(error.description.hasPrefix("header_length:"), "\(error)")
        }
    }

    @Test("above 3 GiB the memory map and basic memory leave the PCI hole out")
    func largeMemory() throws {
        let image = try GuestImage.multiboot2(flatKernel(), memorySize: 5 << 30)
        let tags = try infoTags(image)
        let basic = try #require(tags.first { $0.type == 4 }), map = try #require(tags.first { $0.type == 6 })
        #expect(read32(image, 0x9000 + UInt64(basic.offset) + 12) == UInt32((0xC000_0000 - 0x10_0000) / 1024))
        #expect(map.size == 16 + 4 * 24)
        #expect(read32(image, 0x9000 + UInt64(map.offset) + 16 + 3 * 24 + 4) == 1)   // base 4 GiB: high dword 1
    }
}
