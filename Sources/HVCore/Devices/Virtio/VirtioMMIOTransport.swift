// The virtio-mmio transport, version 2 (virtio 1.2, 4.2 "Virtio Over MMIO"): a 0x200-byte
// register window per device, found by the guest through the ACPI DSDT (HID "LNRO0005", as
// Linux's virtio_mmio driver matches it) or the kernel command line
// (`virtio_mmio.device=4K@0xd0000000:16`), with a level-triggered interrupt line. The status,
// features and queues behind the registers are VirtioTransportCore's.

/// Where a virtio-mmio device sits: slot n has its window at 0xD0000000 + n * 4 KiB, in the
/// PC's 3-4 GiB MMIO hole, and its interrupt on GSI 16 + n % 8 (I/O APIC pins 16-23, which no
/// ISA device uses; lines are shared beyond eight devices, as PCI INTx lines are).
public struct VirtioMMIOSlot: Sendable, Equatable, Hashable {
    public static let firstAddress: UInt64 = 0xD000_0000
    public static let stride: UInt64 = 0x1000
    public static let firstGSI: UInt32 = 16
    public static let gsiCount: UInt32 = 8
    /// Slots 0 ..< count.
    public static let count = 32

    public let index: Int

    /// Slot `index`, or a configuration error naming the valid range.
    public init(_ index: Int) throws(HVError) {
        guard (0..<Self.count).contains(index) else {
            throw .configuration(ConfigurationError(field: "virtio slot", value: "\(index)", expected: "0..<\(Self.count)"))
        }
        self.index = index
    }

    private init(checked index: Int) { self.index = index }

    /// Every slot, 0 ..< count.
    public static let all = (0..<count).map { VirtioMMIOSlot(checked: $0) }

    public var address: UInt64 { Self.firstAddress + UInt64(index) * Self.stride }
    public var gsi: UInt32 { Self.firstGSI + UInt32(index) % Self.gsiCount }
    /// The kernel parameter that declares this device to a Linux built with
    /// CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES (Documentation/admin-guide/kernel-parameters.txt,
    /// "virtio_mmio.device="); kernels without it (Debian's) find the device in the DSDT.
    public var kernelParameter: String {
        "virtio_mmio.device=4K@0x\(String(address, radix: 16)):\(gsi)"
    }
}

/// One virtio device behind a virtio-mmio register window.
public final class VirtioMMIOTransport<Device: VirtioDevice>: MMIODevice, ResettableDevice, Sendable {
    /// "virt" (4.2.2: MagicValue), version 2 (the non-legacy interface).
    public static var magic: UInt32 { 0x7472_6976 }
    public static var version: UInt32 { 2 }
    /// "HVSD" in little-endian ASCII.
    public static var vendorID: UInt32 { 0x4453_5648 }
    /// The register window; the device configuration space starts at 0x100.
    public static var windowSize: UInt64 { 0x200 }

    /// Register offsets (4.2.2, Table 4.1).
    enum Register: UInt64 {
        case magic = 0x000, version = 0x004, deviceID = 0x008, vendorID = 0x00C
        case deviceFeatures = 0x010, deviceFeaturesSelect = 0x014
        case driverFeatures = 0x020, driverFeaturesSelect = 0x024
        case queueSelect = 0x030, queueSizeMaximum = 0x034, queueSize = 0x038, queueReady = 0x044
        case queueNotify = 0x050, interruptStatus = 0x060, interruptAcknowledge = 0x064, status = 0x070
        case queueDescriptorLow = 0x080, queueDescriptorHigh = 0x084
        case queueDriverLow = 0x090, queueDriverHigh = 0x094
        case queueDeviceLow = 0x0A0, queueDeviceHigh = 0x0A4
        case sharedMemorySelect = 0x0AC, sharedMemoryLengthLow = 0x0B0, sharedMemoryLengthHigh = 0x0B4
        case sharedMemoryBaseLow = 0x0B8, sharedMemoryBaseHigh = 0x0BC
        case configurationGeneration = 0x0FC
    }

    /// The level-triggered line (4.2.3.4): high while any InterruptStatus bit is set.
    private final class Line: VirtioInterruptDelivery {
        let interrupt: InterruptLine?
        init(_ interrupt: InterruptLine?) { self.interrupt = interrupt }
        func raise(_ cause: VirtioInterruptCause, vector: UInt16) {}
        func statusChanged(_ status: UInt32) { interrupt?.set(status != 0) }
    }

    /// Status, features, queues and interrupts, shared with virtio-pci.
    public let core: VirtioTransportCore<Device>
    public var name: String { core.name }
    public var device: Device { core.device }

    /// A transport for `device` on guest memory `memory`, raising `interrupt` (nil: a device the
    /// guest polls, as in tests).
    public init(device: Device, memory: GuestMemory, interrupt: InterruptLine?) {
        core = VirtioTransportCore(device: device, memory: memory, delivery: Line(interrupt))
        core.connectDevice()
    }

    /// The features the driver accepted (0 until FEATURES_OK).
    public var negotiatedFeatures: UInt64 { core.negotiatedFeatures }
    /// The device status register (2.1).
    public var status: UInt32 { core.status }
    /// Whether the device set DEVICE_NEEDS_RESET (a driver broke a rule).
    public var needsReset: Bool { core.needsReset }
    /// Whether queue notifications reach the device without exits (ioeventfd).
    public var notifiesWithoutExits: Bool { core.notifiesWithoutExits }

    // MARK: Registers

    public func mmioRead(offset: UInt64, width: Int) -> UInt64 {
        if offset >= 0x100 {
            return offset < Self.windowSize ? device.readConfiguration(offset: Int(offset - 0x100), width: width) : 0
        }
        return UInt64(core.access { state -> UInt32 in
            // 4.2.2.2: the driver MUST use 32-bit wide, aligned accesses for these registers.
            guard width == 4, let register = Register(rawValue: offset) else {
                core.report("a \(width)-byte read at register offset 0x\(String(offset, radix: 16))", &state)
                return 0
            }
            switch register {
            case .magic: return Self.magic
            case .version: return Self.version
            case .deviceID: return device.type.rawValue
            case .vendorID: return Self.vendorID
            case .deviceFeatures: return core.deviceFeatures(state)
            case .queueSizeMaximum: return state.selectedQueue.map { UInt32(state.queues[$0].maximumSize) } ?? 0
            case .queueReady: return state.selectedQueue.map { state.queues[$0].ready ? 1 : 0 } ?? 0
            case .interruptStatus: return state.interruptStatus
            case .status: return state.status
            // 4.2.2: reading the length of a region that does not exist gives -1.
            case .sharedMemoryLengthLow, .sharedMemoryLengthHigh: return UInt32.max
            case .configurationGeneration: return state.configurationGeneration
            default: return 0
            }
        })
    }

    public func mmioWrite(offset: UInt64, width: Int, value: UInt64) -> ExitAction {
        if offset >= 0x100 {
            if offset < Self.windowSize { device.writeConfiguration(offset: Int(offset - 0x100), width: width, value: value) }
            return .resume
        }
        let value = UInt32(truncatingIfNeeded: value)
        core.access { state in
            guard width == 4, let register = Register(rawValue: offset) else {
                core.report("a \(width)-byte write at register offset 0x\(String(offset, radix: 16))", &state)
                return
            }
            write(register, value, &state)
        }
        return .resume
    }

    private func write(_ register: Register, _ value: UInt32, _ state: inout VirtioTransportCore<Device>.State) {
        switch register {
        case .deviceFeaturesSelect: state.deviceFeaturesSelect = value
        case .driverFeaturesSelect: state.driverFeaturesSelect = value
        case .driverFeatures: core.writeDriverFeatures(value, &state)
        case .queueSelect: state.queueSelect = value
        case .queueSize: core.writeQueue(.size, value, &state)
        case .queueDescriptorLow: core.writeQueue(.descriptorLow, value, &state)
        case .queueDescriptorHigh: core.writeQueue(.descriptorHigh, value, &state)
        case .queueDriverLow: core.writeQueue(.driverLow, value, &state)
        case .queueDriverHigh: core.writeQueue(.driverHigh, value, &state)
        case .queueDeviceLow: core.writeQueue(.deviceLow, value, &state)
        case .queueDeviceHigh: core.writeQueue(.deviceHigh, value, &state)
        case .queueReady: core.setQueueReady(value & 1 != 0, &state)
        case .queueNotify: core.notify(queue: Int(value & 0xFFFF), &state)
        case .interruptAcknowledge: state.interruptStatus &= ~value
        case .status: core.writeStatus(value, &state)
        case .sharedMemorySelect: break
        default: core.report("a write to read-only register \(register)", &state)
        }
    }

    // MARK: Host side

    /// Serves `queue` from a host thread (see `VirtioTransportCore.serve(queue:)`).
    public func serve(queue index: Int) { core.serve(queue: index) }

    /// The device changed its configuration space: a configuration-change interrupt.
    public func configurationChanged() { core.configurationChanged() }

    /// The platform reset: the device as at power-on.
    public func reset() { core.reset() }

    /// Turns QueueNotify writes into eventfd signals (`VirtioTransportCore.notifyThroughEventFDs`).
    @discardableResult
    public func notifyThroughEventFDs(register: (Int, Int32) throws(HVError) -> Void) -> Bool {
        core.notifyThroughEventFDs(register: register)
    }
}

// MARK: Snapshots

extension VirtioMMIOTransport: SnapshotDevice, ActivityHoldingDevice, VirtioTransport {
    public var virtioDevice: any VirtioDevice { device }

    /// The transport's registers and queues, then the device type's state
    /// (`VirtioTransportCore.saveState`); the line follows the restored interrupt status.
    public func saveState(to encoder: inout StateEncoder) { core.saveState(to: &encoder) }

    public func restoreState(from decoder: inout StateDecoder) throws(StateDecodingError) {
        try core.restoreState(from: &decoder, vectors: 0)
    }

    public func holdActivity() { core.holdActivity() }
    public func releaseActivity() { core.releaseActivity() }
}

extension Machine {
    /// Puts `device` behind a virtio-mmio window in `slot`, its interrupt on the slot's GSI.
    /// A guest finds it through the DSDT when the slot is also given to `attachPCPlatform`
    /// (or `ACPITables.pc`), or through `slot.kernelParameter` on a kernel command line.
    @discardableResult
    public func attachVirtio<D: VirtioDevice>(_ device: D, slot: VirtioMMIOSlot) throws(HVError) -> VirtioMMIOTransport<D> {
        let transport = VirtioMMIOTransport(device: device, memory: memory, interrupt: try interruptLine(slot.gsi))
        do {
            try devices.register(transport, address: GuestPhysicalAddress(slot.address), length: VirtioMMIOSlot.stride)
        } catch { throw .device(error) }
        // QueueNotify (offset 0x50) as an eventfd where the backend offers it (KVM_IOEVENTFD).
        let vm = self.vm
        transport.notifyThroughEventFDs { (queue, descriptor) throws(HVError) in
            try vm.addWriteNotifier(address: slot.address + 0x50, length: 4, value: UInt64(queue), eventFD: descriptor)
        }
        return transport
    }
}
