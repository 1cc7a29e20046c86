// `hv`: run guests on HVCore from the command line.
import ArgumentParser
import HVCommandLine
import HVCore
import Logging

@main
struct HV: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hv",
        abstract: "Run and inspect virtual machines built with HVCore.",
        discussion: """
            Start with `hv demo`, which runs a bundled guest and shows its exits. `hv info` says \
            what this host's KVM offers. `hv run IMAGE` runs a flat binary of your own; \
            `hv run --multiboot`, `--multiboot2`, `--elf` and `--kernel` (a Linux bzImage, or a \
            vmlinux by its PVH entry) boot kernels.
            """,
        subcommands: [Demo.self, Run.self, Ctl.self, Serve.self, Info.self, TPM.self, EPT.self, VMXCommand.self, ACPI.self],
        defaultSubcommand: nil)

    /// ArgumentParser's own `main`, with every error as one line on standard error
    /// ("hv: error: MESSAGE (see 'hv run --help')"), as GettingStarted promises (HVCommandLine).
    static func main() { mainWithOneLineErrors() }
}

/// Logging options shared by every subcommand.
struct LoggingOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp(
        "Log level: trace, debug, info, notice, warning, error, critical (default warning, or HV_LOG_LEVEL).",
        valueName: "level"))
    var logLevel: String?

    @Option(name: .long, help: ArgumentHelp(
        "Comma-separated categories that log at --log-level: \(LogCategory.allCases.map(\.rawValue).joined(separator: ", ")) (default all, or HV_LOG_CATEGORIES).",
        valueName: "names"))
    var logCategory: String?

    mutating func validate() throws {
        if let logLevel, Logger.Level(rawValue: logLevel.lowercased()) == nil {
            throw ValidationError("--log-level \(logLevel) is not a level; use one of \(Logger.Level.allCases.map(\.rawValue).joined(separator: ", ")).")
        }
        if let logCategory, case .failure(let error) = HVLogging.parseCategories(logCategory) {
            throw ValidationError("--log-category: \(error.message).")
        }
    }

    /// Sets up logging from the flags, falling back to the environment.
    func bootstrap() {
        if logLevel == nil && logCategory == nil {
            if let problem = HVLogging.bootstrapFromEnvironment() { printError("warning: \(problem)") }
            return
        }
        let level = logLevel.flatMap { Logger.Level(rawValue: $0.lowercased()) } ?? .info
        let categories = logCategory.flatMap { try? HVLogging.parseCategories($0).get() }
        HVLogging.bootstrap(level: level, categories: categories)
    }
}
