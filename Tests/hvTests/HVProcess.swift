// Runs the built `hv` (and other package executables) as a subprocess, the way a user would.
import Foundation
import HVTestSupport
import Testing

/// The result of running a package executable.
struct ProcessResult {
    var status: Int32
    var stdout: String
    var stderr: String
    /// True when the process ended by a signal (a crash) rather than exiting.
    var crashed: Bool
}

enum PackageExecutable {
    /// The build folder holding the test bundle and the package's executables.
    static let binDirectory: URL = {
        let candidates = [URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent(),
                          Bundle.main.bundleURL.deletingLastPathComponent(), Bundle.main.bundleURL]
        return candidates.first { FileManager.default.isExecutableFile(atPath: $0.appendingPathComponent("hv").path) }
            ?? candidates[0]
    }()

    /// Starts `executable` with `arguments` and `environment` added to this process's, no input,
    /// and pipes for its output and errors.
    static func start(_ executable: URL, _ arguments: [String], environment: [String: String] = [:],
                      in folder: URL? = nil) throws -> (process: Process, out: Pipe, err: Pipe) {
        let process = Process()
        process.executableURL = executable
        process.arguments = arguments
        if let folder { process.currentDirectoryURL = folder }
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = FileHandle.nullDevice
        try process.run()
        return (process, out, err)
    }

    /// Runs `name` (default `hv`; a path from / for any other program) with `arguments` in
    /// `folder` (default this process's), feeding no input, and waits for it; `whileRunning`,
    /// when given, is called with the process every 10 ms until it ends (to sample /proc).
    static func run(_ arguments: [String], executable name: String = "hv", environment: [String: String] = [:],
                    in folder: URL? = nil, whileRunning: ((Process) -> Void)? = nil) throws -> ProcessResult {
        let executable = name.hasPrefix("/") ? URL(fileURLWithPath: name) : binDirectory.appendingPathComponent(name)
        let (process, out, err) = try start(executable, arguments, environment: environment, in: folder)
        // Drain stderr on another thread while reading stdout (on a third one when this thread
        // samples), so a chatty child cannot block on a full pipe.
        let errorReader = Thread { [err] in
            let data = err.fileHandleForReading.readDataToEndOfFile()
            ErrorBox.shared.store(data, for: ObjectIdentifier(err))
        }
        errorReader.start()
        let outData: Data
        if let whileRunning {
            let outputReader = Thread { [out] in
                ErrorBox.shared.store(out.fileHandleForReading.readDataToEndOfFile(), for: ObjectIdentifier(out))
            }
            outputReader.start()
            while process.isRunning {
                whileRunning(process)
                usleep(10_000)
            }
            outData = ErrorBox.shared.take(for: ObjectIdentifier(out))
        } else {
            outData = out.fileHandleForReading.readDataToEndOfFile()
        }
        process.waitUntilExit()
        let errData = ErrorBox.shared.take(for: ObjectIdentifier(err))
        return ProcessResult(status: process.terminationStatus, stdout: String(decoding: outData, as: UTF8.self),
                             stderr: String(decoding: errData, as: UTF8.self),
                             crashed: process.terminationReason == .uncaughtSignal)
    }

    /// Runs `name` with `arguments` until its standard output holds every string of `markers`
    /// or `timeout` seconds pass, then ends it with SIGTERM: for guests, such as a real Linux
    /// kernel, that would run far longer than the facts a test needs. `status` is the child's
    /// (15 when it was ended).
    static func runUntil(_ arguments: [String], markers: [String], timeout: Double,
                         executable name: String = "hv", in folder: URL? = nil) throws -> ProcessResult {
        let (process, out, err) = try start(binDirectory.appendingPathComponent(name), arguments, in: folder)
        let output = StreamBox()
        let outputReader = Thread { [out] in
            while true {
                let chunk = out.fileHandleForReading.availableData
                if chunk.isEmpty { break }
                output.append(chunk)
            }
            output.finish()
        }
        outputReader.start()
        let errorReader = Thread { [err] in
            ErrorBox.shared.store(err.fileHandleForReading.readDataToEndOfFile(), for: ObjectIdentifier(err))
        }
        errorReader.start()
        let deadline = Date(timeIntervalSinceNow: timeout)
        while process.isRunning, Date() < deadline {
            let text = output.text
            if markers.allSatisfy(text.contains) { break }
            Thread.sleep(forTimeInterval: 0.1)
        }
        if process.isRunning { process.terminate() }
        process.waitUntilExit()
        output.waitForEnd()
        let errData = ErrorBox.shared.take(for: ObjectIdentifier(err))
        return ProcessResult(status: process.terminationStatus, stdout: output.text,
                             stderr: String(decoding: errData, as: UTF8.self),
                             crashed: process.terminationReason == .uncaughtSignal && process.terminationStatus != SIGTERM)
    }

    /// A fresh temporary directory for files a test writes.
    static func temporaryDirectory() throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("hv-tests-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }
}

/// Standard output as it arrives, shared between a reader thread and the test thread.
final class StreamBox: @unchecked Sendable {
    private let condition = NSCondition()
    private var data = Data()
    private var ended = false

    func append(_ chunk: Data) {
        condition.lock()
        data.append(chunk)
        condition.unlock()
    }

    func finish() {
        condition.lock()
        ended = true
        condition.broadcast()
        condition.unlock()
    }

    func waitForEnd() {
        condition.lock()
        while !ended { condition.wait() }
        condition.unlock()
    }

    var text: String {
        condition.lock()
        defer { condition.unlock() }
        return String(decoding: data, as: UTF8.self)
    }
}

/// Hands a reader thread's data back to the test thread.
final class ErrorBox: @unchecked Sendable {
    static let shared = ErrorBox()
    private let condition = NSCondition()
    private var values: [ObjectIdentifier: Data] = [:]

    func store(_ data: Data, for key: ObjectIdentifier) {
        condition.lock()
        values[key] = data
        condition.broadcast()
        condition.unlock()
    }

    func take(for key: ObjectIdentifier) -> Data {
        condition.lock()
        defer { condition.unlock() }
        while values[key] == nil { condition.wait() }
        return values.removeValue(forKey: key)!
    }
}

/// Whether /dev/kvm can be opened by this user, and why not.
enum KVMDevice {
    static let unavailableReason: String? = {
        let fd = open("/dev/kvm", O_RDWR)
        if fd >= 0 {
            close(fd)
            return nil
        }
        return "/dev/kvm cannot be opened: \(String(cString: strerror(errno)))"
    }()
}

extension Trait where Self == ConditionTrait {
    /// Skips a test, saying why, when /dev/kvm is missing or not permitted; with
    /// HV_REQUIRE_KVM=1 (set by .ci/run where /dev/kvm exists) it runs and fails instead.
    static var needsKVM: Self {
        .enabled(if: KVMDevice.unavailableReason == nil || Requirement.kvm,
                 "skipped: \(KVMDevice.unavailableReason ?? "")")
    }
}
