// QEMU's `hyperv-testdev` (hw/hyperv/hyperv_testdev.c), the ISA test device kvm-unit-tests'
// Hyper-V tests drive the SynIC with (x86/hyperv.c): one 32-bit control port at 0x3000 that
// creates and raises synthetic interrupt routes and connects HvPostMessage / HvSignalEvent
// connection ids to them, so the guest is both producer and consumer of SynIC messages and
// events. A test fixture, not PC hardware: `hv run --test-devices` attaches it when the CPU model
// has Hyper-V enlightenments; a production VM does not carry it.
import Synchronization

/// The control port (a 32-bit write, other widths ignored as by QEMU):
///
/// | bits  | field                                                        |
/// |-------|--------------------------------------------------------------|
/// | 7:0   | SINT (0-15)                                                  |
/// | 15:8  | virtual processor index                                      |
/// | 23:16 | command (below)                                              |
/// | 31:24 | connection id                                                |
///
/// Commands: 1 create a route to (processor, SINT); 2 destroy it; 3 raise it; 4 connect message
/// connection `id` to a new route to (processor, SINT): every message the guest posts there is
/// posted back into that SINT's slot; 5 disconnect it; 6 connect event connection `id` likewise:
/// every HvSignalEvent there sets event flag `id` in that SINT's event slot; 7 disconnect it.
/// A command that names what does not exist is logged and ignored (QEMU asserts).
public final class HyperVTestDevice: PortIODevice, ResettableDevice, Sendable {
    public static let controlPort: IOPort = 0x3000

    public let name: String
    private let synic: HyperVSynIC
    private struct State {
        var routes: [UInt16: HyperVSINTRoute] = [:]
        var messageConnections: [UInt8: HyperVSINTRoute] = [:]
        var eventConnections: [UInt8: HyperVSINTRoute] = [:]
    }
    private let state = Mutex(State())

    public enum Command: UInt8, Sendable {
        case createRoute = 1, destroyRoute, raise, connectMessages, disconnectMessages, connectEvents, disconnectEvents
    }

    public init(synic: HyperVSynIC, name: String = "hyperv-testdev") {
        self.synic = synic
        self.name = name
    }

    public func portRead(offset: UInt16, size: Int) -> UInt32 { 0 }

    public func portWrite(offset: UInt16, size: Int, value: UInt32) -> ExitAction {
        guard offset == 0, size == 4 else { return .resume }
        let sint = UInt8(truncatingIfNeeded: value), processor = Int(UInt8(truncatingIfNeeded: value >> 8))
        let connection = UInt8(truncatingIfNeeded: value >> 24)
        guard let command = Command(rawValue: UInt8(truncatingIfNeeded: value >> 16)) else { return .resume }
        do throws(HVError) {
            try perform(command, processor: processor, sint: sint, connection: connection)
        } catch {
            LogCategory.devices.logger.warning("\(name): \(command) processor \(processor) SINT \(sint) connection \(connection): \(error)")
        }
        return .resume
    }

    /// Carries out one control-port command.
    public func perform(_ command: Command, processor: Int, sint: UInt8, connection: UInt8) throws(HVError) {
        let key = UInt16(processor & 0xFF) << 8 | UInt16(sint)
        switch command {
        case .createRoute:
            let route = try synic.route(toProcessor: processor, sint: sint)
            let old = state.withLock { state in
                defer { state.routes[key] = route }
                return state.routes[key]
            }
            old?.close()
        case .destroyRoute:
            guard let route = state.withLock({ $0.routes.removeValue(forKey: key) }) else { throw missing("route to processor \(processor) SINT \(sint)") }
            route.close()
        case .raise:
            guard let route = state.withLock({ $0.routes[key] }) else { throw missing("route to processor \(processor) SINT \(sint)") }
            route.signal()
        case .connectMessages:
            // Post back what the guest posted; a message already waiting for the slot is
            // HV_STATUS_INSUFFICIENT_BUFFERS, as QEMU's device answers.
            try connect(\.messageConnections, processor: processor, sint: sint, connection: connection) { (route) throws(HVError) in
                try synic.setMessageHandler(connection: UInt32(connection)) { message in
                    switch route.post(message) {
                    case .delivered, .queued: HyperVStatus.success
                    case .busy: HyperVStatus.insufficientBuffers
                    case .noMessagePage: HyperVStatus.invalidHypercallInput
                    }
                }
            }
        case .disconnectMessages:
            try disconnect(\.messageConnections, "message connection", connection) { () throws(HVError) in
                try synic.setMessageHandler(connection: UInt32(connection), nil)
            }
        case .connectEvents:
            let flag = Int(connection)
            try connect(\.eventConnections, processor: processor, sint: sint, connection: connection) { (route) throws(HVError) in
                try synic.setEventHandler(connection: UInt32(connection)) { route.setEventFlag(flag) }
            }
        case .disconnectEvents:
            try disconnect(\.eventConnections, "event connection", connection) { () throws(HVError) in
                try synic.setEventHandler(connection: UInt32(connection), nil)
            }
        }
    }

    /// A new route to (processor, SINT) that `register` hands to the SynIC for `connection`,
    /// kept in `table`; closed again if the SynIC refuses it.
    private func connect(_ table: WritableKeyPath<State, [UInt8: HyperVSINTRoute]>, processor: Int, sint: UInt8, connection: UInt8,
                         register: (HyperVSINTRoute) throws(HVError) -> Void) throws(HVError) {
        let route = try synic.route(toProcessor: processor, sint: sint)
        do throws(HVError) { try register(route) } catch {
            route.close()
            throw error
        }
        state.withLock { $0[keyPath: table][connection] = route }
    }

    /// Takes `connection` out of `table`, has `unregister` take it from the SynIC, and closes its route.
    private func disconnect(_ table: WritableKeyPath<State, [UInt8: HyperVSINTRoute]>, _ what: String, _ connection: UInt8,
                            unregister: () throws(HVError) -> Void) throws(HVError) {
        guard let route = state.withLock({ $0[keyPath: table].removeValue(forKey: connection) }) else { throw missing("\(what) \(connection)") }
        try unregister()
        route.close()
    }

    private func missing(_ what: String) -> HVError {
        .configuration(ConfigurationError(field: name, value: what, expected: "one the guest created first"))
    }

    /// Routes and connections the guest made go away, as they would with a fresh device.
    public func reset() {
        let (routes, messages, events) = state.withLock { state in
            defer { state = State() }
            return (Array(state.routes.values), state.messageConnections, state.eventConnections)
        }
        for (connection, route) in messages {
            try? synic.setMessageHandler(connection: UInt32(connection), nil)
            route.close()
        }
        for (connection, route) in events {
            try? synic.setEventHandler(connection: UInt32(connection), nil)
            route.close()
        }
        routes.forEach { $0.close() }
    }

    /// Routes the guest created (for tests).
    public var routeCount: Int { state.withLock { $0.routes.count } }
}

extension Machine {
    /// Attaches QEMU's `hyperv-testdev` (`HyperVTestDevice`, port 0x3000). Needs a CPU model
    /// with Hyper-V enlightenments (`cpu hv-passthrough`).
    @discardableResult
    public func attachHyperVTestDevice() throws(HVError) -> HyperVTestDevice {
        guard let hyperV else {
            throw .configuration(ConfigurationError(field: "cpu", value: configuration.cpuModel?.description ?? "host",
                                                    expected: "a model with hv-passthrough (hyperv-testdev drives the Hyper-V SynIC)"))
        }
        let device = HyperVTestDevice(synic: hyperV)
        do { try devices.register(device, port: HyperVTestDevice.controlPort, count: 4) } catch { throw .device(error) }
        return device
    }
}
