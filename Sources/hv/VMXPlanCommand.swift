// `hv vmx plan`: a VMXConfiguration made concrete for one CPU: every control field with a reason
// per bit, the planner's decisions, and the verdict of the VM-entry checks (SDM 27.2-27.3).
import ArgumentParser
import Foundation
import HVCore

struct VMXPlanCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plan",
        abstract: "Reconcile a VM configuration against a CPU's VMX capabilities and check the VMCS it gives against the VM-entry rules.",
        discussion: """
            Knobs (for --enable, --disable and as true/false keys of --config): \
            \(VMXConfiguration.knobNames.joined(separator: ", ")). \
            A --config file (JSON for .json, YAML otherwise) may also set: \
            \(VMXConfigFile.valueKeys.map(\.key).joined(separator: ", ")). \
            --enable and --disable apply after the file. \
            Exit status: 0 when the plan passes every VM-entry check, 1 when the CPU cannot provide \
            what was asked or a check fails, 64 for bad input.
            """)

    @OptionGroup var source: VMXSourceOptions

    @Option(name: .long, help: ArgumentHelp("Comma-separated knobs to turn on, e.g. ept,vpid,unrestricted-guest,preemption-timer.", valueName: "list"))
    var enable: [String] = []

    @Option(name: .long, help: ArgumentHelp("Comma-separated knobs to turn off, e.g. msr-bitmap,io-bitmap.", valueName: "list"))
    var disable: [String] = []

    @Option(name: .long, help: ArgumentHelp("A VM configuration file: JSON (.json) or YAML (.yaml, .yml).", valueName: "file"))
    var config: String?

    @Flag(name: .long, help: "Print JSON instead of text.")
    var json = false

    @Flag(name: .long, help: "Also list every VMCS field the plan writes, with its encoding and value.")
    var vmcs = false

    /// The plan is not valid on this CPU (a missing capability or a failed VM-entry check).
    static let invalidPlanStatus: Int32 = 1

    /// The knobs of a comma-separated list option, split and trimmed.
    static func knobs(_ lists: [String]) -> [String] {
        lists.flatMap { $0.split(separator: ",") }.map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    }

    mutating func validate() throws {
        let valid = VMXConfiguration.knobNames
        for (option, list) in [("--enable", enable), ("--disable", disable)] {
            for knob in Self.knobs(list) where !valid.contains(knob) {
                throw ValidationError("unknown knob '\(knob)' in \(option); valid knobs: \(valid.joined(separator: ", "))")
            }
        }
        if let both = Self.knobs(enable).first(where: Self.knobs(disable).contains) {
            throw ValidationError("knob '\(both)' is in both --enable and --disable; keep it in one")
        }
    }

    func run() throws {
        let (caps, profile) = try source.load()
        var configuration = VMXConfiguration()
        if let config {
            switch VMXConfigFile.load(path: config) {
            case .success(let file): file.apply(to: &configuration)
            case .failure(let error):
                printError("hv: error: \(error.message)")
                throw ExitCode(ExitStatus.usage)
            }
        }
        for knob in Self.knobs(enable) { _ = configuration.set(knob, true) }
        for knob in Self.knobs(disable) { _ = configuration.set(knob, false) }
        let report: VMXPlanReport
        do {
            let plan = try configuration.plan(for: caps)
            report = VMXPlanReport(source: source.sourceName, processor: profile?.processor, configuration: configuration, plan: plan, capabilities: caps)
        } catch {
            report = VMXPlanReport(source: source.sourceName, processor: profile?.processor, configuration: configuration, problems: error.problems)
        }
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: try encoder.encode(report), as: UTF8.self))
        } else {
            print(report.text(listVMCS: vmcs))
        }
        if !report.problems.isEmpty {
            func knobs(_ cause: String) -> [String] {
                var knobs: [String] = []
                for problem in report.problems where problem.cause == cause && !knobs.contains(problem.knob) { knobs.append(problem.knob) }
                return knobs
            }
            let mistakes = knobs("configuration"), missing = knobs("cpu")
            var parts: [String] = []
            if !mistakes.isEmpty { parts.append("the configuration is invalid: \(mistakes.joined(separator: ", "))") }
            if !missing.isEmpty { parts.append("\(report.source) cannot provide \(missing.joined(separator: ", "))") }
            printError("hv: error: \(parts.joined(separator: "; ")) (\(report.problems.count) problem\(report.problems.count == 1 ? "" : "s"), each explained above)")
            throw ExitCode(Self.invalidPlanStatus)
        }
        if let first = report.entryFailures.first {
            printError("hv: error: VM entry would fail: \(first.message) (\(first.outcome))")
            throw ExitCode(Self.invalidPlanStatus)
        }
    }
}

/// What `hv vmx plan` prints, as a value (and as its JSON).
struct VMXPlanReport: Codable {
    struct Bit: Codable {
        var bit: Int
        var name: String
        var value: Int
        var reason: String
    }
    struct Control: Codable {
        var field: String
        var encoding: String
        var value: String
        var capabilityMSR: String
        var mustBeOne: String
        var mayBeOne: String
        /// Nil when the VMCS gets the field; otherwise why it is left alone.
        var notWritten: String?
        var bits: [Bit]
    }
    struct Decision: Codable {
        var knob: String
        var text: String
    }
    struct Field: Codable {
        var encoding: String
        var name: String
        var value: String
    }
    struct EntryFailure: Codable {
        var section: String
        var field: String
        var message: String
        var outcome: String
    }
    struct Problem: Codable {
        var knob: String
        var message: String
        /// "cpu": the capability MSRs forbid it; "configuration": the knobs contradict each other
        /// or a value is out of range, whatever the CPU.
        var cause: String
    }

    var source: String
    var processor: String?
    var knobsOn: [String]
    /// True when the plan exists and passes every VM-entry check.
    var valid: Bool
    var controls: [Control] = []
    var decisions: [Decision] = []
    var vmcs: [Field] = []
    var entryChecks: Int = VMEntryCheck.allCases.count
    var entryFailures: [EntryFailure] = []
    var problems: [Problem] = []

    static func knobsOn(_ configuration: VMXConfiguration) -> [String] {
        // A knob is on when turning it on changes nothing; the I/O bitmap is on with any list of
        // trapped ports (turning the knob on would put the default list back).
        VMXConfiguration.knobNames.filter { name in
            if name == "io-bitmap", case .bitmap = configuration.io { return true }
            var copy = configuration
            _ = copy.set(name, true)
            return copy == configuration
        }
    }

    init(source: String, processor: String?, configuration: VMXConfiguration, plan: VMXPlan, capabilities: VMXCapabilities) {
        self.source = source
        self.processor = processor
        knobsOn = Self.knobsOn(configuration)
        valid = plan.entryFailures.isEmpty
        let primary = plan.controls.first { $0.field == .primaryProcessorBased }?.value ?? 0
        controls = plan.controls.map { control in
            let field = control.field
            let digits = VMXText.digits(field)
            var notWritten: String? = nil
            if !plan.vmcs.wasWritten(field.vmcsField) {
                notWritten = switch field {
                case .secondaryProcessorBased where primary & (1 << 31) == 0: "'activate secondary controls' is 0, so the CPU ignores this field (SDM 25.6.2)"
                case .tertiaryProcessorBased: "nothing asked for; 'activate tertiary controls' stays 0 (SDM 25.6.2)"
                case .secondaryExit: "nothing asked for; 'activate secondary controls' of the exit controls stays 0 (SDM 25.7.1)"
                default: "not written"
                }
            }
            return Control(
                field: field.name, encoding: hexString(UInt64(field.vmcsField.rawValue), digits: 4),
                value: hexString(control.value, digits: digits),
                capabilityMSR: "\(capabilities.decidingMSR(field).name) (\(hexString(UInt64(capabilities.decidingMSR(field).rawValue))))",
                mustBeOne: hexString(control.settings.mustBeOne, digits: digits), mayBeOne: hexString(control.settings.mayBeOne, digits: digits),
                notWritten: notWritten,
                bits: control.decisions.map { Bit(bit: $0.bit, name: field.describeBit($0.bit), value: $0.value ? 1 : 0, reason: $0.reason.text) })
        }
        decisions = plan.decisions.map { Decision(knob: $0.knob, text: $0.text) }
        vmcs = plan.vmcs.writtenFields.map {
            let digits = $0.field.width == .bits16 ? 4 : $0.field.width == .bits32 ? 8 : 16
            return Field(encoding: hexString(UInt64($0.field.rawValue), digits: 4), name: $0.field.name ?? "unknown field", value: hexString($0.value, digits: digits))
        }
        entryFailures = plan.entryFailures.map {
            EntryFailure(section: $0.check.section, field: $0.check.field.name ?? "?", message: $0.message, outcome: $0.check.outcome.text)
        }
    }

    init(source: String, processor: String?, configuration: VMXConfiguration, problems: [VMXPlanProblem]) {
        self.source = source
        self.processor = processor
        knobsOn = Self.knobsOn(configuration)
        valid = false
        self.problems = problems.map { problem in
            switch problem {
            case .control(let knob, _), .capability(let knob, _): Problem(knob: knob, message: problem.message, cause: "cpu")
            case .invalid(let knob, _): Problem(knob: knob, message: problem.message, cause: "configuration")
            }
        }
    }

    func text(listVMCS: Bool) -> String {
        var out = ["VMX plan for \(source)\(processor.map { ": \($0)" } ?? "")"]
        out.append("knobs on: \(knobsOn.joined(separator: ", "))")
        if !problems.isEmpty {
            let mistakes = problems.filter { $0.cause == "configuration" }, missing = problems.filter { $0.cause == "cpu" }
            if !mistakes.isEmpty {
                out.append("")
                out.append("The configuration is invalid on any CPU (\(mistakes.count) problem\(mistakes.count == 1 ? "" : "s")):")
                for problem in mistakes { out.append("  \(problem.message)") }
            }
            if !missing.isEmpty {
                out.append("")
                out.append("This CPU cannot provide the configuration (\(missing.count) problem\(missing.count == 1 ? "" : "s")):")
                for problem in missing { out.append("  \(problem.message)") }
            }
            return out.joined(separator: "\n")
        }
        out.append("")
        out.append("Control fields (SDM 25.6-25.8; allowed settings from Appendix A; reconciled as in A.2-A.5)")
        for control in controls {
            out.append("\(control.field) [VMCS \(control.encoding)] = \(control.value)")
            out.append("  allowed by \(control.capabilityMSR): must be 1 \(control.mustBeOne), may be 1 \(control.mayBeOne)")
            if let notWritten = control.notWritten { out.append("  not written: \(notWritten)") }
            for bit in control.bits {
                out.append("  bit \(bit.bit < 10 ? " " : "")\(bit.bit) = \(bit.value)  \(VMXText.padded(bit.name, 46)) \(bit.reason)")
            }
        }
        out.append("")
        out.append("Decisions")
        for decision in decisions { out.append("  \(VMXText.padded(decision.knob, 17)) \(decision.text)") }
        out.append("")
        if listVMCS {
            out.append("VMCS writes (\(vmcs.count) fields)")
            for field in vmcs { out.append("  \(field.encoding)  \(VMXText.padded(field.name, 48)) \(field.value)") }
        } else {
            out.append("VMCS writes: \(vmcs.count) fields (--vmcs lists them)")
        }
        out.append("")
        if entryFailures.isEmpty {
            out.append("VM-entry checks (SDM 27.2-27.3, \(entryChecks) rules in the manual's order): all pass; VMLAUNCH would enter the guest.")
        } else {
            out.append("VM-entry checks (SDM 27.2-27.3, \(entryChecks) rules): \(entryFailures.count) fail; the processor reports the first:")
            for failure in entryFailures {
                out.append("  \(failure.message)")
                out.append("    -> \(failure.outcome)")
            }
        }
        return out.joined(separator: "\n")
    }
}
