// A PCI function's 256-byte configuration space: the type 0 header, BARs with size probing and
// the capability list, as the PCI Local Bus Specification 3.0 lays them out (6.1 "Configuration
// Space Organization", 6.2.5 "Base Addresses", 6.7 "Capabilities List"). QEMU's hw/pci/pci.c
// (`pci_default_write_config`, write masks per byte) is the model followed here.
import Synchronization

/// Why a PCI device or capability could not be added.
public enum PCIError: Error, Equatable, CustomStringConvertible {
    case invalidAddress(slot: Int, function: Int)
    case slotTaken(slot: Int, function: Int)
    case invalidBAR(index: Int, reason: String)
    case capabilitySpaceFull(id: UInt8)
    /// A BAR of `size` bytes: a BAR's size is a power of two (PCI 3.0, 6.2.5.1).
    case invalidBARSize(UInt64)
    /// The window `name` ([range)) has no naturally aligned `size` bytes left.
    case windowFull(name: String, range: Range<UInt64>, size: UInt64)

    public var description: String {
        switch self {
        case let .invalidAddress(slot, function): "PCI address 00:\(slot).\(function) is outside slots 0-31, functions 0-7"
        case let .slotTaken(slot, function): "PCI address 00:\(slot).\(function) already holds a device"
        case let .invalidBAR(index, reason): "PCI BAR \(index): \(reason)"
        case .capabilitySpaceFull(let id): "PCI capability 0x\(String(id, radix: 16)) does not fit below offset 0x100"
        case .invalidBARSize(let size): "PCI BAR size: \(size) bytes is not a power of two"
        case let .windowFull(name, range, size):
            "\(name) [0x\(String(range.lowerBound, radix: 16)), 0x\(String(range.upperBound, radix: 16))) has no room left for a BAR of \(size) bytes"
        }
    }
}

/// A PCI function as the host bridge sees it: configuration reads and writes of 1, 2 or 4
/// bytes at `offset` (0-255), naturally aligned. Called from vCPU threads.
public protocol PCIDevice: AnyObject, Sendable {
    var name: String { get }
    func configurationRead(offset: UInt8, size: Int) -> UInt32
    func configurationWrite(offset: UInt8, size: Int, value: UInt32)
}

/// What a base address register decodes (PCI 3.0, 6.2.5.1).
public enum PCIBARKind: Sendable, Equatable {
    /// I/O space: bit 0 set.
    case io
    /// 32-bit memory space: bits 2:1 = 00, bit 3 prefetchable.
    case memory32(prefetchable: Bool)
    /// 64-bit memory space, two consecutive BARs: bits 2:1 = 10.
    case memory64(prefetchable: Bool)
}

/// Standard header offsets (PCI 3.0, figure 6-1).
public enum PCIConfigurationOffset {
    public static let vendorID: UInt8 = 0x00
    public static let deviceID: UInt8 = 0x02
    public static let command: UInt8 = 0x04
    public static let status: UInt8 = 0x06
    public static let revisionID: UInt8 = 0x08
    public static let classCode: UInt8 = 0x09
    public static let headerType: UInt8 = 0x0E
    public static let bar0: UInt8 = 0x10
    public static let subsystemVendorID: UInt8 = 0x2C
    public static let subsystemID: UInt8 = 0x2E
    public static let capabilitiesPointer: UInt8 = 0x34
    public static let interruptLine: UInt8 = 0x3C
    public static let interruptPin: UInt8 = 0x3D
}

/// A type 0 configuration space: its bytes plus a per-byte mask of what the guest may write.
///
/// Writable at start: command bits (I/O, memory, bus master, parity, SERR, interrupt disable),
/// cache line size, latency timer and interrupt line. `setBAR` makes a BAR's address bits
/// writable, so a guest that writes all-ones reads back `~(size - 1)` plus the type bits.
/// Status bit 4 and the pointer at 0x34 appear with the first `addCapability`.
public struct PCIConfigurationSpace: Sendable, Equatable {
    public private(set) var bytes = [UInt8](repeating: 0, count: 256)
    private var writeMask = [UInt8](repeating: 0, count: 256)
    private var lastCapability: UInt8?
    private var nextCapabilityOffset: Int = 0x40

    /// A header with the given identity; `classCode` is base class, subclass, programming
    /// interface (0x060000 = host bridge).
    public init(vendorID: UInt16, deviceID: UInt16, classCode: UInt32, revision: UInt8 = 0,
                subsystemVendorID: UInt16 = 0, subsystemID: UInt16 = 0, multifunction: Bool = false) {
        set16(PCIConfigurationOffset.vendorID, vendorID)
        set16(PCIConfigurationOffset.deviceID, deviceID)
        bytes[Int(PCIConfigurationOffset.revisionID)] = revision
        bytes[0x09] = UInt8(truncatingIfNeeded: classCode)
        bytes[0x0A] = UInt8(truncatingIfNeeded: classCode >> 8)
        bytes[0x0B] = UInt8(truncatingIfNeeded: classCode >> 16)
        bytes[Int(PCIConfigurationOffset.headerType)] = multifunction ? 0x80 : 0x00
        set16(PCIConfigurationOffset.subsystemVendorID, subsystemVendorID)
        set16(PCIConfigurationOffset.subsystemID, subsystemID)
        writeMask[0x04] = 0x47  // I/O, memory, bus master, parity error response
        writeMask[0x05] = 0x05  // SERR# enable, interrupt disable
        writeMask[0x0C] = 0xFF  // cache line size
        writeMask[0x0D] = 0xFF  // latency timer
        writeMask[Int(PCIConfigurationOffset.interruptLine)] = 0xFF
    }

    /// Reads `size` bytes (1, 2 or 4), little-endian; bytes past 0xFF read as all-ones.
    public func read(offset: UInt8, size: Int) -> UInt32 {
        var value: UInt32 = 0
        for index in 0..<min(size, 4) {
            let position = Int(offset) + index
            let byte = position < 256 ? bytes[position] : 0xFF
            value |= UInt32(byte) << (8 * UInt32(index))
        }
        return value
    }

    /// Writes the bits of `size` bytes that the write mask allows.
    public mutating func write(offset: UInt8, size: Int, value: UInt32) {
        for index in 0..<min(size, 4) where Int(offset) + index < 256 {
            let position = Int(offset) + index
            let byte = UInt8(truncatingIfNeeded: value >> (8 * UInt32(index)))
            bytes[position] = bytes[position] & ~writeMask[position] | byte & writeMask[position]
        }
    }

    /// Sets device-specific bytes and which of their bits the guest may write.
    public mutating func set(offset: UInt8, bytes values: [UInt8], writable mask: [UInt8]? = nil) {
        for (index, value) in values.enumerated() where Int(offset) + index < 256 {
            bytes[Int(offset) + index] = value
            writeMask[Int(offset) + index] = mask.map { index < $0.count ? $0[index] : 0 } ?? 0
        }
    }

    /// Declares BAR `index` (0-5) of `size` bytes, a power of two (at least 16 for memory, 4
    /// for I/O). A 64-bit BAR also takes `index + 1`. PCI 3.0, 6.2.5.1: the low bits are
    /// hard-wired, so the size is what a guest discovers by writing all-ones.
    public mutating func setBAR(_ index: Int, size: UInt64, kind: PCIBARKind) throws(PCIError) {
        let slots = kind == .memory64(prefetchable: false) || kind == .memory64(prefetchable: true) ? 2 : 1
        guard index >= 0, index + slots <= 6 else { throw .invalidBAR(index: index, reason: "must be 0-5 (0-4 for 64-bit)") }
        guard size.nonzeroBitCount == 1 else { throw .invalidBAR(index: index, reason: "size \(size) is not a power of two") }
        let offset = UInt8(0x10 + 4 * index)
        let typeBits: UInt32
        let minimum: UInt64
        switch kind {
        case .io: (typeBits, minimum) = (0x1, 4)
        case .memory32(let prefetchable): (typeBits, minimum) = (prefetchable ? 0x8 : 0x0, 16)
        case .memory64(let prefetchable): (typeBits, minimum) = (prefetchable ? 0xC : 0x4, 16)
        }
        guard size >= minimum else { throw .invalidBAR(index: index, reason: "size \(size) is below the minimum \(minimum)") }
        if case .io = kind, size > 256 { throw .invalidBAR(index: index, reason: "I/O BARs are at most 256 bytes") }
        if slots == 1, size > 1 << 31 { throw .invalidBAR(index: index, reason: "a 32-bit BAR holds at most 2 GiB") }
        let addressMask = ~(size - 1)
        let lowMask = UInt32(truncatingIfNeeded: addressMask) & (kind == .io ? 0xFFFF_FFFC : 0xFFFF_FFF0)
        set(offset: offset, bytes: le32(typeBits), writable: le32(lowMask))
        if slots == 2 {
            set(offset: offset + 4, bytes: le32(0), writable: le32(UInt32(truncatingIfNeeded: addressMask >> 32)))
        }
    }

    /// The address BAR `index` holds now (a 64-bit BAR combines both halves), type bits cleared.
    public func barAddress(_ index: Int) -> UInt64 {
        let low = read(offset: UInt8(0x10 + 4 * index), size: 4)
        if low & 1 == 1 { return UInt64(low & 0xFFFF_FFFC) }
        let base = UInt64(low & 0xFFFF_FFF0)
        guard low & 0x6 == 0x4, index < 5 else { return base }
        return base | UInt64(read(offset: UInt8(0x14 + 4 * index), size: 4)) << 32
    }

    /// The offset of `address` in BAR `index` (`size` bytes) when the BAR decodes `space`, the
    /// command register has that space's decoding on (bit 0 I/O, bit 1 memory) and all `width`
    /// bytes of the access fall inside the BAR; nil otherwise (PCI 3.0, 6.2.2 and 6.2.5).
    public func offset(of address: UInt64, width: Int, inBAR index: Int, size: UInt64, space: PCIAddressSpace) -> UInt64? {
        let io = read(offset: UInt8(0x10 + 4 * index), size: 4) & 1 == 1
        let enable: UInt32 = io ? 0x1 : 0x2
        guard io == (space == .io), read(offset: PCIConfigurationOffset.command, size: 2) & enable != 0 else { return nil }
        let base = barAddress(index)
        guard address >= base, address - base < size, UInt64(width) <= size - (address - base) else { return nil }
        return address - base
    }

    /// Appends a capability (`id`, then the next pointer, then `body`) to the list, dword
    /// aligned from 0x40, sets status bit 4 and links it (PCI 3.0, 6.7). Returns its offset.
    @discardableResult
    public mutating func addCapability(id: UInt8, body: [UInt8], writable mask: [UInt8]? = nil) throws(PCIError) -> UInt8 {
        let offset = nextCapabilityOffset
        guard offset + 2 + body.count <= 256 else { throw .capabilitySpaceFull(id: id) }
        set(offset: UInt8(offset), bytes: [id, 0] + body, writable: mask.map { [0, 0] + $0 })
        if let last = lastCapability {
            bytes[Int(last) + 1] = UInt8(offset)
        } else {
            bytes[Int(PCIConfigurationOffset.capabilitiesPointer)] = UInt8(offset)
            bytes[Int(PCIConfigurationOffset.status)] |= 0x10  // "Capabilities List" bit
        }
        lastCapability = UInt8(offset)
        nextCapabilityOffset = (offset + 2 + body.count + 3) & ~3
        return UInt8(offset)
    }

    private mutating func set16(_ offset: UInt8, _ value: UInt16) {
        bytes[Int(offset)] = UInt8(truncatingIfNeeded: value)
        bytes[Int(offset) + 1] = UInt8(truncatingIfNeeded: value >> 8)
    }

    private func le32(_ value: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: value >> (8 * $0)) } }
}

/// A PCI function whose whole behaviour is its configuration space (a host bridge, or the
/// front of a device whose BARs are served elsewhere). Thread-safe.
public final class PCIFunction: PCIDevice, ResettableDevice {
    public let name: String
    private let space: Mutex<PCIConfigurationSpace>
    private let powerOn: PCIConfigurationSpace

    public init(name: String, configuration: PCIConfigurationSpace) {
        self.name = name
        self.space = Mutex(configuration)
        self.powerOn = configuration
    }

    /// The configuration space as `init` received it: BARs unassigned, decoding off.
    public func reset() {
        space.withLock { $0 = powerOn }
    }

    /// QEMU's i440FX host bridge at 00:00.0: Intel 82441FX PMC, vendor 0x8086, device 0x1237,
    /// revision 2, class 0x060000, subsystem 0x1AF4:0x1100 (hw/pci-host/i440fx.c).
    public static func i440FXHostBridge() -> PCIFunction {
        PCIFunction(name: "i440fx", configuration: PCIConfigurationSpace(
            vendorID: 0x8086, deviceID: 0x1237, classCode: 0x06_0000, revision: 0x02,
            subsystemVendorID: 0x1AF4, subsystemID: 0x1100))
    }

    /// A copy of the configuration space as it is now.
    public var configuration: PCIConfigurationSpace { space.withLock { $0 } }

    public func configurationRead(offset: UInt8, size: Int) -> UInt32 {
        space.withLock { $0.read(offset: offset, size: size) }
    }

    public func configurationWrite(offset: UInt8, size: Int, value: UInt32) {
        space.withLock { $0.write(offset: offset, size: size, value: value) }
    }
}

// MARK: Snapshot

extension PCIConfigurationSpace {
    /// A saved configuration space: its 256 bytes, as a snapshot section holds them.
    static func readSaved(from decoder: inout StateDecoder) throws(StateDecodingError) -> [UInt8] {
        let bytes = try decoder.readBytes("configuration", atMost: 256)
        guard bytes.count == 256 else { throw StateDecodingError(field: "configuration", problem: "\(bytes.count) bytes; a configuration space has 256") }
        return bytes
    }

    /// Replaces the 256 bytes (a snapshot's), keeping the write masks and capability layout
    /// this space was constructed with: a restore goes into a function built the same way.
    mutating func replaceBytes(_ saved: [UInt8]) {
        precondition(saved.count == 256, "a configuration space has 256 bytes")
        bytes = saved
    }
}

extension PCIFunction {
    /// Puts back a snapshot's configuration bytes (256 of them). BAR placement needs nothing
    /// more: `PCIWindow` decodes each access from these bytes.
    func restoreConfiguration(bytes: [UInt8]) {
        space.withLock { $0.replaceBytes(bytes) }
    }
}
