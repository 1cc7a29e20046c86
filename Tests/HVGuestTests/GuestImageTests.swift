// The CPU-mode set-up: page tables walked by hand, GDT bytes decoded field by field, register
// state, and every validation error.

import HVGuest
import HVModel
import Testing

/// Guest memory assembled from an image's chunks, for reading tables back.
struct ChunkMemory {
    var chunks: [GuestImage.Chunk]

    func u64(at address: UInt64) -> UInt64? {
        for chunk in chunks {
            let start = chunk.address.rawValue
            guard address >= start, address + 8 <= start + UInt64(chunk.bytes.count) else { continue }
            let offset = Int(address - start)
            return (0..<8).reduce(UInt64(0)) { $0 | UInt64(chunk.bytes[offset + $1]) << UInt64($1 * 8) }
        }
        return nil
    }

    /// Translates `virtual` through 4-level paging from `cr3` (SDM Vol. 3A, 4.5.4, Figure 4-9):
    /// PML4 index bits 47:39, PDPT 38:30, PD 29:21, 2 MiB offset 20:0.
    func translate(_ virtual: UInt64, cr3: UInt64) -> UInt64? {
        let addressMask: UInt64 = 0x000F_FFFF_FFFF_F000
        guard let pml4e = u64(at: (cr3 & addressMask) + ((virtual >> 39) & 0x1FF) * 8), pml4e & 1 == 1,
              let pdpte = u64(at: (pml4e & addressMask) + ((virtual >> 30) & 0x1FF) * 8), pdpte & 1 == 1,
              pdpte & 0x80 == 0,
              let pde = u64(at: (pdpte & addressMask) + ((virtual >> 21) & 0x1FF) * 8), pde & 1 == 1,
              pde & 0x80 != 0
        else { return nil }
        #expect(pml4e & 2 != 0 && pdpte & 2 != 0 && pde & 2 != 0, "every level is writable")
        return (pde & 0x000F_FFFF_FFE0_0000) | (virtual & 0x1F_FFFF)
    }
}

/// The fields of an 8-byte segment descriptor (SDM Vol. 3A, 3.4.5, Figure 3-8).
struct DecodedDescriptor: Equatable {
    var base: UInt64, limit: UInt32, type: UInt8, s: Bool, dpl: UInt8, present: Bool
    var long: Bool, defaultSize32: Bool, granularity: Bool

    init(_ bytes: ArraySlice<UInt8>) {
        let b = Array(bytes)
        var limit = UInt32(b[0]) | UInt32(b[1]) << 8 | UInt32(b[6] & 0x0F) << 16
        base = UInt64(b[2]) | UInt64(b[3]) << 8 | UInt64(b[4]) << 16 | UInt64(b[7]) << 24
        type = b[5] & 0x0F
        s = b[5] & 0x10 != 0
        dpl = (b[5] >> 5) & 3
        present = b[5] & 0x80 != 0
        long = b[6] & 0x20 != 0
        defaultSize32 = b[6] & 0x40 != 0
        granularity = b[6] & 0x80 != 0
        if granularity { limit = limit << 12 | 0xFFF }
        self.limit = limit
    }

    init(_ segment: Segment) {
        base = segment.base
        limit = segment.limit
        type = segment.type
        s = segment.codeOrData
        dpl = segment.dpl
        present = segment.present
        long = segment.long
        defaultSize32 = segment.defaultSize32
        granularity = segment.granularity
    }
}

struct LongModeImageTests {
    let program: [UInt8] = [0xF4]

    @Test func pageTablesIdentityMapTheFirstFourGiB() throws {
        let image = try GuestImage.flat(program, mode: .long, memorySize: 16 << 20)
        let memory = ChunkMemory(chunks: image.chunks)
        let cr3 = image.specialRegisters.cr3
        #expect(cr3 == 0x1000)
        for address: UInt64 in [0, 0x500, 0x7C00, 0x10_0000, 0x1F_FFFF, 0x20_0000, 0xFF_FFFF, 0x4000_0123,
                                0xD000_0000, 0xFEE0_0030, 0xFFFF_FFFF]
        {
            #expect(memory.translate(address, cr3: cr3) == address, "0x\(String(address, radix: 16))")
        }
        #expect(memory.translate(0x1_0000_0000, cr3: cr3) == nil, "nothing above 4 GiB for 16 MiB of RAM")
        #expect(image.chunk(named: "page directories")?.bytes.count == 4 * 4096)
    }

    @Test func largeMemoryIsMappedToItsRoundedUpEnd() throws {
        let memorySize: UInt64 = (5 << 30) + (4 << 20)
        let image = try GuestImage.flat(program, mode: .long, memorySize: memorySize)
        let memory = ChunkMemory(chunks: image.chunks)
        for address: UInt64 in [0x1_0000_0000, 0x1_4000_0000, 0x1_7FFF_FFFF] {
            #expect(memory.translate(address, cr3: image.specialRegisters.cr3) == address)
        }
        #expect(memory.translate(0x1_8000_0000, cr3: image.specialRegisters.cr3) == nil)
        #expect(image.chunk(named: "page directories")?.bytes.count == 6 * 4096)
    }

    @Test func gdtDescriptorsMatchTheSegmentRegisters() throws {
        let image = try GuestImage.flat(program, mode: .long, memorySize: 2 << 20)
        let special = image.specialRegisters
        let gdt = try #require(image.chunk(named: "gdt"))
        #expect(gdt.address.rawValue == special.gdt.base)
        #expect(Int(special.gdt.limit) == gdt.bytes.count - 1)
        #expect(gdt.bytes[0..<8].allSatisfy { $0 == 0 }, "entry 0 is the null descriptor")
        for segment in [special.cs, special.ds, special.es, special.fs, special.gs, special.ss] {
            let offset = Int(segment.selector)
            #expect(DecodedDescriptor(gdt.bytes[offset..<offset + 8]) == DecodedDescriptor(segment))
        }
        // The well-known encodings of a flat 64-bit code and data segment.
        #expect(Array(gdt.bytes[8..<16]) == [0xFF, 0xFF, 0, 0, 0, 0x9B, 0xAF, 0])
        #expect(Array(gdt.bytes[16..<24]) == [0xFF, 0xFF, 0, 0, 0, 0x93, 0xCF, 0])
    }

    @Test func registersEnterSixtyFourBitMode() throws {
        let image = try GuestImage.flat([0x90, 0xF4], mode: .long, entry: 0x10_0001, memorySize: 2 << 20)
        let special = image.specialRegisters
        #expect(image.mode == .long)
        #expect(special.cs.selector == 0x08 && special.cs.long && !special.cs.defaultSize32 && special.cs.type == 0xB)
        #expect(special.cs.present && special.cs.dpl == 0)
        for data in [special.ds, special.es, special.fs, special.gs, special.ss] {
            #expect(data.selector == 0x10 && data.type == 0x3 && data.defaultSize32 && !data.long)
        }
        #expect(special.tr.type == 0xB && special.tr.present && !special.tr.codeOrData)
        #expect(special.ldt.type == 0x2 && special.ldt.present && !special.ldt.codeOrData)
        #expect(special.idt.limit == 0)
        #expect(special.cr0 == 0x8001_0033)
        #expect(special.cr4 == 0x620)
        #expect(special.efer == 0x500)
        #expect(image.registers.rip == 0x10_0001)
        #expect(image.registers.rsp == 0x8_0000)
        #expect(image.registers.rflags == 0x2)
        let program = try #require(image.chunk(named: "program"))
        #expect(program.address == 0x10_0000 && program.bytes == [0x90, 0xF4])
    }

    @Test func setUpStructuresDoNotOverlapAndFitInMemory() throws {
        let image = try GuestImage.flat(program, mode: .long, memorySize: 2 << 20)
        let ranges = image.chunks.map { ($0.address.rawValue, $0.address.rawValue + UInt64($0.bytes.count)) }
            .sorted { $0.0 < $1.0 }
        for (first, second) in zip(ranges, ranges.dropFirst()) {
            #expect(first.1 <= second.0)
        }
        #expect(ranges.last!.1 <= 2 << 20)
        #expect(image.chunks.map(\.name) == ["program", "gdt", "pml4", "pdpt", "page directories"])
    }
}

struct RealModeImageTests {
    @Test func codeSegmentAndOffsetReachTheEntry() {
        #expect(GuestImage.realModeCodeSegment(entry: 0x7C00) == (0, 0x7C00))
        #expect(GuestImage.realModeCodeSegment(entry: 0xFFFF) == (0, 0xFFFF))
        #expect(GuestImage.realModeCodeSegment(entry: 0x1_0000) == (0x1000, 0))
        #expect(GuestImage.realModeCodeSegment(entry: 0x1_2345) == (0x1234, 5))
        #expect(GuestImage.realModeCodeSegment(entry: 0xF_FFFF) == (0xFFFF, 0xF))
    }

    @Test func segmentsAreRealModeShaped() throws {
        let image = try GuestImage.flat([0xF4], mode: .real, memorySize: 1 << 20)
        let special = image.specialRegisters
        #expect(image.mode == .real)
        #expect(image.chunks.map(\.name) == ["program"])
        #expect(image.chunks[0].address == 0x7C00)
        for segment in [special.cs, special.ds, special.es, special.fs, special.gs, special.ss] {
            #expect(segment.selector == 0 && segment.base == 0 && segment.limit == 0xFFFF && segment.present)
            #expect(segment.codeOrData && !segment.long && !segment.defaultSize32)
        }
        #expect(special.cs.type == 0xB && special.ds.type == 0x3 && special.ss.type == 0x3)
        #expect(special.tr.type == 0xB && special.tr.present && !special.tr.codeOrData)
        #expect(special.ldt.type == 0x2 && special.ldt.present)
        #expect(special.cr0 == 0x10 && special.cr4 == 0 && special.efer == 0)
        #expect(special.idt == DescriptorTable(base: 0, limit: 0x3FF))
        #expect(image.registers.rip == 0x7C00 && image.registers.rsp == 0x7000 && image.registers.rflags == 0x2)
    }

    @Test func entryAbove64KiBMovesTheCodeSegment() throws {
        let image = try GuestImage.flat([0x90, 0xF4], mode: .real, loadAddress: 0x2_0000, entry: 0x2_0001,
                                        memorySize: 1 << 20)
        let special = image.specialRegisters
        #expect(special.cs.selector == 0x2000 && special.cs.base == 0x2_0000)
        #expect(special.ds.selector == 0x2000 && special.ds.base == 0x2_0000)
        #expect(special.ss.selector == 0 && image.registers.rsp == 0x7000)
        #expect(image.registers.rip == 1)
    }
}

struct GuestImageValidationTests {
    @Test func everyBadArgumentHasItsOwnError() {
        let cases: [(GuestImageError, String, () throws(GuestImageError) -> GuestImage)] = [
            (.emptyProgram, "program:", { () throws(GuestImageError) in try GuestImage.flat([], mode: .long, memorySize: 4 << 20) }),
            (.programOutsideMemory(loadAddress: 0x10_0000, size: 2, memorySize: 0x10_0001), "ends at 0x100002, past the end of guest memory (memorySize 1048577 bytes)",
             { () throws(GuestImageError) in try GuestImage.flat([1, 2], mode: .real, loadAddress: 0x10_0000, memorySize: 0x10_0001) }),
            (.programOutsideMemory(loadAddress: .max, size: 2, memorySize: .max), "would end past the end of the 64-bit address space",
             { () throws(GuestImageError) in try GuestImage.flat([1, 2], mode: .long, loadAddress: .max, memorySize: .max) }),
            (.entryOutsideProgram(entry: 0x7C02, loadAddress: 0x7C00, programEnd: 0x7C02), "entry: 0x7C02",
             { () throws(GuestImageError) in try GuestImage.flat([1, 2], mode: .real, entry: 0x7C02, memorySize: 1 << 20) }),
            (.entryOutsideProgram(entry: 0x7BFF, loadAddress: 0x7C00, programEnd: 0x7C02), "entry:",
             { () throws(GuestImageError) in try GuestImage.flat([1, 2], mode: .real, entry: 0x7BFF, memorySize: 1 << 20) }),
            (.realModeProgramAbove1MiB(loadAddress: 0xF_FFFF, programEnd: 0x10_0001), "1 MiB",
             { () throws(GuestImageError) in try GuestImage.flat([1, 2], mode: .real, loadAddress: 0xF_FFFF, memorySize: 2 << 20) }),
            (.memoryTooSmallForLongMode(memorySize: 0x10_0000, minimum: 0x20_0000), "memorySize: 1048576 bytes is too small for long mode",
             { () throws(GuestImageError) in try GuestImage.flat([1], mode: .long, loadAddress: 0x9_0000, memorySize: 1 << 20) }),
            (.memoryTooLargeForIdentityMap(memorySize: 65 << 30, maximum: 64 << 30), "memorySize:",
             { () throws(GuestImageError) in try GuestImage.flat([1], mode: .long, memorySize: 65 << 30) }),
            (.programOverlapsSetUpStructure(structure: "gdt", structureStart: 0x500, structureEnd: 0x518,
                                            loadAddress: 0x400, programEnd: 0x501), "the gdt at [0x500, 0x518)",
             { () throws(GuestImageError) in try GuestImage.flat([UInt8](repeating: 0, count: 0x101), mode: .long, loadAddress: 0x400, memorySize: 2 << 20) }),
            (.programOverlapsSetUpStructure(structure: "pml4", structureStart: 0x1000, structureEnd: 0x2000,
                                            loadAddress: 0x1800, programEnd: 0x1801), "pml4",
             { () throws(GuestImageError) in try GuestImage.flat([1], mode: .long, loadAddress: 0x1800, memorySize: 2 << 20) }),
            (.programOverlapsSetUpStructure(structure: "pdpt", structureStart: 0x2000, structureEnd: 0x3000,
                                            loadAddress: 0x2FFF, programEnd: 0x3000), "pdpt",
             { () throws(GuestImageError) in try GuestImage.flat([1], mode: .long, loadAddress: 0x2FFF, memorySize: 2 << 20) }),
            (.programOverlapsSetUpStructure(structure: "page directories", structureStart: 0x3000, structureEnd: 0x7000,
                                            loadAddress: 0x6FFF, programEnd: 0x7000), "page directories",
             { () throws(GuestImageError) in try GuestImage.flat([1], mode: .long, loadAddress: 0x6FFF, memorySize: 2 << 20) }),
            (.programOverlapsSetUpStructure(structure: "stack", structureStart: 0x7_0000, structureEnd: 0x8_0000,
                                            loadAddress: 0x7_FFFF, programEnd: 0x8_0001), "stack",
             { () throws(GuestImageError) in try GuestImage.flat([1, 2], mode: .long, loadAddress: 0x7_FFFF, memorySize: 2 << 20) }),
        ]
        for (expected, phrase, make) in cases {
            #expect(throws: expected) { try make() }
            #expect(expected.description.contains(phrase), "\(expected.description) mentions \(phrase)")
        }
    }

    @Test func programsBetweenTheStructuresAreAccepted() throws {
        _ = try GuestImage.flat([1], mode: .long, loadAddress: 0x518, memorySize: 2 << 20)
        _ = try GuestImage.flat([UInt8](repeating: 0, count: 0x6_9000), mode: .long, loadAddress: 0x7000, memorySize: 2 << 20)
        _ = try GuestImage.flat([1], mode: .long, loadAddress: 0x8_0000, memorySize: 2 << 20)
        _ = try GuestImage.flat([1], mode: .real, loadAddress: 0xF_FFFF, memorySize: 1 << 20)
    }
}

struct GuestProgramTests {
    @Test func longModeProgramsAssembleAtOneMiB() throws {
        let program = try GuestProgram.longMode { asm in
            let here = asm.label()
            asm.bind(here)
            asm.mov(.rax, here)
            asm.hlt()
        }
        #expect(program.mode == .long && program.loadAddress == 0x10_0000 && program.entry == 0x10_0000)
        #expect(program.code == [0x48, 0xC7, 0xC0, 0x00, 0x00, 0x10, 0x00, 0xF4])
        let image = try program.image(memorySize: 4 << 20)
        #expect(image.registers.rip == 0x10_0000)
        #expect(image.chunk(named: "program")?.bytes == program.code)
    }

    @Test func realModeLabelsAreOffsetsFromTheCodeSegment() throws {
        let low = try GuestProgram.realMode { asm in
            let here = asm.label()
            asm.bind(here)
            asm.mov(.si, here)
        }
        #expect(low.code == [0xBE, 0x00, 0x7C])

        let high = try GuestProgram.realMode(loadAddress: 0x2_0004) { asm in
            let here = asm.label()
            asm.bind(here)
            asm.mov(.si, here)
        }
        #expect(high.code == [0xBE, 0x04, 0x00])
        let image = try high.image(memorySize: 1 << 20)
        #expect(image.specialRegisters.ds.base + 4 == 0x2_0004, "DS:SI reaches the label")
        #expect(image.specialRegisters.cs.base + image.registers.rip == 0x2_0004)
    }

    @Test func assemblerErrorsPropagateOutOfTheBuilder() {
        #expect(throws: AssemblerError.unboundLabel(label: "nowhere", usedBy: "jmp")) {
            try GuestProgram.longMode { asm in
                asm.jmp(asm.label("nowhere"))
            }
        }
    }
}
