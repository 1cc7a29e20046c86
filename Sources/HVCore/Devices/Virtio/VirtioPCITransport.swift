// The modern virtio-pci transport (virtio 1.2, 4.1 "Virtio Over PCI Bus"): a PCI function with
// vendor 0x1AF4 and device 0x1040 + the device type, whose vendor-specific capabilities point
// into one memory BAR at the common configuration, the notification doorbells, the ISR and
// the device configuration, with MSI-X (PCI 3.0, 6.8.2) for its interrupts: one vector per
// queue and one for configuration changes, as the driver maps them. Linux's virtio_pci driver
// (drivers/virtio/virtio_pci_modern.c) drives it. No INTx: interrupt pin 0; a driver without
// MSI-X gets no interrupts.
#if canImport(Glibc)
import Glibc
#endif
import CKVM
import Logging
import Synchronization

/// Where things sit in a virtio-pci function's BAR 0.
public enum VirtioPCILayout {
    /// Common configuration, ISR, device configuration, doorbells, MSI-X table and PBA.
    public static let barSize: UInt64 = 0x8000
    static let commonOffset: UInt64 = 0x0000
    static let commonLength: UInt64 = 0x40
    static let isrOffset: UInt64 = 0x1000
    static let deviceOffset: UInt64 = 0x2000
    static let notifyOffset: UInt64 = 0x3000
    static let tableOffset: UInt64 = 0x4000
    static let pendingOffset: UInt64 = 0x5000
    /// Queue n's doorbell is at notifyOffset + n * notifyMultiplier.
    static let notifyMultiplier: UInt64 = 4

    /// Queue `queue`'s doorbell address for BAR 0 at `base`.
    public static func doorbell(base: UInt64, queue: Int) -> UInt64 { base + notifyOffset + UInt64(queue) * notifyMultiplier }
}

public final class VirtioPCITransport<Device: VirtioDevice>: PCIDevice, PCIBARDecoder, ResettableDevice, Sendable {
    public static var vendorID: UInt16 { 0x1AF4 }
    private typealias Layout = VirtioPCILayout

    /// virtio_pci_cap cfg_type values (4.1.4).
    enum CapabilityType: UInt8 { case common = 1, notify = 2, isr = 3, device = 4, pciConfiguration = 5 }

    public let core: VirtioTransportCore<Device>
    public var name: String { core.name }
    public var device: Device { core.device }
    private let msix: MSIX
    private let space: Mutex<PCIConfigurationSpace>
    private let powerOn: Mutex<PCIConfigurationSpace>
    /// Where the VIRTIO_PCI_CAP_PCI_CFG capability and the MSI-X capability sit.
    private let accessCapability: UInt8
    private let msixCapability: UInt8
    /// Called when BAR 0's decoded address changes (nil: not decoded), to move the doorbells'
    /// write notifiers.
    private let barMoved = Mutex<BarMoveBox?>(nil)
    private final class BarMoveBox: Sendable {
        let moved: @Sendable (UInt64?, UInt64?) -> Void
        init(_ moved: @escaping @Sendable (UInt64?, UInt64?) -> Void) { self.moved = moved }
    }
    private let decodedAddress = Mutex<UInt64?>(nil)

    /// A function for `device` whose MSI-X messages go to `controller` (nil: none, as in tests).
    public init(device: Device, memory: GuestMemory, controller: (any InterruptController)?) throws(PCIError) {
        let vectors = device.queueSizes.count + 1
        let msix = MSIX(vectors: vectors, controller: controller)
        self.msix = msix
        core = VirtioTransportCore(device: device, memory: memory, delivery: msix)
        var space = PCIConfigurationSpace(vendorID: Self.vendorID, deviceID: 0x1040 + UInt16(device.type.rawValue),
                                          classCode: Self.classCode(device.type), revision: 1,
                                          subsystemVendorID: Self.vendorID, subsystemID: 0x1100)
        try space.setBAR(0, size: Layout.barSize, kind: .memory32(prefetchable: false))
        func capability(_ type: CapabilityType, offset: UInt64, length: UInt64, extra: [UInt8] = []) throws(PCIError) -> UInt8 {
            // struct virtio_pci_cap: cap_len, cfg_type, bar, id, padding[2], offset, length.
            let body: [UInt8] = [UInt8(16 + extra.count), type.rawValue, 0, 0, 0, 0] + le32(UInt32(offset)) + le32(UInt32(length)) + extra
            let writable: [UInt8]? = type == .pciConfiguration ? [0, 0, 0xFF, 0, 0, 0] + [UInt8](repeating: 0xFF, count: 12) : nil
            return try space.addCapability(id: 0x09, body: body, writable: writable)
        }
        _ = try capability(.common, offset: Layout.commonOffset, length: Layout.commonLength)
        _ = try capability(.notify, offset: Layout.notifyOffset, length: UInt64(device.queueSizes.count) * Layout.notifyMultiplier,
                           extra: le32(UInt32(Layout.notifyMultiplier)))
        _ = try capability(.isr, offset: Layout.isrOffset, length: 4)
        _ = try capability(.device, offset: Layout.deviceOffset, length: 0x1000)
        accessCapability = try capability(.pciConfiguration, offset: 0, length: 0, extra: [0, 0, 0, 0])
        // MSI-X: Message Control (table size - 1; enable and function mask writable), the
        // table and the pending-bit array in BAR 0.
        msixCapability = try space.addCapability(id: 0x11, body: le16(UInt16(vectors - 1)) + le32(UInt32(Layout.tableOffset)) + le32(UInt32(Layout.pendingOffset)),
                                                 writable: [0x00, 0xC0])
        self.space = Mutex(space)
        self.powerOn = Mutex(space)
        core.connectDevice()
    }

    /// The PCI class of each device type (QEMU's choices: hw/virtio/virtio-pci.c).
    static func classCode(_ type: VirtioDeviceType) -> UInt32 {
        switch type {
        case .network: 0x02_0000
        case .block: 0x01_0000
        case .console: 0x07_8000
        case .balloon: 0x05_0000
        default: 0x00_FF00
        }
    }

    /// Puts BAR 0 at `address` with memory decoding on, as firmware leaves a device; a platform
    /// reset returns it there.
    public func assign(address: UInt64) {
        space.withLock { space in
            space.write(offset: PCIConfigurationOffset.bar0, size: 4, value: UInt32(truncatingIfNeeded: address))
            space.write(offset: PCIConfigurationOffset.command, size: 2, value: 0x0006)  // memory space, bus master
            powerOn.withLock { $0 = space }
        }
        updateDecodedAddress()
    }

    /// Calls `moved(old, new)` whenever BAR 0's decoded address changes.
    public func whenBARMoves(_ moved: @escaping @Sendable (UInt64?, UInt64?) -> Void) {
        barMoved.withLock { $0 = BarMoveBox(moved) }
    }

    /// BAR 0's address while the function decodes memory, else nil.
    public var barAddress: UInt64? { decodedAddress.withLock { $0 } }

    /// The features the driver accepted (0 until FEATURES_OK).
    public var negotiatedFeatures: UInt64 { core.negotiatedFeatures }
    /// Whether the device set DEVICE_NEEDS_RESET.
    public var needsReset: Bool { core.needsReset }
    /// Whether MSI-X is enabled by the driver.
    public var msixEnabled: Bool { msix.state.withLock { $0.enabled } }

    /// Whether the vectors' messages go out through eventfds the backend injects (irqfd)
    /// rather than one `signalMSI` call each.
    public var msixThroughEventFDs: Bool { msix.usesNotifiers }

    /// Gives every MSI-X vector an eventfd the backend turns into its message (KVM: irqfd),
    /// through `add(eventFD, address, data) -> id` and `update(id, address, data)`; returns false,
    /// leaving the vectors on `signalMSI`, when the backend refuses.
    @discardableResult
    public func interruptThroughEventFDs(add: @escaping @Sendable (Int32, UInt64, UInt32) throws(HVError) -> UInt32,
                                      update: @escaping @Sendable (UInt32, UInt64, UInt32) throws(HVError) -> Void) -> Bool {
        msix.useNotifiers(MSINotifierRoutes(add: add, update: update))
    }

    private func updateDecodedAddress() {
        let now = space.withLock { space -> UInt64? in
            space.read(offset: PCIConfigurationOffset.command, size: 2) & 0x2 != 0 ? space.barAddress(0) : nil
        }
        let before = decodedAddress.withLock { old -> UInt64? in
            let before = old
            old = now
            return before
        }
        if before != now { barMoved.withLock { $0 }?.moved(before, now) }
    }

    // MARK: Configuration space

    public func configurationRead(offset: UInt8, size: Int) -> UInt32 {
        // The VIRTIO_PCI_CAP_PCI_CFG window: its data bytes read the BAR where the cap points.
        if let window = accessWindow(offset: offset, size: size) {
            return UInt32(truncatingIfNeeded: barRead(0, offset: window.offset, width: window.length))
        }
        return space.withLock { $0.read(offset: offset, size: size) }
    }

    public func configurationWrite(offset: UInt8, size: Int, value: UInt32) {
        if let window = accessWindow(offset: offset, size: size) {
            barWrite(0, offset: window.offset, width: window.length, value: UInt64(value))
            return
        }
        space.withLock { $0.write(offset: offset, size: size, value: value) }
        if offset < 0x28 { updateDecodedAddress() }  // the command register or a BAR
        if Int(offset) <= Int(msixCapability) + 3, Int(offset) + size > Int(msixCapability) + 2 {  // Message Control
            let control = space.withLock { $0.read(offset: msixCapability + 2, size: 2) }
            msix.setControl(enabled: control & 0x8000 != 0, functionMask: control & 0x4000 != 0)
        }
    }

    /// The BAR access a configuration access to pci_cfg_data stands for (4.1.4.9): BAR 0 only,
    /// 1, 2 or 4 bytes at an offset aligned to them and inside the BAR.
    private func accessWindow(offset: UInt8, size: Int) -> (offset: UInt64, length: Int)? {
        // Only an access that starts at pci_cfg_data goes through; its width is the cap's length.
        guard Int(offset) == Int(accessCapability) + 16 else { return nil }
        return space.withLock { space -> (offset: UInt64, length: Int)? in
            let bar = space.read(offset: accessCapability + 4, size: 1)
            let start = UInt64(space.read(offset: accessCapability + 8, size: 4))
            let length = Int(space.read(offset: accessCapability + 12, size: 4))
            guard bar == 0, [1, 2, 4].contains(length), start % UInt64(length) == 0, start + UInt64(length) <= Layout.barSize else { return nil }
            return (start, length)
        }
    }

    // MARK: BAR 0

    public func decode(_ address: UInt64, width: Int, space: PCIAddressSpace) -> (bar: Int, offset: UInt64)? {
        guard space == .memory, let base = barAddress, address >= base, address - base + UInt64(width) <= Layout.barSize else { return nil }
        return (0, address - base)
    }

    public func barRead(_ bar: Int, offset: UInt64, width: Int) -> UInt64 {
        switch offset {
        case Layout.commonOffset..<Layout.commonOffset + Layout.commonLength:
            return readCommon(offset - Layout.commonOffset, width: width)
        case Layout.isrOffset:
            // Reading the ISR clears it (4.1.4.5).
            return UInt64(core.access { state in
                defer { state.interruptStatus = 0 }
                return state.interruptStatus
            })
        case Layout.deviceOffset..<Layout.deviceOffset + 0x1000:
            return device.readConfiguration(offset: Int(offset - Layout.deviceOffset), width: width)
        case Layout.tableOffset..<Layout.pendingOffset, Layout.pendingOffset..<Layout.pendingOffset + 0x1000:
            return msix.read(offset: offset, width: width)
        default:
            return 0
        }
    }

    public func barWrite(_ bar: Int, offset: UInt64, width: Int, value: UInt64) {
        switch offset {
        case Layout.commonOffset..<Layout.commonOffset + Layout.commonLength:
            writeCommon(offset - Layout.commonOffset, width: width, value: UInt32(truncatingIfNeeded: value))
        case Layout.deviceOffset..<Layout.deviceOffset + 0x1000:
            device.writeConfiguration(offset: Int(offset - Layout.deviceOffset), width: width, value: value)
        case Layout.notifyOffset..<Layout.tableOffset:
            // The doorbell's position names the queue (without VIRTIO_F_NOTIFICATION_DATA).
            let queue = Int((offset - Layout.notifyOffset) / Layout.notifyMultiplier)
            core.access { core.notify(queue: queue, &$0) }
        case Layout.tableOffset..<Layout.pendingOffset:
            msix.write(offset: offset, width: width, value: value)
        default:
            break
        }
    }

    /// struct virtio_pci_common_cfg (4.1.4.3): each field read at its own width (a narrower read
    /// takes the low bytes), the 64-bit queue addresses also as two 32-bit halves.
    private func readCommon(_ offset: UInt64, width: Int) -> UInt64 {
        core.access { state -> UInt64 in
            let queue = state.selectedQueue
            let value: UInt64, start: UInt64
            switch offset {
            case 0x00..<0x04: (value, start) = (UInt64(state.deviceFeaturesSelect), 0x00)
            case 0x04..<0x08: (value, start) = (UInt64(core.deviceFeatures(state)), 0x04)
            case 0x08..<0x0C: (value, start) = (UInt64(state.driverFeaturesSelect), 0x08)
            case 0x0C..<0x10: (value, start) = (UInt64(core.driverFeatures(state)), 0x0C)
            case 0x10..<0x12: (value, start) = (UInt64(state.configurationVector), 0x10)
            case 0x12..<0x14: (value, start) = (UInt64(state.queues.count), 0x12)
            case 0x14: (value, start) = (UInt64(state.status & 0xFF), 0x14)
            case 0x15: (value, start) = (UInt64(state.configurationGeneration & 0xFF), 0x15)
            case 0x16..<0x18: (value, start) = (UInt64(state.queueSelect), 0x16)
            case 0x18..<0x1A: (value, start) = (UInt64(queue.map { state.queues[$0].size } ?? 0), 0x18)
            case 0x1A..<0x1C: (value, start) = (UInt64(queue.map { state.queueVectors[$0] } ?? VirtioTransportCore<Device>.noVector), 0x1A)
            case 0x1C..<0x1E: (value, start) = (queue.map { state.queues[$0].ready ? 1 : 0 } ?? 0, 0x1C)
            case 0x1E..<0x20: (value, start) = (UInt64(queue ?? 0), 0x1E)  // queue_notify_off: the doorbell index
            case 0x20..<0x28: (value, start) = (queue.map { state.queues[$0].descriptorTable } ?? 0, 0x20)
            case 0x28..<0x30: (value, start) = (queue.map { state.queues[$0].driverArea } ?? 0, 0x28)
            case 0x30..<0x38: (value, start) = (queue.map { state.queues[$0].deviceArea } ?? 0, 0x30)
            default: (value, start) = (0, offset)
            }
            let shifted = value >> (8 * (offset - start))
            return width >= 8 ? shifted : shifted & ((1 << (8 * UInt64(width))) - 1)
        }
    }

    private func writeCommon(_ offset: UInt64, width: Int, value: UInt32) {
        core.access { state in
            let queue = state.selectedQueue
            switch (offset, width) {
            case (0x00, 4): state.deviceFeaturesSelect = value
            case (0x08, 4): state.driverFeaturesSelect = value
            case (0x0C, 4): core.writeDriverFeatures(value, &state)
            case (0x10, 2): state.configurationVector = msix.accepts(UInt16(truncatingIfNeeded: value))
            case (0x14, 1): core.writeStatus(value & 0xFF, &state)
            case (0x16, 2): state.queueSelect = value & 0xFFFF
            case (0x18, 2): core.writeQueue(.size, value & 0xFFFF, &state)
            case (0x1A, 2):
                guard let queue else { core.report("queue_msix_vector for queue \(state.queueSelect), which does not exist", &state); return }
                state.queueVectors[queue] = msix.accepts(UInt16(truncatingIfNeeded: value))
            case (0x1C, 2):
                // 4.1.4.3.2: the driver MUST NOT write 0 to queue_enable (queue_reset does that).
                if value & 1 == 1 { core.setQueueReady(true, &state) }
            case (0x20, 4), (0x20, 8): core.writeQueue(.descriptorLow, value, &state)
            case (0x24, 4): core.writeQueue(.descriptorHigh, value, &state)
            case (0x28, 4), (0x28, 8): core.writeQueue(.driverLow, value, &state)
            case (0x2C, 4): core.writeQueue(.driverHigh, value, &state)
            case (0x30, 4), (0x30, 8): core.writeQueue(.deviceLow, value, &state)
            case (0x34, 4): core.writeQueue(.deviceHigh, value, &state)
            default:
                core.report("a \(width)-byte write at common configuration offset 0x\(String(offset, radix: 16))", &state)
            }
        }
    }

    // MARK: Host side

    /// Serves `queue` from a host thread (see `VirtioTransportCore.serve(queue:)`).
    public func serve(queue index: Int) { core.serve(queue: index) }

    /// A platform reset: the device, MSI-X and the configuration space as firmware left them.
    public func reset() {
        core.reset()
        msix.reset()
        let initial = powerOn.withLock { $0 }
        space.withLock { $0 = initial }
        updateDecodedAddress()
    }

    /// Turns doorbell writes into eventfd signals (`VirtioTransportCore.notifyThroughEventFDs`).
    @discardableResult
    public func notifyThroughEventFDs(register: (Int, Int32) throws(HVError) -> Void) -> Bool {
        core.notifyThroughEventFDs(register: register)
    }

    /// The eventfds of the doorbells, by queue (for moving them with the BAR).
    var notifierDescriptors: [Int32] { core.notifierDescriptors }
}

/// The MSI-X table, pending bits and enable state of one function (PCI 3.0, 6.8.2), and the
/// delivery of virtio's interrupts through it.
final class MSIX: VirtioInterruptDelivery {
    struct Entry { var address: UInt64 = 0, data: UInt32 = 0, masked = true }
    struct State {
        var entries: [Entry]
        var pending: [Bool]
        var enabled = false, functionMask = false
    }
    let state: Mutex<State>
    let controller: (any InterruptController)?
    let count: Int
    /// Per vector, an eventfd the backend turns into the vector's MSI (irqfd), and the
    /// backend's route for it; empty when the backend has none (messages then go through
    /// `controller.signalMSI`).
    private let notifiers = Mutex<[(id: UInt32, eventFD: Int32)]>([])
    private let routes = Mutex<MSINotifierRoutes?>(nil)

    init(vectors: Int, controller: (any InterruptController)?) {
        count = vectors
        self.controller = controller
        state = Mutex(State(entries: [Entry](repeating: Entry(), count: vectors), pending: [Bool](repeating: false, count: vectors)))
    }

    func reset() {
        state.withLock { $0 = State(entries: [Entry](repeating: Entry(), count: count), pending: [Bool](repeating: false, count: count)) }
    }

    deinit { notifiers.withLock { $0.forEach { close($0.eventFD) } } }

    /// Gives every vector an eventfd the backend injects as its MSI (`routes.add`), or leaves
    /// the vectors on `signalMSI` when the backend refuses. Returns whether it took.
    func useNotifiers(_ routes: MSINotifierRoutes) -> Bool {
        var created: [(id: UInt32, eventFD: Int32)] = []
        for _ in 0..<count {
            let descriptor = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
            guard descriptor >= 0 else { break }
            do throws(HVError) {
                created.append((try routes.add(descriptor, 0, 0), descriptor))
            } catch {
                close(descriptor)
                LogCategory.devices.logger.debug("virtio-pci: MSI-X stays on KVM_SIGNAL_MSI: \(error)")
                break
            }
        }
        guard created.count == count else {
            created.forEach { close($0.eventFD) }
            return false
        }
        // The table as it is now (normally all zero before the driver runs).
        let entries = state.withLock { $0.entries }
        for (index, entry) in entries.enumerated() where entry.address != 0 || entry.data != 0 {
            try? routes.update(created[index].id, entry.address, entry.data)
        }
        self.routes.withLock { $0 = routes }
        notifiers.withLock { $0 = created }
        return true
    }

    /// Whether vectors are raised through eventfds.
    var usesNotifiers: Bool { notifiers.withLock { !$0.isEmpty } }

    /// The vector a driver asked for, or VIRTIO_MSI_NO_VECTOR when the table has no such entry
    /// (4.1.5.1.2.1: the driver reads it back to learn whether the mapping took).
    func accepts(_ vector: UInt16) -> UInt16 { Int(vector) < count ? vector : 0xFFFF }

    func raise(_ cause: VirtioInterruptCause, vector: UInt16) {
        guard Int(vector) < count else { return }
        let message = state.withLock { state -> (UInt64, UInt32)? in
            guard state.enabled else { return nil }
            if state.functionMask || state.entries[Int(vector)].masked {
                state.pending[Int(vector)] = true
                return nil
            }
            return (state.entries[Int(vector)].address, state.entries[Int(vector)].data)
        }
        if let (address, data) = message { send(address, data, vector: Int(vector)) }
    }

    func statusChanged(_ status: UInt32) {}

    private func send(_ address: UInt64, _ data: UInt32, vector: Int) {
        // One write(2) to the vector's irqfd where there is one (its route carries the same
        // message); otherwise KVM_SIGNAL_MSI.
        let notifier = notifiers.withLock { $0.indices.contains(vector) ? $0[vector].eventFD : -1 }
        if notifier >= 0 {
            var one: UInt64 = 1
            if Glibc.write(notifier, &one, 8) == 8 { return }
        }
        do throws(HVError) { try controller?.signalMSI(address: address, data: data) } catch {
            LogCategory.devices.logger.warning("virtio-pci: MSI to 0x\(String(address, radix: 16)) could not be sent: \(error)")
        }
    }

    /// Message Control changed: an unmasked function sends what was pending on unmasked vectors.
    func setControl(enabled: Bool, functionMask: Bool) {
        let messages = state.withLock { state -> [(UInt64, UInt32, Int)] in
            state.enabled = enabled
            state.functionMask = functionMask
            return drain(&state)
        }
        for (address, data, vector) in messages { send(address, data, vector: vector) }
    }

    private func drain(_ state: inout State) -> [(UInt64, UInt32, Int)] {
        guard state.enabled, !state.functionMask else { return [] }
        var messages: [(UInt64, UInt32, Int)] = []
        for index in state.entries.indices where state.pending[index] && !state.entries[index].masked {
            state.pending[index] = false
            messages.append((state.entries[index].address, state.entries[index].data, index))
        }
        return messages
    }

    /// Table entries: address low, address high, data, vector control (bit 0: mask); the PBA
    /// one bit per vector.
    func read(offset: UInt64, width: Int) -> UInt64 {
        state.withLock { state -> UInt64 in
            if offset >= VirtioPCILayout.pendingOffset {
                let first = Int(offset - VirtioPCILayout.pendingOffset) * 8
                var bits: UInt64 = 0
                for bit in 0..<(8 * width) where first + bit < count && state.pending[first + bit] { bits |= 1 << UInt64(bit) }
                return bits
            }
            let index = Int((offset - VirtioPCILayout.tableOffset) / 16)
            guard index < count else { return 0 }
            let entry = state.entries[index]
            let value: UInt64
            switch (offset % 16, width) {
            case (0, 8): value = entry.address
            case (0, _): value = entry.address & 0xFFFF_FFFF
            case (4, _): value = entry.address >> 32
            case (8, _): value = UInt64(entry.data)
            case (12, _): value = entry.masked ? 1 : 0
            default: value = 0
            }
            return value
        }
    }

    func write(offset: UInt64, width: Int, value: UInt64) {
        let index = Int((offset - VirtioPCILayout.tableOffset) / 16)
        guard index < count else { return }
        let messages = state.withLock { state -> [(UInt64, UInt32, Int)] in
            let before = state.entries[index]
            defer {
                // A new message for the vector's irqfd route (before anything pending is sent).
                let after = state.entries[index]
                if after.address != before.address || after.data != before.data, let routes = routes.withLock({ $0 }) {
                    let id = notifiers.withLock { $0.indices.contains(index) ? $0[index].id : nil }
                    if let id { try? routes.update(id, after.address, after.data) }
                }
            }
            switch (offset % 16, width) {
            case (0, 8): state.entries[index].address = value
            case (0, _): state.entries[index].address = state.entries[index].address & ~0xFFFF_FFFF | value & 0xFFFF_FFFF
            case (4, _): state.entries[index].address = state.entries[index].address & 0xFFFF_FFFF | (value & 0xFFFF_FFFF) << 32
            case (8, _): state.entries[index].data = UInt32(truncatingIfNeeded: value)
            case (12, _): state.entries[index].masked = value & 1 != 0
            default: break
            }
            return drain(&state)
        }
        for (address, data, vector) in messages { send(address, data, vector: vector) }
    }
}

// MARK: Snapshots

extension VirtioPCITransport: SnapshotPCIFunction, ActivityHoldingDevice, VirtioTransport {
    public var virtioDevice: any VirtioDevice { device }

    /// The configuration space (BAR 0's address, the command register, MSI-X enable), the
    /// MSI-X table and pending bits, then the transport and the device type
    /// (`VirtioTransportCore.saveState`).
    public func saveFunctionState(to encoder: inout StateEncoder) {
        encoder.write(bytes: space.withLock { $0.bytes })
        msix.saveState(to: &encoder)
        core.saveState(to: &encoder)
    }

    /// After the bytes go back, BAR 0 decodes where the snapshot's guest put it (the doorbells'
    /// eventfds move with it) and every vector's irqfd route carries the restored message.
    public func restoreFunctionState(from decoder: inout StateDecoder) throws(StateDecodingError) {
        let bytes = try PCIConfigurationSpace.readSaved(from: &decoder)
        let table = try msix.decodeState(from: &decoder)
        try core.restoreState(from: &decoder, vectors: msix.count)
        space.withLock { $0.replaceBytes(bytes) }
        msix.restore(table)
        updateDecodedAddress()
    }

    public func holdActivity() { core.holdActivity() }
    public func releaseActivity() { core.releaseActivity() }
}

extension MSIX {
    func saveState(to encoder: inout StateEncoder) {
        let state = state.withLock { $0 }
        encoder.write(state.enabled)
        encoder.write(state.functionMask)
        encoder.write(UInt16(state.entries.count))
        for (index, entry) in state.entries.enumerated() {
            encoder.write(entry.address)
            encoder.write(entry.data)
            encoder.write(entry.masked)
            encoder.write(state.pending[index])
        }
    }

    func decodeState(from decoder: inout StateDecoder) throws(StateDecodingError) -> State {
        let enabled = try decoder.read(Bool.self, "MSI-X enabled")
        let functionMask = try decoder.read(Bool.self, "MSI-X function mask")
        let vectors = Int(try decoder.read(UInt16.self, "MSI-X vectors"))
        guard vectors == count else {
            throw StateDecodingError(field: "MSI-X vectors", problem: "the snapshot's function has \(vectors); this one has \(count)")
        }
        var state = State(entries: [], pending: [], enabled: enabled, functionMask: functionMask)
        for index in 0..<vectors {
            let address = try decoder.read(UInt64.self, "MSI-X vector \(index) address")
            let data = try decoder.read(UInt32.self, "MSI-X vector \(index) data")
            let masked = try decoder.read(Bool.self, "MSI-X vector \(index) masked")
            state.entries.append(Entry(address: address, data: data, masked: masked))
            state.pending.append(try decoder.read(Bool.self, "MSI-X vector \(index) pending"))
        }
        return state
    }

    /// Puts a decoded table back and points each vector's irqfd route at its message.
    func restore(_ restored: State) {
        state.withLock { $0 = restored }
        guard let routes = routes.withLock({ $0 }) else { return }
        let ids = notifiers.withLock { $0.map(\.id) }
        for (index, entry) in restored.entries.enumerated() where index < ids.count {
            try? routes.update(ids[index], entry.address, entry.data)
        }
    }
}

/// How a backend routes MSI notifiers (`VirtualMachine.addMSINotifier`/`updateMSINotifier`),
/// as the MSI-X table needs it.
struct MSINotifierRoutes: Sendable {
    let add: @Sendable (Int32, UInt64, UInt32) throws(HVError) -> UInt32
    let update: @Sendable (UInt32, UInt64, UInt32) throws(HVError) -> Void
}

private func le16(_ value: UInt16) -> [UInt8] { [UInt8(truncatingIfNeeded: value), UInt8(value >> 8)] }
private func le32(_ value: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: value >> (8 * $0)) } }

extension Machine {
    /// Puts `device` behind a virtio-pci function at 00:`slot`.0 of the platform's PCI bus, its
    /// BAR assigned from the platform's memory window (decoding on, as firmware leaves it), its
    /// interrupts MSI-X messages to the VM's local APICs, and each queue's doorbell an
    /// eventfd where the backend offers one (KVM_IOEVENTFD), moved with the BAR if the guest
    /// moves it.
    @discardableResult
    public func attachVirtioPCI<D: VirtioDevice>(_ device: D, platform: PCPlatform, slot: Int) throws(HVError) -> VirtioPCITransport<D> {
        guard let interrupts else {
            throw .unsupported(knob: "virtio-pci", backend: backend.name, reason: "MSI-X needs local APICs; choose interruptController kernel or split")
        }
        let transport: VirtioPCITransport<D>
        do {
            transport = try VirtioPCITransport(device: device, memory: memory, controller: interrupts)
            try platform.bus.attach(transport, slot: slot)
        } catch {
            throw .configuration(ConfigurationError(field: "PCI slot", value: "\(slot)", expected: "a free slot 1-31 (\(error))"))
        }
        let address: UInt64
        do { address = try platform.window.allocate(size: VirtioPCILayout.barSize) } catch {
            platform.bus.detach(slot: slot)
            throw .configuration(ConfigurationError(field: "PCI slot", value: "\(slot)", expected: "room in the PCI memory window for another BAR (\(error))"))
        }
        platform.window.add(transport)
        // Doorbells: 2-byte writes of the queue index at the queue's own address, registered
        // where the BAR is now and moved with it (the hook is set once the BAR is in place).
        let vm = self.vm
        let registered = transport.notifyThroughEventFDs { (queue, descriptor) throws(HVError) in
            try vm.addWriteNotifier(address: VirtioPCILayout.doorbell(base: address, queue: queue), length: 2, value: UInt64(queue), eventFD: descriptor)
        }
        // MSI-X vectors as irqfds where the backend has them: a device thread's interrupt is one
        // write(2) the kernel turns into the MSI.
        transport.interruptThroughEventFDs(
            add: { (descriptor, address, data) throws(HVError) -> UInt32 in try vm.addMSINotifier(eventFD: descriptor, address: address, data: data) },
            update: { (id, address, data) throws(HVError) in try vm.updateMSINotifier(id, address: address, data: data) })
        transport.assign(address: address)
        if registered {
            let descriptors = transport.notifierDescriptors
            transport.whenBARMoves { old, new in
                for (queue, descriptor) in descriptors.enumerated() {
                    if let old {
                        try? vm.removeWriteNotifier(address: VirtioPCILayout.doorbell(base: old, queue: queue), length: 2, value: UInt64(queue), eventFD: descriptor)
                    }
                    if let new {
                        try? vm.addWriteNotifier(address: VirtioPCILayout.doorbell(base: new, queue: queue), length: 2, value: UInt64(queue), eventFD: descriptor)
                    }
                }
            }
        }
        return transport
    }
}
