// `hv tpm`: the virtual TPM's tools (Documentation/vTPM.md).
import ArgumentParser
import Foundation
import HVTPM

struct TPM: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tpm",
        abstract: "Serve, inspect and benchmark HV's virtual TPM 2.0 (libtpms).",
        discussion: """
            A TPM's state lives in a directory (permanent.state, and volatile.state after a clean \
            shutdown). `hv tpm serve` makes it reachable by tpm2-tools and QEMU over the swtpm \
            protocol; `hv run --tpm DIR` gives a guest the same TPM through TIS at 0xFED40000.
            """,
        subcommands: [TPMServe.self, TPMInfo.self, TPMBench.self, TPMGuest.self])
}

/// Exit status for a state directory that exists but cannot be used (sysexits EX_DATAERR).
let dataErrorStatus: Int32 = 65

struct TPMInfo: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "info",
        abstract: "Describe and verify a TPM state directory without starting the TPM.",
        discussion: "Exit status: 0 when the state is intact, 65 when a state file is corrupted or truncated, 64 when DIR is missing.")

    @Argument(help: "The state directory.")
    var directory: String

    func run() throws {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory), isDirectory.boolValue else {
            printError("hv: error: \(directory): no such state directory")
            throw ExitCode(ExitStatus.usage)
        }
        print("state directory: \(directory)")
        let permanentPath = directory + "/" + TPMStateDirectory.permanentName
        let volatilePath = directory + "/" + TPMStateDirectory.volatileName
        do {
            guard let permanent = try TPMStateDirectory.read(permanentPath, kind: .permanent) else {
                print("permanent state: none (the TPM is manufactured on first start)")
                return
            }
            print("permanent state: \(permanent.payload.count) bytes of libtpms NVRAM, SHA-256 \(SHA256.hash(permanent.payload).hexString.prefix(16))..., checksum verified")
            if let modified = modificationDate(permanentPath) { print("last written: \(modified)") }
            if let volatile = try TPMStateDirectory.read(volatilePath, kind: .volatile) {
                let matches = volatile.binding == SHA256.hash(permanent.payload)
                print("volatile state: \(volatile.payload.count) bytes, checksum verified, "
                      + (matches ? "saved with this permanent state: `hv tpm serve --resume` continues it"
                                 : "saved with an older permanent state: it cannot be resumed"))
            } else {
                print("volatile state: none (the TPM powers on fresh and needs TPM2_Startup)")
            }
            print("in use: \(lockHeld() ? "yes, by a running process" : "no")")
        } catch {
            printError("hv: error: \(error)")
            throw ExitCode(dataErrorStatus)
        }
    }

    private func modificationDate(_ path: String) -> String? {
        guard let date = (try? FileManager.default.attributesOfItem(atPath: path))?[.modificationDate] as? Date else { return nil }
        return ISO8601DateFormatter().string(from: date)
    }

    /// Whether another process holds the directory's lock (TPMStateDirectory takes it).
    private func lockHeld() -> Bool {
        let fd = open(directory + "/lock", O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        return flock(fd, LOCK_EX | LOCK_NB) != 0
    }
}

struct TPMGuest: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "guest",
        abstract: "Write a small long-mode guest that talks to the TPM through TIS.",
        discussion: """
            The guest requests locality 0, sends TPM2_Startup(CLEAR) and TPM2_GetRandom(8) \
            through the FIFO at 0xFED40000 and prints the response codes and bytes on COM1: \
            `hv tpm guest tis.bin && hv run tis.bin --tpm vm.tpm`.
            """)

    @Argument(help: "Where to write the flat binary (load it at hv run's default long-mode address).")
    var output: String

    func run() throws {
        let program: [UInt8]
        do { program = try TISGuestProgram.startupAndGetRandom().code } catch {
            printError("hv: error: assembling the guest failed: \(error)")
            throw ExitCode(ExitStatus.hostFailure)
        }
        do { try Data(program).write(to: URL(fileURLWithPath: output)) } catch {
            printError("hv: error: \(output): \(describeFileError(error, path: output))")
            throw ExitCode(ExitStatus.usage)
        }
        print("wrote \(program.count) bytes to \(output)")
    }
}
