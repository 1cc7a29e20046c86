// Firmware's part before the guest runs: the platform hierarchy locked, so a guest cannot
// wipe the TPM with the platform's authority (TPMFirmware).
import HVTPM
import Testing

extension TPMLibTPMSSuites {
    @Suite struct TPMFirmwareTests {
        private func code(_ engine: any TPMEngine, _ command: [UInt8]) throws -> UInt32 {
            TPMResponse.code(try engine.execute(command, locality: 0)) ?? 0xFFFF_FFFF
        }

        @Test("left to the guest, the platform's empty password lets a guest TPM2_Clear the TPM and replace its endorsement seed")
        func guestOwnedPlatformIsOpen() throws {
            let engine = try LibTPMSEngine.open(directory: nil, holder: "TPMFirmwareTests")
            defer { try? engine.close() }
            try TPMFirmware.prepare(engine, policy: .guest)
            #expect(try code(engine, TPMCommand.startup(.clear)) == 0)  // the guest starts it
            #expect(try code(engine, TPMCommand.clear(authorizedBy: TPMCommand.platformHierarchy)) == 0)
            #expect(try code(engine, TPMCommand.changeEPS()) == 0)
        }

        @Test("after firmware's random platform password or a disabled platform hierarchy, a guest's TPM2_Clear and TPM2_ChangeEPS with the platform's authority fail",
              arguments: [TPMPlatformPolicy.randomAuth, .disable])
        func lockedPlatformRefusesTheGuest(_ policy: TPMPlatformPolicy) throws {
            let engine = try LibTPMSEngine.open(directory: nil, holder: "TPMFirmwareTests")
            defer { try? engine.close() }
            try TPMFirmware.prepare(engine, policy: policy)
            // The guest's own TPM2_Startup finds the TPM started, as after a PC's BIOS.
            #expect(try code(engine, TPMCommand.startup(.clear)) == TPMResponseCode.initialize.rawValue)
            #expect(try code(engine, TPMCommand.clear(authorizedBy: TPMCommand.platformHierarchy)) != 0)
            #expect(try code(engine, TPMCommand.changeEPS()) != 0)
            #expect(try code(engine, TPMCommand.getRandom(8)) == 0)  // the TPM itself still serves
        }

        @Test("a TIS device made with the default policy has locked the platform hierarchy before a guest can touch it: through its FIFO the guest's TPM2_Startup finds the TPM started, and TPM2_Clear and TPM2_ChangeEPS with the platform's (empty) authorisation are refused")
        func defaultDeviceIsLocked() throws {
            let engine = try LibTPMSEngine.open(directory: nil, holder: "TPMFirmwareTests")
            defer { try? engine.close() }
            let tis = try TISDevice(engine: engine)
            #expect(tis.platformPolicy == .randomAuth)
            #expect(TPMResponse.code(transact(tis, TPMCommand.startup(.clear))) == TPMResponseCode.initialize.rawValue)
            #expect(TPMResponse.code(transact(tis, TPMCommand.clear(authorizedBy: TPMCommand.platformHierarchy))) != 0)
            #expect(TPMResponse.code(transact(tis, TPMCommand.changeEPS())) != 0)
            #expect(TPMResponse.code(transact(tis, TPMCommand.getRandom(8))) == 0)
        }

        @Test("a platform reset through the TIS power-cycles the TPM and locks the platform hierarchy again")
        func resetLocksAgain() throws {
            let engine = try LibTPMSEngine.open(directory: nil, holder: "TPMFirmwareTests")
            defer { try? engine.close() }
            let tis = try TISDevice(engine: engine, platformPolicy: .disable)
            tis.reset()  // TPM power cycle: a bare Startup(CLEAR) would re-enable the hierarchy
            #expect(try code(engine, TPMCommand.clear(authorizedBy: TPMCommand.platformHierarchy)) != 0)
            #expect(try code(engine, TPMCommand.changeEPS()) != 0)
        }
    }
}
