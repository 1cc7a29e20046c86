// The in-process libtpms engine and its state directory.
import Dispatch
import Foundation
import HVTPM
import Synchronization
import Testing

@Suite struct TPMStateFileTests {
    @Test("a failed system call reads in words, with the errno beside them")
    func ioErrorsInWords() {
        #expect("\(TPMError.io(operation: "bind", path: "127.0.0.1:2321", errno: 98))" == "bind 127.0.0.1:2321 failed: Address already in use (errno 98)")
        #expect("\(TPMError.io(operation: "pipe", path: "", errno: 24))" == "pipe failed: Too many open files (errno 24)")
    }

    @Test func sha256MatchesTheFIPSVectors() {
        #expect(SHA256.hash([UInt8]()).hexString == "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855")
        #expect(SHA256.hash(Array("abc".utf8)).hexString == "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD")
        let long = Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8)
        #expect(SHA256.hash(long).hexString == "248D6A61D20638B8E5C026930C3E6039A33CE45964FF2167F6ECEDD419DB06C1")
        #expect(SHA256.hash([UInt8](repeating: 0x61, count: 1_000_000)).hexString.hasPrefix("CDC76E5C9914FB92"))
    }

    @Test func aStateFileRoundTripsAndEveryDefectIsNamed() {
        let file = TPMStateFile(kind: .permanent, payload: Array(0..<200))
        let bytes = file.encoded()
        #expect(TPMStateFile.decode(bytes) == .success(file))
        #expect(TPMStateFile.decode(Array(bytes.prefix(40))) == .failure(.truncatedHeader(bytes: 40)))
        #expect(TPMStateFile.decode(Array(bytes.dropLast(10))) == .failure(.lengthMismatch(announced: 200, present: 190)))
        var flipped = bytes
        flipped[TPMStateFile.headerSize + 17] ^= 0x01
        #expect(TPMStateFile.decode(flipped) == .failure(.checksumMismatch))
        var foreign = bytes
        foreign[0] = UInt8(ascii: "X")
        #expect(TPMStateFile.decode(foreign) == .failure(.notAStateFile))
    }

    @Test("writers racing on one state file each use a temporary file of their own: the file always decodes whole, none is left behind")
    func concurrentAtomicWritesStayWhole() throws {
        let path = temporaryTPMDirectory()
        defer { try? FileManager.default.removeItem(atPath: path) }
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        let file = path + "/tpm2-00.permall"
        let failures = Atomic<Int>(0)
        DispatchQueue.concurrentPerform(iterations: 4) { writer in
            for round in 0..<50 {
                let payload = [UInt8](repeating: UInt8(writer * 50 + round), count: 16 << 10)
                do { try TPMStateDirectory.writeAtomically(path: file, bytes: TPMStateFile(kind: .permanent, payload: payload).encoded()) } catch {
                    failures.add(1, ordering: .relaxed)
                }
            }
        }
        #expect(failures.load(ordering: .relaxed) == 0)
        let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: file)))
        guard case .success(let decoded) = TPMStateFile.decode(bytes) else { Issue.record("the state file does not decode"); return }
        #expect(Set(decoded.payload).count == 1, "one writer's payload, whole")
        #expect(try FileManager.default.contentsOfDirectory(atPath: path).filter { $0.contains(".tmp") }.isEmpty)
    }

    @Test func aDirectoryIsLockedAgainstASecondUser() throws {
        let path = temporaryTPMDirectory()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let first = try TPMStateDirectory(path: path)
        #expect(throws: TPMError.self) { _ = try TPMStateDirectory(path: path) }
        _ = first
    }
}

extension TPMLibTPMSSuites {
    @Suite struct TPMEngineTests {
        @Test func aSecondInProcessEngineIsAClearError() throws {
            let engine = try LibTPMSEngine.open(directory: nil, holder: "the first test engine")
            defer { try? engine.close() }
            #expect(throws: TPMError.engineInUse(holder: "the first test engine")) {
                _ = try LibTPMSEngine.open(directory: nil)
            }
        }

        @Test func commandsFailUntilStartupThenPCR16HasTheKnownAnswer() throws {
            let engine = try LibTPMSEngine.open(directory: nil)
            defer { try? engine.close() }
            #expect(TPMResponse.code(try engine.execute(TPMCommand.getRandom(8), locality: 0)) == TPMResponseCode.initialize.rawValue)
            #expect(TPMResponse.code(try engine.execute(TPMCommand.startup(.clear), locality: 0)) == 0)
            let random = try engine.execute(TPMCommand.getRandom(16), locality: 0)
            #expect(TPMResponse.code(random) == 0)
            #expect(random.count == 10 + 2 + 16)
            let extend = TPMCommand.pcrExtend(16, digests: [(.sha256, SHA256.hash(Array("hello".utf8)))])
            #expect(TPMResponse.code(try engine.execute(extend, locality: 0)) == 0)
            let pcr = TPMCommand.pcrReadDigest(try engine.execute(TPMCommand.pcrRead(16, bank: .sha256), locality: 0))
            #expect(pcr?.hexString == "9851312028952521510E8EAAB5BE94E7DC24B5FC292B2E9781173CF11FFA9878")
        }

        @Test func garbageFramesGetTPMErrorsNotCrashes() throws {
            let engine = try LibTPMSEngine.open(directory: nil)
            defer { try? engine.close() }
            _ = try engine.execute(TPMCommand.startup(.clear), locality: 0)
            #expect(TPMResponse.code(try engine.execute([], locality: 0)) == TPMResponseCode.commandSize.rawValue)
            #expect(TPMResponse.code(try engine.execute([0x80, 0x01, 0, 0], locality: 0)) == TPMResponseCode.commandSize.rawValue)
            var wrongSize = TPMCommand.getRandom(8)
            wrongSize[5] = 200  // announces more than the frame holds
            #expect(TPMResponse.code(try engine.execute(wrongSize, locality: 0)) != 0)
            let noise = (0..<64).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }
            #expect(TPMResponse.code(try engine.execute(noise, locality: 0)) != 0)
            #expect(TPMResponse.code(try engine.execute(TPMCommand.getRandom(8), locality: 0)) == 0)
        }

        @Test func aRunningTPMIsSavedAndRestoredWithItsPCRs() throws {
            let engine = try LibTPMSEngine.open(directory: nil)
            defer { try? engine.close() }
            _ = try engine.execute(TPMCommand.startup(.clear), locality: 0)
            _ = try engine.execute(TPMCommand.pcrExtend(16, digests: [(.sha256, SHA256.hash(Array("hello".utf8)))]), locality: 0)
            let snapshot = try engine.saveState()
            try engine.powerCycle()
            #expect(TPMResponse.code(try engine.execute(TPMCommand.getRandom(8), locality: 0)) == TPMResponseCode.initialize.rawValue)
            try engine.restoreState(snapshot)
            let pcr = TPMCommand.pcrReadDigest(try engine.execute(TPMCommand.pcrRead(16, bank: .sha256), locality: 0))
            #expect(pcr?.hexString == "9851312028952521510E8EAAB5BE94E7DC24B5FC292B2E9781173CF11FFA9878")
        }

        @Test func stateSurvivesARestartAndResumeContinuesTheRunningTPM() throws {
            let path = temporaryTPMDirectory()
            defer { try? FileManager.default.removeItem(atPath: path) }
            var engine = try LibTPMSEngine.open(directory: TPMStateDirectory(path: path))
            _ = try engine.execute(TPMCommand.startup(.clear), locality: 0)
            _ = try engine.execute(TPMCommand.pcrExtend(16, digests: [(.sha256, SHA256.hash(Array("hello".utf8)))]), locality: 0)
            try engine.close(savingVolatileState: true)
            #expect(FileManager.default.fileExists(atPath: path + "/volatile.state"))

            engine = try LibTPMSEngine.open(directory: TPMStateDirectory(path: path), resume: true)
            let pcr = TPMCommand.pcrReadDigest(try engine.execute(TPMCommand.pcrRead(16, bank: .sha256), locality: 0))
            #expect(pcr?.hexString == "9851312028952521510E8EAAB5BE94E7DC24B5FC292B2E9781173CF11FFA9878")
            #expect(!FileManager.default.fileExists(atPath: path + "/volatile.state"))  // consumed
            try engine.close()

            engine = try LibTPMSEngine.open(directory: TPMStateDirectory(path: path))  // power-on: Startup needed
            #expect(TPMResponse.code(try engine.execute(TPMCommand.getRandom(8), locality: 0)) == TPMResponseCode.initialize.rawValue)
            try engine.close()
        }

        @Test(arguments: ["flip", "truncate", "empty"])
        func aDamagedStateFileIsRefusedNotRemanufactured(damage: String) throws {
            let path = temporaryTPMDirectory()
            defer { try? FileManager.default.removeItem(atPath: path) }
            let engine = try LibTPMSEngine.open(directory: TPMStateDirectory(path: path))
            try engine.close()
            let file = path + "/permanent.state"
            var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: file)))
            switch damage {
            case "flip": bytes[bytes.count / 2] ^= 0x40
            case "truncate": bytes.removeLast(100)
            default: bytes = []
            }
            try Data(bytes).write(to: URL(fileURLWithPath: file))
            let error = #expect(throws: TPMError.self) { _ = try LibTPMSEngine.open(directory: TPMStateDirectory(path: path)) }
            guard case .state(let location, let problem)? = error else {
                Issue.record("expected a state error, got \(String(describing: error))")
                return
            }
            #expect(location == file)
            #expect(problem.contains("will not manufacture"))
            // The damaged file is still there for the operator: nothing was overwritten.
            #expect([UInt8](try Data(contentsOf: URL(fileURLWithPath: file))) == bytes)
        }
    }
}
