// Entering 64-bit mode directly from the monitor: a GDT, 4-level identity page tables and the
// control registers IA-32e mode requires (SDM Vol. 3A, 9.8.5 "initializing IA-32e mode"), the way
// kvmtool and the LWN "Using the KVM API" example set up a long-mode guest.

import HVModel

/// Page-table entry flags (SDM Vol. 3A, 4.5.4, Tables 4-15 to 4-18).
enum PageTableEntry {
    static let present: UInt64 = 1 << 0
    static let writable: UInt64 = 1 << 1
    /// PS in a page-directory entry: the entry maps a 2 MiB page.
    static let pageSize: UInt64 = 1 << 7
    /// Bits 51:12 of a table entry hold the next table's address.
    static let addressMask: UInt64 = 0x000F_FFFF_FFFF_F000
    static let twoMiB: UInt64 = 2 << 20
    static let oneGiB: UInt64 = 1 << 30
}

extension GuestImage {
    /// The 64-bit code segment: L = 1 (so D = 0), type 0xB, DPL 0, flat 4 GiB limit.
    static var longModeCodeSegment: Segment {
        Segment(base: 0, limit: 0xFFFF_FFFF, selector: codeSelector, type: 0xB, long: true, granularity: true)
    }

    /// The data segment: type 0x3 read/write accessed, D/B = 1, flat 4 GiB limit.
    static var longModeDataSegment: Segment {
        Segment(base: 0, limit: 0xFFFF_FFFF, selector: dataSelector, type: 0x3, defaultSize32: true,
                granularity: true)
    }

    /// The 8-byte descriptor for `segment` (SDM Vol. 3A, 3.4.5, Figure 3-8). With G = 1 the
    /// 20-bit limit field counts 4 KiB units, so it holds limit >> 12.
    static func descriptor(for segment: Segment) -> UInt64 {
        let limit = UInt64(segment.granularity ? segment.limit >> 12 : segment.limit) & 0xF_FFFF
        let base = segment.base & 0xFFFF_FFFF
        var access = UInt64(segment.type & 0xF)
        if segment.codeOrData { access |= 1 << 4 }
        access |= UInt64(segment.dpl & 3) << 5
        if segment.present { access |= 1 << 7 }
        var flags: UInt64 = 0
        if segment.available { flags |= 1 << 0 }
        if segment.long { flags |= 1 << 1 }
        if segment.defaultSize32 { flags |= 1 << 2 }
        if segment.granularity { flags |= 1 << 3 }
        return (limit & 0xFFFF) | (base & 0xFF_FFFF) << 16 | access << 40 | (limit >> 16) << 48 | flags << 52
            | (base >> 24) << 56
    }

    /// Bytes the identity map covers: all of the first 4 GiB, or all of memory rounded up to
    /// 1 GiB (one page directory each) when larger.
    static func identityMappedSize(memorySize: UInt64) -> UInt64 {
        let roundedUp = (memorySize + PageTableEntry.oneGiB - 1) / PageTableEntry.oneGiB * PageTableEntry.oneGiB
        return max(4 << 30, roundedUp)
    }

    static func pageDirectoryCount(memorySize: UInt64) -> Int {
        Int(identityMappedSize(memorySize: memorySize) / PageTableEntry.oneGiB)
    }

    /// The regions a long-mode program must not overlap, in address order.
    static func longModeReservedRegions(memorySize: UInt64) -> [(name: String, start: UInt64, end: UInt64)] {
        let directories = UInt64(pageDirectoryCount(memorySize: memorySize))
        return [
            ("gdt", gdtAddress, gdtAddress + 3 * 8),
            ("pml4", pml4Address, pml4Address + 0x1000),
            ("pdpt", pdptAddress, pdptAddress + 0x1000),
            ("page directories", pageDirectoryAddress, pageDirectoryAddress + directories * 0x1000),
            ("stack", longModeStackTop - longModeStackSize, longModeStackTop),
        ]
    }

    static func checkLongModeMemory(_ memorySize: UInt64) throws(GuestImageError) {
        guard memorySize >= longModeMinimumMemorySize else {
            throw .memoryTooSmallForLongMode(memorySize: memorySize, minimum: longModeMinimumMemorySize)
        }
        guard memorySize <= longModeMaximumMemorySize else {
            throw .memoryTooLargeForIdentityMap(memorySize: memorySize, maximum: longModeMaximumMemorySize)
        }
    }

    /// PML4[0] -> PDPT, PDPT[i] -> page directory i, each directory entry a 2 MiB page, so
    /// virtual address v maps to physical v (SDM Vol. 3A, 4.5 "4-level paging").
    static func identityPageTables(memorySize: UInt64) -> (pml4: [UInt8], pdpt: [UInt8], directories: [UInt8]) {
        let table = PageTableEntry.present | PageTableEntry.writable
        var pml4 = [UInt8](repeating: 0, count: 0x1000)
        store(pdptAddress | table, at: 0, in: &pml4)
        let count = pageDirectoryCount(memorySize: memorySize)
        var pdpt = [UInt8](repeating: 0, count: 0x1000)
        var directories = [UInt8](repeating: 0, count: count * 0x1000)
        for directory in 0..<count {
            store((pageDirectoryAddress + UInt64(directory) * 0x1000) | table, at: directory * 8, in: &pdpt)
            for entry in 0..<512 {
                let page = UInt64(directory * 512 + entry) * PageTableEntry.twoMiB
                store(page | table | PageTableEntry.pageSize, at: (directory * 512 + entry) * 8, in: &directories)
            }
        }
        return (pml4, pdpt, directories)
    }

    static func longModeImage(program: Chunk, entry: UInt64, memorySize: UInt64) -> GuestImage {
        var (gdt, special) = flatSegments(code: longModeCodeSegment, data: longModeDataSegment)
        let tables = identityPageTables(memorySize: memorySize)
        special.cr3 = pml4Address
        special.cr4 = ControlBits.cr4PAE | ControlBits.cr4OSFXSR | ControlBits.cr4OSXMMEXCPT
        special.cr0 = ControlBits.cr0PE | ControlBits.cr0MP | ControlBits.cr0ET | ControlBits.cr0NE
            | ControlBits.cr0WP | ControlBits.cr0PG
        special.efer = ControlBits.eferLME | ControlBits.eferLMA
        special.apicBase = resetAPICBase

        var registers = Registers()
        registers.rip = entry
        registers.rsp = longModeStackTop
        registers.rflags = 0x2
        let chunks = [
            program,
            Chunk(address: GuestPhysicalAddress(gdtAddress), bytes: gdt, name: "gdt"),
            Chunk(address: GuestPhysicalAddress(pml4Address), bytes: tables.pml4, name: "pml4"),
            Chunk(address: GuestPhysicalAddress(pdptAddress), bytes: tables.pdpt, name: "pdpt"),
            Chunk(address: GuestPhysicalAddress(pageDirectoryAddress), bytes: tables.directories, name: "page directories"),
        ]
        return GuestImage(chunks: chunks, registers: registers, specialRegisters: special, mode: .long)
    }

    /// A three-entry GDT (null, `code` at `codeSelector`, `data` at `dataSelector`; SDM Vol. 3A,
    /// 3.4.5) and the special registers that use it: CS = code, DS/ES/FS/GS/SS = data, TR and
    /// LDTR as after reset, GDTR at `gdtAddress`, and an empty IDT, so that any exception becomes
    /// a triple fault, which KVM reports as a shutdown.
    static func flatSegments(code: Segment, data: Segment) -> (gdt: [UInt8], special: SpecialRegisters) {
        var gdt = [UInt8](repeating: 0, count: 3 * 8)
        store(descriptor(for: code), at: Int(codeSelector), in: &gdt)
        store(descriptor(for: data), at: Int(dataSelector), in: &gdt)
        var special = SpecialRegisters()
        special.cs = code
        special.ds = data
        special.es = data
        special.fs = data
        special.gs = data
        special.ss = data
        resetSystemSegments(&special)
        special.gdt = DescriptorTable(base: gdtAddress, limit: UInt16(gdt.count - 1))
        special.idt = DescriptorTable(base: 0, limit: 0)
        return (gdt, special)
    }

    private static func store(_ value: UInt64, at offset: Int, in bytes: inout [UInt8]) {
        for index in 0..<8 { bytes[offset + index] = UInt8(truncatingIfNeeded: value >> UInt64(index * 8)) }
    }
}
