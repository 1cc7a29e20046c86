// Snapshots and restore end to end (Documentation/Snapshots.md): a guest that counts is
// snapshotted through `hv ctl`, killed, and continues from the same count in a new `hv run
// --restore` process; every kind of damage to a snapshot is refused; kill -9 during writing
// never leaves a snapshot that restores half.
import Foundation
import HVCore
import HVManagement
import HVTPM
import HVTestSupport
import Synchronization
import Testing

/// An `hv run` of the counting guest whose console goes to a file.
final class CountingRun {
    let folder: URL
    let socket: String
    let console: URL
    let process: Process

    init(folder: URL, name: String, arguments: [String], environment: [String: String] = [:]) throws {
        self.folder = folder
        socket = folder.appendingPathComponent("\(name).sock").path
        console = folder.appendingPathComponent("\(name).out")
        FileManager.default.createFile(atPath: console.path, contents: nil)
        process = Process()
        process.executableURL = PackageExecutable.binDirectory.appendingPathComponent("hv")
        process.arguments = arguments + ["--api-socket", socket]
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        process.standardOutput = try FileHandle(forWritingTo: console)
        process.standardError = try FileHandle(forWritingTo: folder.appendingPathComponent("\(name).err").createdEmpty())
        process.standardInput = FileHandle.nullDevice
        try process.run()
    }

    var output: String { (try? String(contentsOf: console, encoding: .utf8)) ?? "" }
    var errors: String { (try? String(contentsOf: folder.appendingPathComponent("\(console.deletingPathExtension().lastPathComponent).err"), encoding: .utf8)) ?? "" }

    /// The counts printed so far, complete lines only.
    var counts: [UInt64] {
        output.split(separator: "\n", omittingEmptySubsequences: false).dropLast().compactMap { UInt64($0, radix: 16) }
    }

    /// Waits until at least `lines` counts were printed.
    func waitForCounts(_ lines: Int, timeout: Double = 60) -> Bool {
        let deadline = Date(timeIntervalSinceNow: timeout)
        while counts.count < lines, Date() < deadline, process.isRunning { usleep(20_000) }
        return counts.count >= lines
    }

    func ctl(_ arguments: [String]) throws -> ProcessResult {
        try PackageExecutable.run(["ctl", socket] + arguments + ["--wait", "30"])
    }

    func kill9() {
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }
}

extension URL {
    func createdEmpty() throws -> URL {
        FileManager.default.createFile(atPath: path, contents: nil)
        return self
    }
}

@Suite("Snapshots: hv ctl snapshot, hv run --restore, refusals, kill -9 while writing", .serialized)
struct SnapshotTests {
    static let key = String(repeating: "0123456789abcdef", count: 4)

    /// Folder with the counting guest and, for encrypted runs, a key file (0600).
    static func fixture() throws -> (folder: URL, guest: String, keyFile: String) {
        let folder = try PackageExecutable.temporaryDirectory()
        let guest = folder.appendingPathComponent("counter.bin")
        try Data(GuestProgram.counter().code).write(to: guest)
        let keyFile = folder.appendingPathComponent("snapshot.key").path
        FileManager.default.createFile(atPath: keyFile, contents: Data(key.utf8), attributes: [.posixPermissions: 0o600])
        return (folder, guest.path, keyFile)
    }

    @Test("a counting guest, paused and snapshotted through hv ctl, killed with SIGKILL, continues in a new hv run --restore from the next count",
          .needsKVM, arguments: [false, true])
    func snapshotKillRestore(encrypted: Bool) throws {
        let (folder, guest, keyFile) = try Self.fixture()
        defer { try? FileManager.default.removeItem(at: folder) }
        let keyArguments = encrypted ? ["--key-file", keyFile] : []
        let first = try CountingRun(folder: folder, name: "first", arguments: ["run", guest, "--mem", "32M", "--timeout", "120"] + keyArguments)
        defer { if first.process.isRunning { first.kill9() } }
        #expect(first.waitForCounts(5), "\(first.errors)")
        #expect(try first.ctl(["pause"]).status == 0)
        usleep(200_000)
        let snapshotDirectory = folder.appendingPathComponent("snap").path
        let snapshot = try first.ctl(["snapshot", snapshotDirectory])
        #expect(snapshot.status == 0, "\(snapshot.stderr); hv run: \(first.errors)")
        #expect(snapshot.stdout.contains(encrypted ? "encrypted" : "snapshot \(snapshotDirectory)"), "\(snapshot.stdout)")
        let before = first.output
        first.kill9()
        let state = try #require(FileManager.default.contents(atPath: snapshotDirectory + "/state"))
        // Encrypted, nothing of the command line (the guest's path) is readable in the state file.
        #expect(String(decoding: state, as: UTF8.self).contains("counter.bin") == !encrypted)

        let second = try CountingRun(folder: folder, name: "second", arguments: ["run", "--restore", snapshotDirectory, "--timeout", "60"] + keyArguments)
        defer { if second.process.isRunning { second.kill9() } }
        #expect(second.waitForCounts(3), "\(second.errors)")
        #expect(second.errors.contains("hv: restored \(snapshotDirectory)"), "\(second.errors)")
        // The two outputs join into one run of counts: no gap, no repeat (a line cut by the pause
        // is finished by the restored guest).
        let joined = (before + second.output).split(separator: "\n", omittingEmptySubsequences: false).dropLast()
        let counts = joined.compactMap { UInt64($0, radix: 16) }
        #expect(counts.count == joined.count, "a line that is not a count: \(joined.suffix(10))")
        #expect(counts.count >= 8)
        for (previous, next) in zip(counts, counts.dropFirst()) where next != previous + 1 {
            Issue.record("the count jumped from \(previous) to \(next) across the restore; \(counts)")
            break
        }
        #expect(try second.ctl(["info"]).stdout.contains("state      running"))
    }

    /// Takes a snapshot of a counting guest (paused first) into `folder/name` and ends the run.
    static func snapshot(_ folder: URL, guest: String, name: String, extra: [String] = [], keyFile: String? = nil) throws -> String {
        let run = try CountingRun(folder: folder, name: name, arguments: ["run", guest, "--mem", "16M", "--timeout", "120"] + extra
                                  + (keyFile.map { ["--key-file", $0] } ?? []))
        defer { run.kill9() }
        _ = run.waitForCounts(2)
        _ = try run.ctl(["pause"])
        let directory = folder.appendingPathComponent(name).path
        let result = try run.ctl(["snapshot", directory])
        guard result.status == 0 else { throw SnapshotTestError(message: "snapshot failed: \(result.stderr) \(run.errors)") }
        return directory
    }

    struct SnapshotTestError: Error { var message: String }

    /// `hv run --restore` expected to refuse: exit status 64 and the error line.
    static func refusal(_ directory: String, _ extra: [String] = [], environment: [String: String] = [:]) throws -> String {
        let result = try PackageExecutable.run(["run", "--restore", directory, "--timeout", "2"] + extra, environment: environment)
        #expect(result.status == 64, "restore of \(directory) \(extra) was not refused: \(result.status) \(result.stderr)")
        return result.stderr
    }

    /// The state file's manifest (JSON) and where its sections start.
    static func layout(_ directory: String) throws -> (manifest: [String: Any], bytes: Data, manifestRange: Range<Int>, body: Int) {
        let bytes = try Data(contentsOf: URL(fileURLWithPath: directory + "/state"))
        let length = Int(bytes[12]) | Int(bytes[13]) << 8 | Int(bytes[14]) << 16 | Int(bytes[15]) << 24
        let range = 16..<(16 + length)
        let manifest = try #require(try JSONSerialization.jsonObject(with: bytes.subdata(in: range)) as? [String: Any])
        return (manifest, bytes, range, 16 + length + 32)
    }

    static func copy(_ directory: String, to name: String) throws -> String {
        let target = (directory as NSString).deletingLastPathComponent + "/" + name
        try? FileManager.default.removeItem(atPath: target)
        try FileManager.default.copyItem(atPath: directory, toPath: target)
        return target
    }

    static func flipByte(in path: String, at offset: Int) throws {
        var data = try Data(contentsOf: URL(fileURLWithPath: path))
        data[offset] ^= 0x01
        try data.write(to: URL(fileURLWithPath: path))
    }

    @Test("a running VM snapshotted twice into one directory: the second replaces the first, the guest runs on after each, and the directory restores to the later count",
          .needsKVM)
    func snapshotReplacesSnapshot() throws {
        let (folder, guest, _) = try Self.fixture()
        defer { try? FileManager.default.removeItem(at: folder) }
        let run = try CountingRun(folder: folder, name: "run", arguments: ["run", guest, "--mem", "16M", "--timeout", "120"])
        defer { if run.process.isRunning { run.kill9() } }
        let directory = folder.appendingPathComponent("snap").path
        var ids: [String] = []
        for round in 1...2 {
            #expect(run.waitForCounts(3 * round), "\(run.errors)")
            let result = try run.ctl(["snapshot", directory])
            #expect(result.status == 0, "\(result.stderr) \(run.errors)")
            ids.append(try Self.layout(directory).manifest["id"] as? String ?? "")
            #expect(run.waitForCounts(run.counts.count + 2), "the guest stopped after snapshot \(round): \(run.errors)")
        }
        #expect(ids[0] != ids[1])
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: folder.path).filter { $0.hasPrefix("snap.tmp-") }
        #expect(leftovers.isEmpty, "\(leftovers)")
        run.kill9()
        let restored = try CountingRun(folder: folder, name: "restored", arguments: ["run", "--restore", directory, "--timeout", "30"])
        defer { if restored.process.isRunning { restored.kill9() } }
        // Its first line may finish one the pause cut: the second is whole, and past the first snapshot's counts.
        #expect(restored.waitForCounts(2), "\(restored.errors)")
        #expect((restored.counts.last ?? 0) > 6, "\(restored.counts)")
    }

    @Test("every section's corruption, a truncated or corrupted memory file, another HV's snapshot and a 2-vCPU snapshot into 1 vCPU are refused, naming what is wrong",
          .needsKVM)
    func plainRefusals() throws {
        let (folder, guest, _) = try Self.fixture()
        defer { try? FileManager.default.removeItem(at: folder) }
        let good = try Self.snapshot(folder, guest: guest, name: "good")
        let layout = try Self.layout(good)
        let sections = try #require(layout.manifest["sections"] as? [[String: Any]])
        #expect(sections.count >= 12, "\(sections.map { $0["name"] ?? "" })")
        // Sections with bytes in them (a stateless device's is empty: nothing to damage).
        for section in sections where section["length"] as? Int ?? 0 > 0 {
            let name = try #require(section["name"] as? String), offset = try #require(section["offset"] as? Int)
            let damaged = try Self.copy(good, to: "damaged")
            try Self.flipByte(in: damaged + "/state", at: layout.body + offset)
            let message = try Self.refusal(damaged)
            #expect(message.contains("section \(name): does not match its SHA-256"), "\(name): \(message)")
        }
        // The manifest itself.
        let manifestDamaged = try Self.copy(good, to: "manifest")
        try Self.flipByte(in: manifestDamaged + "/state", at: layout.manifestRange.lowerBound + 40)
        #expect(try Self.refusal(manifestDamaged).contains("manifest"))
        // A truncated memory file, and one with a changed data byte (the counter's page).
        let truncated = try Self.copy(good, to: "truncated")
        let memory = try FileHandle(forUpdating: URL(fileURLWithPath: truncated + "/memory"))
        try memory.truncate(atOffset: 8 << 20)
        try memory.close()
        #expect(try Self.refusal(truncated).contains("is 8388608 bytes; the snapshot wrote 16777216 (truncated or replaced)"))
        let corrupted = try Self.copy(good, to: "corrupted")
        try Self.flipByte(in: corrupted + "/memory", at: 0x30_0000)
        #expect(try Self.refusal(corrupted).contains("memory chunk 1 (guest bytes 2097152...): does not match its SHA-256"))
        // Another HV's snapshot: the manifest names its version (its checksum made to match).
        let older = try Self.copy(good, to: "older")
        var bytes = layout.bytes
        let json = String(decoding: bytes.subdata(in: layout.manifestRange), as: UTF8.self)
        let edited = Data(json.replacingOccurrences(of: "\"hv\" : \"0.1\"", with: "\"hv\" : \"0.0\"").utf8)
        #expect(edited.count == layout.manifestRange.count)
        bytes.replaceSubrange(layout.manifestRange, with: edited)
        bytes.replaceSubrange(layout.manifestRange.upperBound..<(layout.manifestRange.upperBound + 32), with: SHA256Digest.of(edited))
        try bytes.write(to: URL(fileURLWithPath: older + "/state"))
        #expect(try Self.refusal(older).contains("was written by HV 0.0; this is HV 0.1"))
        // A key for a plain snapshot.
        #expect(try Self.refusal(good, environment: ["HV_SNAPSHOT_KEY": Self.key]).contains("is not encrypted, but a key was given"))
        // Two vCPUs into one.
        let smp = try Self.snapshot(folder, guest: guest, name: "smp", extra: ["--cpus", "2"])
        #expect(try Self.refusal(smp, ["--cpus", "1"]).contains("vCPUs: the snapshot has 2 vCPU(s); this VM has 1"))
        // Not a snapshot at all, and a half-written one (no state file).
        #expect(try Self.refusal(folder.path + "/nowhere").contains("no such snapshot directory"))
        let half = folder.appendingPathComponent("half").path
        try FileManager.default.createDirectory(atPath: half, withIntermediateDirectories: false)
        #expect(try Self.refusal(half).contains("not a complete snapshot"))
        // The good one still restores.
        let restored = try PackageExecutable.run(["run", "--restore", good, "--timeout", "1"])
        #expect(restored.status == 4 && restored.stderr.contains("hv: restored"), "\(restored.stderr)")
    }

    @Test("an encrypted snapshot: without its key, with another key, with a changed byte in a section, the manifest or a memory chunk, it is refused", .needsKVM)
    func encryptedRefusals() throws {
        let (folder, guest, keyFile) = try Self.fixture()
        defer { try? FileManager.default.removeItem(at: folder) }
        let good = try Self.snapshot(folder, guest: guest, name: "sealed", keyFile: keyFile)
        #expect(try Self.refusal(good).contains("is encrypted (AES-256-GCM); give its key"))
        let other = String(repeating: "fedcba9876543210", count: 4)
        #expect(try Self.refusal(good, environment: ["HV_SNAPSHOT_KEY": other]).contains("key: is not the key this snapshot was written with"))
        let layout = try Self.layout(good)
        let sections = try #require(layout.manifest["sections"] as? [[String: Any]])
        // Sealed, even an empty section has its nonce and tag to damage.
        for section in sections {
            let name = try #require(section["name"] as? String), offset = try #require(section["offset"] as? Int)
            let damaged = try Self.copy(good, to: "damaged")
            try Self.flipByte(in: damaged + "/state", at: layout.body + offset + 20)
            #expect(try Self.refusal(damaged, ["--key-file", keyFile]).contains("section \(name)"), "\(name)")
        }
        let manifest = try Self.copy(good, to: "manifest")
        try Self.flipByte(in: manifest + "/state", at: layout.manifestRange.lowerBound + 40)
        #expect(try Self.refusal(manifest, ["--key-file", keyFile]).contains("manifest"))
        let chunk = try Self.copy(good, to: "chunk")
        try Self.flipByte(in: chunk + "/memory", at: 100)
        #expect(try Self.refusal(chunk, ["--key-file", keyFile]).contains("does not authenticate under this key"))
        let restored = try PackageExecutable.run(["run", "--restore", good, "--key-file", keyFile, "--timeout", "1"])
        #expect(restored.status == 4 && restored.stderr.contains("decrypted"), "\(restored.stderr)")
    }

    @Test("kill -9 at random moments while a snapshot is being written: the directory holds the old snapshot or the new one, and it restores", .needsKVM)
    func killDuringWriting() throws {
        let (folder, guest, _) = try Self.fixture()
        defer { try? FileManager.default.removeItem(at: folder) }
        let directory = folder.appendingPathComponent("target").path
        var outcomes: [String: Int] = [:]
        var lastID: String?
        for round in 0..<8 {
            let run = try CountingRun(folder: folder, name: "round\(round)", arguments: ["run", guest, "--mem", "256M", "--timeout", "120"])
            #expect(run.waitForCounts(1), "\(run.errors)")
            let ctl = Process()
            ctl.executableURL = PackageExecutable.binDirectory.appendingPathComponent("hv")
            ctl.arguments = ["ctl", run.socket, "snapshot", directory]
            ctl.standardOutput = FileHandle.nullDevice
            ctl.standardError = FileHandle.nullDevice
            try ctl.run()
            // The first round completes (an old snapshot for the others to keep or replace);
            // then the kill lands anywhere from before the request to after the rename.
            if round == 0 { ctl.waitUntilExit() } else { usleep(UInt32.random(in: 0...400_000)) }
            run.kill9()
            ctl.waitUntilExit()
            let id = FileManager.default.fileExists(atPath: directory)
                ? try Self.layout(directory).manifest["id"] as? String : nil
            outcomes[id == nil ? "none" : id == lastID ? "old" : "new", default: 0] += 1
            if id != nil {
                let restored = try PackageExecutable.run(["run", "--restore", directory, "--timeout", "1", "--no-verify-memory"])
                #expect(restored.status == 4 && restored.stderr.contains("hv: restored"), "round \(round): \(restored.stderr)")
            }
            lastID = id ?? lastID
        }
        // No leftovers that look like snapshots other than temporary folders, which nothing restores.
        let names = try FileManager.default.contentsOfDirectory(atPath: folder.path).filter { $0.hasPrefix("target") }
        #expect(names.allSatisfy { $0 == "target" || $0.hasPrefix("target.tmp-") }, "\(names)")
        #expect(outcomes["none", default: 0] == 0, "the first round's snapshot completed, so the directory never goes away: \(outcomes)")
        print("kill -9 during snapshot writing: \(outcomes)")
    }
}

/// SHA-256 through the system's openssl-free path: Foundation has none, so the test computes
/// it with `sha256sum`.
enum SHA256Digest {
    static func of(_ data: Data) -> Data {
        let input = FileManager.default.temporaryDirectory.appendingPathComponent("hv-sha-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: input) }
        try? data.write(to: input)
        let result = try? PackageExecutable.run([input.path], executable: "/usr/bin/sha256sum")
        let hex = result?.stdout.split(separator: " ").first.map(String.init) ?? ""
        var bytes = Data()
        var index = hex.startIndex
        while index < hex.endIndex, let next = hex.index(index, offsetBy: 2, limitedBy: hex.endIndex) {
            bytes.append(UInt8(hex[index..<next], radix: 16) ?? 0)
            index = next
        }
        return bytes
    }
}

@Suite("Live migration: hv ctl migrate to hv run --incoming", .serialized)
struct MigrationTests {
    static func freePort() -> UInt16 { UInt16.random(in: 20_000...60_000) }

    /// A TCP listener on 127.0.0.1 and its port.
    static func listener() throws -> (UInt16, Int32) {
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard descriptor >= 0, bound == 0, listen(descriptor, 1) == 0 else { throw SnapshotTests.SnapshotTestError(message: "no listener: errno \(errno)") }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(descriptor, $0, &length) } }
        return (UInt16(bigEndian: address.sin_port), descriptor)
    }

    @Test("a counting guest moves to another hv process while it runs, plain and encrypted: the count goes on with no gap and no repeat, the source stops",
          .needsKVM, arguments: [false, true])
    func migrateWhileCounting(encrypted: Bool) throws {
        let (folder, guest, keyFile) = try SnapshotTests.fixture()
        defer { try? FileManager.default.removeItem(at: folder) }
        let keyArguments = encrypted ? ["--key-file", keyFile] : []
        let address = "127.0.0.1:\(Self.freePort())"
        let destination = try CountingRun(folder: folder, name: "destination", arguments: ["run", "--incoming", address, "--timeout", "60"] + keyArguments)
        defer { if destination.process.isRunning { destination.kill9() } }
        let source = try CountingRun(folder: folder, name: "source", arguments: ["run", guest, "--mem", "64M", "--timeout", "120"] + keyArguments)
        defer { if source.process.isRunning { source.kill9() } }
        #expect(source.waitForCounts(5), "\(source.errors)")
        // The destination listens once it printed so.
        let deadline = Date(timeIntervalSinceNow: 30)
        while !destination.errors.contains("waiting for a migration"), Date() < deadline { usleep(20_000) }
        let migration = try source.ctl(["migrate", address])
        #expect(migration.status == 0, "\(migration.stderr) source: \(source.errors) destination: \(destination.errors)")
        #expect(migration.stdout.contains("migrated to \(address)"), "\(migration.stdout)")
        source.process.waitUntilExit()
        #expect(source.process.terminationStatus == 0, "\(source.errors)")
        #expect(source.errors.contains("the guest runs at the destination now"), "\(source.errors)")
        #expect(destination.waitForCounts(3), "\(destination.errors)")
        #expect(destination.errors.contains("hv: received the VM"), "\(destination.errors)")
        let joined = (source.output + destination.output).split(separator: "\n", omittingEmptySubsequences: false).dropLast()
        let counts = joined.compactMap { UInt64($0, radix: 16) }
        #expect(counts.count == joined.count, "a line that is not a count: \(joined.suffix(10))")
        for (previous, next) in zip(counts, counts.dropFirst()) where next != previous + 1 {
            Issue.record("the count jumped from \(previous) to \(next) across the migration")
            break
        }
        print("migration (\(encrypted ? "encrypted" : "plain")): \(migration.stdout.split(separator: "\n").last ?? "")")
    }

    @Test("a guest that rewrites 256 pages every count (and checks each held its last count) migrates over several pre-copy rounds, nothing stale on arrival",
          .needsKVM)
    func migrateAWritingGuest() throws {
        let (folder, _, _) = try SnapshotTests.fixture()
        defer { try? FileManager.default.removeItem(at: folder) }
        let guest = folder.appendingPathComponent("writer.bin")
        try Data(GuestProgram.counter(delay: 2_000, dirtyPages: 256).code).write(to: guest)
        let address = "127.0.0.1:\(Self.freePort())"
        let destination = try CountingRun(folder: folder, name: "destination", arguments: ["run", "--incoming", address, "--timeout", "60"])
        defer { if destination.process.isRunning { destination.kill9() } }
        let source = try CountingRun(folder: folder, name: "source", arguments: ["run", guest.path, "--mem", "64M", "--timeout", "120"])
        defer { if source.process.isRunning { source.kill9() } }
        #expect(source.waitForCounts(3), "\(source.errors)")
        let deadline = Date(timeIntervalSinceNow: 30)
        while !destination.errors.contains("waiting for a migration"), Date() < deadline { usleep(20_000) }
        // The progress as server-sent events, read while the migration runs.
        let events = Mutex<String>("")
        let reader = Thread { [socket = source.socket] in events.withLock { $0 = Self.readEventStream(socket, path: "/v1/vm/migration/events") } }
        reader.start()
        usleep(200_000)
        // A pause of at most 0.05 ms cannot hold 256 pages: pre-copy goes round after round.
        let migration = try source.ctl(["migrate", address, "--max-downtime", "0.05"])
        #expect(migration.status == 0, "\(migration.stderr) \(source.errors) \(destination.errors)")
        let summary = migration.stdout.split(separator: "\n").last.map(String.init) ?? ""
        let rounds = summary.firstMatch(of: #/: (\d+) rounds/#).flatMap { Int($0.1) } ?? 0
        #expect(rounds >= 2, "\(migration.stdout)")
        #expect(destination.waitForCounts(3), "\(destination.errors)")
        let joined = (source.output + destination.output).split(separator: "\n", omittingEmptySubsequences: false).dropLast()
        #expect(!joined.contains("stale"), "a page arrived stale: \(joined.suffix(5))")
        let counts = joined.compactMap { UInt64($0, radix: 16) }
        #expect(counts.count == joined.count && counts.count >= 6, "\(joined.suffix(10))")
        for (previous, next) in zip(counts, counts.dropFirst()) where next != previous + 1 {
            Issue.record("the count jumped from \(previous) to \(next) across the migration")
            break
        }
        print("migration of a writing guest: \(migration.stdout.split(separator: "\n").last ?? "")")
        let deadlineForEvents = Date(timeIntervalSinceNow: 10)
        while !reader.isFinished, Date() < deadlineForEvents { usleep(20_000) }
        let stream = events.withLock { $0 }
        let statuses = stream.components(separatedBy: "\n").filter { $0.hasPrefix("data: ") }.compactMap {
            try? JSONDecoder().decode(MigrationStatus.self, from: Data($0.dropFirst(6).utf8))
        }
        #expect(stream.contains("event: migration"), "\(stream.prefix(2000))")
        #expect(statuses.contains { $0.phase == "pre-copy" && $0.round >= 1 && $0.pagesSent > 0 }, "\(stream.prefix(2000))")
        #expect(statuses.last?.phase == "done", "the stream ends with the migration: \(stream.suffix(1000))")
    }

    @Test("a VM with a virtio-blk disk, a virtio-rng and a vTPM: snapshotted, killed, restored (the TPM's state and the disk's lock go with it), then migrated to a third hv on this host, which takes the disk and the TPM directory over",
          .needsKVM)
    func devicesMoveWithTheVM() throws {
        let (folder, guest, _) = try SnapshotTests.fixture()
        defer { try? FileManager.default.removeItem(at: folder) }
        let disk = folder.appendingPathComponent("disk.img").path
        FileManager.default.createFile(atPath: disk, contents: Data(count: 1 << 20))
        let tpm = folder.appendingPathComponent("tpm").path
        let devices = ["--irqchip", "kernel", "--disk", disk, "--rng", "--tpm", tpm]
        let first = try CountingRun(folder: folder, name: "first", arguments: ["run", guest, "--mem", "32M", "--timeout", "120"] + devices)
        defer { if first.process.isRunning { first.kill9() } }
        #expect(first.waitForCounts(3), "\(first.errors)")
        #expect(try first.ctl(["pause"]).status == 0)
        let snapshotDirectory = folder.appendingPathComponent("snap").path
        let snapshot = try first.ctl(["snapshot", snapshotDirectory])
        #expect(snapshot.status == 0, "\(snapshot.stderr); hv run: \(first.errors)")
        let before = first.output
        first.kill9()
        // Each device's part is a section of its own.
        let state = String(decoding: try #require(FileManager.default.contents(atPath: snapshotDirectory + "/state")), as: UTF8.self)
        for device in ["device.virtio-blk@mmio:", "device.virtio-rng@mmio:", "device.tpm-tis@mmio:0xfed40000"] {
            #expect(state.contains(device), "no section \(device)")
        }
        let second = try CountingRun(folder: folder, name: "second", arguments: ["run", "--restore", snapshotDirectory, "--timeout", "60"])
        defer { if second.process.isRunning { second.kill9() } }
        #expect(second.waitForCounts(2), "\(second.errors)")
        // The restored VM holds the disk and the TPM directory: another opener is refused.
        #expect(throws: VirtioBlockError.self) { try VirtioBlock(path: disk) }
        #expect(throws: TPMError.self) { try TPMStateDirectory(path: tpm) }
        let address = "127.0.0.1:\(Self.freePort())"
        let third = try CountingRun(folder: folder, name: "third", arguments: ["run", "--incoming", address, "--timeout", "60"])
        defer { if third.process.isRunning { third.kill9() } }
        let deadline = Date(timeIntervalSinceNow: 30)
        while !third.errors.contains("waiting for a migration"), Date() < deadline { usleep(20_000) }
        let migration = try second.ctl(["migrate", address])
        #expect(migration.status == 0, "\(migration.stderr) source: \(second.errors) destination: \(third.errors)")
        second.process.waitUntilExit()
        #expect(third.waitForCounts(2), "\(third.errors)")
        // The destination took the disk's lock and the TPM directory's once the source let go.
        #expect(throws: VirtioBlockError.self) { try VirtioBlock(path: disk) }
        #expect(throws: TPMError.self) { try TPMStateDirectory(path: tpm) }
        #expect(FileManager.default.fileExists(atPath: tpm + "/permanent.state"))
        // One run of counts across the three processes (a line cut by a pause is finished after it).
        let joined = (before + second.output + third.output).split(separator: "\n", omittingEmptySubsequences: false).dropLast()
        let counts = joined.compactMap { UInt64($0, radix: 16) }
        #expect(counts.count == joined.count && counts.count >= 7, "\(joined.suffix(10))")
        #expect(zip(counts, counts.dropFirst()).allSatisfy { $1 == $0 + 1 }, "\(counts)")
        #expect(try third.ctl(["stop"]).status == 0)
        third.process.waitUntilExit()
        #expect(third.process.terminationStatus == 0, "\(third.errors)")
    }

    /// GET `path` on the Unix socket `socket` (HTTP/1.1, chunked or not) and everything the
    /// server sends until it closes the connection (at most 60 s).
    static func readEventStream(_ socket: String, path: String) -> String {
        let fd = Foundation.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { buffer in for (i, byte) in socket.utf8.enumerated() { buffer[i] = byte } }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard connected == 0 else { return "connect failed: \(errno)" }
        let request = "GET \(path) HTTP/1.1\r\nHost: hv\r\nConnection: close\r\n\r\n"
        _ = request.withCString { send(fd, $0, strlen($0), 0) }
        var received: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let deadline = Date(timeIntervalSinceNow: 60)
        while Date() < deadline, poll(&entry, 1, 1000) >= 0 {
            guard entry.revents != 0 else { continue }
            let count = recv(fd, &buffer, buffer.count, 0)
            guard count > 0 else { break }
            received += buffer[..<count]
        }
        return String(decoding: received, as: UTF8.self)
    }

    @Test("a migration that cannot finish leaves the source running: no destination, a destination with another key, a destination that drops the stream half-way", .needsKVM)
    func failedMigrationsLeaveTheSourceRunning() throws {
        let (folder, guest, keyFile) = try SnapshotTests.fixture()
        defer { try? FileManager.default.removeItem(at: folder) }
        let source = try CountingRun(folder: folder, name: "source", arguments: ["run", guest, "--mem", "32M", "--timeout", "120", "--key-file", keyFile])
        defer { if source.process.isRunning { source.kill9() } }
        #expect(source.waitForCounts(3), "\(source.errors)")
        func stillCounting() -> Bool {
            let before = source.counts.count
            let deadline = Date(timeIntervalSinceNow: 10)
            while source.counts.count < before + 2, Date() < deadline { usleep(20_000) }
            return source.counts.count >= before + 2 && source.process.isRunning
        }
        // Nobody listening.
        let nowhere = try source.ctl(["migrate", "127.0.0.1:\(Self.freePort())"])
        #expect(nowhere.status != 0 && nowhere.stderr.contains("nothing accepts a migration there"), "\(nowhere.stderr)")
        #expect(stillCounting())
        // A destination with another key refuses at the preamble.
        let other = folder.appendingPathComponent("other.key").path
        FileManager.default.createFile(atPath: other, contents: Data(String(repeating: "ab", count: 32).utf8), attributes: [.posixPermissions: 0o600])
        let address = "127.0.0.1:\(Self.freePort())"
        let wrong = try CountingRun(folder: folder, name: "wrong", arguments: ["run", "--incoming", address, "--key-file", other])
        defer { if wrong.process.isRunning { wrong.kill9() } }
        var deadline = Date(timeIntervalSinceNow: 30)
        while !wrong.errors.contains("waiting for a migration"), Date() < deadline { usleep(20_000) }
        let refused = try source.ctl(["migrate", address])
        #expect(refused.status == 1 && refused.stderr.contains("the destination's key is not the source's"), "\(refused.stderr)")
        wrong.process.waitUntilExit()
        #expect(wrong.process.terminationStatus == 64, "\(wrong.errors)")
        #expect(stillCounting())
        // A destination that takes the stream and drops it half-way (a host that died).
        let (dropPort, listener) = try Self.listener()
        let dropper = Thread {
            let connection = accept(listener, nil, nil)
            var buffer = [UInt8](repeating: 0, count: 4096)
            _ = read(connection, &buffer, 8 + 5 + 16 + 32)          // the preamble
            _ = write(connection, [UInt8](repeating: 0, count: 5), 5)  // "go on"
            _ = read(connection, &buffer, buffer.count)               // some of the stream
            close(connection)
            close(listener)
        }
        dropper.start()
        let broken = try source.ctl(["migrate", "127.0.0.1:\(dropPort)"])
        #expect(broken.status == 1 && broken.stderr.contains("the connection"), "\(broken.stdout) \(broken.stderr)")
        #expect(stillCounting(), "\(source.errors)")
        #expect(try source.ctl(["info"]).stdout.contains("state      running"))
    }
}
