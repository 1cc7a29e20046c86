// The Bochs/QEMU power-off port: writing the bytes "Shutdown" to I/O port 0x8900 turns the
// machine off. Bochs' BIOS defined it; QEMU kept it for the i440FX PC; kvm-unit-tests' exit()
// falls back to it when the debug-exit device is absent (Documentation/HostFacts.md, "Conventions of small x86
// test kernels").
import Synchronization

/// I/O port 0x8900: the string "Shutdown", one byte per write, powers the VM off
/// (`StopReason.systemEvent(.shutdown)`). Any other byte starts the match over.
public final class ShutdownPortDevice: PortIODevice, ResettableDevice, Sendable {
    public static let port: IOPort = 0x8900
    /// The bytes that power off, in order.
    public static let command = Array("Shutdown".utf8)

    public let name: String
    /// How many bytes of `command` have arrived in order.
    private let matched = Mutex(0)

    public init(name: String = "shutdown-port") {
        self.name = name
    }

    /// Reads as open bus.
    public func portRead(offset: UInt16, size: Int) -> UInt32 { UInt32.max }

    public func portWrite(offset: UInt16, size: Int, value: UInt32) -> ExitAction {
        let byte = UInt8(truncatingIfNeeded: value)
        let complete = matched.withLock { matched in
            if byte == Self.command[matched] {
                matched += 1
            } else {
                matched = byte == Self.command[0] ? 1 : 0
            }
            guard matched == Self.command.count else { return false }
            matched = 0
            return true
        }
        return complete ? .stop(.systemEvent(.shutdown)) : .resume
    }

    /// Forgets a partial match.
    public func reset() {
        matched.withLock { $0 = 0 }
    }
}

// MARK: Snapshot

extension ShutdownPortDevice: SnapshotDevice {
    /// How much of "Shutdown" has arrived: a guest paused between its bytes powers off on the rest.
    public func saveState(to encoder: inout StateEncoder) {
        encoder.write(UInt8(matched.withLock { $0 }))
    }

    public func restoreState(from decoder: inout StateDecoder) throws(StateDecodingError) {
        let count = try decoder.read(UInt8.self, "shutdown-port matched", below: UInt8(Self.command.count))
        matched.withLock { $0 = Int(count) }
    }
}
