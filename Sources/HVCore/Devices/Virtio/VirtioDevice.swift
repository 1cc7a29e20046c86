import Synchronization

// What a virtio device type implements (virtio 1.2, 5 "Device Types"), whatever transport
// carries it: its type, feature bits, queues and configuration space, and how it serves a
// queue. The transport (VirtioMMIOTransport or VirtioPCITransport, through VirtioTransportCore) owns the status, the feature negotiation and the
// queues' addresses, and calls the device with its lock held.

/// Device IDs (virtio 1.2, 5 "Device Types").
public enum VirtioDeviceType: UInt32, Sendable {
    case network = 1
    case block = 2
    case console = 3
    case entropy = 4
    case balloon = 5
    case vsock = 19
}

/// Feature bits that belong to the transport and the rings (virtio 1.2, 6 "Reserved Feature
/// Bits"); device types use bits 0-23.
public enum VirtioFeature {
    /// VIRTIO_F_INDIRECT_DESC (28): chains may point to a table of descriptors.
    public static let indirectDescriptors: UInt64 = 1 << 28
    /// VIRTIO_F_EVENT_IDX (29): used_event/avail_event suppress interrupts and notifications.
    public static let eventIndex: UInt64 = 1 << 29
    /// VIRTIO_F_VERSION_1 (32): a 1.x device; HV offers no legacy interface.
    public static let version1: UInt64 = 1 << 32
    /// What every HV transport offers besides the device's own bits.
    public static let transport: UInt64 = indirectDescriptors | eventIndex | version1
}

/// Device status bits (virtio 1.2, 2.1).
public enum VirtioStatus {
    public static let acknowledge: UInt32 = 1
    public static let driver: UInt32 = 2
    public static let driverOK: UInt32 = 4
    public static let featuresOK: UInt32 = 8
    public static let deviceNeedsReset: UInt32 = 64
    public static let failed: UInt32 = 128
}

/// Why a device could not serve a queue. Either way the transport sets DEVICE_NEEDS_RESET and
/// logs the problem once; the VM keeps running.
public enum VirtioDeviceError: Error, Equatable, CustomStringConvertible {
    /// The ring or a chain broke a rule of 2.7.
    case queue(VirtqueueError)
    /// A request whose layout the device type cannot read (a block request without room for
    /// its header or status byte).
    case malformedRequest(String)

    public var description: String {
        switch self {
        case .queue(let error): "\(error)"
        case .malformedRequest(let why): "malformed request: \(why)"
        }
    }
}

/// A virtio device type behind a transport.
///
/// The transport calls these methods with its lock held, so one device sees one call at a time;
/// a device that is also driven from a host thread (console input) asks its transport to serve
/// the queue (through the callback `connect(serve:)` hands it) instead of touching the queue itself.
public protocol VirtioDevice: AnyObject, Sendable {
    var type: VirtioDeviceType { get }
    /// A short name for logs ("virtio-blk").
    var name: String { get }
    /// The device-type feature bits offered (bits 0-23); the transport adds `VirtioFeature.transport`.
    var features: UInt64 { get }
    /// The largest size of each queue, in queue order (a power of two each).
    var queueSizes: [UInt16] { get }
    /// A read of `width` bytes (1, 2, 4 or 8) at `offset` of the device configuration space;
    /// 0 beyond its end.
    func readConfiguration(offset: Int, width: Int) -> UInt64
    /// A write to the configuration space (most device types ignore it).
    func writeConfiguration(offset: Int, width: Int, value: UInt64)
    /// The driver accepted `features` (FEATURES_OK), a subset of what was offered.
    func activate(features: UInt64)
    /// Takes what the driver made available on `queue` (index `index`) and returns true when it
    /// put anything on the used ring.
    func serve(queue index: Int, _ queue: inout Virtqueue, memory: GuestMemory) throws(VirtioDeviceError) -> Bool
    /// A device reset (the driver wrote 0 to the status, or the platform reset): back to
    /// power-on, nothing in flight.
    func reset()
    /// Appends the device type's own state, what the transport does not hold: input not yet
    /// delivered, a buffer the device keeps, a balloon's target (Documentation/Snapshots.md).
    /// Called with the transport's lock held, while the machine is paused.
    func saveState(to encoder: inout StateEncoder)
    /// Puts back what `saveState` wrote (after `activate` with the snapshot's features), or
    /// refuses a state that does not fit this device (another disk size, another MAC address).
    func restoreState(from decoder: inout StateDecoder) throws(StateDecodingError)
    /// Called once by the transport with a way to have a queue served from a host thread
    /// (a device with input of its own keeps it; others ignore it).
    func connect(serve: @escaping @Sendable (Int) -> Void)
    /// Called once by the transport with a way to announce a change the device made to its
    /// configuration space (a configuration-change interrupt); most device types ignore it.
    func connectConfigurationChange(_ changed: @escaping @Sendable () -> Void)
}

/// A virtio transport, whatever its device type: how the machine finds the devices behind
/// its transports (to hold their work on pause, to hand a disk over in a migration).
public protocol VirtioTransport: AnyObject {
    var virtioDevice: any VirtioDevice { get }
}

extension Virtqueue {
    /// `pop` as a device's serve loop wants it: a broken ring or chain becomes the
    /// `VirtioDeviceError` the transport answers with DEVICE_NEEDS_RESET.
    public mutating func popRequest(into chain: inout VirtqueueChain, memory: GuestMemory) throws(VirtioDeviceError) -> Bool {
        do { return try pop(into: &chain, memory: memory) } catch { throw .queue(error) }
    }
}

extension VirtioDevice {
    public func connect(serve: @escaping @Sendable (Int) -> Void) {}
    public func connectConfigurationChange(_ changed: @escaping @Sendable () -> Void) {}
    public func writeConfiguration(offset: Int, width: Int, value: UInt64) {}
    public func activate(features: UInt64) {}
    public func reset() {}
}

/// The transport's "serve this queue" callback as a device keeps it (`connect(serve:)`): set
/// once, called from any thread.
///
/// It lives in a class because a function stored as a `Mutex`'s own value cannot be read
/// safely: `withLock { $0 }` hands the body the value `inout`, and Swift converts a function
/// between the generic and the concrete representation on the way in and writes the converted
/// copy back on the way out, one reabstraction thunk deeper each time. After tens of thousands of
/// reads (console input, received frames) calling it overflowed the stack; the virtio fuzz
/// target found it. A class reference reads back as itself.
public final class VirtioQueueCallback: Sendable {
    private final class Box: Sendable {
        let serve: @Sendable (Int) -> Void
        init(_ serve: @escaping @Sendable (Int) -> Void) { self.serve = serve }
    }
    private let box = Mutex<Box?>(nil)

    public init() {}

    public func set(_ serve: @escaping @Sendable (Int) -> Void) { box.withLock { $0 = Box(serve) } }

    /// Asks the transport to serve `queue`; nothing before `set`.
    public func callAsFunction(_ queue: Int) {
        let box = box.withLock { $0 }
        box?.serve(queue)
    }
}

/// Little-endian configuration-space bytes read at any offset and width, as the transports'
/// configuration windows are.
public func virtioConfigurationRead(_ bytes: [UInt8], offset: Int, width: Int) -> UInt64 {
    var value: UInt64 = 0
    for index in 0..<min(width, 8) where offset >= 0 && offset + index < bytes.count {
        value |= UInt64(bytes[offset + index]) << (8 * UInt64(index))
    }
    return value
}
