// System Control Port A at port 0x92, the PS/2 "fast A20 and fast reset" port of PC chipsets
// (Intel PIIX/ICH datasheets, "Port 92h"; QEMU's hw/i386/port92.c is the reference): bit 1
// gates address line 20, bit 0 going from 0 to 1 resets the processor. Firmware and OS loaders
// use it to turn A20 on without the keyboard controller, and kvm-unit-tests' `init` test uses
// it to reset.
import Synchronization

/// Port 0x92 (`register` it at `port` with 1 port).
///
/// Reads return the last value written (bit 0 cleared after a reset). A write that sets bit 0
/// when it was clear returns `ExitAction.reset`; bit 1 (A20) is kept and read back. KVM runs the
/// guest with A20 always enabled, so a guest that clears the bit reads its own value back but
/// addresses above 1 MiB do not wrap.
public final class SystemControlPortA: PortIODevice, ResettableDevice, Sendable {
    public static let port: IOPort = 0x92
    public static let fastReset: UInt8 = 1 << 0
    public static let a20: UInt8 = 1 << 1

    public let name: String
    private let stored = Mutex<UInt8>(0)

    public init(name: String = "port92") {
        self.name = name
    }

    /// The value a read returns.
    public var value: UInt8 { stored.withLock { $0 } }

    /// A reset clears the reset bit and keeps A20, as QEMU's port 92 does.
    public func reset() {
        stored.withLock { $0 &= ~Self.fastReset }
    }

    public func portRead(offset: UInt16, size: Int) -> UInt32 {
        UInt32(value)
    }

    public func portWrite(offset: UInt16, size: Int, value: UInt32) -> ExitAction {
        let byte = UInt8(truncatingIfNeeded: value)
        let before = stored.withLock { stored -> UInt8 in
            defer { stored = byte }
            return stored
        }
        return byte & Self.fastReset != 0 && before & Self.fastReset == 0 ? .reset : .resume
    }
}

// MARK: Snapshot

extension SystemControlPortA: SnapshotDevice {
    /// The byte last written: A20 and the fast-reset bit, whose 0-to-1 edge the next write is
    /// compared against (QEMU's `vmstate_port92` keeps `outport`).
    public func saveState(to encoder: inout StateEncoder) {
        encoder.write(value)
    }

    public func restoreState(from decoder: inout StateDecoder) throws(StateDecodingError) {
        let byte = try decoder.read(UInt8.self, "port92 value")
        stored.withLock { $0 = byte }
    }
}
