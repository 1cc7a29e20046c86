// `hv tpm serve` killed with SIGKILL while several clients use it at once: TPM commands that
// write its NVRAM (TPM2_Clear, TPM2_ChangeEPS), PCR extends, and the control channel's state
// blobs (CMD_GET_STATEBLOB, and CMD_SET_STATEBLOB, which stores the state it is given). Every
// state write is a unique temporary file, synced, renamed and the folder synced, serialised with
// libtpms (TPMStateDirectory, LibTPMSEngine), so whenever the kill lands the next start must find
// either the state before a write or the one after it, never a half-written one it refuses.
import Foundation
import HVTPM
import Synchronization
import Testing
#if canImport(Glibc)
import Glibc
#endif

@Suite("hv tpm serve under kill -9")
struct TPMServeSoakTests {
    @Test("SIGKILL at random moments under four concurrent clients never leaves a state the next start refuses")
    func killNineSoak() throws {
        let folder = try PackageExecutable.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: folder) }
        let state = folder.appendingPathComponent("soak.tpm")
        var random = SystemRandomNumberGenerator()
        var answered = 0
        for round in 0..<10 {
            // A start that refuses the state throws here ("hv tpm serve did not start").
            let server = try TPMServeProcess(state: state)
            let running = Atomic<Bool>(true), commands = Atomic<Int>(0), port = server.port
            let clients = (0..<4).map { kind in
                Thread {
                    guard let engine = try? SwtpmClientEngine(port: port) else { return }
                    while running.load(ordering: .relaxed) {
                        let ok: Bool
                        switch kind {
                        case 0: ok = (try? engine.execute(TPMCommand.clear(authorizedBy: TPMCommand.platformHierarchy), locality: 0)) != nil
                        case 1: ok = (try? engine.execute(TPMCommand.changeEPS(), locality: 0)) != nil
                        case 2: ok = (try? engine.execute(TPMCommand.pcrExtend(16, digests: [(.sha256, [UInt8](repeating: 7, count: 32))]), locality: 0)) != nil
                        default: ok = (try? engine.restoreState(engine.saveState())) != nil
                        }
                        if ok { commands.add(1, ordering: .relaxed) }
                    }
                    try? engine.close()
                }
            }
            clients.forEach { $0.start() }
            usleep(UInt32.random(in: 150_000...600_000, using: &random))
            kill(server.process.processIdentifier, SIGKILL)
            server.process.waitUntilExit()
            running.store(false, ordering: .relaxed)
            // The clients see their connections reset and end.
            let deadline = Date().addingTimeInterval(10)
            while clients.contains(where: { !$0.isFinished }) && Date() < deadline { usleep(10_000) }
            let ended = clients.allSatisfy { $0.isFinished }
            #expect(ended, "round \(round): a client hung after the server died")
            answered += commands.load(ordering: .relaxed)
        }
        #expect(answered > 100, "the clients got \(answered) answers in 10 rounds: the soak did little")
        // After the last kill the TPM starts and answers as always.
        let server = try TPMServeProcess(state: state)
        defer { #expect(server.stop() == 0) }
        let engine = try SwtpmClientEngine(port: server.port)
        defer { try? engine.close() }
        #expect(TPMResponse.code(try engine.execute(TPMCommand.getRandom(8), locality: 0)) == 0)
    }
}
