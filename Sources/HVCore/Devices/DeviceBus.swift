// Routes port and MMIO exits to the device registered for the address (ARCHITECTURE.md:
// "the device bus (port I/O and MMIO ranges to devices)").

/// Why a device could not be registered.
public enum DeviceBusError: Error, Equatable, CustomStringConvertible {
    case emptyRange(device: String)
    case rangeOverflow(device: String)
    case overlap(device: String, existing: String, start: UInt64, end: UInt64)

    public var description: String {
        switch self {
        case .emptyRange(let device): "device \(device): a range must hold at least one address"
        case .rangeOverflow(let device): "device \(device): the range runs past the end of the address space"
        case let .overlap(device, existing, start, end):
            "device \(device) overlaps \(existing), which already holds 0x\(String(start, radix: 16))-0x\(String(end, radix: 16))"
        }
    }
}

/// Maps port ranges and guest-physical ranges to devices. Registration happens before the VM
/// runs; lookups (binary search, no allocation) happen on vCPU threads.
public final class DeviceBus: ExitHandler, @unchecked Sendable {
    // Sendable: ranges are only mutated during set-up, before any vCPU thread starts.

    struct PortRange {
        let start: UInt16
        let end: UInt16  // inclusive
        let device: any PortIODevice
    }

    struct MMIORange {
        let start: UInt64
        let end: UInt64  // inclusive
        let device: any MMIODevice
    }

    private(set) var portRanges: [PortRange] = []
    private(set) var mmioRanges: [MMIORange] = []

    public init() {}

    /// Places `device` at ports `base ..< base + count`.
    public func register(_ device: any PortIODevice, port base: IOPort, count: Int) throws(DeviceBusError) {
        guard count > 0 else { throw .emptyRange(device: device.name) }
        let last = Int(base.rawValue) + count - 1
        guard last <= Int(UInt16.max) else { throw .rangeOverflow(device: device.name) }
        let range = PortRange(start: base.rawValue, end: UInt16(last), device: device)
        for other in portRanges where other.start <= range.end && range.start <= other.end {
            throw .overlap(device: device.name, existing: other.device.name,
                           start: UInt64(other.start), end: UInt64(other.end))
        }
        portRanges.append(range)
        portRanges.sort { $0.start < $1.start }
    }

    /// Places `device` at guest-physical `base ..< base + length`.
    public func register(_ device: any MMIODevice, address base: GuestPhysicalAddress, length: UInt64) throws(DeviceBusError) {
        guard length > 0 else { throw .emptyRange(device: device.name) }
        let (last, overflow) = base.rawValue.addingReportingOverflow(length - 1)
        guard !overflow else { throw .rangeOverflow(device: device.name) }
        let range = MMIORange(start: base.rawValue, end: last, device: device)
        for other in mmioRanges where other.start <= range.end && range.start <= other.end {
            throw .overlap(device: device.name, existing: other.device.name, start: other.start, end: other.end)
        }
        mmioRanges.append(range)
        mmioRanges.sort { $0.start < $1.start }
    }

    /// Resets every registered `ResettableDevice` once (a device on several ranges, such as the
    /// i8042's two ports, is reset once): port devices first, each kind in address order.
    public func resetDevices() {
        var seen = Set<ObjectIdentifier>()
        let devices: [AnyObject] = portRanges.map { $0.device as AnyObject } + mmioRanges.map { $0.device as AnyObject }
        for device in devices {
            guard seen.insert(ObjectIdentifier(device)).inserted, let resettable = device as? ResettableDevice else { continue }
            resettable.reset()
        }
    }

    /// The port device holding `port`, with the port's offset from the device's base.
    @inline(__always)
    func portDevice(at port: UInt16) -> (device: any PortIODevice, offset: UInt16)? {
        var low = 0
        var high = portRanges.count - 1
        while low <= high {
            let mid = (low + high) >> 1
            let range = portRanges[mid]
            if port < range.start {
                high = mid - 1
            } else if port > range.end {
                low = mid + 1
            } else {
                return (range.device, port - range.start)
            }
        }
        return nil
    }

    /// The MMIO device holding `address`, with the address's offset from the device's base.
    @inline(__always)
    func mmioDevice(at address: UInt64) -> (device: any MMIODevice, offset: UInt64)? {
        var low = 0
        var high = mmioRanges.count - 1
        while low <= high {
            let mid = (low + high) >> 1
            let range = mmioRanges[mid]
            if address < range.start {
                high = mid - 1
            } else if address > range.end {
                low = mid + 1
            } else {
                return (range.device, address - range.start)
            }
        }
        return nil
    }

    /// Takes port and MMIO exits that land on a registered device; declines everything else.
    /// A string instruction (`REP INS`/`REP OUTS`) becomes one device access per element.
    public func handle(_ exit: VMExit, context: ExitContext) -> ExitAction? {
        switch exit {
        case .portOut(let io):
            guard let (device, offset) = portDevice(at: io.port.rawValue) else { return nil }
            for index in 0..<io.data.count {
                let action = device.portWrite(offset: offset, size: io.data.size, value: io.data[index])
                if action != .resume { return action }
            }
            return .resume
        case .portIn(let io):
            guard let (device, offset) = portDevice(at: io.port.rawValue) else { return nil }
            for index in 0..<io.data.count {
                io.data[index] = device.portRead(offset: offset, size: io.data.size)
            }
            return .resume
        case .mmioRead(let access):
            guard let (device, offset) = mmioDevice(at: access.address.rawValue) else { return nil }
            return .resumeWith(device.mmioRead(offset: offset, width: Int(access.width)))
        case .mmioWrite(let access):
            guard let (device, offset) = mmioDevice(at: access.address.rawValue) else { return nil }
            return device.mmioWrite(offset: offset, width: Int(access.width), value: access.value)
        default:
            return nil
        }
    }
}
