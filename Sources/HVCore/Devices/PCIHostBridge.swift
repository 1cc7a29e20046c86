// PCI configuration mechanism #1 (PCI Local Bus Specification 3.0, 3.2.2.3.2 "Software
// Generation of Configuration Transactions"): CONFIG_ADDRESS at 0xCF8, CONFIG_DATA at 0xCFC-0xCFF.
// Bus 0 only, as QEMU's i440FX machine without bridges; an empty slot reads all-ones (3.2.2.3.4:
// a master abort on a configuration read returns 0xFFFFFFFF).
import Synchronization

/// The PC's PCI host bridge at ports 0xCF8-0xCFF (register it at `basePort` with `portCount` ports).
///
/// CONFIG_ADDRESS (0xCF8, dword accesses only): bit 31 enable, bits 23-16 bus, 15-11 device,
/// 10-8 function, 7-2 register; bits 30-24 read as 0. CONFIG_DATA (0xCFC-0xCFF): a byte, word
/// or dword of the addressed register at `register | (port - 0xCFC)`. Bits 1-0 of CONFIG_ADDRESS
/// are reserved in the specification; QEMU keeps them and ORs them into the byte offset
/// (hw/pci/pci_host.c), and software written against QEMU relies on it (kvm-unit-tests reads
/// the device ID by selecting register 2 and reading 0xCFC), so HV does the same. With the
/// enable bit clear, on a bus other than 0 or at an empty slot, data reads return all-ones and
/// writes are dropped. Byte accesses at 0xCF9 go to `resetControl` when one is given (the
/// chipset's reset control register shares the port); other non-dword accesses to 0xCF8-0xCFB
/// read all-ones and are dropped.
///
/// The bridge itself (an i440FX, 8086:1237, class 060000) is device 00:00.0; `attach` adds more.
public final class PCIHostBridge: PortIODevice, ResettableDevice, Sendable {
    public static let basePort: IOPort = 0xCF8
    public static let portCount = 8
    public static let slotCount = 32
    public static let functionCount = 8

    public let name: String
    /// Where byte accesses at 0xCF9 go.
    public let resetControl: ResetControlDevice?
    private let state: Mutex<State>

    private struct State {
        var address: UInt32 = 0
        var functions = [(any PCIDevice)?](repeating: nil, count: PCIHostBridge.slotCount * PCIHostBridge.functionCount)
    }

    /// A bus with `hostBridge` at 00:00.0 and nothing else.
    public init(name: String = "pci-host", hostBridge: any PCIDevice = PCIFunction.i440FXHostBridge(),
                resetControl: ResetControlDevice? = nil) {
        self.name = name
        self.resetControl = resetControl
        var state = State()
        state.functions[0] = hostBridge
        self.state = Mutex(state)
    }

    /// CONFIG_ADDRESS and the 0xCF9 register to 0, and every attached function that is a
    /// `ResettableDevice` back to its power-on configuration space (BARs, command register).
    public func reset() {
        let functions = state.withLock { state in
            state.address = 0
            return state.functions
        }
        resetControl?.reset()
        for case let function? in functions { (function as? ResettableDevice)?.reset() }
    }

    /// Places `device` at 00:`slot`.`function`.
    public func attach(_ device: any PCIDevice, slot: Int, function: Int = 0) throws(PCIError) {
        guard (0..<Self.slotCount).contains(slot), (0..<Self.functionCount).contains(function) else {
            throw .invalidAddress(slot: slot, function: function)
        }
        try state.withLock { state throws(PCIError) in
            let index = slot * Self.functionCount + function
            guard state.functions[index] == nil else { throw .slotTaken(slot: slot, function: function) }
            state.functions[index] = device
        }
    }

    /// Takes the device at 00:`slot`.`function` off the bus (a set-up that fails after `attach`
    /// leaves nothing behind).
    public func detach(slot: Int, function: Int = 0) {
        guard (0..<Self.slotCount).contains(slot), (0..<Self.functionCount).contains(function) else { return }
        state.withLock { $0.functions[slot * Self.functionCount + function] = nil }
    }

    /// The device at 00:`slot`.`function`, if any.
    public func device(slot: Int, function: Int = 0) -> (any PCIDevice)? {
        guard (0..<Self.slotCount).contains(slot), (0..<Self.functionCount).contains(function) else { return nil }
        return state.withLock { $0.functions[slot * Self.functionCount + function] }
    }

    /// The current CONFIG_ADDRESS value.
    public var configAddress: UInt32 { state.withLock { $0.address } }

    public func portRead(offset: UInt16, size: Int) -> UInt32 {
        let ones = allOnes(size)
        switch offset {
        case 0 where size == 4:
            return configAddress
        case 1 where size == 1:
            return resetControl?.portRead(offset: 0, size: 1) ?? ones
        case 4..<8:
            guard let hit = target(offset: offset) else { return ones }
            return hit.device.configurationRead(offset: hit.register, size: min(size, 8 - Int(offset), 256 - Int(hit.register))) & ones
        default:
            return ones
        }
    }

    public func portWrite(offset: UInt16, size: Int, value: UInt32) -> ExitAction {
        switch offset {
        case 0 where size == 4:
            state.withLock { $0.address = value & 0x80FF_FFFF }
        case 1 where size == 1:
            return resetControl?.portWrite(offset: 0, size: 1, value: value) ?? .resume
        case 4..<8:
            guard let hit = target(offset: offset) else { return .resume }
            hit.device.configurationWrite(offset: hit.register, size: min(size, 8 - Int(offset), 256 - Int(hit.register)), value: value)
        default:
            break
        }
        return .resume
    }

    /// The function and register CONFIG_ADDRESS selects for a data access at `offset`.
    private func target(offset: UInt16) -> (device: any PCIDevice, register: UInt8)? {
        state.withLock { state -> (device: any PCIDevice, register: UInt8)? in
            let address = state.address
            guard address & 0x8000_0000 != 0, (address >> 16) & 0xFF == 0 else { return nil }
            let index = Int((address >> 8) & 0xFF)  // device << 3 | function
            guard let device = state.functions[index] else { return nil }
            return (device, UInt8(address & 0xFF) | UInt8(offset - 4))
        }
    }

    private func allOnes(_ size: Int) -> UInt32 {
        size >= 4 ? 0xFFFF_FFFF : (1 << (8 * UInt32(size))) - 1
    }
}

// MARK: Snapshot

/// A PCI function whose state a snapshot saves: its configuration space and whatever stands
/// behind its BARs (a virtio transport's queues and MSI-X table).
public protocol SnapshotPCIFunction: PCIDevice {
    func saveFunctionState(to encoder: inout StateEncoder)
    /// Puts back what `saveFunctionState` wrote, before the machine starts.
    func restoreFunctionState(from decoder: inout StateDecoder) throws(StateDecodingError)
}

extension PCIFunction: SnapshotPCIFunction {
    /// The 256 configuration bytes. Write masks and BAR sizes come from construction, as in QEMU.
    public func saveFunctionState(to encoder: inout StateEncoder) {
        encoder.write(bytes: configuration.bytes)
    }

    public func restoreFunctionState(from decoder: inout StateDecoder) throws(StateDecodingError) {
        restoreConfiguration(bytes: try PCIConfigurationSpace.readSaved(from: &decoder))
    }
}

extension PCIHostBridge: SnapshotDevice {
    /// The functions on the bus, in slot order (for the machine's snapshot walk).
    public var attachedFunctions: [any PCIDevice] {
        state.withLock { $0.functions.compactMap { $0 } }
    }

    /// Why the bus cannot be saved: a function whose state has no encoding (the test
    /// device's registers).
    public var snapshotRefusal: String? {
        let functions = state.withLock { $0.functions }
        for (index, function) in functions.enumerated() {
            if let function, !(function is SnapshotPCIFunction) {
                return "PCI function \(Self.address(index)) (\(function.name)) has no snapshot support yet"
            }
        }
        return nil
    }

    /// CONFIG_ADDRESS, the 0xCF9 register when the bridge owns it, and each function's state
    /// by its device/function number (QEMU's `vmstate_pcihost` and `vmstate_pci_device`).
    public func saveState(to encoder: inout StateEncoder) {
        let (address, functions) = state.withLock { ($0.address, $0.functions) }
        encoder.write(address)
        encoder.write(resetControl != nil)
        if let resetControl {
            var nested = StateEncoder()
            resetControl.saveState(to: &nested)
            encoder.write(bytes: nested.bytes)
        }
        let saved = functions.enumerated().compactMap { index, function in (function as? SnapshotPCIFunction).map { (index, $0) } }
        encoder.write(UInt16(saved.count))
        for (index, function) in saved {
            encoder.write(UInt8(index))
            encoder.write(function.name)
            var nested = StateEncoder()
            function.saveFunctionState(to: &nested)
            encoder.write(bytes: nested.bytes)
        }
    }

    /// Checks that the saved functions sit where this bus has its own, of the same kind, before
    /// any is restored. Configuration writes have no side effects to replay: windows decode
    /// BARs from the configuration bytes at each access (a virtio-pci function moves its
    /// doorbells' eventfds itself).
    public func restoreState(from decoder: inout StateDecoder) throws(StateDecodingError) {
        let address = try decoder.read(UInt32.self, "pci-host config address")
        let hasResetControl = try decoder.read(Bool.self, "pci-host reset control present")
        guard hasResetControl == (resetControl != nil) else {
            throw StateDecodingError(field: "pci-host reset control present",
                                     problem: hasResetControl ? "the snapshot's bridge owns 0xCF9; this one does not" : "this bridge owns 0xCF9; the snapshot's does not")
        }
        let resetState = hasResetControl ? try decoder.readBytes("pci-host reset control", atMost: 16) : []
        let functions = state.withLock { $0.functions }
        let count = try decoder.read(UInt16.self, "pci-host function count", below: UInt16(functions.count + 1))
        var restored: [(SnapshotPCIFunction, [UInt8], String)] = []
        var seen = Set<Int>()
        for _ in 0..<count {
            // Device << 3 | function: every byte value names a function of bus 0.
            let index = Int(try decoder.read(UInt8.self, "pci-host function number"))
            let field = "pci-host function \(Self.address(index))"
            let name = try decoder.readString("\(field) name")
            let bytes = try decoder.readBytes("\(field) state")
            guard seen.insert(index).inserted else { throw StateDecodingError(field: field, problem: "is saved twice") }
            guard let function = functions[index] as? SnapshotPCIFunction else {
                throw StateDecodingError(field: field, problem: "the snapshot has \(name) here; this bus has nothing that can take it")
            }
            guard function.name == name else {
                throw StateDecodingError(field: field, problem: "the snapshot has \(name) here; this bus has \(function.name)")
            }
            restored.append((function, bytes, field))
        }
        if let missing = functions.indices.first(where: { functions[$0] is SnapshotPCIFunction && !seen.contains($0) }) {
            throw StateDecodingError(field: "pci-host function \(Self.address(missing))", problem: "this bus has \(functions[missing]?.name ?? "a function") here; the snapshot has none")
        }
        if let resetControl {
            var nested = StateDecoder(resetState)
            try resetControl.restoreState(from: &nested)
            try nested.finish("pci-host reset control")
        }
        state.withLock { $0.address = address & 0x80FF_FFFF }
        for (function, bytes, field) in restored {
            var nested = StateDecoder(bytes)
            do throws(StateDecodingError) {
                try function.restoreFunctionState(from: &nested)
                try nested.finish("state")
            } catch {
                throw StateDecodingError(field: "\(field) \(error.field)", problem: error.problem)
            }
        }
    }

    /// "00:01.0" for function slot 1, function 0 (bus 0: the only one).
    private static func address(_ index: Int) -> String {
        let slot = String(index / functionCount, radix: 16)
        return "00:\(slot.count < 2 ? "0" + slot : slot).\(index % functionCount)"
    }
}
