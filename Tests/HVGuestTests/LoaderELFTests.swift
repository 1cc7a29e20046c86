// The ELF loader on files built by the tests: valid ELF64/ELF32 images and one malformed file
// per check, each rejected with an error that names the field.

import HVGuest
import HVModel
import Testing

private let memory: UInt64 = 16 << 20

/// Expects `body` to throw a `LoaderError` equal to `expected` whose message starts with `field`.
private func expectError(_ expected: LoaderError, field: String, sourceLocation: SourceLocation = #_sourceLocation,
                         _ body: () throws(LoaderError) -> GuestImage) {
    do {
        _ = try body()
        Issue.record("expected \(expected)", sourceLocation: sourceLocation)
    } catch {
        #expect(error == expected, sourceLocation: sourceLocation)
        #expect(error.description.hasPrefix(field), "message: \(error)", sourceLocation: sourceLocation)
    }
}

@Suite("ELF loader")
struct LoaderELFTests {
    let code: [UInt8] = [0xF4, 0xEB, 0xFD]  // hlt; jmp $-1

    @Test("a segment asking for 2 GiB of .bss from a 100-byte file costs a count, not 2 GiB of host bytes")
    func hugeBSSIsACount() throws {
        let elf = TestELF(is64: true, entry: 0x10_0000, segments: [
            TestSegment(physicalAddress: 0x10_0000, data: code, memorySize: 2 << 30),
        ])
        let image = try GuestImage.elf(elf.bytes, memorySize: 3 << 30)
        let segment = try #require(image.chunk(named: "segment 0"))
        #expect(segment.bytes == code)
        #expect(segment.zeroFill == (2 << 30) - UInt64(code.count) && segment.size == 2 << 30)
    }

    @Test("ELF64 loads each PT_LOAD at p_paddr, zero-fills .bss and enters long mode at the translated e_entry")
    func elf64() throws {
        let elf = TestELF(is64: true, entry: 0xFFFF_FFFF_8010_0001, segments: [
            TestSegment(physicalAddress: 0x10_0000, virtualAddress: 0xFFFF_FFFF_8010_0000, data: code),
            TestSegment(type: 4, physicalAddress: 0, data: [1, 2, 3, 4]),  // PT_NOTE: ignored
            TestSegment(physicalAddress: 0x20_0000, data: [9, 9], memorySize: 0x1000),
        ])
        let image = try GuestImage.elf(elf.bytes, memorySize: memory)
        #expect(image.mode == .long)
        #expect(image.registers.rip == 0x10_0001)
        #expect(image.specialRegisters.cr0 & ControlBits.cr0PG != 0 && image.specialRegisters.efer & ControlBits.eferLMA != 0)
        #expect(image.chunk(named: "segment 0")?.bytes == code)
        #expect(image.chunk(named: "segment 0")?.address.rawValue == 0x10_0000)
        #expect(image.chunk(named: "segment 1") == nil)
        let data = try #require(image.chunk(named: "segment 2"))
        #expect(data.bytes == [9, 9] && data.zeroFill == 0x1000 - 2 && data.size == 0x1000)  // .bss as a count
        #expect(image.chunk(named: "pml4") != nil)
    }

    @Test("ELF32 enters 32-bit protected mode, flat segments, paging off")
    func elf32() throws {
        let elf = TestELF(is64: false, entry: 0x40_0000, segments: [TestSegment(physicalAddress: 0x40_0000, data: code)])
        let image = try GuestImage.elf(elf.bytes, memorySize: memory)
        #expect(image.mode == .protected)
        #expect(image.registers.rip == 0x40_0000 && image.registers.rflags == 0x2)
        let special = image.specialRegisters
        #expect(special.cr0 == ControlBits.cr0PE | ControlBits.cr0ET && special.efer == 0)
        #expect(special.cs.defaultSize32 && !special.cs.long && special.cs.limit == 0xFFFF_FFFF && special.cs.base == 0)
        #expect(special.ss.defaultSize32 && special.ds.selector == 0x10 && special.cs.selector == 0x08)
        #expect(image.chunk(named: "gdt")?.address.rawValue == 0x500)
    }

    @Test("truncated files: e_ident, the ELF header, the program header table")
    func truncated() {
        let bytes = TestELF(is64: true, entry: 0x10_0000, segments: [TestSegment(physicalAddress: 0x10_0000, data: code)]).bytes
        expectError(.truncated(field: "e_ident", offset: 0, needed: 16, fileSize: 10), field: "e_ident") {
            () throws(LoaderError) in try GuestImage.elf(Array(bytes.prefix(10)), memorySize: memory)
        }
        expectError(.truncated(field: "ELF header", offset: 0, needed: 64, fileSize: 40), field: "ELF header") {
            () throws(LoaderError) in try GuestImage.elf(Array(bytes.prefix(40)), memorySize: memory)
        }
        expectError(.truncated(field: "e_phoff/e_phnum", offset: 64, needed: 56, fileSize: 100), field: "e_phoff") {
            () throws(LoaderError) in try GuestImage.elf(Array(bytes.prefix(100)), memorySize: memory)
        }
        var farTable = bytes
        put(&farTable, 32, 1 << 63, 8)  // e_phoff far beyond the file
        expectError(.truncated(field: "e_phoff/e_phnum", offset: 1 << 63, needed: 56, fileSize: UInt64(bytes.count)),
                    field: "e_phoff") { () throws(LoaderError) in try GuestImage.elf(farTable, memorySize: memory) }
    }

    @Test("identification, type and machine are checked")
    func identification() {
        var bytes = TestELF(is64: false, entry: 0x40_0000, segments: [TestSegment(physicalAddress: 0x40_0000, data: code)]).bytes
        var notELF = bytes
        notELF[1] = 0x58
        expectError(.unsupported(field: "e_ident[EI_MAG0..3]", value: 0x464C587F, expected: "0x464C457F (\"\\x7FELF\")"),
                    field: "e_ident[EI_MAG0..3]") { () throws(LoaderError) in try GuestImage.elf(notELF, memorySize: memory) }
        put(&bytes, 16, 3, 2)  // ET_DYN
        expectError(.unsupported(field: "e_type", value: 3, expected: "2 (ET_EXEC)"), field: "e_type") {
            () throws(LoaderError) in try GuestImage.elf(bytes, memorySize: memory)
        }
        let arm = TestELF(is64: false, entry: 0, segments: [], machine: 40).bytes
        expectError(.unsupported(field: "e_machine", value: 40, expected: "3 (EM_386) for ELFCLASS32"), field: "e_machine") {
            () throws(LoaderError) in try GuestImage.elf(arm, memorySize: memory)
        }
        let empty = TestELF(is64: false, entry: 0, segments: [TestSegment(type: 4, physicalAddress: 0, data: [1])]).bytes
        expectError(.noLoadableSegments, field: "e_phnum") { () throws(LoaderError) in try GuestImage.elf(empty, memorySize: memory) }
    }

    @Test("a segment beyond the file, and p_filesz > p_memsz")
    func segmentSizes() {
        let elf = TestELF(is64: true, entry: 0x10_0000, segments: [TestSegment(physicalAddress: 0x10_0000, data: code)])
        var beyond = elf.bytes
        put(&beyond, elf.programHeader(0) + 8, 0xFFFF_FFFF_FFFF_FFF0, 8)  // p_offset: wraps with p_filesz
        expectError(.segmentBeyondFile(index: 0, offset: 0xFFFF_FFFF_FFFF_FFF0, fileSize: 3, imageSize: UInt64(beyond.count)),
                    field: "p_offset/p_filesz") { () throws(LoaderError) in try GuestImage.elf(beyond, memorySize: memory) }
        var tooLong = elf.bytes
        put(&tooLong, elf.programHeader(0) + 32, 0x100, 8)
        put(&tooLong, elf.programHeader(0) + 40, 0x200, 8)
        expectError(.segmentBeyondFile(index: 0, offset: 120, fileSize: 0x100, imageSize: 123), field: "p_offset/p_filesz") {
            () throws(LoaderError) in try GuestImage.elf(tooLong, memorySize: memory)
        }
        var fileBigger = elf.bytes
        put(&fileBigger, elf.programHeader(0) + 40, 2, 8)  // p_memsz 2 < p_filesz 3
        expectError(.fileSizeExceedsMemorySize(index: 0, fileSize: 3, memorySize: 2), field: "p_filesz") {
            () throws(LoaderError) in try GuestImage.elf(fileBigger, memorySize: memory)
        }
    }

    @Test("messages give sizes in decimal bytes and addresses in hex, and name a range that would pass 2^64", arguments: [
        (LoaderError.truncated(field: "e_phoff", offset: 0x40, needed: 56, fileSize: 64),
         "e_phoff: 56 bytes at offset 0x40 run past the end of the file (64 bytes); the file is truncated"),
        (.segmentBeyondFile(index: 0, offset: 0x1000, fileSize: 0xA2, imageSize: 100),
         "p_offset/p_filesz: segment 0 [0x1000, +0xA2 (162 bytes)) lies beyond the end of the file (100 bytes)"),
        (.fileSizeExceedsMemorySize(index: 1, fileSize: 3, memorySize: 2),
         "p_filesz: segment 1 has p_filesz 0x3 (3 bytes) > p_memsz 0x2 (2 bytes)"),
        (.outsideMemory(field: "p_paddr/p_memsz", what: "segment 0", start: 0x40_0000, size: 1, memorySize: 0x40_0000),
         "p_paddr/p_memsz: segment 0 of 1 byte at 0x400000 does not fit in guest memory (4194304 bytes)"),
        (.outsideMemory(field: "p_paddr/p_memsz", what: "segment 0", start: 0xFFFF_FFFF_FFFF_F000, size: 0x1000, memorySize: 0x40_0000),
         "p_paddr/p_memsz: segment 0 of 4096 bytes at 0xFFFFFFFFFFFFF000 would end past the end of the 64-bit address space"),
        (.noRoomForBootStructure(structure: "command line", size: 4097, ramBelowHole: 0xC000_0000),
         "command line: no free 4097 bytes for it in guest RAM below 0xC0000000; the kernel, its modules and HV's set-up take the rest (more memory or a shorter command line makes room)"),
    ])
    func messages(error: LoaderError, message: String) {
        #expect(error.description == message)
    }

    @Test("segments outside guest memory, including p_memsz = 2^63 (no overflow, no huge allocation)")
    func outsideMemory() {
        let huge = TestELF(is64: true, entry: 0x10_0000,
                           segments: [TestSegment(physicalAddress: 0x10_0000, data: code, memorySize: 1 << 63)]).bytes
        expectError(.outsideMemory(field: "p_paddr/p_memsz", what: "segment 0", start: 0x10_0000, size: 1 << 63, memorySize: memory),
                    field: "p_paddr/p_memsz") { () throws(LoaderError) in try GuestImage.elf(huge, memorySize: memory) }
        let wraps = TestELF(is64: true, entry: 1 << 63,
                            segments: [TestSegment(physicalAddress: 1 << 63, data: code, memorySize: 1 << 63)]).bytes
        expectError(.outsideMemory(field: "p_paddr/p_memsz", what: "segment 0", start: 1 << 63, size: 1 << 63, memorySize: memory),
                    field: "p_paddr/p_memsz") { () throws(LoaderError) in try GuestImage.elf(wraps, memorySize: memory) }
        let high = TestELF(is64: false, entry: 0xFFFF_F000, segments: [TestSegment(physicalAddress: 0xFFFF_F000, data: code)]).bytes
        expectError(.outsideMemory(field: "p_paddr/p_memsz", what: "segment 0", start: 0xFFFF_F000, size: 3, memorySize: memory),
                    field: "p_paddr/p_memsz") { () throws(LoaderError) in try GuestImage.elf(high, memorySize: memory) }
    }

    @Test("overlapping segments, and segments over HV's page tables or GDT")
    func overlaps() {
        let overlapping = TestELF(is64: false, entry: 0x40_0000, segments: [
            TestSegment(physicalAddress: 0x40_0000, data: code, memorySize: 0x2000),
            TestSegment(physicalAddress: 0x40_1000, data: code),
        ]).bytes
        expectError(.segmentsOverlap(first: 0, second: 1, start: 0x40_1000, end: 0x40_1003), field: "p_paddr/p_memsz") {
            () throws(LoaderError) in try GuestImage.elf(overlapping, memorySize: memory)
        }
        let onTables = TestELF(is64: true, entry: 0x1000, segments: [TestSegment(physicalAddress: 0x1000, data: code)]).bytes
        expectError(.overlapsSetUpStructure(field: "p_paddr", what: "segment 0", start: 0x1000, end: 0x1003, structure: "pml4",
                                            structureStart: 0x1000, structureEnd: 0x2000), field: "p_paddr") {
            () throws(LoaderError) in try GuestImage.elf(onTables, memorySize: memory)
        }
        let onGDT = TestELF(is64: false, entry: 0x400, segments: [TestSegment(physicalAddress: 0x400, data: [UInt8](repeating: 0, count: 0x200))]).bytes
        expectError(.overlapsSetUpStructure(field: "p_paddr", what: "segment 0", start: 0x400, end: 0x600, structure: "gdt",
                                            structureStart: 0x500, structureEnd: 0x518), field: "p_paddr") {
            () throws(LoaderError) in try GuestImage.elf(onGDT, memorySize: memory)
        }
    }

    @Test("an entry point outside every loaded segment")
    func entryOutside() {
        let elf = TestELF(is64: true, entry: 0x10_0003, segments: [TestSegment(physicalAddress: 0x10_0000, data: code)]).bytes
        expectError(.entryOutsideLoadedMemory(field: "e_entry", entry: 0x10_0003), field: "e_entry") {
            () throws(LoaderError) in try GuestImage.elf(elf, memorySize: memory)
        }
    }

    @Test("a flat program can start in protected mode too")
    func flatProtected() throws {
        let image = try GuestImage.flat(code, mode: .protected, memorySize: memory)
        #expect(image.mode == .protected && image.registers.rip == 0x10_0000 && image.mode.codeSize == .bits32)
    }
}
