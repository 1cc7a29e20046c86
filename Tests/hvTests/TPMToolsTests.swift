// tpm2-tools (Debian tpm2-tools) against `hv tpm serve`, as a user would run them.
import Foundation
import HVTPM
import HVTestSupport
import Testing
#if canImport(Glibc)
import Glibc
#endif

enum TPMTools {
    static let directory = "/usr/bin"
    static let unavailableReason: String? = FileManager.default.isExecutableFile(atPath: "\(directory)/tpm2_getrandom")
        ? nil : "tpm2-tools are not installed (scripts/setup.sh installs them)"

    /// Runs `tpm2_<tool>` against the TPM at `tcti`.
    static func run(_ tool: String, _ arguments: [String], tcti: String, in folder: URL) throws -> ProcessResult {
        let (process, out, err) = try PackageExecutable.start(URL(fileURLWithPath: "\(directory)/tpm2_\(tool)"), arguments,
                                                              environment: ["TPM2TOOLS_TCTI": tcti], in: folder)
        // Tool output is small: read both after exit would risk nothing, but drain anyway.
        let outData = out.fileHandleForReading.readDataToEndOfFile()
        let errData = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return ProcessResult(status: process.terminationStatus, stdout: String(decoding: outData, as: UTF8.self),
                             stderr: String(decoding: errData, as: UTF8.self), crashed: process.terminationReason == .uncaughtSignal)
    }
}

/// `hv tpm serve --port 0` in a subprocess; `stop()` sends SIGTERM and waits.
final class TPMServeProcess {
    let process = Process()
    let port: UInt16
    var tcti: String { "swtpm:host=127.0.0.1,port=\(port)" }

    init(state: URL, extra: [String] = []) throws {
        process.executableURL = PackageExecutable.binDirectory.appendingPathComponent("hv")
        process.arguments = ["tpm", "serve", "--state", state.path, "--port", "0", "--startup-clear"] + extra
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        try process.run()
        var banner: [UInt8] = []
        while let byte = try out.fileHandleForReading.read(upToCount: 1)?.first, byte != UInt8(ascii: "\n") { banner.append(byte) }
        let line = String(decoding: banner, as: UTF8.self)
        guard let range = line.range(of: "data 127.0.0.1:"),  // "hv tpm serve: data 127.0.0.1:P control ..."
              let port = UInt16(line[range.upperBound...].prefix { $0.isNumber }) else {
            process.terminate()
            throw CocoaError(.fileReadUnknown, userInfo: [NSLocalizedDescriptionKey: "hv tpm serve did not start: \(line)"])
        }
        self.port = port
    }

    /// SIGTERM, then the exit status (0 after a clean shutdown).
    @discardableResult
    func stop() -> Int32 {
        if process.isRunning { kill(process.processIdentifier, SIGTERM) }
        process.waitUntilExit()
        return process.terminationStatus
    }

    deinit { if process.isRunning { stop() } }
}

@Suite(.serialized, .enabled(if: TPMTools.unavailableReason == nil || Requirement.tools, "skipped: \(TPMTools.unavailableReason ?? "")"))
final class TPMToolsTests {
    let folder: URL

    init() throws { folder = try PackageExecutable.temporaryDirectory() }

    deinit { try? FileManager.default.removeItem(at: folder) }

    func tool(_ name: String, _ arguments: String..., server: TPMServeProcess) throws -> ProcessResult {
        try TPMTools.run(name, arguments, tcti: server.tcti, in: folder)
    }

    @Test func getrandomReturnsFreshBytes() throws {
        let server = try TPMServeProcess(state: folder.appendingPathComponent("tpm"))
        defer { #expect(server.stop() == 0) }
        let first = try tool("getrandom", "--hex", "16", server: server)
        let second = try tool("getrandom", "--hex", "16", server: server)
        #expect(first.status == 0, "\(first.stderr)")
        #expect(first.stdout.count == 32 && first.stdout.allSatisfy(\.isHexDigit))
        #expect(first.stdout != second.stdout)
    }

    @Test("the stdio example in `hv tpm serve --help` works as written, on a fresh state")
    func helpExampleWorksAsWritten() throws {
        let help = try PackageExecutable.run(["tpm", "serve", "--help"]).stdout.replacingOccurrences(of: "\n", with: " ")
        // The example, between backquotes: tpm2_getrandom -T "cmd:hv tpm serve --stdio ... DIR" 8 --hex
        let example = try #require(help.firstMatch(of: /`(tpm2_getrandom -T "cmd:hv tpm serve --stdio[^`]*)`/)?.1)
        let hv = PackageExecutable.binDirectory.appendingPathComponent("hv").path
        let command = String(example).replacingOccurrences(of: "cmd:hv ", with: "cmd:\(hv) ")
            .replacingOccurrences(of: "DIR", with: folder.appendingPathComponent("fresh").path)
        let (process, out, _) = try PackageExecutable.start(URL(fileURLWithPath: "/bin/sh"), ["-c", command], in: folder)
        let output = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(process.terminationStatus == 0, "\(command)")
        #expect(output.count == 16 && output.allSatisfy(\.isHexDigit), "\(output)")
    }

    @Test func pcrextendThenPcrreadGivesTheKnownAnswer() throws {
        let server = try TPMServeProcess(state: folder.appendingPathComponent("tpm"))
        defer { #expect(server.stop() == 0) }
        let helloDigest = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"  // sha256("hello")
        #expect(try tool("pcrextend", "16:sha256=\(helloDigest)", server: server).status == 0)
        let read = try tool("pcrread", "sha256:16", server: server)
        #expect(read.status == 0, "\(read.stderr)")
        #expect(read.stdout.contains("16: 0x9851312028952521510E8EAAB5BE94E7DC24B5FC292B2E9781173CF11FFA9878"))
    }

    @Test func createprimaryMakesAnOwnerHierarchyKey() throws {
        let server = try TPMServeProcess(state: folder.appendingPathComponent("tpm"))
        defer { #expect(server.stop() == 0) }
        let primary = try tool("createprimary", "-C", "o", "-c", "primary.ctx", server: server)
        #expect(primary.status == 0, "\(primary.stderr)")
        #expect(primary.stdout.contains("name-alg:"))
        #expect(FileManager.default.fileExists(atPath: folder.appendingPathComponent("primary.ctx").path))
    }

    @Test func aQuoteChecksWithItsNonceAndFailsWithAnother() throws {
        let server = try TPMServeProcess(state: folder.appendingPathComponent("tpm"))
        defer { #expect(server.stop() == 0) }
        // No resource manager sits between the tools and the TPM: flush transient objects
        // between steps, as one does with any bare TPM.
        #expect(try tool("createek", "-c", "ek.ctx", "-G", "rsa", "-u", "ek.pub", server: server).status == 0)
        #expect(try tool("flushcontext", "-t", server: server).status == 0)
        let ak = try tool("createak", "-C", "ek.ctx", "-c", "ak.ctx", "-G", "rsa", "-g", "sha256", "-s", "rsassa",
                          "-u", "ak.pub", "-f", "pem", "-n", "ak.name", server: server)
        #expect(ak.status == 0, "\(ak.stderr)")
        #expect(try tool("flushcontext", "-t", server: server).status == 0)
        let nonce = (0..<16).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
        let quote = try tool("quote", "-c", "ak.ctx", "-l", "sha256:0,16", "-q", nonce, "-m", "quote.msg", "-s", "quote.sig",
                             "-o", "quote.pcrs", "-g", "sha256", server: server)
        #expect(quote.status == 0, "\(quote.stderr)")
        let good = try tool("checkquote", "-u", "ak.pub", "-m", "quote.msg", "-s", "quote.sig", "-f", "quote.pcrs",
                            "-g", "sha256", "-q", nonce, server: server)
        #expect(good.status == 0, "\(good.stderr)")
        let wrongNonce = String(nonce.reversed())
        let bad = try tool("checkquote", "-u", "ak.pub", "-m", "quote.msg", "-s", "quote.sig", "-f", "quote.pcrs",
                           "-g", "sha256", "-q", wrongNonce, server: server)
        #expect(bad.status != 0)
        #expect(bad.stderr.contains("nonce"))
    }

    @Test func anNVIndexSurvivesARestartOfTheServer() throws {
        let state = folder.appendingPathComponent("tpm")
        var server = try TPMServeProcess(state: state)
        let secret = folder.appendingPathComponent("secret")
        try Data("hv keeps this".utf8).write(to: secret)
        #expect(try tool("nvdefine", "0x1500016", "-C", "o", "-s", "13", "-a", "ownerread|ownerwrite", server: server).status == 0)
        #expect(try tool("nvwrite", "0x1500016", "-C", "o", "-i", secret.path, server: server).status == 0)
        #expect(server.stop() == 0)

        let info = try PackageExecutable.run(["tpm", "info", state.path])
        #expect(info.status == 0)
        #expect(info.stdout.contains("checksum verified"))

        server = try TPMServeProcess(state: state)
        defer { #expect(server.stop() == 0) }
        let read = try tool("nvread", "0x1500016", "-C", "o", "-s", "13", server: server)
        #expect(read.status == 0, "\(read.stderr)")
        #expect(read.stdout == "hv keeps this")
    }

    @Test func theCmdTCTIRunsHvTpmServeOnStdio() throws {
        let hv = PackageExecutable.binDirectory.appendingPathComponent("hv").path
        let state = folder.appendingPathComponent("stdio-tpm").path
        let result = try TPMTools.run("getrandom", ["--hex", "8"], tcti: "cmd:\(hv) tpm serve --stdio --startup-clear --state \(state)", in: folder)
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout.count == 16)
    }

    @Test func infoRefusesACorruptedStateDirectory() throws {
        let state = folder.appendingPathComponent("tpm")
        let server = try TPMServeProcess(state: state)
        #expect(server.stop() == 0)
        let file = state.appendingPathComponent("permanent.state")
        var bytes = [UInt8](try Data(contentsOf: file))
        bytes[bytes.count - 1] ^= 0xFF
        try Data(bytes).write(to: file)
        let info = try PackageExecutable.run(["tpm", "info", state.path])
        #expect(info.status == 65)
        #expect(info.stderr.contains("checksum mismatch"))
        let serve = try PackageExecutable.run(["tpm", "serve", "--state", state.path, "--port", "0"])
        #expect(serve.status == 65)
        #expect(serve.stderr.contains("will not manufacture"))
    }

    @Test(.needsKVM) func runAttachesTheTPMToAGuest() throws {
        let image = folder.appendingPathComponent("tis-guest.bin")
        #expect(try PackageExecutable.run(["tpm", "guest", image.path]).status == 0)
        #expect([UInt8](try Data(contentsOf: image)) == (try TISGuestProgram.startupAndGetRandom().code))
        let result = try PackageExecutable.run(["run", image.path, "--tpm", folder.appendingPathComponent("guest-tpm").path, "--timeout", "60"])
        #expect(result.status == 1, "\(result.stderr)")  // debug-exit code 0 -> (0 << 1) | 1
        // hv played firmware's part (TPM started, platform hierarchy locked), so the guest's own
        // TPM2_Startup finds the TPM started: TPM_RC_INITIALIZE, as after a PC's BIOS.
        #expect(result.stdout.hasPrefix("TPM2_Startup rc=00000100\nTPM2_GetRandom rc=00000000 bytes=0008 "), "\(result.stdout)")
        let guestOwned = try PackageExecutable.run(["run", image.path, "--tpm", folder.appendingPathComponent("guest-tpm").path,
                                                    "--tpm-platform", "guest", "--timeout", "60"])
        #expect(guestOwned.stdout.hasPrefix("TPM2_Startup rc=00000000\n"), "\(guestOwned.stdout)")
    }
}


/// The CLI's own rules, which need no TPM client.
@Suite struct TPMCommandLineTests {
    @Test func everyTPMSubcommandExplainsItself() throws {
        for (subcommand, mention) in [("serve", "--state"), ("info", "state directory"), ("bench", "swtpm"), ("guest", "TIS")] {
            let help = try PackageExecutable.run(["tpm", subcommand, "--help"])
            #expect(help.status == 0)
            #expect(help.stdout.contains(mention), "hv tpm \(subcommand) --help: \(help.stdout)")
        }
    }

    @Test func serveNeedsExactlyOneTransport() throws {
        let neither = try PackageExecutable.run(["tpm", "serve", "--state", "/tmp/unused"])
        #expect(neither.status == 64)
        #expect(neither.stderr.contains("--port P"))
        let both = try PackageExecutable.run(["tpm", "serve", "--state", "/tmp/unused", "--stdio", "--port", "2321"])
        #expect(both.status == 64)
        #expect(both.stderr.contains("--stdio excludes --port, --data-socket and --control-socket"))
        let refusals: [([String], String)] = [
            (["--data-socket", "/tmp/d"], "--data-socket needs --control-socket PATH"),
            (["--port", "2321", "--data-socket", "/tmp/d", "--control-socket", "/tmp/c"], "--port and --data-socket exclude each other"),
            (["--data-socket", "/tmp/x", "--control-socket", "/tmp/x"], "name the same path"),
            (["--port", "2321", "--control-socket", ""], "--control-socket \"\": a Unix socket path needs 1 to 107 bytes"),
            (["--port", "2321", "--control-socket", "/tmp/" + String(repeating: "x", count: 120)], "a Unix socket path needs 1 to 107 bytes"),
        ]
        for (arguments, message) in refusals {
            let result = try PackageExecutable.run(["tpm", "serve", "--state", "/tmp/unused"] + arguments)
            #expect(result.status == 64, "\(arguments)")
            #expect(result.stderr.contains(message), "\(arguments): \(result.stderr)")
        }
    }

    @Test("--control-socket: the control channel on a Unix socket only its owner can reach, and not on TCP; swtpm_ioctl --unix drives it, CMD_SHUTDOWN ends the server and the socket goes")
    func controlChannelOnAUnixSocket() throws {
        let folder = try PackageExecutable.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: folder) }
        let socketPath = folder.appendingPathComponent("ctrl.sock").path
        let server = try TPMServeProcess(state: folder.appendingPathComponent("tpm"), extra: ["--control-socket", socketPath])
        // Confined by default once it listens (seccomp mode 2: a filter).
        let status = try String(contentsOfFile: "/proc/\(server.process.processIdentifier)/status", encoding: .utf8)
        #expect(status.contains("\nSeccomp:\t2\n"))
        var info = stat()
        #expect(stat(socketPath, &info) == 0)
        #expect(info.st_mode & S_IFMT == S_IFSOCK)
        #expect(info.st_mode & 0o777 == 0o600, "mode \(String(info.st_mode & 0o777, radix: 8))")
        // tpm2-tools' swtpm TCTI wants the control channel on TCP port + 1, which is not there.
        let noTCPControl = try TPMTools.run("getrandom", ["--hex", "8"], tcti: server.tcti, in: folder)
        #expect(noTCPControl.status != 0)
        func ioctl(_ arguments: [String]) throws -> ProcessResult {
            try PackageExecutable.run(["--unix", socketPath] + arguments, executable: "/usr/bin/swtpm_ioctl")
        }
        let capabilities = try ioctl(["-c"])
        #expect(capabilities.status == 0, "\(capabilities.stderr)")
        #expect(capabilities.stdout.contains("ptm capability is 0x2fef"), "\(capabilities.stdout)")
        let locality = try ioctl(["-l", "3"])
        #expect(locality.status == 0, "\(locality.stderr)")
        let shutdown = try ioctl(["-s"])
        #expect(shutdown.status == 0, "\(shutdown.stderr)")
        server.process.waitUntilExit()
        #expect(server.process.terminationStatus == 0)
        #expect(!FileManager.default.fileExists(atPath: socketPath), "the server removes its socket when it stops")
    }

    @Test func infoOfAMissingDirectoryIsAUsageError() throws {
        let info = try PackageExecutable.run(["tpm", "info", "/nonexistent/hv-tpm"])
        #expect(info.status == 64)
        #expect(info.stderr.contains("no such state directory"))
    }
}
