// Runs the built `hv` (and other package executables) as a subprocess, the way a user would.
import Foundation
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

    /// Runs `name` (default `hv`) with `arguments`, feeding no input, and waits for it.
    static func run(_ arguments: [String], executable name: String = "hv", environment: [String: String] = [:]) throws -> ProcessResult {
        let process = Process()
        process.executableURL = binDirectory.appendingPathComponent(name)
        process.arguments = arguments
        var env = ProcessInfo.processInfo.environment
        env.merge(environment) { $1 }
        process.environment = env
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = FileHandle.nullDevice
        try process.run()
        // Drain stderr on another thread while reading stdout, so a chatty child cannot block
        // on a full pipe.
        let errorReader = Thread { [err] in
            let data = err.fileHandleForReading.readDataToEndOfFile()
            ErrorBox.shared.store(data, for: ObjectIdentifier(err))
        }
        errorReader.start()
        let outData = out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let errData = ErrorBox.shared.take(for: ObjectIdentifier(err))
        return ProcessResult(status: process.terminationStatus, stdout: String(decoding: outData, as: UTF8.self),
                             stderr: String(decoding: errData, as: UTF8.self),
                             crashed: process.terminationReason == .uncaughtSignal)
    }

    /// A fresh temporary directory for files a test writes.
    static func temporaryDirectory() throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("hv-tests-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
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
    /// Skips a test, saying why, when /dev/kvm is missing or not permitted.
    static var needsKVM: Self {
        .enabled(if: KVMDevice.unavailableReason == nil, "skipped: \(KVMDevice.unavailableReason ?? "")")
    }
}
