// The linear-address walk of SDM Vol. 3A chapter 4: 32-bit (4.3), PAE (4.4), 4-level and
// 5-level paging (4.5), reserved-bit checks (4.3-4.5 tables), access rights (4.6.1),
// protection keys (4.6.2), the #PF error code (4.7) and accessed/dirty updates (4.8).

/// One paging-structure entry read during a guest walk.
public struct GuestWalkStep: Hashable, Sendable {
    /// 5 = PML5E, 4 = PML4E, 3 = PDPTE, 2 = PDE, 1 = PTE.
    public var level: Int
    /// Guest-physical address of the entry.
    public var entryAddress: GuestPhysicalAddress
    /// The entry as read (4-byte entries zero-extended).
    public var entry: UInt64
}

/// A completed linear-address translation.
public struct GuestTranslation: Hashable, Sendable {
    public var linearAddress: GuestVirtualAddress
    public var physicalAddress: GuestPhysicalAddress
    public var pageSize: PageSize
    /// U/S = 1 at every level: a user-mode address.
    public var userMode: Bool
    /// R/W = 1 at every level.
    public var writable: Bool
    /// XD = 1 at some level (with EFER.NXE).
    public var executeDisable: Bool
    /// G = 1 in the leaf with CR4.PGE = 1.
    public var global: Bool
    /// The leaf's protection key (bits 62:59), 4- and 5-level paging only.
    public var protectionKey: UInt8
    /// The entries read, root first.
    public var steps: [GuestWalkStep]
}

/// Walks guest page tables in a `PhysicalMemory` of guest-physical addresses.
public enum GuestPagingWalker {
    static let present: UInt64 = 1 << 0, writable: UInt64 = 1 << 1, user: UInt64 = 1 << 2
    static let accessed: UInt64 = 1 << 5, dirty: UInt64 = 1 << 6, pageSize: UInt64 = 1 << 7, global: UInt64 = 1 << 8
    static let executeDisable: UInt64 = 1 << 63

    /// Translates `linear` for `access` under `context`. With `setAccessedDirty`, a successful
    /// walk sets A in every entry used and D in the leaf of a write (SDM 4.8); a faulting walk
    /// changes nothing.
    public static func translate<M: PhysicalMemory>(_ linear: GuestVirtualAddress, _ access: GuestAccess,
                                                    context: GuestPagingContext, memory: inout M,
                                                    setAccessedDirty: Bool = false) throws(GuestPagingFault) -> GuestTranslation
    {
        let mode = context.mode
        var va = linear.rawValue
        switch mode {
        case .disabled:
            return GuestTranslation(linearAddress: linear, physicalAddress: GuestPhysicalAddress(va & 0xFFFF_FFFF),
                                    pageSize: .size4KiB, userMode: true, writable: true, executeDisable: false,
                                    global: false, protectionKey: 0, steps: [])
        case .bits32, .pae: va &= 0xFFFF_FFFF
        case .level4, .level5:
            let bits: UInt64 = mode == .level5 ? 57 : 48
            let upper = va >> (bits - 1)
            guard upper == 0 || upper == (~0 >> (bits - 1)) else { throw .nonCanonical(linear) }
        }
        let wide = mode != .bits32
        let addressMask = physicalAddressMask(bits: context.physicalAddressBits)
        var level: Int
        var table: UInt64
        switch mode {
        case .bits32: (level, table) = (2, context.cr3 & 0xFFFF_F000)
        case .pae: (level, table) = (3, context.cr3 & 0xFFFF_FFE0)
        case .level5: (level, table) = (5, context.cr3 & addressMask & ~0xFFF)
        default: (level, table) = (4, context.cr3 & addressMask & ~0xFFF)
        }
        var steps: [GuestWalkStep] = []
        steps.reserveCapacity(level)
        var isUser = true, isWritable = true, isXD = false
        var entry: UInt64 = 0
        var size = PageSize.size4KiB
        while true {
            let index: UInt64
            if mode == .bits32 {
                index = (va >> (level == 2 ? 22 : 12)) & 0x3FF
            } else if mode == .pae && level == 3 {
                index = (va >> 30) & 3
            } else {
                index = (va >> (12 + 9 * UInt64(level - 1))) & 0x1FF
            }
            let entryAddress = table + index * (wide ? 8 : 4)
            do {
                entry = wide ? try memory.read64(at: entryAddress) : UInt64(try memory.read32(at: entryAddress))
            } catch { throw .memory(error) }
            steps.append(GuestWalkStep(level: level, entryAddress: GuestPhysicalAddress(entryAddress), entry: entry))
            guard entry & present != 0 else {
                throw .pageFault(fault(linear, access, context, [], .notPresent(level: level)))
            }
            let paePDPTE = mode == .pae && level == 3
            let reserved = entry & reservedMask(mode: mode, level: level, entry: entry, context: context)
            if reserved != 0 {
                if paePDPTE { throw .invalidPDPTE(index: Int(index), entry: entry) }
                throw .pageFault(fault(linear, access, context, [.present, .reservedBit], .reservedBits(level: level, mask: reserved)))
            }
            if !paePDPTE {
                // PAE PDPTEs carry no R/W, U/S or XD (SDM 4.4.1, Table 4-8).
                isUser = isUser && entry & user != 0
                isWritable = isWritable && entry & writable != 0
                if context.noExecute && wide && entry & executeDisable != 0 { isXD = true }
            }
            if level == 1 { break }
            if level == 2 && entry & pageSize != 0 && (mode != .bits32 || context.pageSizeExtensions) {
                size = mode == .bits32 ? .size4MiB : .size2MiB
                break
            }
            if level == 3 && !paePDPTE && entry & pageSize != 0 {
                size = .size1GiB
                break
            }
            table = mode == .bits32 ? entry & 0xFFFF_F000 : entry & 0x000F_FFFF_FFFF_F000
            level -= 1
        }
        let ia32e = mode == .level4 || mode == .level5
        let key = ia32e ? UInt8((entry >> 59) & 0xF) : 0
        if let (reason, pk) = rightsViolation(isUser: isUser, isWritable: isWritable, isXD: isXD, key: key, ia32e: ia32e,
                                              access: access, context: context) {
            throw .pageFault(fault(linear, access, context, pk ? [.present, .protectionKey] : .present, reason))
        }
        var physical: UInt64
        if size == .size4MiB {
            // PSE-36: bits 20:13 hold physical-address bits 39:32 (SDM 4.3, Table 4-4).
            physical = entry & 0xFFC0_0000 | ((entry >> 13) & 0xFF) << 32 | va & size.offsetMask
        } else {
            let frame = mode == .bits32 ? entry & 0xFFFF_F000 : entry & 0x000F_FFFF_FFFF_F000
            physical = frame & ~size.offsetMask | va & size.offsetMask
        }
        physical &= addressMask
        if setAccessedDirty {
            for (i, step) in steps.enumerated() where !(mode == .pae && step.level == 3) {
                var updated = step.entry | accessed
                if i == steps.count - 1 && access.kind == .write { updated |= dirty }
                guard updated != step.entry else { continue }
                do {
                    if wide { try memory.write64(updated, at: step.entryAddress.rawValue) }
                    else { try memory.write32(UInt32(truncatingIfNeeded: updated), at: step.entryAddress.rawValue) }
                } catch { throw .memory(error) }
            }
        }
        return GuestTranslation(linearAddress: linear, physicalAddress: GuestPhysicalAddress(physical), pageSize: size,
                                userMode: isUser, writable: isWritable, executeDisable: isXD,
                                global: context.globalPages && entry & global != 0, protectionKey: key, steps: steps)
    }

    /// The reserved bits of an entry at `level` (SDM Tables 4-4 to 4-8 and 4-14 to 4-20).
    public static func reservedMask(mode: GuestPagingMode, level: Int, entry: UInt64, context: GuestPagingContext) -> UInt64 {
        let m = UInt64(context.physicalAddressBits)
        switch mode {
        case .disabled: return 0
        case .bits32:
            guard level == 2, entry & pageSize != 0, context.pageSizeExtensions else { return 0 }
            // Bit 21, and bits 20:(M-19) when MAXPHYADDR < 40.
            let top = min(m, 40)
            let low: UInt64 = top > 32 ? 13 + (top - 32) : 13
            return (1 << 22) - (1 << low)
        case .pae where level == 3:
            // PDPTE: bits 2:1, 8:5 and 63:M.
            return 0x6 | 0x1E0 | ~physicalAddressMask(bits: context.physicalAddressBits)
        default:
            var mask: UInt64
            if mode == .pae {
                mask = ~physicalAddressMask(bits: context.physicalAddressBits) & ~executeDisable
            } else {
                mask = 0x000F_FFFF_FFFF_F000 & ~physicalAddressMask(bits: context.physicalAddressBits)
            }
            if !context.noExecute { mask |= executeDisable }
            if level >= 4 { mask |= pageSize }
            if level == 3 && mode != .pae && entry & pageSize != 0 {
                mask |= context.supports1GiBPages ? 0x3FFF_E000 : pageSize
            }
            if level == 2 && entry & pageSize != 0 { mask |= 0x1F_E000 }
            return mask
        }
    }

    /// The access-rights rule the access breaks, if any (SDM 4.6.1 and 4.6.2), and whether a
    /// protection key denies it (the PK error-code bit).
    static func rightsViolation(isUser: Bool, isWritable: Bool, isXD: Bool, key: UInt8, ia32e: Bool,
                                access: GuestAccess, context: GuestPagingContext) -> (PageFaultReason, Bool)?
    {
        let supervisor = access.isSupervisor
        var reason: PageFaultReason? = nil
        switch access.kind {
        case .fetch:
            if !supervisor && !isUser { reason = .userAccessToSupervisorPage }
            else if supervisor && isUser && context.smep { reason = .smepFetch }
            else if isXD { reason = .executeDisable }
        case .read, .write:
            let write = access.kind == .write
            if !supervisor && !isUser { reason = .userAccessToSupervisorPage }
            else if supervisor && isUser && context.smap && (access.implicitSupervisor || !context.alignmentCheck) {
                reason = .smapAccess
            } else if write && !isWritable && (!supervisor || context.writeProtect) {
                reason = .writeToReadOnly
            }
        }
        // 4.6.2: keys govern data accesses to user pages (PKRU) or supervisor pages (PKRS).
        var keyDenies = false
        if ia32e && access.kind != .fetch {
            let enabled = isUser ? context.protectionKeys : context.supervisorProtectionKeys
            let register = isUser ? context.pkru : context.pkrs
            if enabled {
                let accessDisable = register >> (2 * UInt32(key)) & 1 != 0
                let writeDisable = register >> (2 * UInt32(key) + 1) & 1 != 0
                let writeRuleApplies = !supervisor || context.writeProtect
                keyDenies = accessDisable || (access.kind == .write && writeDisable && writeRuleApplies)
            }
        }
        if let reason { return (reason, keyDenies) }
        if keyDenies { return (.protectionKey(key: key), true) }
        return nil
    }

    /// Builds the #PF with `base` bits plus W/R, U/S and I/D for `access` (SDM 4.7).
    static func fault(_ linear: GuestVirtualAddress, _ access: GuestAccess, _ context: GuestPagingContext,
                      _ base: PageFaultErrorCode, _ reason: PageFaultReason) -> PageFault
    {
        var code = base
        if access.kind == .write { code.insert(.write) }
        if !access.isSupervisor { code.insert(.user) }
        // I/D is reported when execute-disable exists (NXE with PAE/IA-32e paging) or SMEP is on.
        let nx = context.noExecute && context.mode != .bits32
        if access.kind == .fetch && (nx || context.smep) { code.insert(.instructionFetch) }
        return PageFault(linearAddress: linear, errorCode: code, reason: reason)
    }
}
