// QEMU's isa-debug-exit device (hw/misc/debugexit.c): a port a test kernel writes its result
// to, which ends the VM. `-device isa-debug-exit,iobase=0xf4,iosize=4` is the convention of
// kvm-unit-tests style kernels.

/// A port whose writes stop the VM with `.debugExit(code:)`.
///
/// Register it at `IOPort.debugExit` (0xF4) with `portCount` ports:
/// `try bus.register(device, port: .debugExit, count: device.portCount)`.
/// A write at any of its ports stops the VM with the value written, limited to the access size
/// and to the device's width (a 4-byte `OUT` to a 1-byte device reports the low byte); like
/// QEMU, the port offset is not part of the code. Reads return all-ones of the access size
/// (0xFF, 0xFFFF, 0xFFFF_FFFF), what an absent ISA device reads as, since the data lines float high.
public final class DebugExitDevice: PortIODevice, Sendable {
    /// How many bytes the device decodes (QEMU's `iosize` property).
    public enum Width: Int, Sendable, CaseIterable {
        case byte = 1
        case word = 2
        case doubleword = 4
    }

    public let name: String
    public let width: Width

    /// A debug-exit port `width` bytes wide; 4 bytes is what test kernels expect.
    public init(name: String = "debug-exit", width: Width = .doubleword) {
        self.name = name
        self.width = width
    }

    /// How many consecutive ports the device occupies.
    public var portCount: Int { width.rawValue }

    public func portRead(offset: UInt16, size: Int) -> UInt32 {
        Self.mask(bytes: size)
    }

    public func portWrite(offset: UInt16, size: Int, value: UInt32) -> ExitAction {
        .stop(.debugExit(code: value & Self.mask(bytes: min(size, width.rawValue))))
    }

    /// The host process exit status QEMU gives a guest's debug-exit `code`: `(code << 1) | 1`,
    /// so a guest can never produce 0 (a status of 1 means "code 0"). The result is what QEMU
    /// passes to `exit(3)`, computed in 64 bits and converted to `int` as C does; the kernel keeps
    /// only its low 8 bits, so a shell sees `((code << 1) | 1) & 0xFF` (code 0x80 reads as 1).
    public static func exitStatus(forCode code: UInt32) -> Int32 {
        Int32(truncatingIfNeeded: UInt64(code) << 1 | 1)
    }

    /// All-ones in the low `bytes` bytes (1, 2 or 4; other sizes are treated as 4).
    private static func mask(bytes: Int) -> UInt32 {
        switch bytes {
        case 1: 0xFF
        case 2: 0xFFFF
        default: 0xFFFF_FFFF
        }
    }
}

// MARK: Snapshot

/// Stateless: a write stops the VM at once and reads are constant; nothing is left between accesses.
extension DebugExitDevice: StatelessDevice {}
