// The byte encoding of saved state: what a snapshot's sections hold (Documentation/Snapshots.md).
// Little-endian fixed-width integers, length-prefixed byte strings; a reader that meets a
// short or malformed field names it instead of trapping (snapshot files are input like any other).

/// Appends saved state as bytes.
public struct StateEncoder: Sendable {
    public private(set) var bytes: [UInt8] = []

    public init() {}

    public mutating func write<T: FixedWidthInteger>(_ value: T) {
        withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
    }

    public mutating func write(_ value: Bool) { write(UInt8(value ? 1 : 0)) }

    /// A byte string, its length first (UInt32).
    public mutating func write(bytes data: some Collection<UInt8>) {
        write(UInt32(data.count))
        bytes.append(contentsOf: data)
    }

    public mutating func write(_ text: String) { write(bytes: Array(text.utf8)) }

    /// A plain C struct (no pointers) as its bytes, its size first, so a reader built against
    /// another layout refuses it instead of misreading it.
    public mutating func write<T>(raw value: T) {
        withUnsafeBytes(of: value) { write(bytes: $0) }
    }
}

/// Why saved state could not be read back.
public struct StateDecodingError: Error, Equatable, CustomStringConvertible, Sendable {
    /// The field being read ("uart16550 ier", "vCPU 1 kvm_sregs").
    public var field: String
    public var problem: String

    public init(field: String, problem: String) {
        self.field = field
        self.problem = problem
    }

    public var description: String { "\(field): \(problem)" }
}

/// Reads what a `StateEncoder` wrote, checking every length against what is left.
public struct StateDecoder: Sendable {
    private let bytes: [UInt8]
    private var offset = 0

    public init(_ bytes: [UInt8]) { self.bytes = bytes }

    /// Bytes not read yet.
    public var remaining: Int { bytes.count - offset }

    public mutating func read<T: FixedWidthInteger>(_ type: T.Type = T.self, _ field: String) throws(StateDecodingError) -> T {
        let size = MemoryLayout<T>.size
        guard remaining >= size else { throw StateDecodingError(field: field, problem: "the state ends \(size - remaining) byte(s) short") }
        var value: T = 0
        withUnsafeMutableBytes(of: &value) { target in
            for i in 0..<size { target[i] = bytes[offset + i] }
        }
        offset += size
        return T(littleEndian: value)
    }

    public mutating func read(_ type: Bool.Type, _ field: String) throws(StateDecodingError) -> Bool {
        switch try read(UInt8.self, field) {
        case 0: return false
        case 1: return true
        case let other: throw StateDecodingError(field: field, problem: "\(other) is not a boolean (0 or 1)")
        }
    }

    public mutating func readBytes(_ field: String, atMost limit: Int = 1 << 30) throws(StateDecodingError) -> [UInt8] {
        let count = Int(try read(UInt32.self, field))
        guard count <= limit else { throw StateDecodingError(field: field, problem: "\(count) bytes is more than the \(limit) it may hold") }
        guard remaining >= count else { throw StateDecodingError(field: field, problem: "says \(count) bytes but \(remaining) are left") }
        defer { offset += count }
        return Array(bytes[offset..<(offset + count)])
    }

    public mutating func readString(_ field: String) throws(StateDecodingError) -> String {
        let data = try readBytes(field, atMost: 1 << 20)
        guard let text = String(validating: data, as: UTF8.self) else { throw StateDecodingError(field: field, problem: "is not UTF-8") }
        return text
    }

    /// A C struct `write(raw:)` wrote; its size must be this build's.
    public mutating func read<T>(raw type: T.Type, _ field: String) throws(StateDecodingError) -> T {
        let data = try readBytes(field)
        guard data.count == MemoryLayout<T>.size else {
            throw StateDecodingError(field: field, problem: "was saved as \(data.count) bytes; this host's layout is \(MemoryLayout<T>.size)")
        }
        return data.withUnsafeBytes { $0.loadUnaligned(as: T.self) }
    }

    /// An integer that must be below `bound` (an index, a count of things in a fixed array).
    public mutating func read<T: FixedWidthInteger>(_ type: T.Type, _ field: String, below bound: T) throws(StateDecodingError) -> T {
        let value = try read(T.self, field)
        guard value < bound else { throw StateDecodingError(field: field, problem: "\(value) is out of range (less than \(bound))") }
        return value
    }

    /// Fails unless every byte was read: a longer state is another format.
    public func finish(_ field: String) throws(StateDecodingError) {
        guard remaining == 0 else { throw StateDecodingError(field: field, problem: "\(remaining) byte(s) left over; the state has another layout") }
    }
}

/// A device whose guest-visible state a snapshot saves and a restore puts back: registers,
/// FIFOs, latches, pending interrupts. Devices without state of their own conform with nothing
/// to save (`StatelessDevice`); a device on the bus that is neither makes a snapshot fail with
/// its name, rather than a restored guest meeting a device that forgot everything.
public protocol SnapshotDevice: AnyObject {
    /// A name for the device's section, with the ranges the bus gives it added.
    var name: String { get }
    /// Appends the device's state; throws when a part of it cannot be read now (a TPM engine
    /// that fails), naming it. Most devices cannot fail.
    func saveState(to encoder: inout StateEncoder) throws(HVError)
    /// Puts back what `saveState` wrote. Called before any vCPU runs.
    func restoreState(from decoder: inout StateDecoder) throws(StateDecodingError)
    /// Why this device's state cannot be saved now, if it cannot (a PCI bus holding a function
    /// without snapshot support); nil by default.
    var snapshotRefusal: String? { get }
}

extension SnapshotDevice {
    public var snapshotRefusal: String? { nil }
}

/// A device with no state to save: its behaviour depends on nothing a guest left in it.
public protocol StatelessDevice: SnapshotDevice {}

extension StatelessDevice {
    public func saveState(to encoder: inout StateEncoder) throws(HVError) {}
    public func restoreState(from decoder: inout StateDecoder) throws(StateDecodingError) {}
}

/// A device that does work of its own, apart from the vCPUs' accesses: threads that serve
/// queues on eventfd notifications, host input (a TAP, a console, vsock sockets), timers. A
/// paused machine holds that work (`Machine.pause`), so neither its state nor guest memory
/// changes while a snapshot reads them; what arrived meanwhile is served at `resume` (or, in a
/// restored machine, at `start`).
public protocol ActivityHoldingDevice: AnyObject {
    /// Stops touching guest memory and device state until `releaseActivity`; returns once work
    /// under way has finished.
    func holdActivity()
    /// Serves what was held.
    func releaseActivity()
}

/// A device backed by something only one VM may hold at a time: a disk image, locked against a
/// second writer. A live migration hands it over (QEMU inactivates its images the same way):
/// the source lets go when it stops for the last copy, the destination takes hold before its
/// guest runs, and the source takes hold again if the migration fails.
public protocol HandOverDevice: AnyObject {
    /// Flushes what the device wrote and lets go.
    func releaseBacking()
    /// Takes hold; fails, naming the resource, while another process holds it.
    func claimBacking() throws(HVError)
}
