// The EPT walk hardware performs for every guest-physical access (SDM 29.3.2 "EPT Translation
// Mechanism"), with the checks that end it in a misconfiguration (29.3.3.1) or a violation
// (29.3.3.2), and the accessed/dirty updates of 29.3.5 and page-modification logging of 29.3.6.

/// A completed EPT translation.
public struct EPTTranslation: Hashable, Sendable {
    /// Where the access lands in host-physical memory.
    public var hostPhysical: HostPhysicalAddress
    /// The size of the page the leaf maps.
    public var pageSize: PageSize
    /// The rights ANDed over every entry of the walk (bits 0, 1, 2, 10).
    public var permissions: EPTPermissions
    /// The leaf's EPT memory type (bits 5:3).
    public var memoryType: MemoryType
    /// The leaf's ignore-PAT bit: when set, the guest's PAT type is not combined in (SDM 29.3.7).
    public var ignorePAT: Bool
    /// The leaf's suppress-#VE bit.
    public var suppressVE: Bool
    /// True when the leaf's dirty flag is set after this walk (always false without EPT A/D).
    public var dirty: Bool

    @inlinable
    public init(hostPhysical: HostPhysicalAddress, pageSize: PageSize, permissions: EPTPermissions, memoryType: MemoryType,
                ignorePAT: Bool, suppressVE: Bool, dirty: Bool)
    {
        self.hostPhysical = hostPhysical
        self.pageSize = pageSize
        self.permissions = permissions
        self.memoryType = memoryType
        self.ignorePAT = ignorePAT
        self.suppressVE = suppressVE
        self.dirty = dirty
    }
}

/// One entry read during a walk.
public struct EPTWalkStep: Hashable, Sendable {
    public var level: EPTLevel
    /// Host-physical address of the entry itself.
    public var entryAddress: HostPhysicalAddress
    /// The entry as read (before any A/D update).
    public var entry: EPTEntry
}

/// The entries of one walk, root first. Fixed storage: recording a path does not allocate.
public struct EPTWalkPath: Hashable, Sendable {
    private var s0, s1, s2, s3, s4: EPTWalkStep?
    /// How many entries were read.
    public private(set) var count = 0

    public init() {}

    /// Step `index`, root first.
    public subscript(index: Int) -> EPTWalkStep {
        switch index {
        case 0: s0!
        case 1: s1!
        case 2: s2!
        case 3: s3!
        default: s4!
        }
    }

    mutating func append(_ step: EPTWalkStep) {
        switch count {
        case 0: s0 = step
        case 1: s1 = step
        case 2: s2 = step
        case 3: s3 = step
        default: s4 = step
        }
        count += 1
    }

    mutating func removeAll() { self = EPTWalkPath() }

    /// The steps as an array (allocates; for display).
    public var steps: [EPTWalkStep] { (0..<count).map { self[$0] } }
}

/// Walks one EPT hierarchy the way the processor does.
public struct EPTWalker: Hashable, Sendable {
    /// The EPTP: root, walk length, A/D enable.
    public var pointer: EPTPointer
    /// What the modelled processor supports (execute-only, page sizes, advanced exit info).
    public var capabilities: EPTCapabilities
    /// MAXPHYADDR: bits 51:N of entries are reserved.
    public var physicalAddressBits: Int
    /// The "mode-based execute control for EPT" secondary processor-based control.
    public var modeBasedExecute: Bool
    /// Write accessed and dirty flags back as hardware does when the EPTP enables them.
    /// False inspects tables without changing them.
    public var updatesAccessedDirty: Bool

    public init(pointer: EPTPointer, capabilities: EPTCapabilities = .modern, physicalAddressBits: Int = 46,
                modeBasedExecute: Bool = false, updatesAccessedDirty: Bool = true)
    {
        self.pointer = pointer
        self.capabilities = capabilities
        self.physicalAddressBits = physicalAddressBits
        self.modeBasedExecute = modeBasedExecute
        self.updatesAccessedDirty = updatesAccessedDirty
    }

    /// The reserved bits of `entry` found at `level` (SDM 29.3.3.1), zero for a valid entry.
    public func reservedBits(of entry: EPTEntry, at level: EPTLevel) -> UInt64 {
        var mask = EPTEntry.addressMask & ~physicalAddressMask(bits: physicalAddressBits)
        switch level {
        case .pml5, .pml4: mask |= 0xF8 // bits 7:3
        case .pageDirectoryPointerTable: mask |= entry.pageSize ? 0x3FFF_F000 : 0x78 // 29:12 or 6:3
        case .pageDirectory: mask |= entry.pageSize ? 0x1F_F000 : 0x78 // 20:12 or 6:3
        case .pageTable: break
        }
        return entry.rawValue & mask
    }

    /// Why a present `entry` at `level` is misconfigured, nil when it is not (SDM 29.3.3.1).
    public func misconfiguration(of entry: EPTEntry, at level: EPTLevel) -> EPTMisconfigurationReason? {
        let rwx = entry.rawValue & 7
        if rwx == 2 || rwx == 6 { return .writeWithoutRead }
        if rwx & 3 == 0, rwx == 4 || (modeBasedExecute && entry.userExecute), !capabilities.executeOnly {
            return .executeOnlyUnsupported
        }
        let reserved = reservedBits(of: entry, at: level)
        if reserved != 0 { return .reservedBits(mask: reserved) }
        guard entry.isLeaf(at: level) else { return nil }
        if level == .pageDirectoryPointerTable && !capabilities.pages1GiB { return .unsupportedPageSize(.size1GiB) }
        if level == .pageDirectory && !capabilities.pages2MiB { return .unsupportedPageSize(.size2MiB) }
        if entry.memoryType == nil { return .invalidMemoryType(entry.memoryTypeBits) }
        return nil
    }

    /// Translates `address` for `access`, reading (and, with A/D, updating) tables in `memory`.
    @inlinable
    public func translate<M: PhysicalMemory>(_ address: GuestPhysicalAddress, _ access: EPTAccess,
                                             memory: inout M) throws(EPTFault) -> EPTTranslation
    {
        var path = EPTWalkPath()
        var log: PageModificationLog? = nil
        return try translate(address, access, memory: &memory, path: &path, log: &log)
    }

    /// Translates `address` for `access`, recording the entries read in `path` and, when
    /// `log` is set and a dirty flag goes from 0 to 1, logging the page (SDM 29.3.6).
    public func translate<M: PhysicalMemory>(_ address: GuestPhysicalAddress, _ access: EPTAccess,
                                             memory: inout M, path: inout EPTWalkPath,
                                             log: inout PageModificationLog?) throws(EPTFault) -> EPTTranslation
    {
        path.removeAll()
        let gpa = address.rawValue
        let accessedDirty = pointer.accessedDirtyEnabled
        // 29.3.5: with EPT A/D on, guest paging-structure accesses count as writes.
        let pagingStructureWrite = accessedDirty && { if case .guestPagingStructure = access.origin { true } else { false } }()
        let isWrite = access.kind == .write || pagingStructureWrite
        var rights: UInt64 = 7 | EPTEntry.userExecuteBit
        var level = EPTLevel(rawValue: pointer.levels) ?? .pml4
        // A 4-level walk reaches 48 bits of guest-physical address; beyond that nothing is mapped.
        if gpa >> (level.entryShift + 9) != 0 {
            throw .violation(violation(gpa, access, rights: 0, pagingStructureWrite: pagingStructureWrite, notPresent: level))
        }
        var table = pointer.root.rawValue
        var entry = EPTEntry(0)
        while true {
            let entryAddress = table + UInt64(level.index(of: gpa)) * 8
            do { entry = EPTEntry(try memory.read64(at: entryAddress)) } catch {
                throw .tableUnreadable(HostPhysicalAddress(entryAddress))
            }
            path.append(EPTWalkStep(level: level, entryAddress: HostPhysicalAddress(entryAddress), entry: entry))
            rights &= entry.rawValue
            guard entry.isPresent(modeBasedExecute: modeBasedExecute) else {
                throw .violation(violation(gpa, access, rights: rights, pagingStructureWrite: pagingStructureWrite, notPresent: level))
            }
            if let reason = misconfiguration(of: entry, at: level) {
                throw .misconfiguration(EPTMisconfiguration(guestPhysical: address, level: level, entry: entry, reason: reason))
            }
            if entry.isLeaf(at: level) { break }
            table = entry.address
            level = level.next!
        }
        // 29.3.3.2: rights are the AND over all entries of the walk.
        let allowed: Bool
        switch access.kind {
        case .read: allowed = rights & EPTEntry.readBit != 0 && (!isWrite || rights & EPTEntry.writeBit != 0)
        case .write: allowed = rights & EPTEntry.writeBit != 0
        case .fetch:
            if modeBasedExecute, case .linear(_, true, _, _) = access.origin {
                allowed = rights & EPTEntry.userExecuteBit != 0
            } else {
                allowed = rights & EPTEntry.executeBit != 0
            }
        }
        guard allowed else {
            throw .violation(violation(gpa, access, rights: rights, pagingStructureWrite: pagingStructureWrite, notPresent: nil))
        }
        let size = level.leafPageSize!
        var dirty = entry.dirty
        if accessedDirty && updatesAccessedDirty {
            if isWrite && !entry.dirty {
                // 29.3.6: the log entry is written before the dirty flag; a full log stops the access.
                if log != nil { try log!.record(address, memory: &memory) }
                dirty = true
            }
            for index in 0..<path.count {
                let step = path[index]
                var updated = step.entry.rawValue | EPTEntry.accessedBit
                if index == path.count - 1 && isWrite { updated |= EPTEntry.dirtyBit }
                if updated != step.entry.rawValue {
                    do { try memory.write64(updated, at: step.entryAddress.rawValue) } catch {
                        throw .tableUnreadable(step.entryAddress)
                    }
                }
            }
        }
        return EPTTranslation(
            hostPhysical: HostPhysicalAddress(entry.address & ~size.offsetMask | gpa & size.offsetMask),
            pageSize: size,
            permissions: EPTPermissions(rawValue: UInt8(rights & 7) | (modeBasedExecute && rights & EPTEntry.userExecuteBit != 0 ? 8 : 0)),
            memoryType: entry.memoryType!, ignorePAT: entry.ignorePAT, suppressVE: entry.suppressVE, dirty: dirty)
    }

    /// The violation for `access` with `rights` ANDed so far (Table 28-7).
    func violation(_ gpa: UInt64, _ access: EPTAccess, rights: UInt64, pagingStructureWrite: Bool,
                   notPresent: EPTLevel?) -> EPTViolation
    {
        var q: EPTViolationQualification = []
        switch access.kind {
        case .read: q.insert(pagingStructureWrite ? [.dataRead, .dataWrite] : .dataRead)
        case .write: q.insert(.dataWrite)
        case .fetch: q.insert(.instructionFetch)
        }
        if rights & EPTEntry.readBit != 0 { q.insert(.readable) }
        if rights & EPTEntry.writeBit != 0 { q.insert(.writable) }
        if rights & EPTEntry.executeBit != 0 { q.insert(.executable) }
        if modeBasedExecute && rights & EPTEntry.userExecuteBit != 0 { q.insert(.userExecutable) }
        switch access.origin {
        case .physical: break
        case .guestPagingStructure: q.insert(.linearAddressValid)
        case .linear(_, let user, let writable, let executeDisable):
            q.insert([.linearAddressValid, .translationOfLinear])
            if capabilities.advancedViolationInfo {
                if user { q.insert(.userModeLinear) }
                if writable { q.insert(.guestWritableLinear) }
                if executeDisable { q.insert(.guestExecuteDisableLinear) }
            }
        }
        return EPTViolation(guestPhysical: GuestPhysicalAddress(gpa), guestLinear: access.linearAddress,
                            qualification: q, notPresentLevel: notPresent)
    }
}
