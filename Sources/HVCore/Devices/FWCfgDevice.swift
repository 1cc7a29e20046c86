// QEMU's firmware configuration device (fw_cfg), port I/O flavour, as QEMU's docs/specs/fw_cfg.rst
// describes it: a selector register, a byte-wide data register, a file directory and the DMA
// interface. Firmware (SeaBIOS, OVMF) and small test kernels read the RAM size and the CPU count
// from it; QEMU's hw/nvram/fw_cfg.c is the reference where the specification is silent.
import Synchronization

/// Why an fw_cfg item could not be added.
public enum FWCfgError: Error, Equatable, CustomStringConvertible {
    /// A file name must be 1 to 55 bytes of UTF-8 (the directory has 56 bytes, NUL-terminated).
    case invalidFileName(String)
    /// A file with this name exists already.
    case duplicateFile(String)
    /// All file selectors (0x20 up to 0x3FFF) are taken.
    case tooManyFiles

    public var description: String {
        switch self {
        case .invalidFileName(let name): "fw_cfg file name \"\(name)\" must be 1 to 55 bytes long"
        case .duplicateFile(let name): "fw_cfg file \"\(name)\" exists already"
        case .tooManyFiles: "fw_cfg has no free file selector left"
        }
    }
}

/// QEMU's fw_cfg device at ports 0x510-0x51B (register it at `basePort` with `portCount` ports).
///
/// | Port        | Access                | Meaning (fw_cfg.rst, "Selector Register", "Data Register", "DMA Address") |
/// |-------------|-----------------------|------------------------------------------------|
/// | 0x510       | 16-bit write          | selector: picks an item, resets the data offset |
/// | 0x511       | byte read             | the item's next byte (0 past its end); writes ignored |
/// | 0x514-0x51B | big-endian 64-bit     | DMA address; writing the low half (0x518) starts the transfer; reads give "QEMU CFG" |
///
/// Items: 0x00 signature "QEMU", 0x01 ID (bit 0 traditional, bit 1 DMA), 0x03 RAM size (u64),
/// 0x05 and 0x0F CPU count (u16), 0x19 the file directory, 0x20 onwards the files added with
/// `addFile(named:contents:)`. Multi-byte items are little-endian except the file directory,
/// which is big-endian ("File Directory"). A wider read of the data port returns one byte.
///
/// DMA ("DMA interface"): the guest writes the guest-physical address of an `FWCfgDmaAccess`
/// (big-endian `control: u32, length: u32, address: u64`). The device performs select (bit 3,
/// key in bits 16-31), then read (bit 1: copy `length` bytes to `address`, zeros past the
/// item's end) or skip (bit 2: advance the offset), and writes `control` back: 0 on success,
/// bit 0 on error. Write (bit 4) is refused with the error bit: no item is writable. Every
/// guest address and length is checked against guest RAM; a transfer that leaves RAM copies
/// nothing and reports the error bit. Safe to use from several threads.
public final class FWCfgDevice: PortIODevice, ResettableDevice, Sendable {
    /// The selector port; the data port is `basePort + 1`, the DMA address `basePort + 4`.
    public static let basePort: IOPort = 0x510
    /// Ports occupied from `basePort`: selector, data and the 8-byte DMA address.
    public static let portCount = 12

    /// Well-known selector keys (fw_cfg.rst, "Firmware Configuration Items"; QEMU fw_cfg_keys.h).
    public enum Key {
        public static let signature: UInt16 = 0x00
        public static let id: UInt16 = 0x01
        public static let uuid: UInt16 = 0x02
        public static let ramSize: UInt16 = 0x03
        public static let noGraphic: UInt16 = 0x04
        public static let cpuCount: UInt16 = 0x05
        public static let maxCPUs: UInt16 = 0x0F
        public static let kernelCommandLineSize: UInt16 = 0x14
        public static let kernelCommandLineData: UInt16 = 0x15
        public static let fileDirectory: UInt16 = 0x19
        /// The selector of the first file; files take consecutive keys.
        public static let firstFile: UInt16 = 0x20
        /// Bit 15: the architecture-specific item space (x86 e820 tables and the like).
        public static let architectureLocal: UInt16 = 0x8000
    }

    /// DMA control bits (fw_cfg.rst, "DMA interface").
    public enum DMAControl {
        public static let error: UInt32 = 1 << 0
        public static let read: UInt32 = 1 << 1
        public static let skip: UInt32 = 1 << 2
        public static let select: UInt32 = 1 << 3
        public static let write: UInt32 = 1 << 4
    }

    /// What a read of the DMA address register returns: "QEMU CFG", most significant byte first.
    public static let dmaSignature: UInt64 = 0x5145_4D55_2043_4647
    /// The longest file name, without its terminating NUL.
    public static let maxFileNameLength = 55

    public let name: String
    /// Where DMA transfers go; nil turns the DMA interface off (ID bit 1 clear).
    public let memory: GuestMemory?
    private let state: Mutex<State>

    /// An fw_cfg device reporting `ramSize` bytes of RAM and `cpuCount` CPUs, with DMA into `memory`.
    public init(name: String = "fw_cfg", memory: GuestMemory?, ramSize: UInt64, cpuCount: Int) {
        self.name = name
        self.memory = memory
        var state = State()
        state.items[Key.signature] = Array("QEMU".utf8)
        state.items[Key.id] = littleEndianBytes(memory == nil ? 1 : 3, count: 4)
        state.items[Key.uuid] = [UInt8](repeating: 0, count: 16)
        state.items[Key.ramSize] = littleEndianBytes(ramSize, count: 8)
        state.items[Key.noGraphic] = littleEndianBytes(1, count: 2)
        state.items[Key.cpuCount] = littleEndianBytes(UInt64(cpuCount), count: 2)
        state.items[Key.maxCPUs] = littleEndianBytes(UInt64(cpuCount), count: 2)
        state.rebuildDirectory()
        self.state = Mutex(state)
    }

    /// The fw_cfg device of `memory`'s VM: its RAM size and `cpuCount`, with DMA.
    public convenience init(memory: GuestMemory, cpuCount: Int) {
        self.init(memory: memory, ramSize: memory.size, cpuCount: cpuCount)
    }

    /// Selector 0, offset 0, DMA address cleared; the items stay (QEMU's fw_cfg_reset).
    public func reset() {
        state.withLock { state in
            state.selected = 0
            state.offset = 0
            state.dmaAddress = [UInt8](repeating: 0, count: 8)
        }
    }

    // MARK: Host side

    /// Sets (or replaces) the item at `key`, e.g. a kernel command line for `Key.kernelCommandLineData`.
    /// Keys 0x19 (directory) and file keys are managed by `addFile`; setting them here replaces the bytes.
    public func setItem(_ key: UInt16, _ bytes: [UInt8]) {
        state.withLock { $0.items[key] = bytes }
    }

    /// The bytes of item `key`, if it exists.
    public func item(_ key: UInt16) -> [UInt8]? {
        state.withLock { $0.items[key] }
    }

    /// Adds a named file ("etc/..." by QEMU's conventions) and returns its selector key.
    @discardableResult
    public func addFile(named fileName: String, contents: [UInt8]) throws(FWCfgError) -> UInt16 {
        let nameBytes = Array(fileName.utf8)
        guard !nameBytes.isEmpty, nameBytes.count <= Self.maxFileNameLength, !nameBytes.contains(0) else {
            throw .invalidFileName(fileName)
        }
        return try state.withLock { state throws(FWCfgError) -> UInt16 in
            guard !state.files.contains(where: { $0.name == fileName }) else { throw .duplicateFile(fileName) }
            let key = Key.firstFile + UInt16(state.files.count)
            guard key < 0x4000 else { throw .tooManyFiles }
            state.files.append(File(name: fileName, key: key))
            state.items[key] = contents
            state.rebuildDirectory()
            return key
        }
    }

    // MARK: Guest side

    public func portRead(offset: UInt16, size: Int) -> UInt32 {
        switch offset {
        case 1:
            return UInt32(state.withLock { $0.readByte() })
        case 4..<12:
            // The register holds the signature in big-endian byte order; return the bytes at
            // `offset` in the order the guest sees them (little-endian packing of an IN).
            var value: UInt32 = 0
            for index in 0..<min(size, 4) where offset - 4 + UInt16(index) < 8 {
                let shift = 8 * (7 - Int(offset - 4) - index)
                value |= UInt32(UInt8(truncatingIfNeeded: Self.dmaSignature >> UInt64(shift))) << (8 * index)
            }
            return value
        default:
            // The selector is write-only; unassigned ports read as an absent ISA device.
            return 0xFFFF_FFFF
        }
    }

    public func portWrite(offset: UInt16, size: Int, value: UInt32) -> ExitAction {
        switch offset {
        case 0:
            let key = size == 1 ? UInt16(value & 0xFF) : UInt16(truncatingIfNeeded: value)
            state.withLock { $0.select(key) }
        case 4..<12:
            let start = Int(offset - 4)
            state.withLock { state in
                for index in 0..<size where start + index < 8 {
                    state.dmaAddress[start + index] = UInt8(truncatingIfNeeded: value >> (8 * UInt32(index)))
                }
                // A write that reaches the last byte (the low half at 0x518) starts the transfer
                // (fw_cfg.rst: "the write to the lower half triggers the DMA").
                if start + size >= 8 {
                    let address = state.dmaAddress.reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
                    state.dmaAddress = [UInt8](repeating: 0, count: 8)
                    if let memory { state.runDMA(at: address, memory: memory) }
                }
            }
        default:
            break  // data writes are ignored since QEMU 2.4 (fw_cfg.rst, "Data Register")
        }
        return .resume
    }
}

// MARK: - State

private struct File {
    var name: String
    var key: UInt16
}

private struct State {
    var items: [UInt16: [UInt8]] = [:]
    var files: [File] = []
    var selected: UInt16 = 0
    var offset = 0
    var dmaAddress = [UInt8](repeating: 0, count: 8)

    /// Selects `key`; the architecture bit selects the x86 item space, the write bit (0x4000) is ignored.
    mutating func select(_ key: UInt16) {
        selected = key & ~0x4000
        offset = 0
    }

    mutating func readByte() -> UInt8 {
        guard let item = items[selected], offset < item.count else { return 0 }
        defer { offset += 1 }
        return item[offset]
    }

    /// fw_cfg.rst "File Directory": be32 count, then per file be32 size, be16 select,
    /// be16 reserved, char name[56]; sorted by name as QEMU lists them.
    mutating func rebuildDirectory() {
        var bytes = bigEndianBytes(UInt64(files.count), count: 4)
        for file in files.sorted(by: { Array($0.name.utf8).lexicographicallyPrecedes(Array($1.name.utf8)) }) {
            bytes += bigEndianBytes(UInt64(items[file.key]?.count ?? 0), count: 4)
            bytes += bigEndianBytes(UInt64(file.key), count: 2)
            bytes += [0, 0]
            let name = Array(file.name.utf8)
            bytes += name + [UInt8](repeating: 0, count: 56 - name.count)
        }
        items[FWCfgDevice.Key.fileDirectory] = bytes
    }

    /// Performs the `FWCfgDmaAccess` at guest-physical `address` and writes its control word back.
    mutating func runDMA(at address: UInt64, memory: GuestMemory) {
        let descriptor = GuestPhysicalAddress(address)
        guard memory.contains(descriptor, length: 16),
              let raw = try? memory.readBytes(at: descriptor, count: 16)
        else { return }  // nowhere to report: QEMU likewise drops an unreadable descriptor
        let control = UInt32(truncatingIfNeeded: bigEndianValue(raw[0..<4]))
        let length = Int(bigEndianValue(raw[4..<8]))
        let target = bigEndianValue(raw[8..<16])
        var status: UInt32 = 0
        if control & FWCfgDevice.DMAControl.select != 0 { select(UInt16(control >> 16)) }
        if control & FWCfgDevice.DMAControl.read != 0 {
            if !copyOut(length: length, to: target, memory: memory) { status = FWCfgDevice.DMAControl.error }
        } else if control & FWCfgDevice.DMAControl.write != 0 {
            status = FWCfgDevice.DMAControl.error  // no writable items
        } else if control & FWCfgDevice.DMAControl.skip != 0 {
            // Clamped to the item, as QEMU's fw_cfg_dma_transfer does: a guest-chosen length
            // added again and again must not overflow the offset.
            let count = items[selected]?.count ?? 0
            let start = min(offset, count)
            offset = start + min(length, count - start)
        }
        try? memory.write(UInt32(status).byteSwapped, at: descriptor)
    }

    /// Copies `length` bytes of the selected item from the current offset to guest `address`,
    /// zeros past the item's end; nothing at all when the range leaves guest RAM. The item's
    /// bytes go straight into guest memory and the zeros are a `memset`: the host allocates
    /// nothing in proportion to the guest's length. The offset stops at the item's end.
    private mutating func copyOut(length: Int, to address: UInt64, memory: GuestMemory) -> Bool {
        let destination = GuestPhysicalAddress(address)
        guard length == 0 || memory.contains(destination, length: UInt64(length)) else { return false }
        let item = items[selected] ?? []
        let start = min(offset, item.count)
        let available = min(length, item.count - start)
        do throws(GuestMemoryError) {
            try memory.write(bytes: item[start..<start + available], at: destination)
            try memory.fill(0, count: UInt64(length - available), at: GuestPhysicalAddress(address + UInt64(available)))
        } catch { return false }
        offset = start + available
        return true
    }
}

private func littleEndianBytes(_ value: UInt64, count: Int) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: value >> (8 * UInt64($0))) }
}

private func bigEndianBytes(_ value: UInt64, count: Int) -> [UInt8] {
    (0..<count).reversed().map { UInt8(truncatingIfNeeded: value >> (8 * UInt64($0))) }
}

private func bigEndianValue(_ bytes: ArraySlice<UInt8>) -> UInt64 {
    bytes.reduce(0) { $0 << 8 | UInt64($1) }
}

// MARK: Snapshot

extension FWCfgDevice: SnapshotDevice {
    /// The selector, the offset into the selected item and the DMA address latch (a guest may
    /// have written its high half only), as QEMU's `vmstate_fw_cfg` keeps `cur_entry`,
    /// `cur_offset` and `dma_addr`. The items themselves are rebuilt by whoever constructs the
    /// device with the same configuration, so they are not saved.
    public func saveState(to encoder: inout StateEncoder) {
        let (selected, offset, dmaAddress) = state.withLock { ($0.selected, $0.offset, $0.dmaAddress) }
        encoder.write(selected)
        encoder.write(UInt64(offset))
        encoder.write(bytes: dmaAddress)
    }

    public func restoreState(from decoder: inout StateDecoder) throws(StateDecodingError) {
        let selected = try decoder.read(UInt16.self, "fw_cfg selector")
        // Items are far below 4 GiB; the reads clamp an offset past the item's end anyway.
        let offset = Int(try decoder.read(UInt64.self, "fw_cfg data offset", below: 1 << 32))
        let dmaAddress = try decoder.readBytes("fw_cfg dma address", atMost: 8)
        guard dmaAddress.count == 8 else {
            throw StateDecodingError(field: "fw_cfg dma address", problem: "\(dmaAddress.count) bytes; the register has 8")
        }
        state.withLock { state in
            state.selected = selected
            state.offset = offset
            state.dmaAddress = dmaAddress
        }
    }
}
