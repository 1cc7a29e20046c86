// The two-dimensional walk hardware performs with EPT on (SDM 29.3.2): every guest
// paging-structure entry is read at a guest-physical address that EPT translates first, and
// the final guest-physical address is translated once more. With 4-level guest paging and
// 4-level EPT that is up to 24 memory references for one TLB miss.

/// Guest-physical memory seen through EPT: each read or write of a guest paging-structure
/// entry is an EPT translation (origin: paging structure of `linear`) and then host memory.
public struct NestedGuestMemory<Host: PhysicalMemory>: PhysicalMemory {
    public var walker: EPTWalker
    public var host: Host
    /// The linear address whose guest walk is in progress (for exit qualification bit 7).
    public var linear: GuestVirtualAddress
    /// EPT entries read so far (the cost the two-dimensional walk pays).
    public private(set) var eptEntryReads = 0
    /// Guest paging-structure entries read so far.
    public private(set) var guestEntryReads = 0
    /// PML state, when page-modification logging is on.
    public var log: PageModificationLog?

    public init(walker: EPTWalker, host: Host, linear: GuestVirtualAddress = 0, log: PageModificationLog? = nil) {
        self.walker = walker
        self.host = host
        self.linear = linear
        self.log = log
    }

    /// Translates `address` for `access` through EPT, counting the entries read.
    public mutating func translate(_ address: GuestPhysicalAddress, _ access: EPTAccess) throws(EPTFault) -> EPTTranslation {
        var path = EPTWalkPath()
        defer { eptEntryReads += path.count }
        return try walker.translate(address, access, memory: &host, path: &path, log: &log)
    }

    public mutating func read64(at address: UInt64) throws(PhysicalMemoryFault) -> UInt64 {
        guestEntryReads += 1
        let translation: EPTTranslation
        do { translation = try translate(GuestPhysicalAddress(address), EPTAccess(.read, origin: .guestPagingStructure(linear: linear))) }
        catch { throw .ept(error) }
        return try host.read64(at: translation.hostPhysical.rawValue)
    }

    public mutating func write64(_ value: UInt64, at address: UInt64) throws(PhysicalMemoryFault) {
        let translation: EPTTranslation
        do { translation = try translate(GuestPhysicalAddress(address), EPTAccess(.write, origin: .guestPagingStructure(linear: linear))) }
        catch { throw .ept(error) }
        try host.write64(value, at: translation.hostPhysical.rawValue)
    }
}

/// Why a two-dimensional translation stopped.
public enum TwoDimensionalFault: Error, Hashable, Sendable {
    /// The guest's own paging faulted (#PF, #GP): delivered to the guest.
    case guest(GuestPagingFault)
    /// EPT stopped a guest paging-structure access or the final access: a VM exit.
    case ept(EPTFault)
    /// Host memory behind EPT could not be read.
    case hostMemory(PhysicalMemoryFault)
}

/// The result of a two-dimensional walk.
public struct TwoDimensionalTranslation: Hashable, Sendable {
    /// The guest's translation (linear to guest-physical).
    public var guest: GuestTranslation
    /// EPT's translation of the final guest-physical address.
    public var host: EPTTranslation
    /// Memory references made: guest entries plus EPT entries, including the final walk.
    public var memoryReferences: Int
}

public enum TwoDimensionalWalker {
    /// Translates `linear` for `access`: the guest walk through `memory` (whose EPT walker
    /// and host memory take part), then the EPT translation of the result (SDM 29.3.2).
    public static func translate<Host: PhysicalMemory>(_ linear: GuestVirtualAddress, _ access: GuestAccess,
                                                       context: GuestPagingContext, memory: inout NestedGuestMemory<Host>,
                                                       setAccessedDirty: Bool = false) throws(TwoDimensionalFault) -> TwoDimensionalTranslation
    {
        memory.linear = linear
        let startEPT = memory.eptEntryReads, startGuest = memory.guestEntryReads
        let guest: GuestTranslation
        do {
            guest = try GuestPagingWalker.translate(linear, access, context: context, memory: &memory, setAccessedDirty: setAccessedDirty)
        } catch {
            switch error {
            case .memory(.ept(let fault)): throw .ept(fault)
            case .memory(let other): throw .hostMemory(other)
            default: throw .guest(error)
            }
        }
        let origin = EPTAccessOrigin.linear(linear, userMode: guest.userMode, guestWritable: guest.writable,
                                            guestExecuteDisable: guest.executeDisable)
        let host: EPTTranslation
        do { host = try memory.translate(guest.physicalAddress, EPTAccess(access.kind, origin: origin)) }
        catch { throw .ept(error) }
        let references = (memory.eptEntryReads - startEPT) + (memory.guestEntryReads - startGuest)
        return TwoDimensionalTranslation(guest: guest, host: host, memoryReferences: references)
    }
}
