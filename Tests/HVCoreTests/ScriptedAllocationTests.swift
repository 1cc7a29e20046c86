import CAllocationCounter
import HVCore
import Testing

@Suite("Run loop allocations (scripted backend)")
struct ScriptedAllocationTests {
    @Test("dispatch through handler, device bus and statistics allocates nothing per exit")
    func dispatchAllocatesNothing() throws {
        let vm = try Machine(configuration: VirtualMachineConfiguration(memorySize: 1 << 20, exitLimit: 20_000),
                             backend: ScriptedBackend(script: [
                                 .portOut(port: 0x70, size: 1, values: [1]),
                                 .portIn(port: 0x3FD, size: 1, count: 1),
                                 .portOut(port: 0x3F8, size: 1, values: [0x41]),
                             ], repeats: true, records: false))
        try vm.devices.register(UART16550(output: .discard), port: .com1, count: UART16550.portCount)
        let meter = AllocationMeter(warmUp: 100, measured: 5_000)
        let result = try vm.run(handler: meter)
        #expect(result.reason == .exitLimit)
        #expect(meter.measuredExits == 5_000)
        #expect(meter.allocations == 0, "allocated \(meter.allocations) times in 5,000 exits")
    }
}
