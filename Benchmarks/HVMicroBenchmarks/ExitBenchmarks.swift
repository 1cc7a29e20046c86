// Exit dispatch: what HV adds in user space to every exit, without KVM. `KVMVCPU.decodeExit` is
// internal to HVCore (and needs a real kvm_run mapping), so decoding is measured through the
// scripted backend, whose `run()` builds the same `VMExit` values, inside Machine's run loop.
import Benchmark
import HVCore
import HVKVM

/// A port that accepts every write.
final class AcceptingPort: PortIODevice, @unchecked Sendable {
    let name = "accepting-port"
    func portRead(offset: UInt16, size: Int) -> UInt32 { 0x5A }
    func portWrite(offset: UInt16, size: Int, value: UInt32) -> ExitAction { .resume }
}

/// Declines every exit, so the chain goes on to the device bus (a user handler that is not
/// interested in port 0x70).
struct DecliningHandler: ExitHandler, Sendable {
    func handle(_ exit: VMExit, context: ExitContext) -> ExitAction? {
        if case .msrRead = exit { return .resumeWith(0) }
        return nil
    }
}

func registerExitBenchmarks() {
    // One benchmark iteration = 1,000,000 exits through Machine's run loop on the scripted
    // backend (replayed exit, handler chain, device bus, write-back, exit statistics), reported
    // per exit; starting the vCPU thread is amortised over the million.
    for (name, script) in [
        ("io-out", [ScriptedExit.portOut(port: 0x70, size: 1, values: [0x41])]),
        ("io-in", [ScriptedExit.portIn(port: 0x70, size: 1, count: 1)]),
    ] {
        Benchmark("Run loop dispatch, scripted \(name) to a bus device (per exit)",
                  configuration: .init(scalingFactor: .mega)) { benchmark in
            let exits = UInt64(benchmark.scaledIterations.count)
            let machine = try Machine(configuration: VirtualMachineConfiguration(memorySize: 1 << 20, exitLimit: exits),
                                      backend: ScriptedBackend(script: script, repeats: true, records: false))
            try machine.devices.register(AcceptingPort(), port: 0x70, count: 1)
            benchmark.startMeasurement()
            let result = try machine.run(handler: DecliningHandler())
            benchmark.stopMeasurement()
            blackHole(result.exits)
        }
    }

    // The handler chain alone: a declining user handler, then the bus, for one port write.
    Benchmark("Handler chain: user handler declines, device bus takes io-out",
              configuration: .init(scalingFactor: .kilo)) { benchmark in
        let bus = DeviceBus()
        try bus.register(AcceptingPort(), port: 0x70, count: 1)
        let chain = DecliningHandler().then(bus)
        guard let data = PortIOData(buffer: PortIOBuffer(capacity: 4), size: 1, count: 1) else { return }
        data[0] = 0x41
        let exit = VMExit.portOut(PortIO(port: 0x70, size: 1, count: 1, data: data))
        let context = ExitContext(vcpuID: 0)
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations { blackHole(chain.handle(identity(exit), context: context)) }
        benchmark.stopMeasurement()
    }
}
