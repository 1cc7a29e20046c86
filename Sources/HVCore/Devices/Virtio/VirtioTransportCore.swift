// What every virtio transport does the same way (virtio 1.2, 2 "Basic Facilities of a Virtio
// Device" and 3.1 "Device Initialization"), whatever registers carry it: the device status,
// feature negotiation, the queues' set-up, notifications, DEVICE_NEEDS_RESET and the interrupt
// status. virtio-mmio (VirtioMMIOTransport) and virtio-pci (VirtioPCITransport) only decode
// their registers into these operations and deliver interrupts their own way: a level-triggered
// line, or MSI-X messages.
#if canImport(Glibc)
import Glibc
#endif
import CKVM
import Foundation
import Logging
import Synchronization

/// Why a transport interrupts the driver.
public enum VirtioInterruptCause: Sendable, Equatable {
    /// The device put buffers on the used ring of this queue.
    case queue(Int)
    /// The device changed its configuration space or needs a reset.
    case configuration
}

/// How a transport's interrupts reach the guest.
public protocol VirtioInterruptDelivery: AnyObject, Sendable {
    /// The device raised `cause`; `vector` is the MSI-X vector the driver chose for it
    /// (`VirtioTransportCore.noVector` when none, and always for virtio-mmio).
    func raise(_ cause: VirtioInterruptCause, vector: UInt16)
    /// The interrupt status bits are now `status` (bit 0: used buffers, bit 1: configuration);
    /// a level-triggered line follows them.
    func statusChanged(_ status: UInt32)
}

/// The transport-independent front end of one virtio device.
public final class VirtioTransportCore<Device: VirtioDevice>: Sendable {
    /// InterruptStatus / ISR bits: a used buffer, a configuration change.
    public static var usedBufferInterrupt: UInt32 { 1 }
    public static var configurationInterrupt: UInt32 { 2 }
    /// VIRTIO_MSI_NO_VECTOR (4.1.4.3).
    public static var noVector: UInt16 { 0xFFFF }

    /// A queue field a driver writes before enabling the queue.
    enum QueueField {
        case size, descriptorLow, descriptorHigh, driverLow, driverHigh, deviceLow, deviceHigh
    }

    struct State {
        var status: UInt32 = 0
        var deviceFeaturesSelect: UInt32 = 0
        var driverFeaturesSelect: UInt32 = 0
        var driverFeatures: UInt64 = 0
        var queueSelect: UInt32 = 0
        var queues: [Virtqueue]
        var interruptStatus: UInt32 = 0
        /// The status last handed to `statusChanged`.
        var deliveredStatus: UInt32 = 0
        /// ConfigGeneration: moves on every change the device makes to its configuration.
        var configurationGeneration: UInt32 = 0
        /// virtio-pci's MSI-X vectors: one per queue and one for configuration changes.
        var queueVectors: [UInt16]
        var configurationVector: UInt16 = VirtioTransportCore.noVector
        /// Problems already logged (each kind once per device, so a guest cannot flood the log).
        var reported: Set<String> = []
        /// Held by a paused machine (`holdActivity`): queues asked to be served meanwhile, and
        /// a configuration change not yet announced, wait for `releaseActivity`.
        var held = false
        var heldQueues: Set<Int> = []
        var heldConfigurationChange = false

        init(queueSizes: [UInt16]) {
            queues = queueSizes.map { Virtqueue(maximumSize: $0) }
            queueVectors = [UInt16](repeating: VirtioTransportCore.noVector, count: queueSizes.count)
        }

        var selectedQueue: Int? { queues.indices.contains(Int(queueSelect)) ? Int(queueSelect) : nil }
    }

    public let name: String
    public let device: Device
    let memory: GuestMemory
    let delivery: (any VirtioInterruptDelivery)?
    let state: Mutex<State>
    /// Device features plus the transport's.
    let offeredFeatures: UInt64

    init(device: Device, memory: GuestMemory, delivery: (any VirtioInterruptDelivery)?) {
        self.device = device
        self.memory = memory
        self.delivery = delivery
        self.name = device.name
        self.offeredFeatures = (device.features & 0xFF_FFFF) | VirtioFeature.transport
        self.state = Mutex(State(queueSizes: device.queueSizes))
    }

    /// Connects the device's host-side callbacks (called once by the transport after init).
    func connectDevice() {
        device.connect { [weak self] queue in self?.serve(queue: queue) }
        device.connectConfigurationChange { [weak self] in self?.configurationChanged() }
    }

    /// Runs `body` on the state under the lock, then tells the delivery what the interrupt
    /// status became (one register access is one call).
    func access<R>(_ body: (inout State) -> R) -> R {
        state.withLock { state in
            let result = body(&state)
            deliverStatus(&state)
            return result
        }
    }

    private func deliverStatus(_ state: inout State) {
        guard state.interruptStatus != state.deliveredStatus else { return }
        state.deliveredStatus = state.interruptStatus
        delivery?.statusChanged(state.interruptStatus)
    }

    // MARK: Features and status (2.1, 2.2, 3.1.1)

    /// The 32 offered feature bits `deviceFeaturesSelect` selects.
    func deviceFeatures(_ state: State) -> UInt32 {
        state.deviceFeaturesSelect < 2 ? UInt32(truncatingIfNeeded: offeredFeatures >> (32 * UInt64(state.deviceFeaturesSelect))) : 0
    }

    /// The 32 accepted feature bits `driverFeaturesSelect` selects.
    func driverFeatures(_ state: State) -> UInt32 {
        state.driverFeaturesSelect < 2 ? UInt32(truncatingIfNeeded: state.driverFeatures >> (32 * UInt64(state.driverFeaturesSelect))) : 0
    }

    /// Features are written before FEATURES_OK and fixed after it.
    func writeDriverFeatures(_ value: UInt32, _ state: inout State) {
        guard state.status & VirtioStatus.featuresOK == 0, state.driverFeaturesSelect < 2 else { return }
        let shift = 32 * UInt64(state.driverFeaturesSelect)
        state.driverFeatures = state.driverFeatures & ~(0xFFFF_FFFF << shift) | UInt64(value) << shift
    }

    /// 0 resets the device; FEATURES_OK stays clear when the driver accepted a feature that was
    /// not offered or did not accept VIRTIO_F_VERSION_1.
    func writeStatus(_ value: UInt32, _ state: inout State) {
        if value == 0 {
            resetLocked(&state)
            return
        }
        var value = value | state.status & VirtioStatus.deviceNeedsReset
        if value & VirtioStatus.featuresOK != 0, state.status & VirtioStatus.featuresOK == 0 {
            let unoffered = state.driverFeatures & ~offeredFeatures
            if unoffered != 0 || state.driverFeatures & VirtioFeature.version1 == 0 {
                report(unoffered != 0 ? "the driver accepted features 0x\(String(unoffered, radix: 16)) that were not offered"
                                      : "the driver did not accept VIRTIO_F_VERSION_1 (HV has no legacy interface)", &state)
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

    // MARK: Queues (2.7, 4.1.4.3, 4.2.2)

    /// Writes a field of the selected queue, which must not be live yet.
    func writeQueue(_ field: QueueField, _ value: UInt32, _ state: inout State) {
        guard let selected = state.selectedQueue, !state.queues[selected].ready else {
            report("a write to \(field) of queue \(state.queueSelect), which \(state.selectedQueue == nil ? "does not exist" : "is live")", &state)
            return
        }
        func low(_ address: UInt64) -> UInt64 { address & 0xFFFF_FFFF_0000_0000 | UInt64(value) }
        func high(_ address: UInt64) -> UInt64 { address & 0xFFFF_FFFF | UInt64(value) << 32 }
        switch field {
        case .size: state.queues[selected].size = UInt16(truncatingIfNeeded: min(value, 0xFFFF))
        case .descriptorLow: state.queues[selected].descriptorTable = low(state.queues[selected].descriptorTable)
        case .descriptorHigh: state.queues[selected].descriptorTable = high(state.queues[selected].descriptorTable)
        case .driverLow: state.queues[selected].driverArea = low(state.queues[selected].driverArea)
        case .driverHigh: state.queues[selected].driverArea = high(state.queues[selected].driverArea)
        case .deviceLow: state.queues[selected].deviceArea = low(state.queues[selected].deviceArea)
        case .deviceHigh: state.queues[selected].deviceArea = high(state.queues[selected].deviceArea)
        }
    }

    /// Enables (checking the rings against guest RAM) or disables the selected queue.
    func setQueueReady(_ ready: Bool, _ state: inout State) {
        guard let selected = state.selectedQueue else {
            report("QueueReady for queue \(state.queueSelect), which does not exist", &state)
            return
        }
        if !ready {
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
    }

    /// Serves `queue` for a notification from the driver.
    func notify(queue index: Int, _ state: inout State) {
        guard state.queues.indices.contains(index), state.queues[index].ready else {
            report("a notification for queue \(index), which is not set up", &state)
            return
        }
        serveLocked(queue: index, &state)
    }

    func serveLocked(queue index: Int, _ state: inout State) {
        if state.held {
            state.heldQueues.insert(index)
            return
        }
        guard state.status & VirtioStatus.driverOK != 0, state.status & VirtioStatus.deviceNeedsReset == 0,
              state.queues.indices.contains(index), state.queues[index].ready
        else { return }
        do throws(VirtioDeviceError) {
            if try device.serve(queue: index, &state.queues[index], memory: memory),
               state.queues[index].needsInterrupt(memory: memory)
            {
                state.interruptStatus |= Self.usedBufferInterrupt
                delivery?.raise(.queue(index), vector: state.queueVectors[index])
            }
        } catch {
            needsReset("queue \(index): \(error)", &state)
        }
    }

    // MARK: Problems and changes

    /// 2.1.2: a device that cannot go on sets DEVICE_NEEDS_RESET and, once the driver is
    /// running, sends a configuration-change notification.
    func needsReset(_ problem: String, _ state: inout State) {
        report(problem + "; the device needs a reset", &state)
        state.status |= VirtioStatus.deviceNeedsReset
        if state.status & VirtioStatus.driverOK != 0 { raiseConfiguration(&state) }
    }

    private func raiseConfiguration(_ state: inout State) {
        state.interruptStatus |= Self.configurationInterrupt
        delivery?.raise(.configuration, vector: state.configurationVector)
    }

    /// Logs `problem` at warning level the first time this device sees it.
    func report(_ problem: String, _ state: inout State) {
        guard state.reported.count < 64, state.reported.insert(problem).inserted else { return }
        LogCategory.devices.logger.warning("\(name): \(problem)")
    }

    func resetLocked(_ state: inout State) {
        let reported = state.reported, generation = state.configurationGeneration, delivered = state.deliveredStatus
        let held = state.held
        state = State(queueSizes: device.queueSizes)
        state.held = held
        state.reported = reported
        state.configurationGeneration = generation
        state.deliveredStatus = delivered
        device.reset()
    }

    // MARK: Host side

    /// Serves `queue` from a host thread: a device with input of its own (console, network)
    /// calls this when it has something for the driver's buffers.
    public func serve(queue index: Int) {
        access { serveLocked(queue: index, &$0) }
    }

    /// The device changed its configuration space (a balloon's new target): ConfigGeneration
    /// moves and a running driver gets a configuration-change interrupt.
    public func configurationChanged() {
        access { state in
            state.configurationGeneration &+= 1
            if state.held {
                state.heldConfigurationChange = true
            } else if state.status & VirtioStatus.driverOK != 0 {
                raiseConfiguration(&state)
            }
        }
    }

    /// The platform reset: the device as at power-on.
    public func reset() {
        access { resetLocked(&$0) }
    }

    /// The features the driver accepted (0 until FEATURES_OK).
    public var negotiatedFeatures: UInt64 {
        state.withLock { $0.status & VirtioStatus.featuresOK != 0 ? $0.driverFeatures : 0 }
    }

    /// The device status register (2.1).
    public var status: UInt32 { state.withLock { $0.status } }

    /// Whether the device set DEVICE_NEEDS_RESET (a driver broke a rule).
    public var needsReset: Bool { state.withLock { $0.status & VirtioStatus.deviceNeedsReset != 0 } }

    // MARK: Snapshots (Documentation/Snapshots.md)

    /// Stops serving queues (host threads' requests wait) until `releaseActivity`. Taking the
    /// lock waits for a serve under way.
    public func holdActivity() {
        access { $0.held = true }
    }

    /// Serves the queues asked for while held, and announces a held configuration change.
    public func releaseActivity() {
        access { state in
            guard state.held else { return }
            state.held = false
            let queues = state.heldQueues.sorted()
            state.heldQueues = []
            for queue in queues { serveLocked(queue: queue, &state) }
            if state.heldConfigurationChange {
                state.heldConfigurationChange = false
                if state.status & VirtioStatus.driverOK != 0 { raiseConfiguration(&state) }
            }
        }
    }

    /// The transport's state (status, features, queue set-up and ring positions, interrupt
    /// status, MSI-X vector choices) followed by the device type's own, under the lock.
    func saveState(to encoder: inout StateEncoder) {
        state.withLock { state in
            encoder.write(device.type.rawValue)
            encoder.write(state.status)
            encoder.write(state.deviceFeaturesSelect)
            encoder.write(state.driverFeaturesSelect)
            encoder.write(state.driverFeatures)
            encoder.write(state.queueSelect)
            encoder.write(state.interruptStatus)
            encoder.write(state.configurationGeneration)
            encoder.write(state.configurationVector)
            encoder.write(UInt16(state.queues.count))
            for (index, queue) in state.queues.enumerated() {
                queue.saveState(to: &encoder)
                encoder.write(state.queueVectors[index])
            }
            var own = StateEncoder()
            device.saveState(to: &own)
            encoder.write(bytes: own.bytes)
        }
    }

    /// Puts back what `saveState` wrote, before the machine starts; guest memory already holds
    /// the snapshot's RAM (the rings are checked against it). The transport's part is decoded
    /// before anything changes. The transport stays held: at `releaseActivity` (the machine's start)
    /// every live queue is served once, for the notifications that were on their way when the
    /// snapshot was taken. `vectors` bounds the MSI-X vector choices (0: none, virtio-mmio).
    func restoreState(from decoder: inout StateDecoder, vectors: Int) throws(StateDecodingError) {
        let type = try decoder.read(UInt32.self, "\(name) device type")
        guard type == device.type.rawValue else {
            throw StateDecodingError(field: "\(name) device type", problem: "the snapshot has device type \(type) here; this VM has \(device.type.rawValue) (\(name))")
        }
        var restored = State(queueSizes: device.queueSizes)
        restored.status = try decoder.read(UInt32.self, "\(name) status")
        restored.deviceFeaturesSelect = try decoder.read(UInt32.self, "\(name) device features select")
        restored.driverFeaturesSelect = try decoder.read(UInt32.self, "\(name) driver features select")
        restored.driverFeatures = try decoder.read(UInt64.self, "\(name) driver features")
        if restored.driverFeatures & ~offeredFeatures != 0 {
            throw StateDecodingError(field: "\(name) driver features",
                                     problem: "0x\(String(restored.driverFeatures, radix: 16)) includes features this device does not offer (0x\(String(offeredFeatures, radix: 16)))")
        }
        restored.queueSelect = try decoder.read(UInt32.self, "\(name) queue select")
        restored.interruptStatus = try decoder.read(UInt32.self, "\(name) interrupt status") & 3
        restored.configurationGeneration = try decoder.read(UInt32.self, "\(name) configuration generation")
        func vector(_ field: String) throws(StateDecodingError) -> UInt16 {
            let value = try decoder.read(UInt16.self, field)
            guard value == Self.noVector || Int(value) < vectors else {
                throw StateDecodingError(field: field, problem: "vector \(value) does not exist (the function has \(vectors))")
            }
            return value
        }
        restored.configurationVector = try vector("\(name) configuration vector")
        let count = Int(try decoder.read(UInt16.self, "\(name) queue count"))
        guard count == restored.queues.count else {
            throw StateDecodingError(field: "\(name) queue count", problem: "the snapshot's device has \(count) queues; this one has \(restored.queues.count)")
        }
        for index in 0..<count {
            try restored.queues[index].restoreState(from: &decoder, field: "\(name) queue \(index)", memory: memory)
            restored.queueVectors[index] = try vector("\(name) queue \(index) vector")
        }
        var own = StateDecoder(try decoder.readBytes("\(name) device state"))
        try state.withLock { (state) throws(StateDecodingError) in
            // The device's own state goes in under the lock, after the features it was
            // activated with (a device type sets itself up from them: offloads, queue roles).
            if restored.status & VirtioStatus.featuresOK != 0 { device.activate(features: restored.driverFeatures) }
            try device.restoreState(from: &own)
            try own.finish("\(name) device state")
            restored.reported = state.reported
            restored.held = true
            restored.heldQueues = Set(restored.queues.indices.filter { restored.queues[$0].ready })
            state = restored
            // The line (virtio-mmio) follows the restored interrupt status.
            state.deliveredStatus = 0
            deliverStatus(&state)
        }
    }

    // MARK: Notifications without exits

    /// One eventfd per queue, signalled by the backend when the guest writes that queue's
    /// doorbell (KVM_IOEVENTFD), and the thread that serves them.
    private let notifiers = Mutex<[Int32]>([])
    /// Whether the notifier thread runs (the guest's doorbell writes then never exit).
    public var notifiesWithoutExits: Bool { notifiers.withLock { !$0.isEmpty } }

    /// Asks the backend, through `register(queue, eventFD)`, to turn the guest's doorbell writes
    /// into eventfd signals, and serves the queues from a thread of this transport: a doorbell
    /// then costs the vCPU no return to user space, and the device works while the guest runs
    /// on (QEMU's and Firecracker's ioeventfd). Returns false, leaving notifications to exits,
    /// when the backend cannot.
    @discardableResult
    public func notifyThroughEventFDs(register: (Int, Int32) throws(HVError) -> Void) -> Bool {
        var descriptors: [Int32] = []
        for queue in device.queueSizes.indices {
            let descriptor = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
            guard descriptor >= 0 else { break }
            descriptors.append(descriptor)
            do { try register(queue, descriptor) } catch {
                LogCategory.devices.logger.debug("\(name): queue notifications stay exits: \(error)")
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
                guard let core = self else { return }
                if ready < 0 && errno != EINTR { return }
                guard ready > 0 else { continue }
                for (queue, entry) in fds.enumerated() where entry.revents & Int16(POLLIN) != 0 {
                    var count: UInt64 = 0
                    _ = read(entry.fd, &count, 8)
                    core.serve(queue: queue)
                }
            }
        }
        thread.name = "\(name)-queues"
        thread.start()
        return true
    }

    /// The eventfds `notifyThroughEventFDs` registered, by queue (empty when it did not).
    var notifierDescriptors: [Int32] { notifiers.withLock { $0 } }

    deinit { notifiers.withLock { $0.forEach { close($0) } } }
}
