// `hv vmx`: Intel VMX from capability MSRs to a VMCS that passes VM entry, with HVModel's VMX
// model (Sources/HVModel/VMX). Section numbers follow the current SDM (VM entries: chapter 27).
import ArgumentParser
import Foundation
import HVCore

struct VMXCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vmx",
        abstract: "Decode VMX capabilities, plan VMCS controls for a CPU, explain VM exits (Intel SDM Vol. 3C/3D).",
        discussion: """
            Start with `hv vmx profiles`, then `hv vmx caps --profile NAME` to read what a CPU \
            allows, and `hv vmx plan --profile NAME --enable ept,vpid` to turn wishes into control \
            values with the VM-entry verdict. Documentation/VMX.md is a guided tour.
            """,
        subcommands: [VMXProfilesCommand.self, VMXCapsCommand.self, VMXPlanCommand.self, VMXExplainExitCommand.self])
}

/// Where the capability MSRs come from: a built-in profile or a `MSR VALUE` text file.
struct VMXSourceOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp(
        "A built-in CPU profile: \(VMXProfile.all.map(\.name).joined(separator: ", ")) (see `hv vmx profiles`).",
        valueName: "name"))
    var profile: String?

    @Option(name: .long, help: ArgumentHelp(
        "A text file of `MSR VALUE` hex pairs, one a line (`0x480 0x00da040000000012` or `IA32_VMX_BASIC ...`), `#` comments, optional `MAXPHYADDR N`.",
        valueName: "file"))
    var msrFile: String?

    mutating func validate() throws {
        switch (profile, msrFile) {
        case (nil, nil):
            throw ValidationError("give --profile NAME (one of \(VMXProfile.all.map(\.name).joined(separator: ", "))) or --msr-file FILE")
        case (.some, .some):
            throw ValidationError("give --profile or --msr-file, not both")
        case (let name?, nil) where VMXProfile.named(name) == nil:
            throw ValidationError("unknown profile '\(name)'; valid profiles: \(VMXProfile.all.map(\.name).joined(separator: ", "))")
        default:
            break
        }
    }

    /// A short name for the source: the profile name or the file path.
    var sourceName: String { profile.flatMap { VMXProfile.named($0)?.name } ?? msrFile ?? "?" }

    /// The capabilities, or a one-line error on stderr and exit status 64.
    func load() throws(ExitCode) -> (capabilities: VMXCapabilities, profile: VMXProfile?) {
        if let name = profile, let profile = VMXProfile.named(name) { return (profile.capabilities, profile) }
        guard let path = msrFile else { throw ExitCode(ExitStatus.usage) }
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            printError("hv: error: --msr-file \(path): cannot read the file (\(describeFileError(error, path: path)))")
            throw ExitCode(ExitStatus.usage)
        }
        do {
            return (try VMXCapabilities.parse(text), nil)
        } catch {
            printError("hv: error: \(path):\(error.line): \(error.message)")
            throw ExitCode(ExitStatus.usage)
        }
    }
}

/// Small text helpers for the VMX commands (named apart from the EPT command's helpers).
enum VMXText {
    /// `text` padded with spaces to `width`.
    static func padded(_ text: String, _ width: Int) -> String {
        text.count >= width ? text : text + String(repeating: " ", count: width - text.count)
    }

    /// The digits a control field's value is printed with.
    static func digits(_ field: VMXControlField) -> Int { field.is64Bit ? 16 : 8 }

    /// A number written in hex (`0x181`, `181h`) or decimal, or nil.
    static func number(_ text: String) -> UInt64? {
        let lower = text.lowercased().replacingOccurrences(of: "_", with: "")
        if lower.hasPrefix("0x") { return UInt64(lower.dropFirst(2), radix: 16) }
        if lower.hasSuffix("h") { return UInt64(lower.dropLast(), radix: 16) }
        return UInt64(lower)
    }

    /// Names of the set bits of `value` in `names` (bit, name), or "none".
    static func bitNames(_ value: UInt64, _ names: [(Int, String)]) -> String {
        let set = names.filter { value & (1 << UInt64($0.0)) != 0 }.map(\.1)
        return set.isEmpty ? "none" : set.joined(separator: ", ")
    }
}
