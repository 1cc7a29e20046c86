// The chipset's Reset Control Register at port 0xCF9 (Intel ICH/PIIX "RST_CNT": bit 1 SYS_RST,
// bit 2 RST_CPU, bit 3 FULL_RST). Linux's `reboot=pci` and ACPI's FADT RESET_REG use it; QEMU's
// hw/isa/piix.c `rcr_write` is the reference: writing bit 2 resets, bits 1 and 3 are kept.
import Synchronization

/// The reset control register, one byte at port 0xCF9 (`register` it at `port` with 1 port).
///
/// A write with bit 2 (RST_CPU) set returns `ExitAction.reset` (0x06 "hard reset" and 0x0E
/// "full reset" are what guests write); bits 1 and 3 are stored and read back. Wider accesses
/// act on the low byte. 0xCF9 lies inside the PCI configuration address register (0xCF8-0xCFB):
/// when a `PCIHostBridge` owns 0xCF8, give it this register and it forwards byte accesses at
/// 0xCF9 here, as a real chipset does.
public final class ResetControlDevice: PortIODevice, ResettableDevice, Sendable {
    public static let port: IOPort = 0xCF9
    public static let resetCPU: UInt8 = 1 << 2

    public let name: String
    private let stored = Mutex<UInt8>(0)

    public init(name: String = "reset-control") {
        self.name = name
    }

    /// Clears SYS_RST and FULL_RST, as QEMU's PIIX reset does.
    public func reset() {
        stored.withLock { $0 = 0 }
    }

    /// The register's stored bits (SYS_RST and FULL_RST).
    public var value: UInt8 { stored.withLock { $0 } }

    public func portRead(offset: UInt16, size: Int) -> UInt32 {
        UInt32(value)
    }

    public func portWrite(offset: UInt16, size: Int, value: UInt32) -> ExitAction {
        let byte = UInt8(truncatingIfNeeded: value)
        stored.withLock { $0 = byte & 0x0A }
        return byte & Self.resetCPU != 0 ? .reset : .resume
    }
}

// MARK: Snapshot

extension ResetControlDevice: SnapshotDevice {
    /// SYS_RST and FULL_RST as stored (QEMU's `vmstate_piix3` keeps `rcr`). A `PCIHostBridge`
    /// that owns 0xCF9 saves this register inside its own state.
    public func saveState(to encoder: inout StateEncoder) {
        encoder.write(value)
    }

    public func restoreState(from decoder: inout StateDecoder) throws(StateDecodingError) {
        let byte = try decoder.read(UInt8.self, "reset-control value")
        guard byte & ~0x0A == 0 else {
            throw StateDecodingError(field: "reset-control value", problem: "0x\(String(byte, radix: 16)) has bits other than SYS_RST and FULL_RST")
        }
        stored.withLock { $0 = byte }
    }
}
