// Device-bus lookup and dispatch: the part of every port/MMIO exit that HV adds in user space.
import Benchmark
import HVCore

final class NullPort: PortIODevice, @unchecked Sendable {
    let name: String
    init(name: String) { self.name = name }
    func portRead(offset: UInt16, size: Int) -> UInt32 { 0 }
    func portWrite(offset: UInt16, size: Int, value: UInt32) -> ExitAction { .resume }
}

func registerDeviceBusBenchmarks() {
    Benchmark("DeviceBus port write, 16 devices") { benchmark in
        let bus = DeviceBus()
        for i in 0..<16 { try bus.register(NullPort(name: "port\(i)"), port: IOPort(UInt16(0x100 + i * 16)), count: 8) }
        guard let data = PortIOData(buffer: PortIOBuffer(capacity: 4), size: 1, count: 1) else { return }
        let exit = VMExit.portOut(PortIO(port: 0x1A3, size: 1, count: 1, data: data))
        let context = ExitContext(vcpuID: 0)
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations { blackHole(bus.handle(exit, context: context)) }
        benchmark.stopMeasurement()
    }
}
