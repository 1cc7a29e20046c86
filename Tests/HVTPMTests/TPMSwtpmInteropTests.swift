// HV's swtpm-protocol client against the reference server, swtpm itself: the layouts HV's
// server answers with are the ones swtpm uses.
import Foundation
import HVTPM
import HVTestSupport
import Testing
#if canImport(Glibc)
import Glibc
#endif

enum Swtpm {
    static let path = "/usr/bin/swtpm"
    static let unavailableReason: String? = FileManager.default.isExecutableFile(atPath: path)
        ? nil : "swtpm is not installed (scripts/setup.sh installs it)"

    /// `swtpm socket --tpm2` on a free loopback port pair; returns the process and data port.
    static func start(state: String) throws -> (Process, UInt16) {
        for _ in 0..<20 {
            let port = UInt16.random(in: 20000...60000)
            let process = Process()
            process.executableURL = URL(fileURLWithPath: path)
            process.arguments = ["socket", "--tpm2", "--tpmstate", "dir=\(state)",
                                 "--server", "type=tcp,port=\(port),bindaddr=127.0.0.1",
                                 "--ctrl", "type=tcp,port=\(port + 1),bindaddr=127.0.0.1",
                                 "--flags", "not-need-init,startup-clear"]
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            try process.run()
            // Ready once the data port accepts; a taken port makes swtpm exit: try another.
            for _ in 0..<100 {
                if !process.isRunning { break }
                if let probe = try? SwtpmClientEngine(port: port) {
                    try? probe.close()
                    return (process, port)
                }
                usleep(20_000)
            }
            stop(process)
        }
        throw TPMError.connection("swtpm did not start on any of 20 random ports")
    }

    /// SIGKILL: a child of the test runner inherits its blocked signal mask, and swtpm handles
    /// SIGTERM with a handler, so SIGTERM stays pending forever. Its state is scratch anyway.
    static func stop(_ process: Process) {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }
}

@Suite(.enabled(if: Swtpm.unavailableReason == nil || Requirement.tools, "skipped: \(Swtpm.unavailableReason ?? "")"))
struct TPMSwtpmInteropTests {
    @Test func theClientEngineDrivesRealSwtpmIncludingStateBlobs() throws {
        let state = temporaryTPMDirectory()
        defer { try? FileManager.default.removeItem(atPath: state) }
        let (process, port) = try Swtpm.start(state: state)
        defer { Swtpm.stop(process) }
        let client = try SwtpmClientEngine(port: port)
        defer { try? client.close() }
        #expect(TPMResponse.code(try client.execute(TPMCommand.getRandom(16), locality: 0)) == 0)
        #expect(TPMResponse.code(try client.execute(TPMCommand.getRandom(16), locality: 2)) == 0)  // SET_LOCALITY 2
        let hello = SHA256.hash(Array("hello".utf8))
        #expect(TPMResponse.code(try client.execute(TPMCommand.pcrExtend(16, digests: [(.sha256, hello)]), locality: 0)) == 0)
        let snapshot = try client.saveState()  // GET_STATEBLOB, as swtpm lays it out
        #expect(!snapshot.permanent.isEmpty && !snapshot.volatile.isEmpty)
        try client.powerCycle()  // CMD_INIT
        _ = try client.execute(TPMCommand.startup(.clear), locality: 0)
        let cleared = TPMCommand.pcrReadDigest(try client.execute(TPMCommand.pcrRead(16, bank: .sha256), locality: 0))
        #expect(cleared == [UInt8](repeating: 0, count: 32))
        try client.restoreState(snapshot)  // CMD_STOP, SET_STATEBLOB x2, CMD_INIT
        let pcr = TPMCommand.pcrReadDigest(try client.execute(TPMCommand.pcrRead(16, bank: .sha256), locality: 0))
        #expect(pcr?.hexString == "9851312028952521510E8EAAB5BE94E7DC24B5FC292B2E9781173CF11FFA9878")
    }
}

