// The PCI root bridge's windows (the DSDT's PCI0 _CRS declares them): a range of guest-physical
// addresses, or of I/O ports, on the device bus that hands each access to the function whose
// BAR of that kind decodes it now. A BAR belongs to its function's configuration space, which
// the guest may rewrite (Linux sizes every BAR with decoding turned off, and may move one), so
// the window asks the functions at each access instead of keeping a fixed map (PCI 3.0, 6.2.5
// "Base Addresses").
import Synchronization

/// The two address spaces a BAR can decode (PCI 3.0, 6.2.5.1: BAR bit 0).
public enum PCIAddressSpace: Sendable, Equatable {
    case memory
    case io
}

/// A PCI function with BARs a window dispatches to.
public protocol PCIBARDecoder: AnyObject, Sendable {
    /// The offset of `address` (a guest-physical address, or an I/O port) inside one of this
    /// function's BARs of `space` when the function decodes that space now (command bit 1 for
    /// memory, bit 0 for I/O) and the BAR holds `width` bytes there, with the BAR's index.
    func decode(_ address: UInt64, width: Int, space: PCIAddressSpace) -> (bar: Int, offset: UInt64)?
    func barRead(_ bar: Int, offset: UInt64, width: Int) -> UInt64
    func barWrite(_ bar: Int, offset: UInt64, width: Int, value: UInt64)
}

/// One window of the root bridge. The memory window is an `MMIODevice`, the I/O window a
/// `PortIODevice`; the bus reaches each through its own space (`PCPlatform` registers both).
public final class PCIWindow: MMIODevice, PortIODevice, Sendable {
    /// 0xC0000000-0xCFFFFFFF: above the PC's low RAM (at most 3 GiB) and below the virtio-mmio
    /// slots at 0xD0000000.
    public static let memoryRange: Range<UInt64> = 0xC000_0000..<0xD000_0000
    /// Ports 0xC000-0xFFFF: where PC firmware (SeaBIOS) puts I/O BARs, above every legacy ISA
    /// port and inside the DSDT's 0x0D00-0xFFFF I/O window.
    public static let ioRange: Range<UInt64> = 0xC000..<0x1_0000

    public let space: PCIAddressSpace
    public var name: String { space == .memory ? "pci-window" : "pci-io-window" }
    public let range: Range<UInt64>
    private let decoders = Mutex<[any PCIBARDecoder]>([])
    /// The next address `allocate` hands out.
    private let next: Mutex<UInt64>

    public init(space: PCIAddressSpace = .memory, range: Range<UInt64>? = nil) {
        self.space = space
        self.range = range ?? (space == .memory ? Self.memoryRange : Self.ioRange)
        self.next = Mutex(self.range.lowerBound)
    }

    /// Adds a function whose BARs lie in the window.
    public func add(_ decoder: any PCIBARDecoder) {
        decoders.withLock { $0.append(decoder) }
    }

    /// A naturally aligned range of `size` bytes for a BAR, as firmware assigns them before the
    /// OS runs. A BAR's size is a power of two (PCI 3.0, 6.2.5.1); a range the window has no room
    /// for left is an error naming the window.
    public func allocate(size: UInt64) throws(PCIError) -> UInt64 {
        guard size != 0, size & (size - 1) == 0 else { throw .invalidBARSize(size) }
        return try next.withLock { (next: inout UInt64) throws(PCIError) -> UInt64 in
            // Round up to the alignment; past 2^64 or past the window's end, there is no room.
            let (end, wrapped) = next.addingReportingOverflow(size - 1)
            let start = end & ~(size - 1)
            guard !wrapped, start <= range.upperBound, size <= range.upperBound - start else {
                throw .windowFull(name: name, range: range, size: size)
            }
            next = start + size
            return start
        }
    }

    private func decoder(for offset: UInt64, width: Int) -> (any PCIBARDecoder, Int, UInt64)? {
        let address = range.lowerBound + offset
        for decoder in decoders.withLock({ $0 }) {
            if let hit = decoder.decode(address, width: width, space: space) { return (decoder, hit.bar, hit.offset) }
        }
        return nil
    }

    /// An address no BAR decodes reads as all-ones (a master abort).
    public func mmioRead(offset: UInt64, width: Int) -> UInt64 {
        guard let (decoder, bar, barOffset) = decoder(for: offset, width: width) else {
            return width >= 8 ? UInt64.max : (1 << (8 * UInt64(width))) - 1
        }
        return decoder.barRead(bar, offset: barOffset, width: width)
    }

    public func mmioWrite(offset: UInt64, width: Int, value: UInt64) -> ExitAction {
        if let (decoder, bar, barOffset) = decoder(for: offset, width: width) {
            decoder.barWrite(bar, offset: barOffset, width: width, value: value)
        }
        return .resume
    }

    public func portRead(offset: UInt16, size: Int) -> UInt32 {
        UInt32(truncatingIfNeeded: mmioRead(offset: UInt64(offset), width: size))
    }

    public func portWrite(offset: UInt16, size: Int, value: UInt32) -> ExitAction {
        mmioWrite(offset: UInt64(offset), width: size, value: UInt64(value))
    }
}

// MARK: Snapshot

/// Stateless: which function answers an access is decided from the functions' configuration
/// spaces at each access (the host bridge saves those), and the decoders and the allocation
/// cursor are set up by construction, before the guest runs.
extension PCIWindow: StatelessDevice {}
