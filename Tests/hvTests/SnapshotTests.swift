// Snapshots and restore end to end (Documentation/Snapshots.md): a guest that counts is
// snapshotted through `hv ctl`, killed, and continues from the same count in a new `hv run
// --restore` process; every kind of damage to a snapshot is refused; kill -9 during writing
// never leaves a snapshot that restores half.
import Foundation
import HVCore
import HVTestSupport
import Testing

enum CountingGuest {
    /// Long-mode code that keeps a counter in RAM at 0x300000 and prints it on COM1 as 16
    /// hexadecimal digits and a newline, then spins a while, forever.
    static func image(delay: Int32 = 20_000) throws -> [UInt8] {
        try GuestProgram.longMode { a in
            let again = a.label(), digit = a.label(), letter = a.label(), print = a.label(), spin = a.label()
            a.mov(Register16.dx, 0x3F8)
            a.bind(again)
            a.mov(Register64.rcx, Memory.absolute(0x30_0000))
            a.inc(Register64.rcx)
            a.mov(Memory.absolute(0x30_0000), Register64.rcx)
            a.mov(Register64.rbx, Register64.rcx)
            a.mov(Register32.esi, 16)
            a.bind(digit)
            a.mov(Register64.rax, Register64.rbx)
            a.shr(Register64.rax, 60)
            a.add(Register8.al, 0x30)
            a.cmp(Register8.al, 0x3A)
            a.jb(print)
            a.bind(letter)
            a.add(Register8.al, 0x27)  // '0' + 10 + 0x27 = 'a'
            a.bind(print)
            a.out(Register16.dx, Register8.al)
            a.shl(Register64.rbx, 4)
            a.dec(Register32.esi)
            a.jnz(digit)
            a.mov(Register8.al, 0x0A)
            a.out(Register16.dx, Register8.al)
            a.mov(Register32.r8d, Immediate(delay))
            a.bind(spin)
            a.dec(Register32.r8d)
            a.jnz(spin)
            a.jmp(again)
        }.code
    }
}

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
        try Data(CountingGuest.image()).write(to: guest)
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
}
