// Runs GNU binutils (as, ld, nm, objcopy) so encodings can be compared with a reference
// assembler at test time. Tests that need it are disabled, with a reason, where it is missing.

import Foundation
import HVGuest

/// One instruction sequence written twice: as GNU `as` Intel-syntax text and as assembler calls.
/// In `gas`, "{L}" is replaced by a prefix unique to the case, so labels do not collide.
struct EncodingCase: Sendable {
    var gas: String
    var build: @Sendable (inout X86Assembler) -> Void
    var location: String

    init(_ gas: String, file: String = #fileID, line: Int = #line,
         _ build: @escaping @Sendable (inout X86Assembler) -> Void)
    {
        self.gas = gas
        self.build = build
        self.location = "\(file):\(line)"
    }
}

enum GNUToolchain {
    static let tools = ["/usr/bin/as", "/usr/bin/ld", "/usr/bin/nm", "/usr/bin/objcopy"]

    /// True when every tool is installed.
    static var isAvailable: Bool {
        tools.allSatisfy { FileManager.default.isExecutableFile(atPath: $0) }
    }

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// Assembles every case in one source file, links it at `origin` and returns each case's bytes
    /// with the address it was linked at.
    static func assemble(_ cases: [EncodingCase], bits: CodeSize, origin: UInt64) throws -> [(address: UInt64, bytes: [UInt8])] {
        let directive = switch bits {
        case .bits16: ".code16"
        case .bits32: ".code32"
        case .bits64: ".code64"
        }
        var source = ".intel_syntax noprefix\n\(directive)\n.text\n.globl _start\n_start:\n"
        for (index, testCase) in cases.enumerated() {
            let body = testCase.gas.replacingOccurrences(of: "{L}", with: "c\(index)_")
            source += "c\(index)_start:\n\(body)\nc\(index)_end:\n"
        }

        let directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("hvguest-gas-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let sourcePath = directory.appendingPathComponent("cases.s").path
        let objectPath = directory.appendingPathComponent("cases.o").path
        let linkedPath = directory.appendingPathComponent("cases.elf").path
        let binaryPath = directory.appendingPathComponent("cases.bin").path
        try source.write(toFile: sourcePath, atomically: true, encoding: .utf8)

        let is64 = bits == .bits64
        _ = try run("/usr/bin/as", [is64 ? "--64" : "--32", "-o", objectPath, sourcePath])
        _ = try run("/usr/bin/ld", (is64 ? [] : ["-m", "elf_i386"])
            + ["-Ttext=0x" + String(origin, radix: 16), "-e", "_start", "-o", linkedPath, objectPath])
        _ = try run("/usr/bin/objcopy", ["-O", "binary", "-j", ".text", linkedPath, binaryPath])
        let symbols = try run("/usr/bin/nm", [linkedPath])
        let image = [UInt8](try Data(contentsOf: URL(fileURLWithPath: binaryPath)))

        var addresses: [String: UInt64] = [:]
        for line in symbols.split(separator: "\n") {
            let fields = line.split(separator: " ")
            if fields.count == 3, let value = UInt64(fields[0], radix: 16) { addresses[String(fields[2])] = value }
        }
        guard let textStart = addresses["_start"] else { throw Failure(description: "no _start in nm output") }
        return try cases.indices.map { index in
            guard let start = addresses["c\(index)_start"], let end = addresses["c\(index)_end"] else {
                throw Failure(description: "case \(index) has no start/end symbols")
            }
            return (start, Array(image[Int(start - textStart)..<Int(end - textStart)]))
        }
    }

    /// Runs a tool and returns its standard output; a non-zero exit throws with its stderr.
    static func run(_ tool: String, _ arguments: [String]) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: tool)
        process.arguments = arguments
        let output = Pipe()
        let errors = Pipe()
        process.standardOutput = output
        process.standardError = errors
        try process.run()
        let outputData = output.fileHandleForReading.readDataToEndOfFile()
        let errorData = errors.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw Failure(description: "\(tool) \(arguments.joined(separator: " ")) failed:\n"
                + String(decoding: errorData, as: UTF8.self))
        }
        return String(decoding: outputData, as: UTF8.self)
    }
}

func hexString(_ bytes: [UInt8]) -> String {
    bytes.map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }
        .joined(separator: " ")
}
