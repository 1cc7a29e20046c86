import HVModel
import Testing

private let P: UInt64 = 1, RW: UInt64 = 2, US: UInt64 = 4, PS: UInt64 = 1 << 7, G: UInt64 = 1 << 8, XD: UInt64 = 1 << 63

/// 4-level tables: CR3 0x10000 -> PML4; PDPT 0x11000; PD 0x12000; PT 0x13000.
private func longModeTables() -> SparseMemory {
    var m = SparseMemory()
    m.set(0x10000, 0x11000 | P | RW | US)
    m.set(0x11000, 0x12000 | P | RW | US)
    m.set(0x11008, 0x8000_0000 | P | RW | PS) // 1 GiB at VA 0x4000_0000, supervisor
    m.set(0x12000, 0x13000 | P | RW | US)
    m.set(0x12008, 0x4000_0000 | P | RW | US | PS | G) // 2 MiB at VA 0x20_0000
    m.set(0x13000 + 1 * 8, 0x50000 | P | RW | US) // 0x1000 user rw
    m.set(0x13000 + 2 * 8, 0x51000 | P | RW) // 0x2000 supervisor rw
    m.set(0x13000 + 3 * 8, 0x52000 | P | US) // 0x3000 user read-only
    m.set(0x13000 + 4 * 8, 0x53000 | P | RW | US | XD) // 0x4000 user no-execute
    m.set(0x13000 + 5 * 8, 0x54000 | P) // 0x5000 supervisor read-only
    m.set(0x13000 + 6 * 8, 0x55000 | P | RW | US | 1 << 51) // 0x6000 reserved bit (MAXPHYADDR 46)
    m.set(0x13000 + 7 * 8, 0x56000 | P | RW | US | 3 << 59) // 0x7000 user, protection key 3
    return m
}

private func context(_ configure: (inout GuestPagingContext) -> Void = { _ in }) -> GuestPagingContext {
    var c = GuestPagingContext(mode: .level4, cr3: 0x10000)
    c.noExecute = true
    c.writeProtect = true
    configure(&c)
    return c
}

/// The #PF a translation raises, nil when it succeeds.
private func pageFault(_ va: UInt64, _ access: GuestAccess, _ c: GuestPagingContext) -> PageFault? {
    var m = longModeTables()
    do { _ = try GuestPagingWalker.translate(GuestVirtualAddress(va), access, context: c, memory: &m) } catch {
        if case .pageFault(let f) = error { return f }
        Issue.record("unexpected \(error)")
    }
    return nil
}

@Suite("Guest paging walker")
struct PagingWalkerTests {
    @Test("4-level known answers: 4 KiB, 2 MiB (global) and 1 GiB pages")
    func knownAnswers() throws {
        var m = longModeTables()
        let c = context { $0.globalPages = true }
        let small = try GuestPagingWalker.translate(0x1ABC, GuestAccess(.read), context: c, memory: &m)
        #expect(small.physicalAddress == 0x50ABC && small.pageSize == .size4KiB && small.userMode && small.writable)
        #expect(small.steps.map(\.entryAddress.rawValue) == [0x10000, 0x11000, 0x12000, 0x13008])
        let large = try GuestPagingWalker.translate(0x2F_FFFF, GuestAccess(.read), context: c, memory: &m)
        #expect(large.physicalAddress == 0x400F_FFFF && large.pageSize == .size2MiB && large.global)
        let huge = try GuestPagingWalker.translate(0x4123_4567, GuestAccess(.write), context: c, memory: &m)
        #expect(huge.physicalAddress == 0x8123_4567 && huge.pageSize == .size1GiB && !huge.userMode)
        let key = try GuestPagingWalker.translate(0x7000, GuestAccess(.read), context: c, memory: &m)
        #expect(key.protectionKey == 3)
    }

    @Test("not present: P = 0, with W/R and U/S from the access")
    func notPresent() {
        let f = pageFault(0x8000, GuestAccess(.write, userMode: true), context())
        #expect(f?.errorCode == [.write, .user] && f?.reason == .notPresent(level: 1) && f?.linearAddress == 0x8000)
    }

    @Test("SMEP: a supervisor fetch from a user page faults only with CR4.SMEP = 1")
    func smep() {
        #expect(pageFault(0x1000, GuestAccess(.fetch), context()) == nil)
        let f = pageFault(0x1000, GuestAccess(.fetch), context { $0.smep = true })
        #expect(f?.errorCode == [.present, .instructionFetch] && f?.reason == .smepFetch)
    }

    @Test("SMAP: a supervisor read of a user page faults with AC = 0, passes with AC = 1, and implicit accesses ignore AC")
    func smap() {
        let ac0 = pageFault(0x1000, GuestAccess(.read), context { $0.smap = true })
        #expect(ac0?.errorCode == .present && ac0?.reason == .smapAccess)
        #expect(pageFault(0x1000, GuestAccess(.read), context { $0.smap = true; $0.alignmentCheck = true }) == nil)
        let implicit = pageFault(0x1000, GuestAccess(.read, userMode: true, implicitSupervisor: true),
                                 context { $0.smap = true; $0.alignmentCheck = true })
        #expect(implicit?.errorCode == .present && implicit?.reason == .smapAccess)
        #expect(pageFault(0x2000, GuestAccess(.read), context { $0.smap = true }) == nil) // supervisor page
    }

    @Test("writes to read-only pages: CR0.WP decides for supervisor writes, user writes always fault")
    func writeProtect() {
        #expect(pageFault(0x5000, GuestAccess(.write), context { $0.writeProtect = false }) == nil)
        #expect(pageFault(0x3000, GuestAccess(.write), context { $0.writeProtect = false }) == nil)
        let wp1 = pageFault(0x5000, GuestAccess(.write), context())
        #expect(wp1?.errorCode == [.present, .write] && wp1?.reason == .writeToReadOnly)
        let user = pageFault(0x3000, GuestAccess(.write, userMode: true), context { $0.writeProtect = false })
        #expect(user?.errorCode == [.present, .write, .user])
        let userToSupervisor = pageFault(0x2000, GuestAccess(.read, userMode: true), context())
        #expect(userToSupervisor?.errorCode == [.present, .user] && userToSupervisor?.reason == .userAccessToSupervisorPage)
    }

    @Test("NX: a fetch from an execute-disable page faults with I/D; without EFER.NXE bit 63 is reserved")
    func noExecute() {
        let f = pageFault(0x4000, GuestAccess(.fetch, userMode: true), context())
        #expect(f?.errorCode == [.present, .user, .instructionFetch] && f?.reason == .executeDisable)
        #expect(pageFault(0x4000, GuestAccess(.read, userMode: true), context()) == nil)
        let rsvd = pageFault(0x4000, GuestAccess(.read), context { $0.noExecute = false })
        #expect(rsvd?.errorCode == [.present, .reservedBit] && rsvd?.reason == .reservedBits(level: 1, mask: XD))
        // Without NXE and SMEP, I/D is not reported.
        let noID = pageFault(0x8000, GuestAccess(.fetch), context { $0.noExecute = false })
        #expect(noID?.errorCode == [])
    }

    @Test("a reserved bit sets RSVD (and P) in the error code")
    func reservedBit() {
        let f = pageFault(0x6000, GuestAccess(.write, userMode: true), context())
        #expect(f?.errorCode == [.present, .write, .user, .reservedBit] && f?.reason == .reservedBits(level: 1, mask: 1 << 51))
        var m = longModeTables()
        m.set(0x10000, 0x11000 | P | RW | US | PS) // PS in a PML4E is reserved
        #expect(throws: GuestPagingFault.pageFault(PageFault(linearAddress: 0x1000, errorCode: [.present, .reservedBit],
                                                             reason: .reservedBits(level: 4, mask: PS)))) {
            try GuestPagingWalker.translate(0x1000, GuestAccess(.read), context: context(), memory: &m)
        }
    }

    @Test("protection keys: PKRU AD blocks data accesses, WD blocks writes (supervisor only with CR0.WP), fetches ignore keys")
    func protectionKeys() {
        let ad = context { $0.protectionKeys = true; $0.pkru = 1 << 6 } // key 3 AD
        let f = pageFault(0x7000, GuestAccess(.read, userMode: true), ad)
        #expect(f?.errorCode == [.present, .user, .protectionKey] && f?.reason == .protectionKey(key: 3))
        #expect(pageFault(0x7000, GuestAccess(.fetch, userMode: true), ad) == nil)
        #expect(pageFault(0x1000, GuestAccess(.read, userMode: true), ad) == nil) // key 0
        let wd = context { $0.protectionKeys = true; $0.pkru = 1 << 7 }
        #expect(pageFault(0x7000, GuestAccess(.read, userMode: true), wd) == nil)
        #expect(pageFault(0x7000, GuestAccess(.write, userMode: true), wd)?.errorCode == [.present, .write, .user, .protectionKey])
        #expect(pageFault(0x7000, GuestAccess(.write), wd)?.reason == .protectionKey(key: 3))
        var wp0 = wd
        wp0.writeProtect = false
        #expect(pageFault(0x7000, GuestAccess(.write), wp0) == nil)
        // CR4.PKE off: keys are ignored.
        #expect(pageFault(0x7000, GuestAccess(.read, userMode: true), context { $0.pkru = ~0 }) == nil)
        // PKS governs supervisor pages.
        #expect(pageFault(0x2000, GuestAccess(.read), context { $0.supervisorProtectionKeys = true; $0.pkrs = 1 }) != nil)
    }

    @Test("accessed and dirty flags: set along the walk on success, D only on a write's leaf, nothing on a fault")
    func accessedDirty() throws {
        var m = longModeTables()
        _ = try GuestPagingWalker.translate(0x1000, GuestAccess(.read), context: context(), memory: &m, setAccessedDirty: true)
        #expect(m.words[0x10000]! & 0x60 == 0x20 && m.words[0x13008]! & 0x60 == 0x20)
        _ = try GuestPagingWalker.translate(0x1000, GuestAccess(.write), context: context(), memory: &m, setAccessedDirty: true)
        #expect(m.words[0x13008]! & 0x60 == 0x60 && m.words[0x12000]! & 0x40 == 0)
        _ = try? GuestPagingWalker.translate(0x5000, GuestAccess(.write), context: context(), memory: &m, setAccessedDirty: true)
        #expect(m.words[0x13028]! & 0x60 == 0)
    }

    @Test("32-bit paging: 4 KiB pages, 4 MiB pages with PSE and PSE-36, PS ignored without PSE")
    func bits32() throws {
        var m = SparseMemory()
        // PD at 0x1000: PDE 0 -> PT 0x2000; PDE 1 -> 4 MiB page at physical 0x3_0040_0000 (PSE-36 bits 20:13 = 3).
        m.words[0x1000] = 0x2000 | P | RW | US
        try m.write32(UInt32(0x0040_0000 | 3 << 13 | P | RW | PS), at: 0x1004)
        try m.write32(UInt32(0x7000 | P | US), at: 0x2000 + 5 * 4)
        var c = GuestPagingContext(mode: .bits32, cr3: 0x1000)
        #expect(try GuestPagingWalker.translate(0x5123, GuestAccess(.read), context: c, memory: &m).physicalAddress == 0x7123)
        c.pageSizeExtensions = true
        let big = try GuestPagingWalker.translate(0x0045_6789, GuestAccess(.read), context: c, memory: &m)
        #expect(big.physicalAddress == 0x3_0045_6789 && big.pageSize == .size4MiB)
        c.physicalAddressBits = 33 // bits 20:14 and 21 become reserved
        #expect(throws: GuestPagingFault.self) { try GuestPagingWalker.translate(0x0045_6789, GuestAccess(.read), context: c, memory: &m) }
        c.pageSizeExtensions = false // PS ignored: PDE 1 is a table pointer at 0x0040_0000 (zeroes: not present)
        #expect(throws: GuestPagingFault.self) { try GuestPagingWalker.translate(0x0045_6789, GuestAccess(.read), context: c, memory: &m) }
        var special = SpecialRegisters()
        special.cr0 = ControlBits.cr0PE | ControlBits.cr0PG
        #expect(GuestPagingContext(special: special).mode == .bits32)
    }

    @Test("PAE paging: four PDPTEs, 2 MiB pages, NX, and a PDPTE with reserved bits")
    func pae() throws {
        var m = SparseMemory()
        m.set(0x1020, 0x2000 | P) // PDPTE 0 (CR3 = 0x1020, 32-byte aligned)
        m.set(0x1028, 0x3000 | P | RW) // PDPTE 1: bit 1 is reserved in a PDPTE
        m.set(0x2000, 0x20_0000 | P | RW | PS | XD) // PDE 0: 2 MiB, no-execute
        var c = GuestPagingContext(mode: .pae, cr3: 0x1020)
        c.noExecute = true
        let t = try GuestPagingWalker.translate(0x1_2345, GuestAccess(.write), context: c, memory: &m)
        #expect(t.physicalAddress == 0x21_2345 && t.pageSize == .size2MiB && t.executeDisable)
        #expect(throws: GuestPagingFault.invalidPDPTE(index: 1, entry: 0x3000 | P | RW)) {
            try GuestPagingWalker.translate(0x4000_0000, GuestAccess(.read), context: c, memory: &m)
        }
        var paeMemory = m
        #expect(throws: GuestPagingFault.self) { try GuestPagingWalker.translate(0x1000, GuestAccess(.fetch), context: c, memory: &paeMemory) }
    }

    @Test("5-level paging walks a PML5 first; non-canonical addresses are #GP, not #PF")
    func fiveLevel() throws {
        var m = longModeTables()
        m.set(0x9000, 0x10000 | P | RW | US) // PML5[0] -> the PML4
        var c = context()
        c.mode = .level5
        c.cr3 = 0x9000
        let t = try GuestPagingWalker.translate(0x1ABC, GuestAccess(.read), context: c, memory: &m)
        #expect(t.physicalAddress == 0x50ABC && t.steps.count == 5)
        #expect(throws: GuestPagingFault.nonCanonical(0x0100_0000_0000_0000)) {
            try GuestPagingWalker.translate(0x0100_0000_0000_0000, GuestAccess(.read), context: c, memory: &m)
        }
        #expect(throws: GuestPagingFault.nonCanonical(0x0000_8000_0000_0000)) {
            try GuestPagingWalker.translate(0x0000_8000_0000_0000, GuestAccess(.read), context: context(), memory: &m)
        }
    }
}
