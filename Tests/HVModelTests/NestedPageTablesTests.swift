// SVM's nested page tables from HVModel's builder, checked by walking them with HVModel's own
// 4-level page walker (a nested walk is a long-mode walk with N_CR3 as CR3, made as a user
// access: AMD APM Vol. 2, 15.25.5).
import HVModel
import Testing

@Suite("SVM nested page tables")
struct NestedPageTablesTests {
    static func walk(_ npt: NestedPageTables<PageTablePool>, _ guest: UInt64, write: Bool = false) -> GuestTranslation? {
        var memory = npt.tables
        let context = GuestPagingContext(mode: .level4, cr3: npt.root.rawValue)
        return try? GuestPagingWalker.translate(GuestVirtualAddress(guest), GuestAccess(write ? .write : .read, userMode: true),
                                                context: context, memory: &memory)
    }

    @Test("RAM in 2 MiB pages where both sides align, 4 KiB pages elsewhere; nothing else mapped")
    func mapsRAM() throws {
        var npt = try NestedPageTables(tables: PageTablePool(base: 0x100_0000))
        try npt.map(GuestPhysicalAddress(0), size: 16 << 20, to: HostPhysicalAddress(0x4000_0000))
        try npt.map(GuestPhysicalAddress(16 << 20), size: 0x3000, to: HostPhysicalAddress(0x7000_1000))
        let large = try #require(Self.walk(npt, 0x12_3456))
        #expect(large.physicalAddress.rawValue == 0x4012_3456 && large.pageSize == .size2MiB && large.writable && large.userMode)
        let small = try #require(Self.walk(npt, (16 << 20) + 0x2010))
        #expect(small.physicalAddress.rawValue == 0x7000_3010 && small.pageSize == .size4KiB)
        #expect(Self.walk(npt, (16 << 20) + 0x3000) == nil)
        #expect(Self.walk(npt, 0xFEE0_0000) == nil)
        // PML4, PDPT, PD, and one PT for the 4 KiB pages.
        #expect(npt.tables.pagesInUse == 4)
    }

    @Test("a read-only page and an MMIO hole in a 2 MiB page split it, and only it")
    func splitsForProtectionAndHoles() throws {
        var npt = try NestedPageTables(tables: PageTablePool(base: 0x100_0000))
        try npt.map(GuestPhysicalAddress(0), size: 4 << 20, to: HostPhysicalAddress(0x4000_0000))
        try npt.protect(GuestPhysicalAddress(0x5000), size: 0x1000, writable: false)
        try npt.unmap(GuestPhysicalAddress(0x6000), size: 0x1000)
        #expect(Self.walk(npt, 0x5000, write: true) == nil)  // a write faults
        #expect(Self.walk(npt, 0x5008)?.physicalAddress.rawValue == 0x4000_5008)  // a read goes through
        #expect(Self.walk(npt, 0x6000) == nil)
        #expect(Self.walk(npt, 0x7000, write: true)?.physicalAddress.rawValue == 0x4000_7000)
        #expect(Self.walk(npt, 0x4000, write: true)?.pageSize == .size4KiB)
        #expect(Self.walk(npt, 0x20_0000, write: true)?.pageSize == .size2MiB)  // the next 2 MiB stays whole
        #expect(npt.tables.pagesInUse == 4)
    }

    @Test("unmapping everything frees every table but the root; mapping over a split page replaces it")
    func freesTables() throws {
        var npt = try NestedPageTables(tables: PageTablePool(base: 0x100_0000))
        try npt.map(GuestPhysicalAddress(0), size: 4 << 20, to: HostPhysicalAddress(0x4000_0000))
        try npt.unmap(GuestPhysicalAddress(0x1000), size: 0x1000)
        #expect(npt.tables.pagesInUse == 4)
        try npt.map(GuestPhysicalAddress(0), size: 2 << 20, to: HostPhysicalAddress(0x8000_0000))
        #expect(npt.tables.pagesInUse == 3)  // the split page's PT went with the new 2 MiB leaf
        #expect(Self.walk(npt, 0x1000)?.physicalAddress.rawValue == 0x8000_1000)
        try npt.unmap(GuestPhysicalAddress(0), size: 4 << 20)
        #expect(npt.tables.pagesInUse == 1)
        #expect(Self.walk(npt, 0) == nil)
    }

    @Test("misaligned and out-of-range edits are refused by value, the tables untouched")
    func refusals() throws {
        var npt = try NestedPageTables(tables: PageTablePool(base: 0x100_0000))
        #expect(throws: NestedPageTableError.misaligned(0x1001)) { try npt.map(GuestPhysicalAddress(0x1001), size: 0x1000, to: HostPhysicalAddress(0)) }
        #expect(throws: NestedPageTableError.misaligned(0x10)) { try npt.map(GuestPhysicalAddress(0), size: 0x1000, to: HostPhysicalAddress(0x10)) }
        #expect(throws: NestedPageTableError.outOfRange(1 << 48)) { try npt.map(GuestPhysicalAddress(1 << 48), size: 0x1000, to: HostPhysicalAddress(0)) }
        #expect(throws: NestedPageTableError.outOfTables) {
            var small = try NestedPageTables(tables: PageTablePool(base: 0x100_0000, pageLimit: 2))
            try small.map(GuestPhysicalAddress(0), size: 0x1000, to: HostPhysicalAddress(0))
        }
        #expect(npt.tables.pagesInUse == 1)
    }
}
