// Building and editing an EPT hierarchy: map, unmap and protect guest-physical ranges, choosing
// the largest pages that fit, splitting a large page when an edit covers part of it and merging
// a table back into one large page when its 512 entries become uniform again (SDM 29.3.2 for
// the formats; the split/merge policy is the one KVM's TDP MMU and Xen's p2m use).

/// Why a builder refused an edit.
public enum EPTBuildError: Error, Hashable, Sendable {
    /// A guest-physical address, host-physical address or size is not 4 KiB aligned.
    case misaligned(UInt64)
    /// The range is empty.
    case emptyRange
    /// The range ends beyond what the walk reaches (48 bits with 4 levels) or, for a host
    /// address, beyond MAXPHYADDR.
    case outOfRange(UInt64)
    /// Write without read would be an EPT misconfiguration (SDM 29.3.3.1).
    case writeWithoutRead
    /// Execute-only needs IA32_VMX_EPT_VPID_CAP bit 0.
    case executeOnlyUnsupported
    /// The allocator has no table page left.
    case outOfTablePages
    /// A table page could not be read or written.
    case tableUnreadable(HostPhysicalAddress)
}

/// Where a new mapping's memory type comes from.
public enum EPTMemoryTypePolicy: Hashable, Sendable {
    /// One type for the whole range (e.g. WB for RAM, UC for MMIO).
    case fixed(MemoryType)
    /// The type the MTRRs give each host-physical address; a large page is used only where
    /// the type is uniform across it.
    case mtrrs(MTRRs)
}

/// How a builder shapes its tables.
public struct EPTBuilderOptions: Hashable, Sendable {
    /// 4 or 5 levels.
    public var levels: Int
    /// Use 2 MiB and 1 GiB leaves where a range allows (and the capabilities do), and merge.
    public var hugePages: Bool
    public var capabilities: EPTCapabilities
    /// MAXPHYADDR of the host.
    public var physicalAddressBits: Int
    /// Whether table entries should grant user-execute (bit 10) for mode-based execute control.
    public var modeBasedExecute: Bool

    public init(levels: Int = 4, hugePages: Bool = true, capabilities: EPTCapabilities = .modern,
                physicalAddressBits: Int = 46, modeBasedExecute: Bool = false)
    {
        self.levels = levels
        self.hugePages = hugePages
        self.capabilities = capabilities
        self.physicalAddressBits = physicalAddressBits
        self.modeBasedExecute = modeBasedExecute
    }
}

/// Builds and edits one EPT hierarchy in table pages from `Tables`.
public struct EPTBuilder<Tables: TableAllocator> {
    /// The allocator and memory holding the tables.
    public var tables: Tables
    /// The root (PML4 or PML5) table.
    public let root: HostPhysicalAddress
    public let options: EPTBuilderOptions

    enum Operation {
        /// Map with host = guest &+ delta; `template` holds rights, IPAT and suppress-#VE.
        case map(delta: UInt64, template: UInt64, types: EPTMemoryTypePolicy)
        case unmap
        /// Replace the rights bits (0, 1, 2, 10) with these.
        case protect(UInt64)
    }

    /// An empty hierarchy: one zeroed root table.
    public init(tables: Tables, options: EPTBuilderOptions = EPTBuilderOptions()) throws(EPTBuildError) {
        self.tables = tables
        self.options = options
        guard options.levels == 4 || options.levels == 5 else { throw .outOfRange(UInt64(options.levels)) }
        guard let root = self.tables.allocateTable() else { throw .outOfTablePages }
        self.root = root
    }

    /// The EPTP for this hierarchy (WB structures).
    public func pointer(accessedDirty: Bool = false) -> EPTPointer {
        EPTPointer(root: root, levels: options.levels, memoryType: .writeBack, accessedDirty: accessedDirty)
    }

    /// A walker for this hierarchy with the builder's capabilities.
    public func walker(accessedDirty: Bool = false) -> EPTWalker {
        EPTWalker(pointer: pointer(accessedDirty: accessedDirty), capabilities: options.capabilities,
                  physicalAddressBits: options.physicalAddressBits, modeBasedExecute: options.modeBasedExecute)
    }

    var topLevel: EPTLevel { options.levels == 5 ? .pml5 : .pml4 }

    // MARK: Edits

    /// Maps `[guest, guest + size)` to `[host, host + size)` with `permissions`, replacing
    /// whatever mapped any of it.
    public mutating func map(_ guest: GuestPhysicalAddress, size: UInt64, to host: HostPhysicalAddress,
                             permissions: EPTPermissions, memoryType: EPTMemoryTypePolicy = .fixed(.writeBack),
                             ignorePAT: Bool = false, suppressVE: Bool = false) throws(EPTBuildError)
    {
        try checkRange(guest.rawValue, size)
        guard host.rawValue & 0xFFF == 0 else { throw .misaligned(host.rawValue) }
        guard host.rawValue &+ size <= physicalAddressMask(bits: options.physicalAddressBits) &+ 1,
              host.rawValue &+ size >= host.rawValue else { throw .outOfRange(host.rawValue) }
        try checkPermissions(permissions)
        var template = permissions.entryBits
        if ignorePAT { template |= EPTEntry.ignorePATBit }
        if suppressVE { template |= EPTEntry.suppressVEBit }
        try apply(.map(delta: host.rawValue &- guest.rawValue, template: template, types: memoryType),
                  table: root.rawValue, level: topLevel, tableBase: 0, start: guest.rawValue, end: guest.rawValue + size)
    }

    /// Maps `[address, address + size)` to the same host-physical addresses.
    public mutating func identityMap(_ address: GuestPhysicalAddress, size: UInt64, permissions: EPTPermissions = .all,
                                     memoryType: EPTMemoryTypePolicy = .fixed(.writeBack)) throws(EPTBuildError)
    {
        try map(address, size: size, to: HostPhysicalAddress(address.rawValue), permissions: permissions, memoryType: memoryType)
    }

    /// Removes every mapping in `[guest, guest + size)`, freeing tables that become empty.
    public mutating func unmap(_ guest: GuestPhysicalAddress, size: UInt64) throws(EPTBuildError) {
        try checkRange(guest.rawValue, size)
        try apply(.unmap, table: root.rawValue, level: topLevel, tableBase: 0, start: guest.rawValue, end: guest.rawValue + size)
    }

    /// Sets the rights of every mapped page in `[guest, guest + size)` (holes stay holes).
    public mutating func protect(_ guest: GuestPhysicalAddress, size: UInt64, permissions: EPTPermissions) throws(EPTBuildError) {
        try checkRange(guest.rawValue, size)
        try checkPermissions(permissions)
        try apply(.protect(permissions.entryBits), table: root.rawValue, level: topLevel, tableBase: 0,
                  start: guest.rawValue, end: guest.rawValue + size)
    }

    func checkRange(_ start: UInt64, _ size: UInt64) throws(EPTBuildError) {
        guard size > 0 else { throw .emptyRange }
        guard start & 0xFFF == 0 else { throw .misaligned(start) }
        guard size & 0xFFF == 0 else { throw .misaligned(size) }
        let reach: UInt64 = 1 << (topLevel.entryShift + 9)
        guard start < reach, size <= reach - start else { throw .outOfRange(start &+ size) }
    }

    func checkPermissions(_ permissions: EPTPermissions) throws(EPTBuildError) {
        if permissions.contains(.write) && !permissions.contains(.read) { throw .writeWithoutRead }
        let executes = permissions.contains(.execute) || (options.modeBasedExecute && permissions.contains(.userExecute))
        if !permissions.contains(.read) && executes && !options.capabilities.executeOnly { throw .executeOnlyUnsupported }
    }

    func leafAllowed(at level: EPTLevel) -> Bool {
        switch level {
        case .pageTable: true
        case .pageDirectory: options.hugePages && options.capabilities.pages2MiB
        case .pageDirectoryPointerTable: options.hugePages && options.capabilities.pages1GiB
        case .pml4, .pml5: false
        }
    }

    // MARK: The recursive edit

    mutating func apply(_ operation: Operation, table: UInt64, level: EPTLevel, tableBase: UInt64,
                        start: UInt64, end: UInt64) throws(EPTBuildError)
    {
        let span = level.entrySpan
        let first = Int((start - tableBase) >> level.entryShift)
        let last = Int((end - 1 - tableBase) >> level.entryShift)
        for index in first...last {
            let entryAddress = table + UInt64(index) * 8
            let entryBase = tableBase + UInt64(index) * span
            let lo = max(start, entryBase), hi = min(end, entryBase + span)
            let covers = lo == entryBase && hi == entryBase + span
            let entry = try read(entryAddress)
            let present = entry.isPresent(modeBasedExecute: options.modeBasedExecute)
            switch operation {
            case .map(let delta, let template, let types):
                let host = entryBase &+ delta
                if covers && leafAllowed(at: level) && host % span == 0, let type = memoryType(types, host, span) {
                    if present && !entry.isLeaf(at: level) { try freeSubtree(entry.address, level: level.next!) }
                    let leaf = EPTEntry.leaf(at: HostPhysicalAddress(host), level: level, permissions: [],
                                             memoryType: type).rawValue | template
                    try write(leaf, entryAddress)
                    continue
                }
                let child = try childTable(entryAddress, entry, present: present, level: level)
                try apply(operation, table: child, level: level.next!, tableBase: entryBase, start: lo, end: hi)
                try mergeIfUniform(entryAddress, child: child, level: level)
            case .unmap:
                guard present else { continue }
                if covers {
                    if !entry.isLeaf(at: level) { try freeSubtree(entry.address, level: level.next!) }
                    try write(0, entryAddress)
                    continue
                }
                let child = try childTable(entryAddress, entry, present: present, level: level)
                try apply(operation, table: child, level: level.next!, tableBase: entryBase, start: lo, end: hi)
                if try isEmpty(child) {
                    tables.freeTable(HostPhysicalAddress(child))
                    try write(0, entryAddress)
                }
            case .protect(let rights):
                guard present else { continue }
                if covers && entry.isLeaf(at: level) {
                    try write(entry.rawValue & ~(7 | EPTEntry.userExecuteBit) | rights, entryAddress)
                    continue
                }
                let child = try childTable(entryAddress, entry, present: present, level: level)
                try apply(operation, table: child, level: level.next!, tableBase: entryBase, start: lo, end: hi)
                try mergeIfUniform(entryAddress, child: child, level: level)
            }
        }
    }

    /// The memory type for `[host, host + span)`, nil when MTRRs give it no single type.
    func memoryType(_ policy: EPTMemoryTypePolicy, _ host: UInt64, _ span: UInt64) -> MemoryType? {
        switch policy {
        case .fixed(let type): type
        // A 4 KiB page cannot be split further: fall back to UC if the MTRRs are undecidable.
        case .mtrrs(let mtrrs): mtrrs.uniformType(from: host, size: span) ?? (span == 4096 ? .uncacheable : nil)
        }
    }

    /// The table under the entry at `entryAddress`: existing, new, or split from a large page.
    mutating func childTable(_ entryAddress: UInt64, _ entry: EPTEntry, present: Bool, level: EPTLevel) throws(EPTBuildError) -> UInt64 {
        if present && !entry.isLeaf(at: level) { return entry.address }
        guard let next = level.next, let page = tables.allocateTable() else { throw .outOfTablePages }
        if present {
            // Split: 512 smaller leaves with the same rights, type and A/D flags.
            let attributes = entry.rawValue & EPTEntry.leafAttributeMask
            let size = next == .pageTable ? 0 : EPTEntry.pageSizeBit
            for i in 0..<512 {
                try write(attributes | size | (entry.address + UInt64(i) * next.entrySpan), page.rawValue + UInt64(i) * 8)
            }
        }
        try write(EPTEntry.table(at: page, modeBasedExecute: options.modeBasedExecute).rawValue, entryAddress)
        return page.rawValue
    }

    /// Replaces the table under `entryAddress` by one leaf when its 512 entries are leaves
    /// with identical attributes mapping one contiguous, aligned block.
    mutating func mergeIfUniform(_ entryAddress: UInt64, child: UInt64, level: EPTLevel) throws(EPTBuildError) {
        guard level != .pageTable, leafAllowed(at: level), let next = level.next else { return }
        let first = try read(child)
        guard first.isPresent(modeBasedExecute: options.modeBasedExecute), first.isLeaf(at: next),
              first.address % level.entrySpan == 0 else { return }
        for i in 1..<512 {
            let expected = first.rawValue + UInt64(i) * next.entrySpan
            guard try read(child + UInt64(i) * 8).rawValue == expected else { return }
        }
        try write(first.rawValue | EPTEntry.pageSizeBit, entryAddress)
        tables.freeTable(HostPhysicalAddress(child))
    }

    mutating func freeSubtree(_ table: UInt64, level: EPTLevel) throws(EPTBuildError) {
        if level != .pageTable {
            for i in 0..<512 {
                let entry = try read(table + UInt64(i) * 8)
                if entry.isPresent(modeBasedExecute: options.modeBasedExecute) && !entry.isLeaf(at: level) {
                    try freeSubtree(entry.address, level: level.next!)
                }
            }
        }
        tables.freeTable(HostPhysicalAddress(table))
    }

    mutating func isEmpty(_ table: UInt64) throws(EPTBuildError) -> Bool {
        for i in 0..<512 where try read(table + UInt64(i) * 8).isPresent(modeBasedExecute: options.modeBasedExecute) {
            return false
        }
        return true
    }

    mutating func read(_ address: UInt64) throws(EPTBuildError) -> EPTEntry {
        do { return EPTEntry(try tables.read64(at: address)) } catch { throw .tableUnreadable(HostPhysicalAddress(address)) }
    }

    mutating func write(_ value: UInt64, _ address: UInt64) throws(EPTBuildError) {
        do { try tables.write64(value, at: address) } catch { throw .tableUnreadable(HostPhysicalAddress(address)) }
    }
}
