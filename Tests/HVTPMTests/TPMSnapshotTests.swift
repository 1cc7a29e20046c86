// The vTPM in snapshots (Documentation/Snapshots.md): the TIS registers and libtpms' permanent
// and volatile state saved and put back; the state directory handed over as in a live migration.
import Foundation
import HVCore
import HVTPM
import Testing

private func saved(_ device: TISDevice) throws -> [UInt8] {
    var encoder = StateEncoder()
    try device.saveState(to: &encoder)
    return encoder.bytes
}

private func restore(_ device: TISDevice, _ bytes: [UInt8]) throws(StateDecodingError) {
    var decoder = StateDecoder(bytes)
    try device.restoreState(from: &decoder)
    try decoder.finish("state")
}

extension TPMLibTPMSSuites {
    @Suite struct TPMSnapshotTests {
        static let helloPCR = "9851312028952521510E8EAAB5BE94E7DC24B5FC292B2E9781173CF11FFA9878"

        @Test("a TIS device's state: the TPM's PCRs (volatile) and the active locality come back; the TPM continues without TPM2_Startup and the state directory gets the snapshot's NVRAM")
        func tisDeviceRoundTrip() throws {
            let path = temporaryTPMDirectory()
            defer { try? FileManager.default.removeItem(atPath: path) }
            let engine = try LibTPMSEngine.open(directory: TPMStateDirectory(path: path))
            defer { try? engine.close() }
            let device = try TISDevice(engine: engine, platformPolicy: .guest)
            #expect(TPMResponse.code(transact(device, TPMCommand.startup(.clear))) == 0)
            #expect(TPMResponse.code(transact(device, TPMCommand.pcrExtend(16, digests: [(.sha256, SHA256.hash(Array("hello".utf8)))]))) == 0)
            let state = try saved(device)
            // Later: another extend, the locality given up, a power cycle.
            #expect(TPMResponse.code(transact(device, TPMCommand.pcrExtend(16, digests: [(.sha256, SHA256.hash(Array("later".utf8)))]))) == 0)
            device.reset()
            let access = { UInt8(device.mmioRead(offset: TISInterface.Register.access, width: 1)) }
            #expect(access() & TISInterface.Access.activeLocality == 0)
            try restore(device, state)
            #expect(access() & TISInterface.Access.activeLocality != 0, "locality 0 is active again")
            let pcr = TPMCommand.pcrReadDigest(transact(device, TPMCommand.pcrRead(16, bank: .sha256)))
            #expect(pcr?.hexString == Self.helloPCR, "PCR 16 as saved, and no TPM2_Startup needed")
            #expect(try TPMStateDirectory.read(path + "/" + TPMStateDirectory.permanentName, kind: .permanent) != nil)
        }

        @Test("a state libtpms cannot take, or a truncated one, is refused by name")
        func refusals() throws {
            let engine = try LibTPMSEngine.open(directory: nil)
            defer { try? engine.close() }
            let device = try TISDevice(engine: engine, platformPolicy: .guest)
            #expect(TPMResponse.code(transact(device, TPMCommand.startup(.clear))) == 0)
            let state = try saved(device)
            do {
                try restore(device, Array(state.prefix(state.count - 7)))
                Issue.record("a truncated state was taken")
            } catch { #expect(error.problem.contains("short") || error.problem.contains("left")) }
            // The volatile blob replaced by noise of the same length.
            var noisy = state
            for index in (noisy.count - 200)..<noisy.count { noisy[index] = UInt8(truncatingIfNeeded: index &* 31) }
            do {
                try restore(device, noisy)
                Issue.record("a damaged TPM state was taken")
            } catch { #expect(error.field == "tpm state" && error.problem.contains("libtpms refused it"), "\(error)") }
        }

        @Test("the state directory is handed over: a second opener without the lock writes nothing, claims only after the first engine lets go, and the first cannot take it back meanwhile")
        func directoryHandOver() throws {
            let path = temporaryTPMDirectory()
            defer { try? FileManager.default.removeItem(atPath: path) }
            let engine = try LibTPMSEngine.open(directory: TPMStateDirectory(path: path))
            defer { try? engine.close() }
            #expect(TPMResponse.code(try engine.execute(TPMCommand.startup(.clear), locality: 0)) == 0)
            let destination = try TPMStateDirectory(path: path, lock: false)
            #expect(!destination.isLocked)
            #expect(throws: TPMError.self) { try destination.claim(waiting: 0.2) }
            engine.releaseStorage()
            try destination.claim()
            #expect(destination.isLocked)
            #expect(throws: TPMError.self) { try engine.claimStorage() }
            destination.release()
            try engine.claimStorage()
        }
    }
}
