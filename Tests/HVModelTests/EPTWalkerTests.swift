import HVModel
import Testing

/// Hand-built 4-level EPT: PML4 at 0x1000, PDPT 0x2000, PD 0x3000, PT 0x4000.
/// GPA 0x0-0xFFF -> HPA 0x8000_0000 (4 KiB, rwx WB); GPA 0x20_0000 (2 MiB, r-- UC);
/// GPA 0x4000_0000 (1 GiB, rw- WB, ignore PAT).
private func handBuiltTables() -> SparseMemory {
    var m = SparseMemory()
    m.set(0x1000, 0x2000 | 7)
    m.set(0x2000, 0x3000 | 7)
    m.set(0x2008, 0x1_0000_0000 | 1 << 7 | 1 << 6 | 6 << 3 | 3) // 1 GiB leaf
    m.set(0x3000, 0x4000 | 7)
    m.set(0x3008, 0xC00_0000 | 1 << 7 | 0 << 3 | 1) // 2 MiB leaf, UC, read-only
    m.set(0x4000, 0x8000_0000 | 6 << 3 | 7)
    return m
}

private let pointer = EPTPointer(root: 0x1000, levels: 4, memoryType: .writeBack)

@Suite("EPT walker")
struct EPTWalkerTests {
    @Test("EPTP fields and VM-entry checks (SDM 25.6.11, 27.2.1.1)")
    func eptp() throws {
        let p = EPTPointer(root: 0x1234_5000, levels: 4, memoryType: .writeBack, accessedDirty: true)
        #expect(p.rawValue == 0x1234_505E)
        #expect(p.levels == 4 && p.accessedDirtyEnabled && p.memoryTypeBits == 6 && p.root == 0x1234_5000)
        try p.validate(capabilities: .modern)
        #expect(throws: EPTPointerError.unsupportedMemoryType(1)) {
            try EPTPointer(rawValue: 0x1000 | 1 | 3 << 3).validate(capabilities: .modern)
        }
        #expect(throws: EPTPointerError.unsupportedWalkLength(2)) {
            try EPTPointer(rawValue: 0x1000 | 6 | 2 << 3).validate(capabilities: .modern)
        }
        #expect(throws: EPTPointerError.accessedDirtyUnsupported) {
            try p.validate(capabilities: EPTCapabilities(rawValue: EPTCapabilities.modern.rawValue & ~(1 << 21)))
        }
        #expect(throws: EPTPointerError.reservedBits(1 << 50)) {
            try EPTPointer(rawValue: 1 << 50 | 0x1000 | 6 | 3 << 3).validate(capabilities: .modern, physicalAddressBits: 46)
        }
    }

    @Test("known answers for 4 KiB, 2 MiB and 1 GiB leaves")
    func knownAnswers() throws {
        var m = handBuiltTables()
        let w = EPTWalker(pointer: pointer)
        let small = try w.translate(0xABC, .fetch, memory: &m)
        #expect(small.hostPhysical == 0x8000_0ABC && small.pageSize == .size4KiB)
        #expect(small.permissions == [.read, .write, .execute] && small.memoryType == .writeBack)
        let large = try w.translate(0x21_2345, .read, memory: &m)
        #expect(large.hostPhysical == 0xC01_2345 && large.pageSize == .size2MiB && large.memoryType == .uncacheable)
        #expect(large.permissions == .read)
        let huge = try w.translate(0x7FFF_FFF8, .write, memory: &m)
        #expect(huge.hostPhysical == 0x1_3FFF_FFF8 && huge.pageSize == .size1GiB && huge.ignorePAT)
        var path = EPTWalkPath()
        var log: PageModificationLog? = nil
        _ = try w.translate(0x10, .read, memory: &m, path: &path, log: &log)
        #expect(path.steps.map(\.level) == [.pml4, .pageDirectoryPointerTable, .pageDirectory, .pageTable])
        #expect(path.steps.map(\.entryAddress.rawValue) == [0x1000, 0x2000, 0x3000, 0x4000])
    }

    @Test("violation exit qualification: not present, write to read-only, fetch from no-execute (Table 28-7)")
    func violations() {
        var m = handBuiltTables()
        let w = EPTWalker(pointer: pointer)
        let notPresent = eptFault { _ = try w.translate(0x1000, .read, memory: &m) }?.violation
        #expect(notPresent?.qualification == .dataRead)
        #expect(notPresent?.notPresentLevel == .pageTable && notPresent?.guestPhysical == 0x1000)
        let readOnly = eptFault { _ = try w.translate(0x20_0000, .write, memory: &m) }?.violation
        #expect(readOnly?.qualification == [.dataWrite, .readable])
        let noExec = eptFault { _ = try w.translate(0x4000_0000, .fetch, memory: &m) }?.violation
        #expect(noExec?.qualification == [.instructionFetch, .readable, .writable])
        // Beyond the 48 bits a 4-level walk reaches.
        #expect(eptFault { _ = try w.translate(GuestPhysicalAddress(1 << 48), .read, memory: &m) }?.violation != nil)
        // A linear access: bits 7 and 8, plus the advanced bits 9-11.
        let origin = EPTAccessOrigin.linear(0xFFFF_8000_0000_1000, userMode: true, guestWritable: true, guestExecuteDisable: true)
        let linear = eptFault { _ = try w.translate(0x20_0000, EPTAccess(.write, origin: origin), memory: &m) }?.violation
        #expect(linear?.qualification == [.dataWrite, .readable, .linearAddressValid, .translationOfLinear,
                                           .userModeLinear, .guestWritableLinear, .guestExecuteDisableLinear])
        #expect(linear?.guestLinear == 0xFFFF_8000_0000_1000)
        let structure = eptFault { _ = try w.translate(0x1000, EPTAccess(.read, origin: .guestPagingStructure(linear: 0x5000)), memory: &m) }?.violation
        #expect(structure?.qualification == [.dataRead, .linearAddressValid])
    }

    @Test("EPT write without read is a misconfiguration, at any level")
    func writeWithoutRead() {
        var m = handBuiltTables()
        m.set(0x4000, 0x8000_0000 | 6 << 3 | 2)
        let w = EPTWalker(pointer: pointer)
        let fault = eptFault { _ = try w.translate(0x0, .read, memory: &m) }?.misconfiguration
        #expect(fault?.reason == .writeWithoutRead && fault?.level == .pageTable)
        m.set(0x2000, 0x3000 | 6) // write + execute, no read, in a PDPTE
        #expect(eptFault { _ = try w.translate(0x0, .read, memory: &m) }?.misconfiguration?.reason == .writeWithoutRead)
    }

    @Test("misconfigurations: reserved bits, memory types 2, 3 and 7, execute-only without support (SDM 29.3.3.1)")
    func misconfigurations() {
        let w = EPTWalker(pointer: pointer, physicalAddressBits: 46)
        func reason(_ address: UInt64, _ value: UInt64, walker: EPTWalker = w) -> EPTMisconfigurationReason? {
            var m = handBuiltTables()
            m.set(address, value)
            return eptFault { _ = try walker.translate(0x0, .read, memory: &m) }?.misconfiguration?.reason
        }
        #expect(reason(0x1000, 0x2000 | 7 | 1 << 7) == .reservedBits(mask: 1 << 7)) // PS in a PML4E
        #expect(reason(0x2000, 0x3000 | 7 | 1 << 4) == .reservedBits(mask: 1 << 4)) // bits 6:3 of a non-leaf PDPTE
        #expect(reason(0x3000, 0x4000 | 7 | 1 << 47) == .reservedBits(mask: 1 << 47)) // above MAXPHYADDR
        #expect(reason(0x3000, 0x20_1000 | 1 << 7 | 6 << 3 | 7) == .reservedBits(mask: 0x1000)) // 20:12 of a 2 MiB leaf
        for type: UInt64 in [2, 3, 7] {
            #expect(reason(0x4000, 0x8000_0000 | type << 3 | 7) == .invalidMemoryType(UInt8(type)))
        }
        #expect(reason(0x4000, 0x8000_0000 | 6 << 3 | 4) == nil) // execute-only is fine when supported
        let noExecOnly = EPTWalker(pointer: pointer, capabilities: EPTCapabilities(rawValue: EPTCapabilities.modern.rawValue & ~1))
        #expect(reason(0x4000, 0x8000_0000 | 6 << 3 | 4, walker: noExecOnly) == .executeOnlyUnsupported)
        let no1G = EPTWalker(pointer: pointer, capabilities: EPTCapabilities(rawValue: EPTCapabilities.modern.rawValue & ~(1 << 17)))
        var m = handBuiltTables()
        #expect(eptFault { _ = try no1G.translate(0x4000_0000, .read, memory: &m) }?.misconfiguration?.reason == .unsupportedPageSize(.size1GiB))
    }

    @Test("mode-based execute control: bit 2 for supervisor fetches, bit 10 for user fetches")
    func modeBasedExecute() throws {
        var m = handBuiltTables()
        m.set(0x1000, 0x2000 | 7 | 1 << 10)
        m.set(0x2000, 0x3000 | 7 | 1 << 10)
        m.set(0x3000, 0x4000 | 7 | 1 << 10)
        m.set(0x4000, 0x8000_0000 | 6 << 3 | 1 | 1 << 10) // read + user-execute only
        let w = EPTWalker(pointer: pointer, modeBasedExecute: true)
        let user = EPTAccess(.fetch, origin: .linear(0x1000, userMode: true, guestWritable: false, guestExecuteDisable: false))
        let supervisor = EPTAccess(.fetch, origin: .linear(0x1000, userMode: false, guestWritable: false, guestExecuteDisable: false))
        #expect(try w.translate(0x0, user, memory: &m).permissions == [.read, .userExecute])
        let q = eptFault { _ = try w.translate(0x0, supervisor, memory: &m) }?.violation?.qualification
        #expect(q == [.instructionFetch, .readable, .userExecutable, .linearAddressValid, .translationOfLinear])
    }

    @Test("accessed and dirty flags are set only when the EPTP enables them (SDM 29.3.5)")
    func accessedDirty() throws {
        var m = handBuiltTables()
        _ = try EPTWalker(pointer: pointer).translate(0x0, .write, memory: &m)
        #expect(m.words[0x4000]! & 0x300 == 0)
        let ad = EPTWalker(pointer: EPTPointer(root: 0x1000, accessedDirty: true))
        _ = try ad.translate(0x0, .read, memory: &m)
        #expect(m.words[0x1000]! & 0x100 != 0 && m.words[0x4000]! & 0x300 == 0x100)
        let t = try ad.translate(0x0, .write, memory: &m)
        #expect(t.dirty && m.words[0x4000]! & 0x300 == 0x300)
        // Guest paging-structure reads count as writes with A/D on: they dirty the page.
        let q = eptFault { _ = try ad.translate(0x20_0000, EPTAccess(.read, origin: .guestPagingStructure(linear: 0)), memory: &m) }?.violation?.qualification
        #expect(q == [.dataRead, .dataWrite, .readable, .linearAddressValid])
        var inspect = ad
        inspect.updatesAccessedDirty = false
        var clean = handBuiltTables()
        _ = try inspect.translate(0x0, .write, memory: &clean)
        #expect(clean.words[0x4000]! & 0x300 == 0)
    }
}
