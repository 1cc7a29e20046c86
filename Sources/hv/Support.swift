// Small pieces the subcommands share: size and address parsing, serial targets, errors.
import ArgumentParser
import Foundation
import HVCore

/// Writes one line to standard error.
func printError(_ message: String) {
    FileHandle.standardError.write(Data((message + "\n").utf8))
}

/// A file error in words, as `ls` or `cat` would say it ("No such file or directory", "Is a
/// directory", "Permission denied"): the POSIX error under Foundation's wrapper, whose own text
/// ("The operation could not be completed. (NSCocoaErrorDomain error 256.)") says nothing.
func describeFileError(_ error: Error, path: String) -> String {
    let wrapped = error as NSError
    var isDirectory: ObjCBool = false
    if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue {
        return String(cString: strerror(EISDIR))
    }
    if let underlying = wrapped.userInfo[NSUnderlyingErrorKey] as? NSError, underlying.domain == NSPOSIXErrorDomain {
        return String(cString: strerror(Int32(underlying.code)))
    }
    if wrapped.domain == NSPOSIXErrorDomain { return String(cString: strerror(Int32(wrapped.code))) }
    switch CocoaError.Code(rawValue: wrapped.code) {
    case .fileNoSuchFile, .fileReadNoSuchFile: return String(cString: strerror(ENOENT))
    case .fileReadNoPermission, .fileWriteNoPermission: return String(cString: strerror(EACCES))
    default: return wrapped.localizedDescription
    }
}

/// Exit statuses of `hv run` (Documentation/GettingStarted.md lists them).
enum ExitStatus {
    /// The guest halted.
    static let halted: Int32 = 0
    /// The guest crashed: triple fault, emulation failure, entry failure, unmapped access.
    static let guestCrashed: Int32 = 2
    /// The VM hit --timeout or --max-exits.
    static let limitReached: Int32 = 4
    /// Bad command line or input file (sysexits EX_USAGE / EX_DATAERR style).
    static let usage: Int32 = 64
    /// The host could not run the VM (no KVM, a backend call failed).
    static let hostFailure: Int32 = 70

    /// The status for a VM stop: the debug-exit rule `(v << 1) | 1` (QEMU's isa-debug-exit),
    /// 0 for a halt, even codes for the rest.
    static func forStop(_ reason: StopReason) -> Int32 {
        switch reason {
        case .debugExit(let code): DebugExitDevice.exitStatus(forCode: code)
        case .halted, .requested, .systemEvent(.shutdown): halted
        case .timeout, .exitLimit: limitReached
        case .backendFailure: hostFailure
        default: guestCrashed
        }
    }
}

/// A byte count written as 4096, 64K, 2M, 1G (binary units; KiB/MiB/GiB also accepted).
struct ByteSize: ExpressibleByArgument, CustomStringConvertible {
    var bytes: UInt64
    /// The text the user typed ("0x1001", "64K"), for messages; nil for a default.
    var typed: String?

    init(bytes: UInt64) { self.bytes = bytes }

    init?(argument: String) {
        typed = argument
        let text = argument.trimmingCharacters(in: .whitespaces).uppercased()
        // Hex (0x1000000) takes no unit: B is a hex digit.
        if text.hasPrefix("0X") {
            guard let value = UInt64(text.dropFirst(2), radix: 16) else { return nil }
            bytes = value
            return
        }
        let units: [(String, UInt64)] = [("KIB", 1 << 10), ("MIB", 1 << 20), ("GIB", 1 << 30), ("TIB", 1 << 40),
                                         ("KB", 1 << 10), ("MB", 1 << 20), ("GB", 1 << 30), ("TB", 1 << 40),
                                         ("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30), ("T", 1 << 40), ("B", 1)]
        var number = Substring(text)
        var multiplier: UInt64 = 1
        for (suffix, value) in units where text.hasSuffix(suffix) {
            number = text.dropLast(suffix.count)
            multiplier = value
            break
        }
        guard let value = UInt64(number.trimmingCharacters(in: .whitespaces)) else { return nil }
        let (product, overflow) = value.multipliedReportingOverflow(by: multiplier)
        guard !overflow else { return nil }
        bytes = product
    }

    var description: String {
        if bytes >= 1 << 30, bytes % (1 << 30) == 0 { return "\(bytes >> 30) GiB" }
        if bytes >= 1 << 20, bytes % (1 << 20) == 0 { return "\(bytes >> 20) MiB" }
        if bytes >= 1 << 10, bytes % (1 << 10) == 0 { return "\(bytes >> 10) KiB" }
        return "\(bytes) bytes"
    }

    static var defaultCompletionKind: CompletionKind { .default }
}

/// A guest address written in hex (0x7c00) or decimal.
struct Address: ExpressibleByArgument {
    var value: UInt64
    init(_ value: UInt64) { self.value = value }
    init?(argument: String) {
        let text = argument.lowercased()
        if text.hasPrefix("0x") {
            guard let v = UInt64(text.dropFirst(2), radix: 16) else { return nil }
            value = v
        } else {
            guard let v = UInt64(text) else { return nil }
            value = v
        }
    }
}

/// Where the guest's COM1 output goes: `stdio` or `file:PATH`.
enum SerialTarget: ExpressibleByArgument, Equatable {
    case stdio
    case file(String)

    init?(argument: String) {
        if argument == "stdio" {
            self = .stdio
        } else if argument.hasPrefix("file:"), argument.count > 5 {
            self = .file(String(argument.dropFirst(5)))
        } else {
            return nil
        }
    }
}

/// Runs `body`, turning HV errors into one line on stderr and the right exit status.
func reportingErrors<T>(_ body: () throws(HVError) -> T) throws(ExitCode) -> T {
    do {
        return try body()
    } catch {
        printError("hv: error: \(error)")
        throw ExitCode(error.isUsageError ? ExitStatus.usage : ExitStatus.hostFailure)
    }
}

extension HVError {
    /// Errors caused by what the user asked for, rather than by the host.
    var isUsageError: Bool {
        switch self {
        case .configuration, .image, .device, .snapshot: true
        case .memory(.outOfBounds): true
        default: false
        }
    }
}

/// Puts COM1 (a 16550 UART writing to `serial`) and the debug-exit port (0xF4) on the bus.
func attachConsole<B: Backend>(to machine: Machine<B>, serial: SerialTarget) throws(HVError) -> UART16550 {
    let output: SerialOutput
    switch serial {
    case .stdio: output = .standardOutput
    case .file(let path):
        do { output = try .file(path) } catch {
            throw .configuration(ConfigurationError(field: "--serial", value: path, expected: "a writable file (\(error))"))
        }
    }
    let uart = UART16550(output: output)
    do throws(DeviceBusError) {
        try machine.devices.register(uart, port: .com1, count: UART16550.portCount)
        try machine.devices.register(DebugExitDevice(), port: .debugExit, count: 4)
    } catch { throw .device(error) }
    return uart
}

/// `--pin-vcpu VCPU=CPUS`: a vCPU and the host CPUs its thread may run on, CPUS as taskset's
/// lists ("2", "0-1,3").
struct VCPUPinning {
    var vcpu: Int
    var cpus: [Int]

    init(parsing text: String) throws {
        let parts = text.split(separator: "=", maxSplits: 1).map(String.init)
        guard parts.count == 2, let vcpu = Int(parts[0]), vcpu >= 0 else {
            throw ValidationError("--pin-vcpu \(text): expected VCPU=CPUS, e.g. 0=2 or 1=0-1,3")
        }
        var cpus: [Int] = []
        for item in parts[1].split(separator: ",", omittingEmptySubsequences: false) {
            let bounds = item.split(separator: "-", maxSplits: 1, omittingEmptySubsequences: false).map { Int($0) }
            guard let low = bounds.first ?? nil, let high = bounds.count == 2 ? bounds[1] : low, low >= 0, low <= high,
                  high < VirtualMachineConfiguration.maximumHostCPU else {
                throw ValidationError("--pin-vcpu \(text): '\(item)' is not a CPU or a range of CPUs (0-\(VirtualMachineConfiguration.maximumHostCPU - 1))")
            }
            cpus += Array(low...high)
        }
        self.vcpu = vcpu
        self.cpus = Array(Set(cpus)).sorted()
    }

    /// This process's Cpus_allowed_list (/proc/self/status), as the kernel writes it.
    static func allowedList() -> String? {
        guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("Cpus_allowed_list:") }) else { return nil }
        return line.dropFirst("Cpus_allowed_list:".count).trimmingCharacters(in: .whitespaces)
    }

    /// The CPUs this process may run on, nil when /proc does not say.
    static func allowedCPUs() -> Set<Int>? {
        guard let list = allowedList(), let parsed = try? VCPUPinning(parsing: "0=" + list) else { return nil }
        return Set(parsed.cpus)
    }
}
