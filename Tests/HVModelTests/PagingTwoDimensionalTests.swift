import HVModel
import Testing

/// Host memory = a pool for EPT tables plus sparse memory for everything else.
struct NestedTestHostMemory: PhysicalMemory {
    var pool: PageTablePool
    var ram = SparseMemory()
    mutating func read64(at address: UInt64) throws(PhysicalMemoryFault) -> UInt64 {
        if let value = try? pool.read64(at: address) { return value }
        return try ram.read64(at: address)
    }
    mutating func write64(_ value: UInt64, at address: UInt64) throws(PhysicalMemoryFault) {
        if (try? pool.read64(at: address)) != nil { return try pool.write64(value, at: address) }
        try ram.write64(value, at: address)
    }
}

@Suite("Two-dimensional walk")
struct PagingTwoDimensionalTests {
    /// Guest tables at guest-physical 0x10000-0x13FFF map VA 0x1000 -> GPA 0x5_0000 (4 KiB);
    /// EPT maps GPA page p -> HPA 0x1_0000_0000 + p with 4 KiB pages (the worst case).
    func setUp(eptRights: EPTPermissions = .all) throws -> (NestedGuestMemory<NestedTestHostMemory>, GuestPagingContext, EPTBuilder<PageTablePool>) {
        var b = try EPTBuilder(tables: PageTablePool(base: 0x8000_0000), options: EPTBuilderOptions(hugePages: false))
        try b.map(0, size: 1 << 20, to: 0x1_0000_0000, permissions: eptRights)
        var host = NestedTestHostMemory(pool: b.tables)
        let base: UInt64 = 0x1_0000_0000
        try host.write64(0x11000 | 7, at: base + 0x10000)
        try host.write64(0x12000 | 7, at: base + 0x11000)
        try host.write64(0x13000 | 7, at: base + 0x12000)
        try host.write64(0x5_0000 | 7, at: base + 0x13008)
        let memory = NestedGuestMemory(walker: b.walker(accessedDirty: false), host: host)
        return (memory, GuestPagingContext(mode: .level4, cr3: 0x10000), b)
    }

    @Test("4-level guest on 4-level EPT: 24 memory references for a 4 KiB page")
    func twentyFourReferences() throws {
        var (memory, context, _) = try setUp()
        let t = try TwoDimensionalWalker.translate(0x1234, GuestAccess(.read), context: context, memory: &memory)
        #expect(t.guest.physicalAddress == 0x5_0234)
        #expect(t.host.hostPhysical == 0x1_0005_0234)
        #expect(t.memoryReferences == 24)
    }

    @Test("EPT denying a guest page-table read: violation with bit 7 set and bit 8 clear")
    func pagingStructureViolation() throws {
        var (memory, context, b) = try setUp()
        try b.protect(0x12000, size: 0x1000, permissions: [])
        memory.host.pool = b.tables
        #expect(throws: TwoDimensionalFault.ept(.violation(EPTViolation(
            guestPhysical: 0x12000, guestLinear: 0x1234, qualification: [.dataRead, .linearAddressValid], notPresentLevel: .pageTable)))) {
            try TwoDimensionalWalker.translate(0x1234, GuestAccess(.read), context: context, memory: &memory)
        }
    }

    @Test("EPT denying the final write: violation with bits 7 and 8 and the guest's rights in bits 9-11")
    func finalAccessViolation() throws {
        var (memory, context, _) = try setUp(eptRights: .readExecute)
        context.noExecute = true
        do {
            _ = try TwoDimensionalWalker.translate(0x1234, GuestAccess(.write, userMode: true), context: context, memory: &memory)
            Issue.record("expected a violation")
        } catch {
            guard case .ept(.violation(let v)) = error else { Issue.record("unexpected \(error)"); return }
            #expect(v.guestPhysical == 0x5_0234 && v.guestLinear == 0x1234)
            #expect(v.qualification == [.dataWrite, .readable, .executable, .linearAddressValid, .translationOfLinear,
                                        .userModeLinear, .guestWritableLinear])
        }
    }

    @Test("a guest #PF is the guest's, not a VM exit")
    func guestFault() throws {
        var (memory, context, _) = try setUp()
        #expect(throws: TwoDimensionalFault.self) {
            try TwoDimensionalWalker.translate(0x9000, GuestAccess(.read), context: context, memory: &memory)
        }
        do { _ = try TwoDimensionalWalker.translate(0x9000, GuestAccess(.read), context: context, memory: &memory) } catch {
            guard case .guest(.pageFault(let f)) = error else { Issue.record("unexpected \(error)"); return }
            #expect(f.errorCode == [] && f.reason == .notPresent(level: 1))
        }
    }
}
