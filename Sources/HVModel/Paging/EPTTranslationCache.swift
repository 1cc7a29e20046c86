// A cache of guest-physical translations, one table per page size, with INVEPT's invalidation
// semantics (SDM 29.4 "Caching Translation Information": 29.4.1 what may be cached, 29.4.3.1
// operations that invalidate, and the INVEPT instruction reference in Vol. 2 / 31.3).

/// The INVEPT types (SDM Vol. 3C, 31.3 "INVEPT").
public enum INVEPTType: Hashable, Sendable {
    /// Type 1: mappings for the EPTP's root (bits 51:12) only.
    case singleContext(EPTPointer)
    /// Type 2: mappings for every EPTP.
    case allContexts
}

/// Guest-physical mappings (SDM 29.4.1) cached per page size, direct-mapped and tagged with
/// the EPTP root, so that a lookup costs one index, one compare and no allocation.
public struct EPTTranslationCache: Sendable {
    @usableFromInline
    struct Slot: Sendable {
        @usableFromInline var frame: UInt64 = ~0
        @usableFromInline var context: UInt64 = ~0
        @usableFromInline var hostFrame: UInt64 = 0
        @usableFromInline var permissions = EPTPermissions()
        @usableFromInline var memoryType = MemoryType.uncacheable
        @usableFromInline var ignorePAT = false
        @usableFromInline var suppressVE = false
        @usableFromInline var dirty = false

        @usableFromInline init() {}

        @usableFromInline
        init(frame: UInt64, context: UInt64, hostFrame: UInt64, permissions: EPTPermissions, memoryType: MemoryType,
             ignorePAT: Bool, suppressVE: Bool, dirty: Bool)
        {
            self.frame = frame
            self.context = context
            self.hostFrame = hostFrame
            self.permissions = permissions
            self.memoryType = memoryType
            self.ignorePAT = ignorePAT
            self.suppressVE = suppressVE
            self.dirty = dirty
        }
    }

    // Inlinable storage so that `translate` specialises in the caller's module: the hit path
    // is then a few loads and compares, not a generic call.
    @usableFromInline var small: [Slot], large: [Slot], huge: [Slot]
    @usableFromInline var hitCount = 0
    @usableFromInline var missCount = 0
    /// Lookups answered from the cache.
    public var hits: Int { hitCount }
    /// Lookups that walked the tables.
    public var misses: Int { missCount }

    /// A cache with the given number of slots per size (each rounded up to a power of two).
    public init(entries4KiB: Int = 1024, entries2MiB: Int = 64, entries1GiB: Int = 16) {
        func slots(_ n: Int) -> [Slot] {
            var count = 1
            while count < n { count <<= 1 }
            return [Slot](repeating: Slot(), count: count)
        }
        small = slots(entries4KiB)
        large = slots(entries2MiB)
        huge = slots(entries1GiB)
    }

    /// Translates through the cache; on a miss (or a cached entry that does not permit the
    /// access, or a first write needing the dirty flag set) walks with `walker` and caches
    /// the result. A fault also drops cached mappings of the page, as an EPT violation does.
    @inlinable
    public mutating func translate<M: PhysicalMemory>(_ address: GuestPhysicalAddress, _ access: EPTAccess,
                                                      walker: EPTWalker, memory: inout M) throws(EPTFault) -> EPTTranslation
    {
        let gpa = address.rawValue
        let context = walker.pointer.root.rawValue
        let adWrite = walker.pointer.accessedDirtyEnabled && walker.updatesAccessedDirty && walker.treatsAsWrite(access)
        if let hit = lookup(gpa, context: context), walker.allows(hit.slot.permissions, access), !(adWrite && !hit.slot.dirty) {
            hitCount += 1
            let size = hit.size
            return EPTTranslation(hostPhysical: HostPhysicalAddress(hit.slot.hostFrame << size.shift | gpa & size.offsetMask),
                                  pageSize: size, permissions: hit.slot.permissions, memoryType: hit.slot.memoryType,
                                  ignorePAT: hit.slot.ignorePAT, suppressVE: hit.slot.suppressVE, dirty: hit.slot.dirty)
        }
        missCount += 1
        let translation: EPTTranslation
        do { translation = try walker.translate(address, access, memory: &memory) } catch {
            drop(gpa, context: context)
            throw error
        }
        drop(gpa, context: context)
        let slot = Slot(frame: gpa >> translation.pageSize.shift, context: context,
                        hostFrame: translation.hostPhysical.rawValue >> translation.pageSize.shift,
                        permissions: translation.permissions, memoryType: translation.memoryType,
                        ignorePAT: translation.ignorePAT, suppressVE: translation.suppressVE, dirty: translation.dirty)
        switch translation.pageSize {
        case .size1GiB: huge[Self.index(slot.frame, context, huge.count)] = slot
        case .size2MiB: large[Self.index(slot.frame, context, large.count)] = slot
        default: small[Self.index(slot.frame, context, small.count)] = slot
        }
        return translation
    }

    /// The slot for `frame` in a table of `count` slots: the context is mixed in so that two
    /// EPT hierarchies mapping the same guest-physical page do not evict each other.
    @inlinable @inline(__always)
    static func index(_ frame: UInt64, _ context: UInt64, _ count: Int) -> Int {
        // Consecutive frames stay in consecutive slots; the context shifts them by a hash of its root.
        Int(truncatingIfNeeded: frame &+ ((context >> 12) &* 0x9E37_79B9_7F4A_7C15) >> 40) & (count - 1)
    }

    @inlinable @inline(__always)
    func lookup(_ gpa: UInt64, context: UInt64) -> (slot: Slot, size: PageSize)? {
        let f4 = gpa >> 12
        let s4 = small[Self.index(f4, context, small.count)]
        if s4.frame == f4 && s4.context == context { return (s4, .size4KiB) }
        let f2 = gpa >> 21
        let s2 = large[Self.index(f2, context, large.count)]
        if s2.frame == f2 && s2.context == context { return (s2, .size2MiB) }
        let f1 = gpa >> 30
        let s1 = huge[Self.index(f1, context, huge.count)]
        if s1.frame == f1 && s1.context == context { return (s1, .size1GiB) }
        return nil
    }

    /// Drops the context's cached mappings of the page holding `gpa`, whatever its size.
    @inlinable
    mutating func drop(_ gpa: UInt64, context: UInt64) {
        let f4 = gpa >> 12, f2 = gpa >> 21, f1 = gpa >> 30
        let i4 = Self.index(f4, context, small.count), i2 = Self.index(f2, context, large.count), i1 = Self.index(f1, context, huge.count)
        if small[i4].frame == f4 && small[i4].context == context { small[i4] = Slot() }
        if large[i2].frame == f2 && large[i2].context == context { large[i2] = Slot() }
        if huge[i1].frame == f1 && huge[i1].context == context { huge[i1] = Slot() }
    }

    /// INVEPT: single-context drops mappings tagged with the EPTP's bits 51:12; all-context
    /// drops everything.
    public mutating func invalidate(_ type: INVEPTType) {
        func clear(_ slots: inout [Slot], _ keep: (Slot) -> Bool) {
            for i in slots.indices where !keep(slots[i]) { slots[i] = Slot() }
        }
        switch type {
        case .allContexts:
            clear(&small) { _ in false }
            clear(&large) { _ in false }
            clear(&huge) { _ in false }
        case .singleContext(let pointer):
            let context = pointer.root.rawValue
            clear(&small) { $0.context != context }
            clear(&large) { $0.context != context }
            clear(&huge) { $0.context != context }
        }
    }

    /// Mappings currently cached.
    public var count: Int {
        small.filter { $0.frame != ~0 }.count + large.filter { $0.frame != ~0 }.count + huge.filter { $0.frame != ~0 }.count
    }
}

extension EPTWalker {
    /// True when EPT treats `access` as a write: a data write, or (EPT A/D on) a guest
    /// paging-structure access (SDM 29.3.5).
    @inlinable
    public func treatsAsWrite(_ access: EPTAccess) -> Bool {
        if access.kind == .write { return true }
        if pointer.accessedDirtyEnabled, case .guestPagingStructure = access.origin { return true }
        return false
    }

    /// True when effective rights `permissions` allow `access` (SDM 29.3.3.2).
    @inlinable
    public func allows(_ permissions: EPTPermissions, _ access: EPTAccess) -> Bool {
        switch access.kind {
        case .read: permissions.contains(.read) && (!treatsAsWrite(access) || permissions.contains(.write))
        case .write: permissions.contains(.write)
        case .fetch:
            if modeBasedExecute, case .linear(_, true, _, _) = access.origin {
                permissions.contains(.userExecute)
            } else {
                permissions.contains(.execute)
            }
        }
    }
}
