// The PCI root bridge's 32-bit memory window (the DSDT's PCI0 _CRS declares it): one MMIO
// range on the device bus that hands each access to the function whose memory BAR decodes it
// now. A BAR belongs to its function's configuration space, which the guest may rewrite (Linux
// sizes every BAR with decoding turned off, and may move one), so the window asks the functions
// at each access instead of keeping a fixed map (PCI 3.0, 6.2.5 "Base Addresses").
import Synchronization

/// A PCI function with memory BARs the window dispatches to.
public protocol PCIMemoryDecoder: AnyObject, Sendable {
    /// The offset of guest-physical `address` inside one of this function's memory BARs when
    /// the function decodes memory now (command bit 1) and the BAR holds `width` bytes there,
    /// with the BAR's index.
    func decode(_ address: UInt64, width: Int) -> (bar: Int, offset: UInt64)?
    func barRead(_ bar: Int, offset: UInt64, width: Int) -> UInt64
    func barWrite(_ bar: Int, offset: UInt64, width: Int, value: UInt64)
}

public final class PCIMemoryWindow: MMIODevice, Sendable {
    /// 0xC0000000-0xCFFFFFFF: above the PC's low RAM (at most 3 GiB) and below the virtio-mmio
    /// slots at 0xD0000000.
    public static let defaultRange: Range<UInt64> = 0xC000_0000..<0xD000_0000

    public var name: String { "pci-window" }
    public let range: Range<UInt64>
    private let decoders = Mutex<[any PCIMemoryDecoder]>([])
    /// The next address `allocate` hands out.
    private let next: Mutex<UInt64>

    public init(range: Range<UInt64> = PCIMemoryWindow.defaultRange) {
        self.range = range
        self.next = Mutex(range.lowerBound)
    }

    /// Adds a function whose BARs lie in the window.
    public func add(_ decoder: any PCIMemoryDecoder) {
        decoders.withLock { $0.append(decoder) }
    }

    /// A naturally aligned range of `size` bytes (a power of two) for a BAR, as firmware
    /// assigns them before the OS runs; nil when the window is full.
    public func allocate(size: UInt64) -> UInt64? {
        next.withLock { next in
            let start = (next + size - 1) / size * size
            guard start >= next, start + size <= range.upperBound else { return nil }
            next = start + size
            return start
        }
    }

    private func decoder(for offset: UInt64, width: Int) -> (any PCIMemoryDecoder, Int, UInt64)? {
        let address = range.lowerBound + offset
        for decoder in decoders.withLock({ $0 }) {
            if let hit = decoder.decode(address, width: width) { return (decoder, hit.bar, hit.offset) }
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
}
