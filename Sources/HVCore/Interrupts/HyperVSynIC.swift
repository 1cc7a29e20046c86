// The monitor's half of Hyper-V's synthetic interrupt controller (SynIC). The backend (KVM with
// KVM_CAP_HYPERV_SYNIC2) emulates the SynIC itself: its MSRs, the sixteen synthetic interrupt
// sources (SINTs) of every virtual processor, auto-EOI, the synthetic timers and their messages.
// What a host-side producer needs is here: a route that raises one SINT from any thread (an
// irqfd on a KVM_IRQ_ROUTING_HV_SINT GSI), message delivery into the guest's message page with the
// TLFS handshake (message type, msg_pending, EOM), event flags in the guest's event-flags page,
// and the two hypercalls KVM leaves to user space: HvPostMessage and HvSignalEvent.
//
// Hyper-V TLFS 6.0: 11.8 "SynIC MSRs", 11.9 "Message buffers", 11.10 "Messages", 11.11 "Event
// flags"; 3 "Hypercall interface". Linux: Documentation/virt/kvm/api.rst (KVM_EXIT_HYPERV,
// KVM_IRQ_ROUTING_HV_SINT, KVM_HYPERV_EVENTFD), arch/x86/kvm/hyperv.c.
import CKVM
import Foundation
import Glibc
import Synchronization

/// The SynICs of one VM as the monitor sees them. `Machine.hyperV` has one when the CPU model has
/// Hyper-V enlightenments (`cpu hv-passthrough`).
///
/// A message or event producer (a device, a VMBus channel, a test device) creates a
/// `HyperVSINTRoute` to the SINT it delivers to; guests' HvPostMessage and HvSignalEvent reach
/// the handlers registered for their connection ids. Routes and handlers may be used from any
/// thread; message retries and in-kernel event signals are served by one thread of this object.
public final class HyperVSynIC: @unchecked Sendable {
    // Sendable: every mutable field is inside `state`; `memory` and `vm` are thread-safe.

    let vm: any VirtualMachine
    let memory: GuestMemory
    /// Virtual processors (KVM: VP index n is vCPU n, the order HV creates them in).
    public let processorCount: Int

    private struct State {
        /// The last SCONTROL/SIEFP/SIMP values each processor's guest wrote.
        var pages: [HyperVSynICUpdate]
        var messageHandlers: [UInt32: @Sendable (HyperVMessage) -> UInt16] = [:]
        var eventHandlers: [UInt32: EventConnection] = [:]
        /// Routes whose guest acknowledgements the service thread waits for.
        var acknowledgedRoutes: [ObjectIdentifier: HyperVSINTRoute] = [:]
        /// Event descriptors taken out of use, closed by the service thread once it no longer
        /// polls them (a number closed under its poll could be reused by another descriptor).
        var retiredDescriptors: [Int32] = []
        var serviceRunning = false
    }
    private struct EventConnection {
        var handler: @Sendable () -> Void
        /// The eventfd KVM signals for this connection, nil when HvSignalEvent exits instead.
        var eventFD: Int32?
    }
    private let state: Mutex<State>
    /// Written to make the service thread rebuild its list of descriptors.
    private let wakeFD: Int32

    init(vm: any VirtualMachine, memory: GuestMemory, processorCount: Int) throws(HVError) {
        self.vm = vm
        self.memory = memory
        self.processorCount = processorCount
        state = Mutex(State(pages: Array(repeating: Self.powerOn, count: processorCount)))
        wakeFD = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
        guard wakeFD >= 0 else { throw .systemCall(operation: "eventfd(Hyper-V SynIC)", errno: errno) }
    }

    deinit {
        state.withLock { state in
            for connection in state.eventHandlers.values { if let fd = connection.eventFD { close(fd) } }
            state.retiredDescriptors.forEach { close($0) }
        }
        close(wakeFD)
    }

    // MARK: What the guest set up

    /// A processor's SCONTROL, SIEFP and SIMP at power-on: all zero, nothing enabled.
    private static let powerOn = HyperVSynICUpdate(msr: 0, control: 0, eventPage: 0, messagePage: 0)

    /// Processor `vp`'s SCONTROL, SIEFP and SIMP as its guest last wrote them (all zero at
    /// power-on).
    public func registers(of vp: Int) -> HyperVSynICUpdate? {
        state.withLock { vp >= 0 && vp < $0.pages.count ? $0.pages[vp] : nil }
    }

    /// Records a `.hyperVSynIC` exit of processor `vp`.
    public func synicChanged(_ update: HyperVSynICUpdate, vp: Int) {
        state.withLock { state in
            guard vp >= 0, vp < state.pages.count else { return }
            state.pages[vp] = update
        }
    }

    /// Back to power-on: no pages known, no message waiting (the routes and handlers stay,
    /// they belong to their producers).
    public func reset() {
        let routes = state.withLock { state in
            for vp in state.pages.indices { state.pages[vp] = Self.powerOn }
            return Array(state.acknowledgedRoutes.values)
        }
        for route in routes { route.dropWaitingMessage() }
    }

    // MARK: Routes

    /// A route to SINT `sint` (0-15) of processor `vp`. Close it when done.
    public func route(toProcessor vp: Int, sint: UInt8) throws(HVError) -> HyperVSINTRoute {
        guard vp >= 0, vp < processorCount, sint < UInt8(HyperVMessage.sintCount) else {
            throw .configuration(ConfigurationError(field: "SINT route", value: "processor \(vp) SINT \(sint)",
                                                    expected: "processor 0..<\(processorCount), SINT 0..<\(HyperVMessage.sintCount)"))
        }
        let signal = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
        guard signal >= 0 else { throw .systemCall(operation: "eventfd(SINT route)", errno: errno) }
        let ack = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
        guard ack >= 0 else {
            let code = errno
            close(signal)
            throw .systemCall(operation: "eventfd(SINT acknowledgement)", errno: code)
        }
        let id: UInt32
        do { id = try vm.addSyntheticInterruptNotifier(vpIndex: UInt32(vp), sint: sint, eventFD: signal, ackFD: ack) } catch {
            close(signal)
            close(ack)
            throw error
        }
        let route = HyperVSINTRoute(synic: self, processor: vp, sint: sint, notifierID: id, eventFD: signal, ackFD: ack)
        state.withLock { $0.acknowledgedRoutes[ObjectIdentifier(route)] = route }
        serviceNeeded()
        return route
    }

    func forget(_ route: HyperVSINTRoute) {
        _ = state.withLock { $0.acknowledgedRoutes.removeValue(forKey: ObjectIdentifier(route)) }
        wake()
    }

    // MARK: Connections (what the guest's hypercalls reach)

    /// Takes the guest's HvPostMessage to `connection` (24 bits): `handler` gets the message and
    /// returns the hypercall's status (`HyperVStatus`). Nil removes the handler.
    public func setMessageHandler(connection: UInt32, _ handler: (@Sendable (HyperVMessage) -> UInt16)?) throws(HVError) {
        try state.withLock { (state) throws(HVError) in
            if let handler {
                guard state.messageHandlers[connection] == nil else {
                    throw .configuration(ConfigurationError(field: "message connection", value: "\(connection)", expected: "a connection id without a handler"))
                }
                state.messageHandlers[connection] = handler
            } else {
                state.messageHandlers[connection] = nil
            }
        }
    }

    /// Takes the guest's HvSignalEvent on `connection`: `handler` runs on the service thread when
    /// the backend signals it without an exit (KVM_HYPERV_EVENTFD), else on the vCPU's thread.
    /// Nil removes the handler.
    public func setEventHandler(connection: UInt32, _ handler: (@Sendable () -> Void)?) throws(HVError) {
        guard let handler else {
            let removed = state.withLock { $0.eventHandlers.removeValue(forKey: connection) }
            if let fd = removed?.eventFD {
                try? vm.setHyperVEventNotifier(connection: connection, eventFD: nil)
                state.withLock { $0.retiredDescriptors.append(fd) }
                wake()
            }
            return
        }
        guard state.withLock({ $0.eventHandlers[connection] == nil }) else {
            throw .configuration(ConfigurationError(field: "event connection", value: "\(connection)", expected: "a connection id without a handler"))
        }
        var descriptor: Int32? = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
        if let fd = descriptor {
            if fd < 0 {
                descriptor = nil
            } else {
                do { try vm.setHyperVEventNotifier(connection: connection, eventFD: fd) } catch {
                    // No in-kernel path: the hypercall exits and `hypercall` calls the handler.
                    LogCategory.devices.logger.debug("Hyper-V event connection \(connection) exits to user space: \(error)")
                    close(fd)
                    descriptor = nil
                }
            }
        }
        state.withLock { $0.eventHandlers[connection] = EventConnection(handler: handler, eventFD: descriptor) }
        if descriptor != nil { serviceNeeded() }
    }

    /// Serves a `.hyperVHypercall` exit; returns the status for RAX. HvPostMessage and
    /// HvSignalEvent go to their connections' handlers, with the checks Hyper-V makes of their
    /// input; every other call code is HV_STATUS_INVALID_HYPERCALL_CODE.
    public func hypercall(_ call: HyperVHypercall) -> UInt16 {
        switch call.code {
        case HyperVHypercall.postMessage:
            guard !call.isFast else { return HyperVStatus.invalidHypercallCode }
            guard call.firstParameter & 7 == 0 else { return HyperVStatus.invalidAlignment }
            let block: [UInt8]
            do { block = try memory.readBytes(at: GuestPhysicalAddress(call.firstParameter), count: 16 + HyperVMessage.maximumPayloadSize) } catch {
                return HyperVStatus.insufficientMemory
            }
            switch HyperVMessage.postMessageInput(block) {
            case .failure(let error):
                return error.status
            case .success(let (connection, message)):
                guard let handler = state.withLock({ $0.messageHandlers[connection] }) else { return HyperVStatus.invalidConnectionID }
                return handler(message)
            }
        case HyperVHypercall.signalEvent:
            var parameter = call.firstParameter
            if !call.isFast {
                guard parameter & 7 == 0 else { return HyperVStatus.invalidAlignment }
                do { parameter = try memory.read(UInt64.self, at: GuestPhysicalAddress(parameter)) } catch {
                    return HyperVStatus.insufficientMemory
                }
            }
            // TLFS 11.11.2: bits 47:32 are a flag number (HV uses none), the rest above 24 reserved.
            guard parameter & 0xFFFF_0000_0000 == 0 else { return HyperVStatus.invalidPortID }
            guard parameter & ~0x00FF_FFFF == 0 else { return HyperVStatus.invalidHypercallInput }
            guard let handler = state.withLock({ $0.eventHandlers[UInt32(parameter)]?.handler }) else {
                return HyperVStatus.invalidConnectionID
            }
            handler()
            return HyperVStatus.success
        default:
            return HyperVStatus.invalidHypercallCode
        }
    }

    // MARK: The service thread

    /// A descriptor was added for the service thread: start it the first time, else have it
    /// rebuild its list.
    private func serviceNeeded() {
        let start = state.withLock { state in
            defer { state.serviceRunning = true }
            return !state.serviceRunning
        }
        if start { startService() } else { wake() }
    }

    private func wake() {
        var one: UInt64 = 1
        _ = write(wakeFD, &one, 8)
    }

    /// Polls the routes' acknowledgement descriptors and the in-kernel event descriptors. Ends
    /// when this object goes away.
    private func startService() {
        let wakeFD = self.wakeFD
        let thread = Thread { [weak self] in
            var routes: [HyperVSINTRoute] = []
            var events: [(fd: Int32, handler: @Sendable () -> Void)] = []
            var fds: [pollfd] = []
            var stale = true
            while true {
                if stale {
                    guard let synic = self else { return }
                    (routes, events) = synic.state.withLock { state in
                        state.retiredDescriptors.forEach { close($0) }
                        state.retiredDescriptors.removeAll()
                        return (Array(state.acknowledgedRoutes.values),
                         state.eventHandlers.values.compactMap { connection in connection.eventFD.map { ($0, connection.handler) } })
                    }
                    fds = [pollfd(fd: wakeFD, events: Int16(POLLIN), revents: 0)]
                        + routes.map { pollfd(fd: $0.ackFD, events: Int16(POLLIN), revents: 0) }
                        + events.map { pollfd(fd: $0.fd, events: Int16(POLLIN), revents: 0) }
                    stale = false
                }
                let ready = poll(&fds, nfds_t(fds.count), 1000)
                if self == nil { return }
                if ready < 0 && errno != EINTR { return }
                guard ready > 0 else { continue }
                var count: UInt64 = 0
                for (index, entry) in fds.enumerated() where entry.revents != 0 {
                    _ = read(entry.fd, &count, 8)
                    if index == 0 {
                        stale = true
                    } else if index <= routes.count {
                        routes[index - 1].acknowledged()
                    } else {
                        events[index - 1 - routes.count].handler()
                    }
                }
                // A closed descriptor polls as POLLNVAL until the list is rebuilt.
                if fds.contains(where: { $0.revents & Int16(POLLNVAL) != 0 }) { stale = true }
            }
        }
        thread.name = "hyperv-synic"
        thread.start()
    }
}

/// A route to one synthetic interrupt source of one virtual processor: raises it, delivers
/// messages into its slot of the processor's message page and sets its event flags.
public final class HyperVSINTRoute: @unchecked Sendable {
    // Sendable: the descriptors are fixed; the waiting message is under `waiting`.

    public let processor: Int
    public let sint: UInt8
    let notifierID: UInt32
    let eventFD: Int32
    let ackFD: Int32
    private weak var synic: HyperVSynIC?
    /// A message that found its slot busy and waits for the guest's EOM.
    private let waiting = Mutex<HyperVMessage?>(nil)
    private let closed = Atomic<Bool>(false)

    init(synic: HyperVSynIC, processor: Int, sint: UInt8, notifierID: UInt32, eventFD: Int32, ackFD: Int32) {
        self.synic = synic
        self.processor = processor
        self.sint = sint
        self.notifierID = notifierID
        self.eventFD = eventFD
        self.ackFD = ackFD
    }

    /// The descriptors close only when nothing refers to the route any more, the service
    /// thread's list included: a number closed while it polls could be reused by another
    /// descriptor, whose signals it would then read.
    deinit {
        close()
        Glibc.close(eventFD)
        Glibc.close(ackFD)
    }

    /// Raises the SINT (the backend injects its vector unless the guest masked it).
    public func signal() {
        var one: UInt64 = 1
        _ = write(eventFD, &one, 8)
    }

    /// What became of a posted message.
    public enum Delivery: Sendable, Equatable {
        /// In the slot, the SINT raised.
        case delivered
        /// The slot was busy: msg_pending is set in it, and the message goes in when the guest
        /// frees the slot and writes EOM (TLFS 11.10.3).
        case queued
        /// Another message already waits for this slot (HV_STATUS_INSUFFICIENT_BUFFERS).
        case busy
        /// The processor's SynIC or message page is not enabled, or the page is not RAM.
        case noMessagePage
    }

    /// Delivers `message` into this SINT's slot of the processor's message page.
    public func post(_ message: HyperVMessage) -> Delivery {
        precondition(message.payload.count <= HyperVMessage.maximumPayloadSize, "a SynIC message payload is at most 240 bytes")
        return waiting.withLock { waiting in
            guard waiting == nil else { return .busy }
            let delivery = deliver(message)
            if delivery == .queued { waiting = message }
            return delivery
        }
    }

    /// Sets event flag `number` (0-2047) in this SINT's slot of the event-flags page and raises
    /// the SINT if the flag was clear (TLFS 11.11). Returns false when the page is not enabled.
    @discardableResult
    public func setEventFlag(_ number: Int) -> Bool {
        guard number >= 0, number < 2048, let synic, let registers = synic.registers(of: processor), registers.isEnabled,
              let page = registers.eventPageAddress,
              let slot = page.advanced(by: UInt64(sint) * 256),
              let flags = try? synic.memory.hostPointer(for: slot, length: 256)
        else { return false }
        let bit = UInt64(1) << UInt64(number % 64)
        if hv_atomic_or64(flags + (number / 64) * 8, bit) & bit == 0 { signal() }
        return true
    }

    /// The guest acknowledged the SINT (EOI or EOM): a waiting message may fit now.
    func acknowledged() {
        waiting.withLock { waiting in
            guard let message = waiting else { return }
            switch deliver(message) {
            case .delivered, .noMessagePage: waiting = nil
            case .queued, .busy: break
            }
        }
    }

    func dropWaitingMessage() { waiting.withLock { $0 = nil } }

    /// The hypervisor's side of the message-slot handshake (TLFS 11.10.3): a slot whose type is
    /// not HvMessageTypeNone is the guest's; then msg_pending asks for an EOM. The type is read
    /// again after the flag is set, so a guest that freed the slot in between (and so never saw
    /// the flag) does not leave the message waiting for an EOM that will not come.
    private func deliver(_ message: HyperVMessage) -> Delivery {
        guard let synic, let registers = synic.registers(of: processor), registers.isEnabled,
              let page = registers.messagePageAddress,
              let address = page.advanced(by: UInt64(sint) * UInt64(HyperVMessage.slotSize)),
              let slot = try? synic.memory.hostPointer(for: address, length: UInt64(HyperVMessage.slotSize))
        else { return .noMessagePage }
        if hv_atomic_load32(slot) != 0 {
            _ = hv_atomic_or8(slot + 5, 1)
            if hv_atomic_load32(slot) != 0 { return .queued }
        }
        // Header: type (set last), payload size, flags, 2 reserved bytes, 8 bytes of sender.
        slot.storeBytes(of: UInt8(message.payload.count), toByteOffset: 4, as: UInt8.self)
        slot.storeBytes(of: UInt8(0), toByteOffset: 5, as: UInt8.self)
        slot.storeBytes(of: UInt16(0), toByteOffset: 6, as: UInt16.self)
        slot.storeBytes(of: UInt64(0), toByteOffset: 8, as: UInt64.self)
        let payload = slot + HyperVMessage.headerSize
        message.payload.withUnsafeBytes { bytes in
            if let base = bytes.baseAddress { payload.copyMemory(from: base, byteCount: bytes.count) }
        }
        (payload + message.payload.count).initializeMemory(as: UInt8.self, repeating: 0,
                                                           count: HyperVMessage.maximumPayloadSize - message.payload.count)
        hv_atomic_store32(slot, message.type)
        signal()
        return .delivered
    }

    /// Takes the route away from the backend; signals and posts do nothing after it. Idempotent.
    public func close() {
        guard !closed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        if let synic {
            do { try synic.vm.removeNotifier(notifierID, eventFD: eventFD) } catch {
                LogCategory.devices.logger.warning("SINT route \(processor)/\(sint): \(error)")
            }
            synic.forget(self)
        }
    }
}
