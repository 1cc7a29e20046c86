// The virtio-mmio transport, version 2 (virtio 1.2, 4.2 "Virtio Over MMIO"): a 0x200-byte
// register window per device, found by the guest through the ACPI DSDT (HID "LNRO0005", as
// Linux's virtio_mmio driver matches it) or the kernel command line
// (`virtio_mmio.device=4K@0xd0000000:16`), with a level-triggered interrupt line.
#if canImport(Glibc)
import Glibc
#endif
import CKVM
import Foundation
import Logging
import Synchronization

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

    /// InterruptStatus bits (4.2.2): a used buffer, a configuration change.
    static var usedBufferInterrupt: UInt32 { 1 }
    static var configurationInterrupt: UInt32 { 2 }

    struct State {
        var status: UInt32 = 0
        var deviceFeaturesSelect: UInt32 = 0
        var driverFeaturesSelect: UInt32 = 0
        var driverFeatures: UInt64 = 0
        var queueSelect: UInt32 = 0
        var queues: [Virtqueue]
        var interruptStatus: UInt32 = 0
        var lineHigh = false
        /// ConfigGeneration (4.2.2): moves on every change the device makes to its configuration.
        var configurationGeneration: UInt32 = 0
        /// Problems already logged (each kind once per device, so a guest cannot flood the log).
        var reported: Set<String> = []
    }

    public let name: String
    public let device: Device
    private let memory: GuestMemory
    private let interrupt: InterruptLine?
    private let state: Mutex<State>
    /// Device features plus the transport's, read by the guest 32 bits at a time.
    private let offeredFeatures: UInt64

    /// A transport for `device` on guest memory `memory`, raising `interrupt` (nil: a device the
    /// guest polls, as in tests).
    public init(device: Device, memory: GuestMemory, interrupt: InterruptLine?) {
        self.device = device
        self.memory = memory
        self.interrupt = interrupt
        self.name = device.name
        self.offeredFeatures = (device.features & 0xFF_FFFF) | VirtioFeature.transport
        self.state = Mutex(State(queues: device.queueSizes.map { Virtqueue(maximumSize: $0) }))
        device.connect { [weak self] queue in self?.serve(queue: queue) }
        device.connectConfigurationChange { [weak self] in self?.configurationChanged() }
    }

    /// The features the driver accepted (0 until FEATURES_OK).
    public var negotiatedFeatures: UInt64 {
        state.withLock { $0.status & VirtioStatus.featuresOK != 0 ? $0.driverFeatures : 0 }
    }

    /// The device status register (2.1).
    public var status: UInt32 { state.withLock { $0.status } }

    // MARK: Registers

    public func mmioRead(offset: UInt64, width: Int) -> UInt64 {
        if offset >= 0x100 {
            return offset < Self.windowSize ? device.readConfiguration(offset: Int(offset - 0x100), width: width) : 0
        }
        // 4.2.2.2: the driver MUST use 32-bit wide, aligned accesses for these registers.
        guard width == 4, let register = Register(rawValue: offset) else {
            state.withLock { report("a \(width)-byte read at register offset 0x\(String(offset, radix: 16))", in: &$0) }
            return 0
        }
        return UInt64(state.withLock { state -> UInt32 in
            switch register {
            case .magic: return Self.magic
            case .version: return Self.version
            case .deviceID: return device.type.rawValue
            case .vendorID: return Self.vendorID
            case .deviceFeatures:
                return state.deviceFeaturesSelect < 2 ? UInt32(truncatingIfNeeded: offeredFeatures >> (32 * UInt64(state.deviceFeaturesSelect))) : 0
            case .queueSizeMaximum:
                return state.queues.indices.contains(Int(state.queueSelect)) ? UInt32(state.queues[Int(state.queueSelect)].maximumSize) : 0
            case .queueReady:
                return state.queues.indices.contains(Int(state.queueSelect)) && state.queues[Int(state.queueSelect)].ready ? 1 : 0
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
        state.withLock { state in
            guard width == 4, let register = Register(rawValue: offset) else {
                report("a \(width)-byte write at register offset 0x\(String(offset, radix: 16))", in: &state)
                return
            }
            write(register, value, &state)
            updateLine(&state)
        }
        return .resume
    }

    private func write(_ register: Register, _ value: UInt32, _ state: inout State) {
        let selected = Int(state.queueSelect)
        let queueExists = state.queues.indices.contains(selected)
        switch register {
        case .deviceFeaturesSelect: state.deviceFeaturesSelect = value
        case .driverFeaturesSelect: state.driverFeaturesSelect = value
        case .driverFeatures:
            // 3.1.1: features are written before FEATURES_OK and fixed after it.
            guard state.status & VirtioStatus.featuresOK == 0, state.driverFeaturesSelect < 2 else { return }
            let shift = 32 * UInt64(state.driverFeaturesSelect)
            state.driverFeatures = state.driverFeatures & ~(0xFFFF_FFFF << shift) | UInt64(value) << shift
        case .queueSelect: state.queueSelect = value
        case .queueSize where queueExists && !state.queues[selected].ready:
            state.queues[selected].size = UInt16(truncatingIfNeeded: min(value, 0xFFFF))
        case .queueDescriptorLow where queueExists && !state.queues[selected].ready:
            state.queues[selected].descriptorTable = low(state.queues[selected].descriptorTable, value)
        case .queueDescriptorHigh where queueExists && !state.queues[selected].ready:
            state.queues[selected].descriptorTable = high(state.queues[selected].descriptorTable, value)
        case .queueDriverLow where queueExists && !state.queues[selected].ready:
            state.queues[selected].driverArea = low(state.queues[selected].driverArea, value)
        case .queueDriverHigh where queueExists && !state.queues[selected].ready:
            state.queues[selected].driverArea = high(state.queues[selected].driverArea, value)
        case .queueDeviceLow where queueExists && !state.queues[selected].ready:
            state.queues[selected].deviceArea = low(state.queues[selected].deviceArea, value)
        case .queueDeviceHigh where queueExists && !state.queues[selected].ready:
            state.queues[selected].deviceArea = high(state.queues[selected].deviceArea, value)
        case .queueReady where queueExists:
            if value & 1 == 0 {
                state.queues[selected].ready = false
                return
            }
            guard !state.queues[selected].ready else { return }
            do throws(VirtqueueError) {
                try state.queues[selected].activate(memory: memory,
                                                    eventIndex: state.driverFeatures & VirtioFeature.eventIndex != 0,
                                                    indirectDescriptors: state.driverFeatures & VirtioFeature.indirectDescriptors != 0)
            } catch {
                needsReset("queue \(selected): \(error)", &state)
            }
        case .queueNotify:
            notify(queue: Int(value & 0xFFFF), &state)
        case .interruptAcknowledge:
            state.interruptStatus &= ~value
        case .status:
            writeStatus(value, &state)
        case .queueSize, .queueDescriptorLow, .queueDescriptorHigh, .queueDriverLow, .queueDriverHigh,
             .queueDeviceLow, .queueDeviceHigh, .queueReady:
            report("a write to \(register) of queue \(selected), which \(queueExists ? "is live" : "does not exist")", in: &state)
        case .sharedMemorySelect:
            break
        default:
            report("a write to read-only register \(register)", in: &state)
        }
    }

    private func low(_ address: UInt64, _ value: UInt32) -> UInt64 { address & 0xFFFF_FFFF_0000_0000 | UInt64(value) }
    private func high(_ address: UInt64, _ value: UInt32) -> UInt64 { address & 0xFFFF_FFFF | UInt64(value) << 32 }

    /// 2.1 and 3.1.1: 0 resets the device; FEATURES_OK stays clear when the driver accepted a
    /// feature that was not offered or did not accept VIRTIO_F_VERSION_1.
    private func writeStatus(_ value: UInt32, _ state: inout State) {
        if value == 0 {
            resetLocked(&state)
            return
        }
        var value = value | state.status & VirtioStatus.deviceNeedsReset
        if value & VirtioStatus.featuresOK != 0, state.status & VirtioStatus.featuresOK == 0 {
            let unoffered = state.driverFeatures & ~offeredFeatures
            if unoffered != 0 || state.driverFeatures & VirtioFeature.version1 == 0 {
                report(unoffered != 0 ? "the driver accepted features 0x\(String(unoffered, radix: 16)) that were not offered"
                                      : "the driver did not accept VIRTIO_F_VERSION_1 (HV has no legacy interface)", in: &state)
                value &= ~VirtioStatus.featuresOK
            } else {
                device.activate(features: state.driverFeatures)
            }
        }
        let starting = value & VirtioStatus.driverOK != 0 && state.status & VirtioStatus.driverOK == 0
        state.status = value
        // A driver may make buffers available and notify before DRIVER_OK (Linux's balloon
        // primes its statistics queue in probe), when the device must not use them (3.1.1,
        // 2.7.13): they are served now.
        if starting {
            for queue in state.queues.indices where state.queues[queue].ready { serveLocked(queue: queue, &state) }
        }
    }

    /// Serves `queue` for a notification from the driver.
    private func notify(queue index: Int, _ state: inout State) {
        guard state.queues.indices.contains(index), state.queues[index].ready else {
            report("a notification for queue \(index), which is not set up", in: &state)
            return
        }
        serveLocked(queue: index, &state)
    }

    private func serveLocked(queue index: Int, _ state: inout State) {
        guard state.status & VirtioStatus.driverOK != 0, state.status & VirtioStatus.deviceNeedsReset == 0,
              state.queues.indices.contains(index), state.queues[index].ready
        else { return }
        do throws(VirtioDeviceError) {
            if try device.serve(queue: index, &state.queues[index], memory: memory),
               state.queues[index].needsInterrupt(memory: memory)
            {
                state.interruptStatus |= Self.usedBufferInterrupt
            }
        } catch {
            needsReset("queue \(index): \(error)", &state)
        }
    }

    /// 2.1.2: a device that cannot go on sets DEVICE_NEEDS_RESET and, once the driver is
    /// running, sends a configuration-change notification.
    private func needsReset(_ problem: String, _ state: inout State) {
        report(problem + "; the device needs a reset", in: &state)
        state.status |= VirtioStatus.deviceNeedsReset
        if state.status & VirtioStatus.driverOK != 0 { state.interruptStatus |= Self.configurationInterrupt }
    }

    /// Logs `problem` at warning level the first time this device sees it.
    private func report(_ problem: String, in state: inout State) {
        guard state.reported.count < 64, state.reported.insert(problem).inserted else { return }
        LogCategory.devices.logger.warning("\(name): \(problem)")
    }

    /// The line follows InterruptStatus: high while any bit is set (level-triggered, 4.2.3.4).
    private func updateLine(_ state: inout State) {
        let high = state.interruptStatus != 0
        guard high != state.lineHigh else { return }
        state.lineHigh = high
        interrupt?.set(high)
    }

    private func resetLocked(_ state: inout State) {
        if state.lineHigh { interrupt?.set(false) }
        let reported = state.reported, generation = state.configurationGeneration
        state = State(queues: state.queues.map { Virtqueue(maximumSize: $0.maximumSize) })
        state.reported = reported
        state.configurationGeneration = generation
        device.reset()
    }

    // MARK: Host side

    /// Serves `queue` from a host thread: a device with input of its own (console, network)
    /// calls this when it has something for the driver's buffers.
    public func serve(queue index: Int) {
        state.withLock { state in
            serveLocked(queue: index, &state)
            updateLine(&state)
        }
    }

    /// The device changed its configuration space (a balloon's new target): ConfigGeneration
    /// moves and a running driver gets a configuration-change interrupt (4.2.3.3).
    public func configurationChanged() {
        state.withLock { state in
            state.configurationGeneration &+= 1
            if state.status & VirtioStatus.driverOK != 0 { state.interruptStatus |= Self.configurationInterrupt }
            updateLine(&state)
        }
    }

    /// The platform reset: the device as at power-on.
    public func reset() {
        state.withLock { resetLocked(&$0) }
    }

    /// Whether the device set DEVICE_NEEDS_RESET (a driver broke a rule).
    public var needsReset: Bool { state.withLock { $0.status & VirtioStatus.deviceNeedsReset != 0 } }

    // MARK: Notifications without exits

    /// One eventfd per queue, signalled by the backend when the guest writes that queue's index
    /// to QueueNotify (KVM_IOEVENTFD), and the thread that serves them.
    private let notifiers = Mutex<[Int32]>([])
    /// Whether the notifier thread runs (the guest's doorbell writes then never exit).
    public var notifiesWithoutExits: Bool { notifiers.withLock { !$0.isEmpty } }

    /// Asks the backend, through `register(queue, eventFD)`, to turn the guest's QueueNotify
    /// writes into eventfd signals, and serves the queues from a thread of this transport: a
    /// doorbell then costs the vCPU no return to user space, and the device works while the
    /// guest runs on (QEMU's and Firecracker's ioeventfd). Returns false, leaving notifications
    /// to MMIO exits, when the backend cannot.
    @discardableResult
    public func notifyThroughEventFDs(register: (Int, Int32) throws(HVError) -> Void) -> Bool {
        var descriptors: [Int32] = []
        for queue in device.queueSizes.indices {
            let descriptor = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
            guard descriptor >= 0 else { break }
            descriptors.append(descriptor)
            do { try register(queue, descriptor) } catch {
                LogCategory.devices.logger.debug("\(name): queue notifications stay MMIO exits: \(error)")
                descriptors.forEach { close($0) }
                return false
            }
        }
        guard descriptors.count == device.queueSizes.count else {
            descriptors.forEach { close($0) }
            return false
        }
        notifiers.withLock { $0 = descriptors }
        let thread = Thread { [weak self, descriptors] in
            var fds = descriptors.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
            while true {
                let ready = poll(&fds, nfds_t(fds.count), 1000)
                guard let transport = self else { return }
                if ready < 0 && errno != EINTR { return }
                guard ready > 0 else { continue }
                for (queue, entry) in fds.enumerated() where entry.revents & Int16(POLLIN) != 0 {
                    var count: UInt64 = 0
                    _ = read(entry.fd, &count, 8)
                    transport.serve(queue: queue)
                }
            }
        }
        thread.name = "\(name)-queues"
        thread.start()
        return true
    }

    deinit { notifiers.withLock { $0.forEach { close($0) } } }
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
