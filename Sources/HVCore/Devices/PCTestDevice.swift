// QEMU's `pc-testdev` (hw/misc/pc-testdev.c), the ISA test device kvm-unit-tests' x86 tests
// expect: a data port for string-I/O tests, a "flush page" port that makes the hypervisor drop
// its mapping of one guest page, ports that drive each ISA interrupt line directly, and a 64 KiB
// MMIO scratch window at 0xFF000000 for emulated-MMIO tests. It is a test fixture, not PC
// hardware: `hv run --test-devices` attaches it, a production VM does not carry it.
import Glibc
import Synchronization

/// The pc-testdev register windows (`register(on:)` puts each in place).
///
/// - Ports 0xE0-0xE3: one 32-bit data register; a write of N bytes at 0xE0 + k replaces bytes
///   k..<k+N, a read returns them (QEMU's `test_ioport_*`). Ports 0xE8-0xEB reach the same
///   register byte by byte (QEMU's `ioport_byte`, the same bytes for any access width).
/// - Ports 0xE4-0xE7 (write, 32-bit): the guest-physical address of a page whose host mapping is
///   made inaccessible and accessible again (`mprotect`), which makes KVM drop its translation of
///   the page: the guest's next access faults it in again (kvm-unit-tests' `eventinj` uses it to
///   take a fault while an event is being delivered). An address outside RAM is ignored.
/// - Ports 0x2000-0x2017 (write, byte): the level of ISA interrupt line (port - 0x2000), 0 low,
///   anything else high (kvm-unit-tests' `set_irq_line`, used by `ioapic` and `realmode`).
/// - MMIO 0xFF000000-0xFF00FFFF: 64 KiB of scratch memory that every access reaches through an
///   MMIO exit (kvm-unit-tests' IORAM_BASE_PHYS: `emulator`, `lam`).
public final class PCTestDevice: Sendable {
    public static let dataPort: IOPort = 0xE0
    public static let flushPort: IOPort = 0xE4
    public static let byteDataPort: IOPort = 0xE8
    public static let irqLinePort: IOPort = 0x2000
    public static let irqLineCount = 24
    public static let scratchAddress: UInt64 = 0xFF00_0000
    public static let scratchSize = 0x1_0000

    public let name: String
    private let memory: GuestMemory
    private let lines: [InterruptLine?]
    private let data = Mutex<UInt32>(0)
    private let scratch = Mutex([UInt8](repeating: 0, count: PCTestDevice.scratchSize))

    /// `lines[n]` drives ISA interrupt line n (nil: the VM has no interrupt controller, and a write
    /// to that line's port does nothing).
    public init(memory: GuestMemory, lines: [InterruptLine?], name: String = "pc-testdev") {
        self.memory = memory
        self.lines = lines
        self.name = name
    }

    /// Registers the ports and the scratch window on `bus`.
    public func register(on bus: DeviceBus) throws(DeviceBusError) {
        try bus.register(DataPort(device: self, name: "\(name) data"), port: Self.dataPort, count: 4)
        try bus.register(DataPort(device: self, name: "\(name) data (bytes)"), port: Self.byteDataPort, count: 4)
        try bus.register(FlushPort(device: self, name: "\(name) flush page"), port: Self.flushPort, count: 4)
        try bus.register(IRQLinePorts(device: self, name: "\(name) irq lines"), port: Self.irqLinePort, count: Self.irqLineCount)
        try bus.register(ScratchWindow(device: self, name: "\(name) iomem"), address: GuestPhysicalAddress(Self.scratchAddress),
                         length: UInt64(Self.scratchSize))
    }

    /// The data register's value.
    public var dataValue: UInt32 { data.withLock { $0 } }

    /// Bytes of the scratch window (for tests); the part of `offset ..< offset + count` inside it.
    public func scratchBytes(at offset: Int, count: Int) -> [UInt8] {
        scratch.withLock { bytes in
            let (end, wrapped) = offset.addingReportingOverflow(count)
            let lower = min(max(offset, 0), bytes.count)
            let upper = wrapped ? (count > 0 ? bytes.count : 0) : min(max(end, 0), bytes.count)
            return lower < upper ? Array(bytes[lower..<upper]) : []
        }
    }

    // MARK: The register windows

    private final class DataPort: PortIODevice {
        let device: PCTestDevice, name: String
        init(device: PCTestDevice, name: String) { self.device = device; self.name = name }

        func portRead(offset: UInt16, size: Int) -> UInt32 {
            let (shift, mask) = Self.field(offset: offset, size: size)
            return (device.data.withLock { $0 } >> shift) & mask
        }

        func portWrite(offset: UInt16, size: Int, value: UInt32) -> ExitAction {
            let (shift, mask) = Self.field(offset: offset, size: size)
            device.data.withLock { $0 = $0 & ~(mask << shift) | (value & mask) << shift }
            return .resume
        }

        /// Bits the access covers: bytes offset..<offset + size of the 32-bit register (the bus
        /// keeps the whole access inside the four ports).
        static func field(offset: UInt16, size: Int) -> (shift: UInt32, mask: UInt32) {
            let bytes = max(1, min(size, 4 - Int(offset & 3)))
            return (UInt32(offset & 3) * 8, bytes == 4 ? UInt32.max : (1 << UInt32(bytes * 8)) - 1)
        }
    }

    private final class FlushPort: PortIODevice {
        let device: PCTestDevice, name: String
        init(device: PCTestDevice, name: String) { self.device = device; self.name = name }

        func portRead(offset: UInt16, size: Int) -> UInt32 { 0xFFFF_FFFF }

        func portWrite(offset: UInt16, size: Int, value: UInt32) -> ExitAction {
            let page = GuestPhysicalAddress(UInt64(value) & ~0xFFF)
            // Dropping and restoring access makes the kernel's MMU notifier invalidate KVM's
            // mapping of the page; the contents stay.
            if let host = try? device.memory.hostPointer(for: page, length: 0x1000) {
                _ = mprotect(host, 0x1000, PROT_NONE)
                _ = mprotect(host, 0x1000, PROT_READ | PROT_WRITE)
            }
            return .resume
        }
    }

    private final class IRQLinePorts: PortIODevice {
        let device: PCTestDevice, name: String
        init(device: PCTestDevice, name: String) { self.device = device; self.name = name }

        func portRead(offset: UInt16, size: Int) -> UInt32 { 0xFFFF_FFFF }

        func portWrite(offset: UInt16, size: Int, value: UInt32) -> ExitAction {
            let line = Int(offset)
            if line < device.lines.count, let wire = device.lines[line] {
                wire.set(value & 0xFF != 0)
            }
            return .resume
        }
    }

    private final class ScratchWindow: MMIODevice {
        let device: PCTestDevice, name: String
        init(device: PCTestDevice, name: String) { self.device = device; self.name = name }

        func mmioRead(offset: UInt64, width: Int) -> UInt64 {
            device.scratch.withLock { bytes in
                var value: UInt64 = 0
                for index in 0..<Self.count(offset, width) {
                    value |= UInt64(bytes[Int(offset) + index]) << UInt64(index * 8)
                }
                return value
            }
        }

        func mmioWrite(offset: UInt64, width: Int, value: UInt64) -> ExitAction {
            device.scratch.withLock { bytes in
                for index in 0..<Self.count(offset, width) {
                    bytes[Int(offset) + index] = UInt8(truncatingIfNeeded: value >> UInt64(index * 8))
                }
            }
            return .resume
        }

        /// Bytes of an access at `offset` that lie in the window (the bus checks the start only).
        static func count(_ offset: UInt64, _ width: Int) -> Int {
            guard offset < UInt64(PCTestDevice.scratchSize) else { return 0 }
            return max(0, min(width, 8, PCTestDevice.scratchSize - Int(offset)))
        }
    }
}
