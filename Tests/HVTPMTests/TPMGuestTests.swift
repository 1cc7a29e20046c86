// The guest path: a long-mode guest drives TIS at 0xFED40000 under KVM.
import Foundation
import HVCore
import HVKVM
import HVTPM
import HVTestSupport
import Testing

enum TPMKVMHost {
    static let unavailableReason: String? = {
        do {
            _ = try KVMBackend()
            return nil
        } catch {
            return "\(error)"
        }
    }()
}

extension TPMLibTPMSSuites {
    @Suite struct TPMGuestTests {
        @Test(.enabled(if: TPMKVMHost.unavailableReason == nil || Requirement.kvm,
                       "skipped: \(TPMKVMHost.unavailableReason ?? "")"))
        func aGuestStartsTheTPMAndGetsRandomBytesThroughTIS() throws {
            let path = temporaryTPMDirectory()
            defer { try? FileManager.default.removeItem(atPath: path) }
            let engine = try LibTPMSEngine.open(directory: TPMStateDirectory(path: path))
            defer { try? engine.close() }
            let machine = try Machine(configuration: VirtualMachineConfiguration(memorySize: 4 << 20, cpuCount: 1, timeLimit: 60),
                                      backend: KVMBackend())
            let capture = SerialCapture()
            try machine.devices.register(UART16550(output: .capture(capture)), port: .com1, count: UART16550.portCount)
            try machine.devices.register(DebugExitDevice(), port: .debugExit, count: 4)
            // .guest: this guest plays firmware's part itself (its TPM2_Startup must succeed).
            let tis = try TISDevice(engine: engine, platformPolicy: .guest)
            try machine.devices.register(tis, address: GuestPhysicalAddress(TISInterface.baseAddress), length: TISInterface.windowSize)
            try machine.load(TISGuestProgram.startupAndGetRandom())
            let result = try machine.run()
            let output = capture.text
            #expect(result.reason == .debugExit(code: 0), "serial output: \(output)")
            let lines = output.split(separator: "\n").map(String.init)
            #expect(lines.first == "TPM2_Startup rc=00000000")
            let random = try #require(lines.dropFirst().first)
            #expect(random.hasPrefix("TPM2_GetRandom rc=00000000 bytes=0008 "))
            #expect(random.split(separator: " ").last?.count == 16)  // eight bytes in hex
            #expect(tis.state == .completion)
        }
    }
}
