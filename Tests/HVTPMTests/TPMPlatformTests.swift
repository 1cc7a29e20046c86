// The TPM as part of a machine: what a platform reset does to it, and its interrupt line.
import HVCore
import HVTPM
import Testing

/// Sends `command` through the TIS registers of `device` at locality 0 (requestUse,
/// commandReady, the bytes, tpmGo) and reads the response back.
func transact(_ device: TISDevice, _ command: [UInt8]) -> [UInt8] {
    _ = device.mmioWrite(offset: TISInterface.Register.access, width: 1, value: UInt64(TISInterface.Access.requestUse))
    _ = device.mmioWrite(offset: TISInterface.Register.status, width: 1, value: UInt64(TISInterface.Status.commandReady))
    for byte in command { _ = device.mmioWrite(offset: TISInterface.Register.dataFIFO, width: 1, value: UInt64(byte)) }
    _ = device.mmioWrite(offset: TISInterface.Register.status, width: 1, value: UInt64(TISInterface.Status.tpmGo))
    var response: [UInt8] = []
    while UInt32(device.mmioRead(offset: TISInterface.Register.status, width: 4)) & TISInterface.Status.dataAvailable != 0 {
        response.append(UInt8(device.mmioRead(offset: TISInterface.Register.dataFIFO, width: 1)))
    }
    return response
}

extension TPMLibTPMSSuites {
    @Suite struct TPMResetTests {
        @Test func aPlatformResetReleasesTheLocalityAndPowerCyclesTheTPMSoPCRsStartOver() throws {
            let engine = try LibTPMSEngine.open(directory: nil)
            defer { try? engine.close() }
            let device = try TISDevice(engine: engine, platformPolicy: .guest)  // the test plays firmware
            #expect(TPMResponse.code(transact(device, TPMCommand.startup(.clear))) == 0)
            let extend = TPMCommand.pcrExtend(16, digests: [(.sha256, SHA256.hash(Array("hello".utf8)))])
            #expect(TPMResponse.code(transact(device, extend)) == 0)
            let access = { UInt8(device.mmioRead(offset: TISInterface.Register.access, width: 1)) }
            #expect(access() & TISInterface.Access.activeLocality != 0)

            device.reset()   // what Machine does on a guest reset with ResetPolicy.restart

            #expect(access() & TISInterface.Access.activeLocality == 0)
            #expect(device.state == .idle)
            // _TPM_Init happened: the TPM wants TPM2_Startup again, and PCR 16 starts from zero.
            #expect(TPMResponse.code(transact(device, TPMCommand.getRandom(8))) == TPMResponseCode.initialize.rawValue)
            #expect(TPMResponse.code(transact(device, TPMCommand.startup(.clear))) == 0)
            let pcr = TPMCommand.pcrReadDigest(transact(device, TPMCommand.pcrRead(16, bank: .sha256)))
            #expect(pcr == [UInt8](repeating: 0, count: 32))
        }
    }
}

extension TPMLibTPMSSuites {
    @Suite struct TPMInterruptTests {
        @Test func theTPMRaisesTheISAIRQTheGuestProgrammedAndReleasesItOnAcknowledge() throws {
            let engine = try LibTPMSEngine.open(directory: nil)
            defer { try? engine.close() }
            let configuration = VirtualMachineConfiguration(memorySize: 1 << 20, interruptController: .kernel)
            let vm = try Machine(configuration: configuration, backend: ScriptedBackend(script: [.halt]))
            let device = try TISDevice(engine: engine, platformPolicy: .guest)  // the test plays firmware
            try vm.connect(device)
            // Locality 0 takes the interface first: an inactive locality's writes change nothing.
            _ = device.mmioWrite(offset: TISInterface.Register.access, width: 1, value: UInt64(TISInterface.Access.requestUse))
            _ = device.mmioWrite(offset: TISInterface.Register.interruptVector, width: 1, value: 5)        // SIRQ 5
            _ = device.mmioWrite(offset: TISInterface.Register.interruptEnable, width: 4,
                                 value: UInt64(TISInterface.Interrupt.globalEnable | TISInterface.Interrupt.dataAvailable))
            #expect(TPMResponse.code(transact(device, TPMCommand.startup(.clear))) == 0)
            #expect(vm.vm.interruptEvents == [.line(gsi: 5, high: true)])
            _ = device.mmioWrite(offset: TISInterface.Register.interruptStatus, width: 4,
                                 value: UInt64(TISInterface.Interrupt.dataAvailable))                      // acknowledge
            #expect(vm.vm.interruptEvents == [.line(gsi: 5, high: true), .line(gsi: 5, high: false)])
            // Vector 0 means no interrupt: nothing is driven.
            _ = device.mmioWrite(offset: TISInterface.Register.interruptVector, width: 1, value: 0)
            _ = transact(device, TPMCommand.getRandom(8))
            #expect(vm.vm.interruptEvents.count == 2)
        }

        @Test func aVMWithoutInterruptControllersCannotConnectTheTPM() throws {
            let engine = try LibTPMSEngine.open(directory: nil)
            defer { try? engine.close() }
            let vm = try Machine(configuration: VirtualMachineConfiguration(memorySize: 1 << 20),
                                 backend: ScriptedBackend(script: [.halt]))
            let device = try TISDevice(engine: engine)
            #expect(throws: HVError.self) { try vm.connect(device) }
        }
    }
}
