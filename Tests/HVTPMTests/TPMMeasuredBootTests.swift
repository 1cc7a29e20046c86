// Measured boot: PCRs extended by the TPM's event sequences, and a log a verifier replays.
import Foundation
import HVTPM
import HVTestSupport
import Testing

extension TPMLibTPMSSuites {
    @Suite struct TPMMeasuredBootTests {
        /// A PCR value replayed from `digests` (one bank), the way a verifier does it.
        func replay(_ digests: [[UInt8]]) -> [UInt8] {
            digests.reduce([UInt8](repeating: 0, count: 32)) { SHA256.hash($0 + $1) }
        }

        @Test func pcrs8And9HoldTheReplayOfTheLoggedSHA256Digests() throws {
            let engine = try LibTPMSEngine.open(directory: nil)
            defer { try? engine.close() }
            var boot = try MeasuredBoot(engine: engine)
            let kernel = (0..<5000).map { UInt8(truncatingIfNeeded: $0 &* 7) }  // five sequence chunks
            let initrd = [UInt8](repeating: 0x42, count: 1500)
            try boot.measureLinuxBoot(kernel: kernel, commandLine: "console=ttyS0", initrd: initrd)

            #expect(boot.events.map(\.pcr) == [9, 8, 9])
            let sha256 = boot.events.map { $0.digests.first { $0.algorithm == .sha256 }?.bytes ?? [] }
            // The TPM hashed exactly the bytes given: the host's SHA-256 agrees.
            #expect(sha256 == [SHA256.hash(kernel), SHA256.hash(Array("console=ttyS0".utf8) + [0]), SHA256.hash(initrd)])
            let pcr9 = TPMCommand.pcrReadDigest(try engine.execute(TPMCommand.pcrRead(9, bank: .sha256), locality: 0))
            let pcr8 = TPMCommand.pcrReadDigest(try engine.execute(TPMCommand.pcrRead(8, bank: .sha256), locality: 0))
            #expect(pcr9 == replay([sha256[0], sha256[2]]))
            #expect(pcr8 == replay([sha256[1]]))
            // Every active bank was measured, not only SHA-256.
            #expect(boot.events[0].digests.count >= 2)
        }

        @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/tpm2_eventlog") || Requirement.tools, "skipped: tpm2-tools are not installed"))
        func tpm2EventlogReplaysTheLogToTheTPMsPCRValues() throws {
            let engine = try LibTPMSEngine.open(directory: nil)
            defer { try? engine.close() }
            var boot = try MeasuredBoot(engine: engine)
            try boot.measureLinuxBoot(kernel: Array("not really a kernel".utf8), commandLine: "root=/dev/vda quiet", initrd: nil)
            let logURL = FileManager.default.temporaryDirectory.appendingPathComponent("hv-tpm-eventlog-\(UUID().uuidString)")
            defer { try? FileManager.default.removeItem(at: logURL) }
            try Data(boot.eventLog()).write(to: logURL)

            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/tpm2_eventlog")
            process.arguments = [logURL.path]
            let out = Pipe()
            process.standardOutput = out
            process.standardError = FileHandle.nullDevice
            try process.run()
            let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            process.waitUntilExit()
            #expect(process.terminationStatus == 0, "\(text)")
            for pcr: UInt32 in [8, 9] {
                let value = try #require(TPMCommand.pcrReadDigest(try engine.execute(TPMCommand.pcrRead(pcr, bank: .sha256), locality: 0)))
                // tpm2_eventlog prints "  9  : 0xdfe2..." under each bank; the value is unique to sha256.
                let compact = text.lowercased().filter { $0 != " " }
                #expect(compact.contains("\n\(pcr):0x\(value.hexString.lowercased())\n"), "tpm2_eventlog output:\n\(text)")
            }
        }
    }
}
