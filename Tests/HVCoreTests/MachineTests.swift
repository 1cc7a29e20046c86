import HVCore
import Testing

/// A port device that remembers writes and answers reads with a fixed value.
final class RecordingPort: PortIODevice, @unchecked Sendable {
    let name = "recording-port"
    var writes: [(offset: UInt16, size: Int, value: UInt32)] = []
    var readValue: UInt32 = 0x5A
    func portRead(offset: UInt16, size: Int) -> UInt32 { readValue }
    func portWrite(offset: UInt16, size: Int, value: UInt32) -> ExitAction {
        writes.append((offset, size, value))
        return value == 0xDEAD ? .stop(.debugExit(code: value)) : .resume
    }
}

private func machine(_ script: [ScriptedExit], configure: (inout VirtualMachineConfiguration) -> Void = { _ in })
    throws -> Machine<ScriptedBackend>
{
    var configuration = VirtualMachineConfiguration(memorySize: 1 << 20)
    configure(&configuration)
    return try Machine(configuration: configuration, backend: ScriptedBackend(script: script))
}

@Suite("Machine on the scripted backend")
struct MachineTests {
    @Test("the user handler sees an exit first, the device bus second, the defaults last")
    func handlerOrder() throws {
        let vm = try machine([
            .portIn(port: 0x60, size: 1, count: 1),  // user handler answers
            .portIn(port: 0x70, size: 1, count: 1),  // device answers
            .portIn(port: 0x80, size: 1, count: 1),  // nobody: open bus
            .halt,
        ])
        let device = RecordingPort()
        try vm.devices.register(device, port: 0x70, count: 2)
        let handler = ClosureExitHandler { exit, _ in
            if case .portIn(let io) = exit, io.port == 0x60 { return .resumeWith(0x11) }
            return nil
        }
        let result = try vm.run(handler: handler)
        #expect(result.reason == .halted)
        let completions = vm.vcpus[0].completions
        #expect(completions.map(\.inData) == [[0x11], [0x5A], [0xFF], []])
        #expect(completions.last?.action == .stop(.halted))
    }

    @Test("pause() from an exit handler is refused with an error naming the vCPU, instead of waiting for itself forever")
    func pauseFromHandlerIsRefused() throws {
        let vm = try machine([.portOut(port: 0x80, size: 1, values: [1]), .halt])
        let pauser = Pauser()
        pauser.machine = vm
        let result = try vm.run(handler: pauser)
        #expect(result.reason == .halted)
        let error = try #require(pauser.error)
        #expect("\(error)".contains("pause() was called on vCPU 0's own thread (from an exit handler)"), "\(error)")
    }

    @Test("a string OUT reaches the device once per element, in order")
    func stringOut() throws {
        let vm = try machine([.portOut(port: 0x70, size: 2, values: [1, 2, 3]), .halt])
        let device = RecordingPort()
        try vm.devices.register(device, port: 0x70, count: 2)  // the whole 16-bit access must fit
        _ = try vm.run()
        #expect(device.writes.map(\.value) == [1, 2, 3])
        #expect(device.writes.allSatisfy { $0.size == 2 })
    }

    @Test("a device can stop the VM with a reason")
    func deviceStops() throws {
        let vm = try machine([.portOut(port: 0x70, size: 4, values: [0xDEAD]), .halt])
        try vm.devices.register(RecordingPort(), port: 0x70, count: 4)
        let result = try vm.run()
        #expect(result.reason == .debugExit(code: 0xDEAD))
        #expect(result.exits == 1)
        #expect(vm.state == .stopped)
    }

    @Test("unmapped MMIO stops the VM by default and reads all-ones under the ignore policy")
    func unmappedMMIO() throws {
        let strict = try machine([.mmioWrite(address: 0xD000_0000, width: 4, value: 1)])
        #expect(try strict.run().reason == .unmappedMMIO(address: 0xD000_0000, write: true))

        let lenient = try machine([.mmioRead(address: 0xD000_0000, width: 4), .halt]) { $0.unmappedMMIO = .ignore }
        #expect(try lenient.run().reason == .halted)
        #expect(lenient.vcpus[0].completions.first?.action == .resumeWith(UInt64.max))
    }

    @Test("unknown MSR accesses fault unless a handler models the MSR")
    func msrDefaults() throws {
        let vm = try machine([.msrRead(index: 0x1234), .msrRead(index: 0xC001), .msrWrite(index: 0x1234, value: 9), .halt])
        let handler = ClosureExitHandler { exit, _ in
            if case .msrRead(let index) = exit, index == 0xC001 { return .resumeWith(42) }
            return nil
        }
        _ = try vm.run(handler: handler)
        #expect(vm.vcpus[0].completions.map(\.action) == [.fault, .resumeWith(42), .fault, .stop(.halted)])
    }

    @Test("fatal exits stop the VM with the matching reason")
    func fatalExits() throws {
        #expect(try machine([.shutdown]).run().reason == .shutdown)
        #expect(try machine([.internalError(suberror: 1)]).run().reason == .internalError(InternalError(suberror: 1)))
        #expect(try machine([.entryFailure(hardwareReason: 0x80000021)]).run().reason == .entryFailure(hardwareReason: 0x80000021))
        #expect(try machine([.systemEvent(.reset)]).run().reason == .systemEvent(.reset))
        #expect(try machine([.unknown(reason: 77)]).run().reason == .unhandledExit(.unknown))
    }

    @Test("the halt policy decides whether HLT stops or resumes")
    func haltPolicy() throws {
        let resuming = try machine([.halt, .halt, .shutdown]) { $0.haltPolicy = .resume }
        #expect(try resuming.run().reason == .shutdown)
        #expect(resuming.statistics.count(.halt) == 2)
    }

    @Test("statistics count every exit by kind")
    func statistics() throws {
        let vm = try machine([.portOut(port: 0x80, size: 1, values: [1]), .portOut(port: 0x80, size: 1, values: [2]),
                              .mmioRead(address: 0xE000_0000, width: 8), .halt]) { $0.unmappedMMIO = .ignore }
        let result = try vm.run()
        let stats = vm.statistics
        #expect(result.exits == 4)
        #expect(stats.count(.portOut) == 2)
        #expect(stats.count(.mmioRead) == 1)
        #expect(stats.count(.halt) == 1)
        #expect(stats.totalExits == 4)
        #expect(stats.medianRoundTrip(.portOut) != nil)
        #expect(stats.medianRoundTrip(.portIn) == nil)
    }

    @Test("an exit limit stops a guest that never stops by itself")
    func exitLimit() throws {
        let vm = try Machine(configuration: VirtualMachineConfiguration(memorySize: 1 << 20, exitLimit: 500),
                             backend: ScriptedBackend(script: [.portOut(port: 0x80, size: 1, values: [0])], repeats: true, records: false))
        let result = try vm.run()
        #expect(result.reason == .exitLimit)
        #expect(result.exits == 500)
    }

    @Test("a time limit stops a guest that never stops by itself")
    func timeLimit() throws {
        let vm = try Machine(configuration: VirtualMachineConfiguration(memorySize: 1 << 20, timeLimit: 0.2),
                             backend: ScriptedBackend(script: [.portOut(port: 0x80, size: 1, values: [0])], repeats: true, records: false))
        let result = try vm.run()
        #expect(result.reason == .timeout)
        #expect(result.exits > 0)
    }

    @Test("pause parks the vCPUs, resume continues, stop ends with .requested")
    func pauseResumeStop() throws {
        let vm = try Machine(configuration: VirtualMachineConfiguration(memorySize: 1 << 20, cpuCount: 2),
                             backend: ScriptedBackend(scripts: [[.portOut(port: 0x80, size: 1, values: [0])],
                                                                [.portOut(port: 0x80, size: 1, values: [0])]],
                                                      repeats: true, records: false))
        try vm.start(handler: NoExitHandler())
        #expect(vm.state == .running)
        try vm.pause()
        #expect(vm.state == .paused)
        let parked = vm.statistics.totalExits
        #expect(vm.statistics.totalExits == parked)  // nothing runs while paused
        #expect(throws: HVError.self) { try vm.pause() }
        try vm.resume()
        #expect(vm.state == .running)
        vm.stop()
        let result = vm.wait()
        #expect(result.reason == .requested)
        #expect(vm.state == .stopped)
        #expect(result.exits >= parked)
        #expect(throws: HVError.self) { try vm.resume() }
    }

    @Test("a stopped VM cannot be started or loaded again")
    func illegalTransitions() throws {
        let vm = try machine([.halt])
        _ = try vm.run()
        #expect(throws: HVError.self) { try vm.start(handler: NoExitHandler()) }
        #expect(MachineState.stopped.canTransition(to: .running) == false)
        #expect(MachineState.paused.canTransition(to: .running))
        #expect(MachineState.created.canTransition(to: .paused) == false)
    }
}

@Suite("Configuration validation")
struct ConfigurationTests {
    @Test("each invalid field is named with what would be valid", arguments: [
        (VirtualMachineConfiguration(memorySize: 0), "memorySize"),
        (VirtualMachineConfiguration(memorySize: 5000), "memorySize"),
        (VirtualMachineConfiguration(cpuCount: 0), "cpuCount"),
        (VirtualMachineConfiguration(timeLimit: -1), "timeLimit"),
        // Extreme values are errors, not traps further on (a deadline, a nanosecond count).
        (VirtualMachineConfiguration(timeLimit: 1.8e19), "timeLimit"),
        (VirtualMachineConfiguration(timeLimit: .nan), "timeLimit"),
        (VirtualMachineConfiguration(timeLimit: .infinity), "timeLimit"),
        (VirtualMachineConfiguration(memorySize: UInt64.max), "memorySize"),
        (VirtualMachineConfiguration(memorySize: UInt64.max & ~0xFFF), "memorySize"),
        (VirtualMachineConfiguration(cpuCount: Int.min), "cpuCount"),
        ({ var c = VirtualMachineConfiguration(); c.preemptionTimerInterval = 1e300; return c }(), "preemptionTimerInterval"),
        (VirtualMachineConfiguration(exitLimit: 0), "exitLimit"),
    ])
    func invalidFields(configuration: VirtualMachineConfiguration, field: String) {
        #expect {
            try configuration.validate()
        } throws: { error in
            guard let error = error as? ConfigurationError else { return false }
            return error.field == field && error.description.contains("expected")
        }
    }

    @Test("a backend refuses more vCPUs than it offers, naming the field")
    func tooManyVCPUs() {
        #expect {
            _ = try Machine(configuration: VirtualMachineConfiguration(cpuCount: 65), backend: ScriptedBackend(script: []))
        } throws: { error in
            guard case .configuration(let detail) = error as? HVError else { return false }
            return detail.field == "cpuCount"
        }
    }

    @Test("the default configuration is valid")
    func defaults() throws {
        try VirtualMachineConfiguration().validate()
    }
}

/// Calls `pause()` on its own machine from inside the first exit it sees.
private final class Pauser: ExitHandler, @unchecked Sendable {
    // @unchecked: one vCPU writes these, the test reads them after run() returned.
    var machine: Machine<ScriptedBackend>?
    var error: HVError?

    func handle(_ exit: VMExit, context: ExitContext) -> ExitAction? {
        guard error == nil, case .portOut = exit else { return nil }
        do { try machine?.pause() } catch { self.error = error }
        return .resume
    }
}
