// Routes port and MMIO exits to the device registered for the address (Documentation/Architecture.md:
// "the device bus (port I/O and MMIO ranges to devices)").

/// Why a device could not be registered.
public enum DeviceBusError: Error, Equatable, CustomStringConvertible {
    case emptyRange(device: String)
    case rangeOverflow(device: String)
    case overlap(device: String, existing: String, start: UInt64, end: UInt64)
    /// The bus is in use by running vCPUs (`Machine.start` froze it).
    case frozen(device: String)

    public var description: String {
        switch self {
        case .emptyRange(let device): "device \(device): a range must hold at least one address"
        case .rangeOverflow(let device): "device \(device): the range runs past the end of the address space"
        case let .overlap(device, existing, start, end):
            "device \(device) overlaps \(existing), which already holds 0x\(String(start, radix: 16))-0x\(String(end, radix: 16))"
        case .frozen(let device):
            "device \(device): the bus is frozen once the VM has started (register devices before start or run)"
        }
    }
}

/// One address space (I/O ports or guest-physical addresses) cut into device ranges, sorted for
/// binary search. The same code serves both spaces (vm-device's generic bus): a lookup takes the
/// whole access, not only its first address, as vm-device's `check_access(addr, len)` does.
struct AddressRanges<Device> {
    struct Range {
        let start: UInt64
        let end: UInt64  // inclusive
        let device: Device
        let name: String
    }

    private(set) var ranges: [Range] = []

    /// Adds `device` at `base ..< base + length`, inside `0 ... limit`.
    mutating func insert(_ device: Device, name: String, base: UInt64, length: UInt64, limit: UInt64) throws(DeviceBusError) {
        guard length > 0 else { throw .emptyRange(device: name) }
        let (last, overflow) = base.addingReportingOverflow(length - 1)
        guard !overflow, last <= limit else { throw .rangeOverflow(device: name) }
        for other in ranges where other.start <= last && base <= other.end {
            throw .overlap(device: name, existing: other.name, start: other.start, end: other.end)
        }
        ranges.append(Range(start: base, end: last, device: device, name: name))
        ranges.sort { $0.start < $1.start }
    }

    /// The device whose range holds every byte of `address ..< address + length`, with the
    /// offset of `address` in it; nil when no range holds `address`, or when the access runs
    /// past the end of the range that does (it then reaches no device: the unmapped-access
    /// policy answers, so a device never sees an offset + width beyond its window).
    @inline(__always)
    func lookup(_ address: UInt64, length: UInt64) -> (device: Device, offset: UInt64)? {
        var low = 0
        var high = ranges.count - 1
        while low <= high {
            let mid = (low + high) >> 1
            let range = ranges[mid]
            if address < range.start {
                high = mid - 1
            } else if address > range.end {
                low = mid + 1
            } else {
                let offset = address - range.start
                guard length == 0 || length - 1 <= range.end - address else { return nil }
                return (range.device, offset)
            }
        }
        return nil
    }
}

/// Maps port ranges and guest-physical ranges to devices. Registration happens before the VM
/// runs (`Machine.start` freezes the bus; a later `register` throws `.frozen`); lookups
/// (binary search, no allocation, no lock) happen on vCPU threads.
public final class DeviceBus: ExitHandler, @unchecked Sendable {
    // @unchecked Sendable: the tables change only before `freeze()`, which `Machine.start`
    // calls before any vCPU thread exists (thread creation orders the writes before the reads).

    private(set) var ports = AddressRanges<any PortIODevice>()
    private(set) var mmio = AddressRanges<any MMIODevice>()
    private var frozen = false

    public init() {}

    /// Refuses registrations from now on.
    public func freeze() { frozen = true }

    /// Places `device` at ports `base ..< base + count`.
    public func register(_ device: any PortIODevice, port base: IOPort, count: Int) throws(DeviceBusError) {
        guard !frozen else { throw .frozen(device: device.name) }
        guard count > 0 else { throw .emptyRange(device: device.name) }
        try ports.insert(device, name: device.name, base: UInt64(base.rawValue), length: UInt64(count), limit: UInt64(UInt16.max))
    }

    /// Places `device` at guest-physical `base ..< base + length`.
    public func register(_ device: any MMIODevice, address base: GuestPhysicalAddress, length: UInt64) throws(DeviceBusError) {
        guard !frozen else { throw .frozen(device: device.name) }
        try mmio.insert(device, name: device.name, base: base.rawValue, length: length, limit: UInt64.max)
    }

    /// One registered range: which device, in which address space, where.
    public struct Registration: Sendable, Equatable {
        public enum Space: String, Sendable { case port, mmio }
        public var name: String
        public var space: Space
        /// The first port or guest-physical address.
        public var base: UInt64
        /// Ports or bytes.
        public var length: UInt64
    }

    /// Every registered range, ports first, each space in address order (a device on several
    /// ranges appears once per range). For management (`hv ctl SOCKET devices`).
    public var registrations: [Registration] {
        ports.ranges.map { Registration(name: $0.name, space: .port, base: $0.start, length: $0.end - $0.start + 1) }
            + mmio.ranges.map { Registration(name: $0.name, space: .mmio, base: $0.start, length: $0.end &- $0.start &+ 1) }
    }

    /// Resets every registered `ResettableDevice` once (a device on several ranges, such as the
    /// i8042's two ports, is reset once): port devices first, each kind in address order.
    public func resetDevices() {
        var seen = Set<ObjectIdentifier>()
        let devices: [AnyObject] = ports.ranges.map { $0.device as AnyObject } + mmio.ranges.map { $0.device as AnyObject }
        for device in devices {
            guard seen.insert(ObjectIdentifier(device)).inserted, let resettable = device as? ResettableDevice else { continue }
            resettable.reset()
        }
    }

    /// Every registered device once, keyed by its name and first range ("uart16550@port:0x3f8"):
    /// port devices first, each space in address order. The key names a device's section in a
    /// snapshot, so the same command line gives the same keys in another process.
    public var uniqueDevices: [(key: String, device: AnyObject)] {
        var seen = Set<ObjectIdentifier>()
        var result: [(key: String, device: AnyObject)] = []
        let all = ports.ranges.map { ($0.device as AnyObject, $0.name, "port", $0.start) }
            + mmio.ranges.map { ($0.device as AnyObject, $0.name, "mmio", $0.start) }
        for (device, name, space, start) in all where seen.insert(ObjectIdentifier(device)).inserted {
            result.append(("\(name)@\(space):0x\(String(start, radix: 16))", device))
        }
        return result
    }

    /// Takes port and MMIO exits that land on a registered device; declines everything else.
    /// A string instruction (`REP INS`/`REP OUTS`) becomes one device access per element.
    public func handle(_ exit: VMExit, context: ExitContext) -> ExitAction? {
        switch exit {
        case .portOut(let io):
            guard let (device, offset) = ports.lookup(UInt64(io.port.rawValue), length: UInt64(io.data.size)) else { return nil }
            for index in 0..<io.data.count {
                let action = device.portWrite(offset: UInt16(truncatingIfNeeded: offset), size: io.data.size, value: io.data[index])
                if action != .resume { return action }
            }
            return .resume
        case .portIn(let io):
            guard let (device, offset) = ports.lookup(UInt64(io.port.rawValue), length: UInt64(io.data.size)) else { return nil }
            for index in 0..<io.data.count {
                io.data[index] = device.portRead(offset: UInt16(truncatingIfNeeded: offset), size: io.data.size)
            }
            return .resume
        case .mmioRead(let access):
            guard let (device, offset) = mmio.lookup(access.address.rawValue, length: UInt64(access.width)) else { return nil }
            return .resumeWith(device.mmioRead(offset: offset, width: Int(access.width)))
        case .mmioWrite(let access):
            guard let (device, offset) = mmio.lookup(access.address.rawValue, length: UInt64(access.width)) else { return nil }
            return device.mmioWrite(offset: offset, width: Int(access.width), value: access.value)
        default:
            return nil
        }
    }
}
