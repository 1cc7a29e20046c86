// The PVH loader on ELF files built by the tests: the "Xen" PHYS32_ENTRY note, struct
// hvm_start_info and its tables, and one malformed file per check.

import HVGuest
import HVModel
import Testing

private let memory: UInt64 = 64 << 20

/// One ELF note: 12-byte header, name and descriptor each padded to 4 bytes (gABI, "Note Section").
private func note(name: String, type: UInt32, descriptor: [UInt8]) -> [UInt8] {
    let nameBytes = Array(name.utf8) + [0]
    var out = [UInt8](repeating: 0, count: 12)
    put(&out, 0, UInt64(nameBytes.count), 4)
    put(&out, 4, UInt64(descriptor.count), 4)
    put(&out, 8, UInt64(type), 4)
    out += nameBytes + [UInt8](repeating: 0, count: (4 - nameBytes.count % 4) % 4)
    out += descriptor + [UInt8](repeating: 0, count: (4 - descriptor.count % 4) % 4)
    return out
}

private func le32(_ value: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: value >> ($0 * 8)) } }

/// A 64-bit vmlinux-shaped file: code linked high at 16 MiB physical, a GNU note, then the PVH note.
private func kernel(entry: UInt32 = 0x100_0010, notes: [UInt8]? = nil) -> [UInt8] {
    let notes = notes ?? note(name: "GNU", type: 3, descriptor: [1, 2, 3, 4]) + note(name: "Xen", type: 18, descriptor: le32(entry))
    return TestELF(is64: true, entry: 0x100_0000, segments: [
        TestSegment(physicalAddress: 0x100_0000, virtualAddress: 0xFFFF_FFFF_8100_0000, data: [UInt8](repeating: 0xF4, count: 64)),
        TestSegment(type: 4, physicalAddress: 0, data: notes),
    ]).bytes
}

private func read64(_ image: GuestImage, _ address: UInt64) -> UInt64? {
    guard let low = read32(image, address), let high = read32(image, address + 4) else { return nil }
    return UInt64(low) | UInt64(high) << 32
}

@Suite("PVH loader")
struct LoaderPVHTests {
    @Test("the PHYS32_ENTRY note is found among other notes and gives the 32-bit entry")
    func entryNote() throws {
        let bytes = kernel()
        #expect(try ELFFile(parsing: bytes).pvhEntry(in: bytes) == 0x100_0010)
        #expect(try ELFFile(parsing: bytes).notes(in: bytes).map(\.name) == ["GNU", "Xen"])
        // Eight-byte descriptors (some kernels) hold the entry in the low half.
        let wide = kernel(notes: note(name: "Xen", type: 18, descriptor: le32(0x100_0020) + [0, 0, 0, 0]))
        #expect(try ELFFile(parsing: wide).pvhEntry(in: wide) == 0x100_0020)
    }

    @Test("32-bit protected mode at the note's entry, EBX = hvm_start_info with its memory map, command line, RSDP and initrd")
    func startInfo() throws {
        let initrd = [UInt8](repeating: 0xAB, count: 5000)
        let image = try GuestImage.pvh(kernel(), commandLine: "console=ttyS0", initrd: initrd, rsdpAddress: 0xE_0000,
                                       memorySize: memory)
        #expect(image.mode == .protected)
        #expect(image.registers.rip == 0x100_0010 && image.registers.rbx == 0x9000 && image.registers.rflags == 0x2)
        #expect(image.specialRegisters.cr0 == ControlBits.cr0PE | ControlBits.cr0ET && image.specialRegisters.cr4 == 0)
        #expect(image.specialRegisters.efer == 0 && image.specialRegisters.cs.defaultSize32)
        let info = 0x9000 as UInt64
        #expect(read32(image, info) == 0x336E_C578)                      // magic
        #expect(read32(image, info + 4) == 1)                            // version
        #expect(read32(image, info + 12) == 1)                           // nr_modules
        #expect(read64(image, info + 24) == 0x2_0000)                    // cmdline_paddr
        #expect(read64(image, info + 32) == 0xE_0000)                    // rsdp_paddr
        #expect(read64(image, info + 40) == 0x9038)                      // memmap_paddr
        #expect(read32(image, info + 48) == 3)                           // memmap_entries
        #expect([0, 1, 2].map { read64(image, 0x9038 + UInt64($0) * 24) } == [0, 0xA_0000, 0x10_0000])
        #expect([0, 1, 2].map { read64(image, 0x9038 + UInt64($0) * 24 + 8) } == [0xA_0000, 0x6_0000, memory - 0x10_0000])
        #expect([0, 1, 2].map { read32(image, 0x9038 + UInt64($0) * 24 + 16) } == [1, 2, 1])
        let modlist = try #require(read64(image, info + 16))
        #expect(modlist == 0x9038 + 3 * 24)
        let initrdChunk = try #require(image.chunk(named: "initrd"))
        #expect(read64(image, modlist) == initrdChunk.address.rawValue && read64(image, modlist + 8) == 5000)
        #expect(initrdChunk.address.rawValue == (memory - 5000) & ~0xFFF)
        #expect(image.chunk(named: "command line")?.bytes == Array("console=ttyS0".utf8) + [0])
        #expect(image.chunk(named: "segment 0")?.address.rawValue == 0x100_0000)
    }

    @Test("without an initrd there are no modules and modlist_paddr is 0")
    func noModules() throws {
        let image = try GuestImage.pvh(kernel(), memorySize: memory)
        #expect(read32(image, 0x9000 + 12) == 0 && read64(image, 0x9000 + 16) == 0)
        #expect(read64(image, 0x9000 + 32) == 0)
        #expect(image.chunk(named: "start info")?.bytes.count == 56 + 3 * 24)
    }

    @Test("a kernel without the PVH note is refused, naming the note")
    func noNote() {
        do throws(LoaderError) {
            _ = try GuestImage.pvh(kernel(notes: note(name: "GNU", type: 3, descriptor: [1, 2, 3, 4])), memorySize: memory)
            Issue.record("expected an error")
        } catch {
            #expect(error.description.hasPrefix("XEN_ELFNOTE_PHYS32_ENTRY"), "\(error)")
        }
    }

    @Test("a note whose sizes run past its segment is a truncation error, not a crash")
    func truncatedNote() {
        var bad = note(name: "Xen", type: 18, descriptor: le32(0x100_0010))
        put(&bad, 4, 0xFFFF_FFF0, 4)                                     // n_descsz: nearly 4 GiB
        do throws(LoaderError) {
            _ = try GuestImage.pvh(kernel(notes: bad), memorySize: memory)
            Issue.record("expected an error")
        } catch {
            guard case .truncated = error else { Issue.record("unexpected \(error)"); return }
            #expect(error.description.hasPrefix("n_namesz/n_descsz"), "\(error)")
        }
    }

    @Test("an entry outside every loaded segment, and an initrd that does not fit, are refused")
    func badPlacement() {
        #expect(throws: LoaderError.entryOutsideLoadedMemory(field: "XEN_ELFNOTE_PHYS32_ENTRY", entry: 0x200_0000)) {
            try GuestImage.pvh(kernel(entry: 0x200_0000), memorySize: memory)
        }
        #expect(throws: LoaderError.self) {
            try GuestImage.pvh(kernel(), initrd: [UInt8](repeating: 0, count: Int(memory - 0x100_0000)), memorySize: memory)
        }
    }

    @Test("thousands of PT_NOTE headers naming the same bytes are read once; a malformed one does not stop --elf")
    func noteFlood() throws {
        var segments = [TestSegment(physicalAddress: 0x100_0000, data: [UInt8](repeating: 0xF4, count: 64)),
                        TestSegment(type: 4, physicalAddress: 0, data: note(name: "Xen", type: 18, descriptor: le32(0x100_0010)))]
        var bytes = TestELF(is64: true, entry: 0x100_0000, segments: segments).bytes
        // Point 3,000 more program headers at the same note: copy header 1 over and over.
        segments += [TestSegment](repeating: TestSegment(type: 4, physicalAddress: 0, data: []), count: 3000)
        let flood = TestELF(is64: true, entry: 0x100_0000, segments: segments)
        bytes = flood.bytes
        let noteHeader = Array(bytes[flood.programHeader(1)..<flood.programHeader(1) + 56])
        for index in 2..<segments.count { bytes.replaceSubrange(flood.programHeader(index)..<flood.programHeader(index) + 56, with: noteHeader) }
        let file = try ELFFile(parsing: bytes)
        #expect(file.noteSegments.count == 3001)
        #expect(try file.notes(in: bytes).count == 1)
        #expect(try file.pvhEntry(in: bytes) == 0x100_0010)
        // A note segment that runs past the file matters only to a loader that reads notes.
        var broken = kernel()
        put(&broken, flood.programHeader(1) + 32, 0xFFFF_FFFF, 8)          // PT_NOTE p_filesz
        #expect(throws: LoaderError.self) { try GuestImage.pvh(broken, memorySize: memory) }
        #expect(try GuestImage.elf(broken, memorySize: memory).registers.rip == 0x100_0000)
    }

    @Test("the initrd goes above 1 MiB and the kernel, never over the low boot structures")
    func initrdFloor() throws {
        let low = TestELF(is64: false, entry: 0x3000, segments: [TestSegment(physicalAddress: 0x3000, data: [0xF4])]).bytes
            .withPVHNote(entry: 0x3000)
        #expect(throws: LoaderError.self) {                                 // would have needed 0xFF000
            try GuestImage.pvh(low, initrd: [UInt8](repeating: 1, count: 0x10_1000), memorySize: 2 << 20)
        }
        #expect(try GuestImage.pvh(low, initrd: [1], memorySize: 2 << 20).chunk(named: "initrd")?.address.rawValue == 0x1F_F000)
    }

    @Test("above 3 GiB the memory map leaves the PCI hole out and continues at 4 GiB")
    func largeMemory() throws {
        let image = try GuestImage.pvh(kernel(), memorySize: 5 << 30)
        #expect(read32(image, 0x9000 + 48) == 4)                            // memmap_entries
        #expect(read64(image, 0x9038 + 2 * 24 + 8) == 0xC000_0000 - 0x10_0000)   // RAM 1 MiB-3 GiB
        #expect(read64(image, 0x9038 + 3 * 24) == 1 << 32)                  // RAM from 4 GiB...
        #expect(read64(image, 0x9038 + 3 * 24 + 8) == 2 << 30)              // ...for the other 2 GiB
    }
}

extension Array where Element == UInt8 {
    /// This ELF32 file with a PT_NOTE appended that holds a PVH entry note (for tests of files
    /// built with `TestELF` without one): the note goes at the end, its header replaces nothing
    /// because `TestELF` is rebuilt with the note segment added.
    func withPVHNote(entry: UInt32) -> [UInt8] {
        let file = try! ELFFile(parsing: self)
        let segments = file.segments.map { segment in
            TestSegment(physicalAddress: segment.physicalAddress, virtualAddress: segment.virtualAddress,
                        data: Array(self[Int(segment.offset)..<Int(segment.offset + segment.fileSize)]), memorySize: segment.memorySize)
        }
        return TestELF(is64: file.elfClass == .elf64, entry: file.entry,
                       segments: segments + [TestSegment(type: 4, physicalAddress: 0, data: note(name: "Xen", type: 18, descriptor: le32(entry)))]).bytes
    }
}
