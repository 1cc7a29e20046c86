// The error convention of HV's command-line tools (`hv`, `hv-bench`, the MicroVM example): one
// line per error on standard error, "NAME: error: MESSAGE", and for a mistake on the command line
// the help to read, instead of ArgumentParser's message wrapped in usage and help text
// (Documentation/GettingStarted.md promises it; Documentation/Architecture.md, Conventions).
import ArgumentParser
import Foundation

extension ParsableCommand {
    /// ArgumentParser's own `main`, with every error as one line: "NAME: error: MESSAGE (see
    /// 'NAME SUBCOMMAND --help')" for a command line it cannot use, "NAME: error: MESSAGE" for a
    /// failure after parsing. `--help` and `--version` print in full, and a status a command
    /// throws (`ExitCode`) passes through.
    public static func mainWithOneLineErrors() {
        var command: ParsableCommand
        do {
            command = try parseAsRoot()
        } catch {
            failWithOneLine(error, helpHint: true)
        }
        do {
            try command.run()
        } catch {
            failWithOneLine(error, helpHint: false)
        }
    }

    /// Ends with `error` as one line, and for a mistake on the command line the help to read
    /// (the full message's last line names it: "See 'hv run --help' ...").
    private static func failWithOneLine(_ error: Error, helpHint: Bool) -> Never {
        let status = exitCode(for: error)
        let message = Self.message(for: error)
        guard status != .success, !message.isEmpty else { exit(withError: error) }
        let hint = helpHint
            ? fullMessage(for: error).split(separator: "\n").last { $0.hasPrefix("  See '") || $0.hasPrefix("See '") }
                .flatMap { $0.split(separator: "'").dropFirst().first }.map { " (see '\($0)')" } ?? ""
            : ""
        let line = message.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.joined(separator: " ")
        let name = configuration.commandName ?? "\(Self.self)"
        FileHandle.standardError.write(Data("\(name): error: \(line.hasPrefix("Error: ") ? String(line.dropFirst(7)) : line)\(hint)\n".utf8))
        exit(withError: ExitCode(status.rawValue))
    }
}
