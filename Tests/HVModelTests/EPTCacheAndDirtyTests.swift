import HVModel
import Testing

@Suite("EPT translation cache and dirty tracking")
struct EPTCacheAndDirtyTests {
    @Test("cached translations equal uncached ones for every page size", arguments: [true, false])
    func cacheMatchesWalker(huge: Bool) throws {
        var b = try EPTBuilder(tables: PageTablePool(), options: EPTBuilderOptions(hugePages: huge))
        try b.identityMap(0, size: 8 << 20, permissions: .readWrite)
        try b.map(0x4000_0000, size: 1 << 30, to: 0x2_0000_0000, permissions: .readExecute)
        let w = b.walker()
        var cache = EPTTranslationCache(entries4KiB: 64, entries2MiB: 4, entries1GiB: 2)
        var rng = SeededGenerator(seed: 7)
        for _ in 0..<3000 {
            // Mostly a small working set (so the cache hits), sometimes anywhere mapped.
            let span: UInt64 = UInt64.random(in: 0..<4, using: &rng) == 0 ? 8 << 20 : 1 << 17
            let gpa = (Bool.random(using: &rng) ? 0 : 0x4002_0000) + UInt64.random(in: 0..<span, using: &rng)
            let access: EPTAccess = [.read, .write, .fetch].randomElement(using: &rng)!
            let uncached = Result { () throws(EPTFault) in try w.translate(GuestPhysicalAddress(gpa), access, memory: &b.tables) }
            let cached = Result { () throws(EPTFault) in try cache.translate(GuestPhysicalAddress(gpa), access, walker: w, memory: &b.tables) }
            #expect(cached == uncached)
        }
        #expect(cache.hits + cache.misses == 3000 && cache.hits > 500)
    }

    @Test("a stale cached translation survives a table edit until INVEPT, single-context or all-context")
    func invept() throws {
        var b = try EPTBuilder(tables: PageTablePool())
        try b.identityMap(0, size: 2 << 20)
        var other = try EPTBuilder(tables: PageTablePool(base: 0x4000_0000))
        try other.identityMap(0, size: 2 << 20)
        let w = b.walker(), w2 = other.walker()
        var cache = EPTTranslationCache()
        _ = try cache.translate(0x1000, .read, walker: w, memory: &b.tables)
        _ = try cache.translate(0x1000, .read, walker: w2, memory: &other.tables)
        try b.map(0, size: 2 << 20, to: 0x80_0000, permissions: .all)
        #expect(try cache.translate(0x1000, .read, walker: w, memory: &b.tables).hostPhysical == 0x1000) // stale
        cache.invalidate(.singleContext(w2.pointer))
        #expect(try cache.translate(0x1000, .read, walker: w, memory: &b.tables).hostPhysical == 0x1000) // other context only
        cache.invalidate(.singleContext(w.pointer))
        #expect(try cache.translate(0x1000, .read, walker: w, memory: &b.tables).hostPhysical == 0x80_1000)
        #expect(cache.count == 1) // w2 was invalidated above; w was re-walked
        cache.invalidate(.allContexts)
        #expect(cache.count == 0)
    }

    @Test("a cached entry that does not allow the access is re-walked: a violation stands, a loosened right is seen")
    func permissionMissRewalks() throws {
        var b = try EPTBuilder(tables: PageTablePool())
        try b.identityMap(0, size: 2 << 20, permissions: .read)
        let w = b.walker()
        var cache = EPTTranslationCache()
        _ = try cache.translate(0x1000, .read, walker: w, memory: &b.tables)
        #expect(throws: EPTFault.self) { try cache.translate(0x1000, .write, walker: w, memory: &b.tables) }
        try b.protect(0, size: 2 << 20, permissions: .readWrite)
        #expect(try cache.translate(0x1000, .write, walker: w, memory: &b.tables).permissions == .readWrite)
    }

    @Test("EPT dirty flags feed a dirty bitmap; clearing them re-arms tracking")
    func dirtyScan() throws {
        var b = try EPTBuilder(tables: PageTablePool())
        try b.identityMap(0, size: 4 << 20, permissions: .readWrite)
        try b.protect(0x1000, size: 0x1000, permissions: .readWrite) // no-op; stays one 2 MiB leaf
        try b.map(0x20_0000, size: 2 << 20, to: 0x20_0000, permissions: .readWrite, ignorePAT: true) // still uniform
        let w = b.walker(accessedDirty: true)
        _ = try w.translate(0x3000, .read, memory: &b.tables)
        _ = try w.translate(0x20_5000, .write, memory: &b.tables)
        var bitmap = try DirtyPageBitmap(base: 0, pageCount: 1024)
        #expect(try EPTDirtyScan.collect(pointer: w.pointer, memory: &b.tables, into: &bitmap, clear: true) == 1)
        #expect(bitmap.count == 512 && bitmap.isDirty(0x20_0000) && bitmap.isDirty(0x3F_F000) && !bitmap.isDirty(0x3000))
        var again = try DirtyPageBitmap(base: 0, pageCount: 1024)
        #expect(try EPTDirtyScan.collect(pointer: w.pointer, memory: &b.tables, into: &again, clear: false) == 0)
    }

    @Test("a dirty bitmap refuses a negative count or a range past 2^64 by name; marks that wrap stop at the top")
    func dirtyBitmapExtremes() throws {
        #expect(throws: DirtyPageBitmapError.negativePageCount(-1)) { _ = try DirtyPageBitmap(base: 0, pageCount: -1) }
        #expect(throws: DirtyPageBitmapError.rangeWrapsPastTop(base: 0xFFFF_FFFF_FFFF_F000, pageCount: 2)) {
            _ = try DirtyPageBitmap(base: 0xFFFF_FFFF_FFFF_F000, pageCount: 2)
        }
        #expect(throws: DirtyPageBitmapError.self) { _ = try DirtyPageBitmap(base: 0, pageCount: Int.max) }
        #expect("\(DirtyPageBitmapError.negativePageCount(-1))".contains("pageCount: -1"))
        var top = try DirtyPageBitmap(base: 0xFFFF_FFFF_FFFF_E000, pageCount: 2)
        top.mark(0xFFFF_FFFF_FFFF_F800, size: UInt64.max)
        #expect(top.dirtyPages == [0xFFFF_FFFF_FFFF_F000])
        top.mark(0xFFFF_FFFF_FFFF_E000, size: 1)
        #expect(top.count == 2)
    }

    @Test("page-modification log: one entry per dirty-flag set, 4 KiB aligned, then a PML-full exit (SDM 29.3.6)")
    func pml() throws {
        var b = try EPTBuilder(tables: PageTablePool(), options: EPTBuilderOptions(hugePages: false))
        try b.identityMap(0, size: 4 << 20, permissions: .readWrite)
        guard let buffer = b.tables.allocateTable() else { Issue.record("no page"); return }
        let w = b.walker(accessedDirty: true)
        var log: PageModificationLog? = PageModificationLog(buffer: buffer)
        var path = EPTWalkPath()
        for page in 0..<512 as Range<UInt64> {
            _ = try w.translate(GuestPhysicalAddress(page * 4096 + 0x10), .write, memory: &b.tables, path: &path, log: &log)
            // A second write to a page already dirty logs nothing.
            _ = try w.translate(GuestPhysicalAddress(page * 4096 + 0x20), .write, memory: &b.tables, path: &path, log: &log)
        }
        #expect(log!.count == 512 && log!.isFull)
        let entries = try log!.entries(memory: &b.tables)
        #expect(entries.first == 0 && entries.last == GuestPhysicalAddress(511 * 4096))
        let full = eptFault { _ = try w.translate(0x20_0000, .write, memory: &b.tables, path: &path, log: &log) }
        #expect(full == .pageModificationLogFull(0x20_0000))
        // The access did not happen: the dirty flag is still clear.
        #expect(try w.translate(0x20_0000, .read, memory: &b.tables).dirty == false)
        log!.reset()
        _ = try w.translate(0x20_0000, .write, memory: &b.tables, path: &path, log: &log)
        #expect(log!.count == 1)
    }
}
