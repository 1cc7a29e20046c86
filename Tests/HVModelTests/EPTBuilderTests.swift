import HVModel
import Testing

@Suite("EPT builder")
struct EPTBuilderTests {
    @Test("identity-mapping 64 GiB with 1 GiB pages uses 2 table pages")
    func identity64GiBHuge() throws {
        var b = try EPTBuilder(tables: PageTablePool())
        try b.identityMap(0, size: 64 << 30)
        let layout = try EPTLayout.census(of: b.pointer(), memory: &b.tables)
        #expect(layout.tablePages == 2 && b.tables.pagesInUse == 2)
        #expect(layout.levels.map(\.leaves) == [0, 64, 0, 0])
        #expect(layout.mappedBytes == 64 << 30)
    }

    @Test("table pages match the arithmetic for 2 MiB and 4 KiB leaves", arguments: [
        (UInt64(64) << 30, false, 66), (UInt64(1) << 30, true, 515), (UInt64(3) << 29, true, 1 + 1 + 2 + 768),
    ])
    func arithmetic(size: UInt64, smallPages: Bool, expected: Int) throws {
        var options = EPTBuilderOptions()
        if smallPages { options.hugePages = false } else { options.capabilities = EPTCapabilities(rawValue: EPTCapabilities.modern.rawValue & ~(1 << 17)) }
        var b = try EPTBuilder(tables: PageTablePool(), options: options)
        try b.identityMap(0, size: size)
        let layout = try EPTLayout.census(of: b.pointer(), memory: &b.tables)
        #expect(layout.tablePages == expected)
        #expect(layout.tablePages == EPTLayout.expectedTablePages(identitySize: size, pageSize: smallPages ? .size4KiB : .size2MiB))
        #expect(layout.mappedBytes == size)
    }

    @Test("largest pages that fit: an unaligned range gets 4 KiB edges, 2 MiB middles and 1 GiB where aligned")
    func largestPages() throws {
        var b = try EPTBuilder(tables: PageTablePool())
        // 0x3FE0_0000 .. 0x8020_1000: 4 KiB? no: a 2 MiB page, a 1 GiB page, a 2 MiB page, a 4 KiB page.
        try b.map(0x3FE0_0000, size: 0x4040_1000, to: 0x1_3FE0_0000, permissions: .readWrite)
        let w = b.walker()
        #expect(try w.translate(0x3FE0_0000, .read, memory: &b.tables).pageSize == .size2MiB)
        #expect(try w.translate(0x4000_0000, .read, memory: &b.tables).pageSize == .size1GiB)
        #expect(try w.translate(0x8000_0000, .read, memory: &b.tables).pageSize == .size2MiB)
        let tail = try w.translate(0x8020_0FFF, .write, memory: &b.tables)
        #expect(tail.pageSize == .size4KiB && tail.hostPhysical == 0x1_8020_0FFF)
        #expect(eptFault { _ = try w.translate(0x8020_1000, .read, memory: &b.tables) }?.violation != nil)
        // A host address not aligned like the guest one forces 4 KiB pages.
        var c = try EPTBuilder(tables: PageTablePool())
        try c.map(0, size: 2 << 20, to: 0x1000, permissions: .readWrite)
        #expect(try c.walker().translate(0x1F_F000, .read, memory: &c.tables).hostPhysical == 0x20_0000)
        #expect(try EPTLayout.census(of: c.pointer(), memory: &c.tables).levels[3].leaves == 512)
    }

    @Test("protecting part of a huge page splits it; restoring the rights merges it back")
    func splitAndMerge() throws {
        var b = try EPTBuilder(tables: PageTablePool())
        try b.identityMap(0, size: 1 << 30)
        #expect(b.tables.pagesInUse == 2)
        try b.protect(0x1234_5000, size: 0x1000, permissions: .read)
        #expect(b.tables.pagesInUse == 4) // 1 GiB -> PD of 2 MiB leaves -> one PT of 4 KiB leaves
        let w = b.walker()
        #expect(eptFault { _ = try w.translate(0x1234_5008, .write, memory: &b.tables) }?.violation?.qualification == [.dataWrite, .readable])
        #expect(try w.translate(0x1234_6000, .write, memory: &b.tables).pageSize == .size4KiB)
        #expect(try w.translate(0x1260_0000, .fetch, memory: &b.tables).pageSize == .size2MiB)
        try b.protect(0x1234_5000, size: 0x1000, permissions: .all)
        #expect(b.tables.pagesInUse == 2)
        #expect(try w.translate(0x1234_5008, .write, memory: &b.tables).pageSize == .size1GiB)
        // Without huge pages nothing merges.
        var small = try EPTBuilder(tables: PageTablePool(), options: EPTBuilderOptions(hugePages: false))
        try small.identityMap(0, size: 2 << 20)
        try small.protect(0, size: 4096, permissions: .read)
        try small.protect(0, size: 4096, permissions: .all)
        #expect(small.tables.pagesInUse == 4)
    }

    @Test("unmapping frees tables that become empty, splitting a huge page it cuts")
    func unmapFrees() throws {
        var b = try EPTBuilder(tables: PageTablePool(), options: EPTBuilderOptions(hugePages: false))
        try b.identityMap(0x4000_0000, size: 4 << 20)
        #expect(b.tables.pagesInUse == 1 + 1 + 1 + 2)
        try b.unmap(0x4000_0000, size: 4 << 20)
        #expect(b.tables.pagesInUse == 1)
        var h = try EPTBuilder(tables: PageTablePool())
        try h.identityMap(0, size: 2 << 20)
        try h.unmap(0x1000, size: 0x1000)
        let w = h.walker()
        #expect(eptFault { _ = try w.translate(0x1000, .read, memory: &h.tables) }?.violation?.notPresentLevel == .pageTable)
        #expect(try w.translate(0x2000, .read, memory: &h.tables).pageSize == .size4KiB)
        #expect(try EPTLayout.census(of: h.pointer(), memory: &h.tables).mappedBytes == (2 << 20) - 4096)
    }

    @Test("the builder refuses what would be a misconfiguration or out of range")
    func refusals() throws {
        var b = try EPTBuilder(tables: PageTablePool())
        #expect(throws: EPTBuildError.writeWithoutRead) { try b.identityMap(0, size: 4096, permissions: .write) }
        #expect(throws: EPTBuildError.misaligned(0x800)) { try b.identityMap(0x800, size: 4096) }
        #expect(throws: EPTBuildError.outOfRange(1 << 48 | 0x1000)) { try b.identityMap(GuestPhysicalAddress(1 << 48), size: 4096) }
        var tiny = try EPTBuilder(tables: PageTablePool(pageLimit: 2))
        #expect(throws: EPTBuildError.outOfTablePages) { try tiny.identityMap(0, size: 4096) }
    }

    @Test("memory types follow the MTRRs; a large page is used only where the type is uniform")
    func mtrrTypes() throws {
        let mtrrs = MTRRs(defaultTypeRegister: 1 << 11 | 1 << 10 | 6,
                          fixedTypes: MTRRs.fixedTypes(fromRegisters: [0x0606_0606_0606_0606, 0x0606_0606_0606_0606, 0, 0, 0, 0, 0, 0, 0, 0x0505_0505_0505_0505, 0x0505_0505_0505_0505]),
                          variable: [VariableMTRR(base: 0xC000_0000, size: 1 << 30, type: .uncacheable),
                                     VariableMTRR(base: 0x8000_0000, size: 2 << 20, type: .writeThrough),
                                     VariableMTRR(base: 0x8000_0000, size: 1 << 30, type: .writeBack)])
        #expect(mtrrs.type(at: 0x1000) == .writeBack && mtrrs.type(at: 0xA_0000) == .uncacheable)
        #expect(mtrrs.type(at: 0xF_F000) == .writeProtected)
        #expect(mtrrs.type(at: 0x8000_1000) == .writeThrough) // WT and WB overlap: WT
        #expect(mtrrs.type(at: 0xC800_0000) == .uncacheable && mtrrs.type(at: 0x1_0000_0000) == .writeBack)
        var b = try EPTBuilder(tables: PageTablePool())
        try b.identityMap(0, size: 4 << 30, memoryType: .mtrrs(mtrrs))
        let w = b.walker()
        func probe(_ a: UInt64) throws -> (PageSize, MemoryType) {
            let t = try w.translate(GuestPhysicalAddress(a), .read, memory: &b.tables)
            return (t.pageSize, t.memoryType)
        }
        #expect(try probe(0xA_0000) == (.size4KiB, .uncacheable))
        #expect(try probe(0x20_0000) == (.size2MiB, .writeBack))
        #expect(try probe(0x4000_0000) == (.size1GiB, .writeBack))
        #expect(try probe(0x8000_0000) == (.size2MiB, .writeThrough))
        #expect(try probe(0x8020_0000) == (.size2MiB, .writeBack))
        #expect(try probe(0xC000_0000) == (.size1GiB, .uncacheable))
    }

    @Test("seeded property test: random maps, protects and unmaps agree with a reference map", arguments: [1, 2, 3, 42] as [UInt64])
    func property(seed: UInt64) throws {
        var rng = SeededGenerator(seed: seed)
        var b = try EPTBuilder(tables: PageTablePool(), options: EPTBuilderOptions(hugePages: seed % 2 == 0))
        // Reference: 4 KiB guest page number -> (host page number, rights). Space: 64 MiB window
        // at 1 GiB - 32 MiB so edits cross 2 MiB and 1 GiB boundaries.
        let window: UInt64 = 0x3E00_0000, pages: UInt64 = 16384
        var reference: [UInt64: (UInt64, EPTPermissions)] = [:]
        let rights: [EPTPermissions] = [.read, .readWrite, .readExecute, [.read, .write, .execute], [.execute]]
        for _ in 0..<40 {
            let first = UInt64.random(in: 0..<pages, using: &rng)
            // Mostly large aligned chunks so huge pages actually form.
            let count = Bool.random(using: &rng) ? UInt64.random(in: 1...600, using: &rng) : 512 * UInt64.random(in: 1...4, using: &rng)
            let start = Bool.random(using: &rng) ? first & ~511 : first
            let n = min(count, pages - start)
            let gpa = window + start * 4096
            let r = rights.randomElement(using: &rng)!
            switch UInt64.random(in: 0..<4, using: &rng) {
            case 0, 1:
                let host = 0x10_0000_0000 + (gpa & 0x3F_FFFF) + UInt64.random(in: 0..<4, using: &rng) * (1 << 30)
                try b.map(GuestPhysicalAddress(gpa), size: n * 4096, to: HostPhysicalAddress(host), permissions: r)
                for i in 0..<n { reference[start + i] = ((host >> 12) + i, r) }
            case 2:
                try b.protect(GuestPhysicalAddress(gpa), size: n * 4096, permissions: r)
                for i in 0..<n where reference[start + i] != nil { reference[start + i]!.1 = r }
            default:
                try b.unmap(GuestPhysicalAddress(gpa), size: n * 4096)
                for i in 0..<n { reference[start + i] = nil }
            }
        }
        let w = b.walker()
        for page in 0..<pages {
            let gpa = GuestPhysicalAddress(window + page * 4096 + 0x123)
            if let (host, r) = reference[page] {
                let t = try w.translate(gpa, r.contains(.read) ? .read : .fetch, memory: &b.tables)
                #expect(t.hostPhysical.rawValue == host << 12 | 0x123, "page \(page)")
                #expect(t.permissions == r, "page \(page)")
            } else {
                #expect(eptFault { _ = try w.translate(gpa, .read, memory: &b.tables) }?.violation?.notPresentLevel != nil, "page \(page)")
            }
        }
        // No table leaks: every page the pool handed out is reachable from the root.
        let layout = try EPTLayout.census(of: b.pointer(), memory: &b.tables)
        #expect(layout.tablePages == b.tables.pagesInUse)
        #expect(layout.mappedBytes == UInt64(reference.count) * 4096)
    }
}
