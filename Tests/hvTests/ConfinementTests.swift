// Seccomp confinement and the privilege drop (Documentation/Confinement.md): a device model that
// makes a call outside HV's allow-list stops the process, or is refused, as documented; `hv run`
// runs confined by default and can run its guest as an unprivileged user.
import Foundation
import Testing

@Suite("Confinement: seccomp allow-lists and --user", .serialized)
struct ConfinementTests {
    static func probe(_ arguments: [String]) throws -> ProcessResult {
        try PackageExecutable.run(arguments, executable: "seccomp-probe")
    }

    @Test("a device that opens an internet socket on its vCPU thread stops the VMM: status 159, the call and the thread named", .needsKVM)
    func killOnVCPUThread() throws {
        let result = try Self.probe(["kill", "socket-inet"])
        #expect(result.status == 159)
        #expect(result.stderr.contains("hv: seccomp: thread 'vcpu0' made system call socket (41), which HV's allow-list does not permit; stopping the process (exit status 159)"))
        #expect(!result.stdout.contains("probe: socket"), "the call must not return to the device")
        #expect(!result.stdout.contains("VM stopped"))
    }

    @Test("refuse mode: the same call fails with EPERM, is reported, and the guest runs to its end", .needsKVM)
    func refuseOnVCPUThread() throws {
        let result = try Self.probe(["refuse", "socket-inet"])
        #expect(result.status == 0)
        #expect(result.stdout.contains("probe: socket(AF_INET) = -1, errno 1\n"))
        #expect(result.stdout.contains("VM stopped: the guest halted (HLT with nothing to wake it); refused calls: 1"))
        #expect(result.stderr.contains("made system call socket (41), which HV's allow-list does not permit; refused with EPERM"))
    }

    @Test("without confinement the call succeeds (the probe's call is real)", .needsKVM)
    func offAllowsTheCall() throws {
        let result = try Self.probe(["off", "socket-inet"])
        #expect(result.status == 0)
        #expect(result.stdout.contains("probe: socket(AF_INET) = "))
        #expect(!result.stdout.contains("probe: socket(AF_INET) = -1"))
        #expect(result.stdout.contains("refused calls: 0"))
    }

    @Test("a thread that existed before the VM started is confined too (fork is a clone without CLONE_THREAD)", .needsKVM)
    func threadsThatAlreadyExist() throws {
        let killed = try Self.probe(["kill", "fork", "thread"])
        #expect(killed.status == 159)
        #expect(killed.stderr.contains("made system call clone (56), which HV's allow-list does not permit"))
        let refused = try Self.probe(["refuse", "fork", "thread"])
        #expect(refused.status == 0)
        #expect(refused.stdout.contains("probe: fork() = -1, errno 1\n"))
        let free = try Self.probe(["off", "fork", "thread"])
        #expect(free.stdout.contains("probe: fork() = 1\n"))
    }

    @Test("exec from a device stops the VMM", .needsKVM)
    func execIsRefused() throws {
        let result = try Self.probe(["kill", "execve"])
        #expect(result.status == 159)
        #expect(result.stderr.contains("made system call execve (59)"))
        let refused = try Self.probe(["refuse", "execve"])
        #expect(refused.stdout.contains("probe: execv(/bin/true) = -1, errno 1\n"))
    }

    @Test("hv run and hv demo are confined by default, and --seccomp refuse and off run the same guest", .needsKVM)
    func hvRunModes() throws {
        let folder = try PackageExecutable.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: folder) }
        let image = folder.appendingPathComponent("hlt.bin")
        try Data([0xF4]).write(to: image)
        let confined = try PackageExecutable.run(["run", "--log-level", "debug", "--log-category", "vcpu", image.path])
        #expect(confined.status == 0)
        #expect(confined.stderr.contains("confined: the VMM allow-list ("))
        // The README's bundled guest, `hv demo`, is confined the same way.
        let demo = try PackageExecutable.run(["demo", "--log-level", "debug", "--log-category", "vcpu"])
        #expect(demo.status == 0)
        #expect(demo.stderr.contains("confined: the VMM allow-list ("))
        for mode in ["refuse", "off"] {
            let result = try PackageExecutable.run(["run", "--seccomp", mode, "--log-level", "debug", "--log-category", "vcpu", image.path])
            #expect(result.status == 0)
            #expect(result.stderr.contains("confined: the VMM allow-list (") == (mode == "refuse"))
            #expect(result.stderr.contains("the guest halted"))
        }
    }

    @Test("--user: the guest runs as that user once set-up is done; a user that is unknown or root, or a TPM directory it cannot write, is a one-line error", .needsKVM)
    func switchUser() throws {
        let folder = try PackageExecutable.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: folder) }
        let spin = folder.appendingPathComponent("spin.bin")
        try Data([0xEB, 0xFE]).write(to: spin)  // jmp $
        guard geteuid() == 0 else {
            let result = try PackageExecutable.run(["run", "--user", "nobody", spin.path])
            #expect(result.status == 64)
            #expect(result.stderr.contains("hv: error: --user nobody: only root can switch to another user; this process runs as uid \(geteuid())"))
            return
        }
        // Running: /proc says who the process is while the guest spins.
        let (process, _, _) = try PackageExecutable.start(PackageExecutable.binDirectory.appendingPathComponent("hv"),
                                                          ["run", "--user", "nobody", "--timeout", "20", spin.path])
        var identity = ""
        let deadline = Date(timeIntervalSinceNow: 15)
        while process.isRunning, Date() < deadline {
            let status = (try? String(contentsOfFile: "/proc/\(process.processIdentifier)/status", encoding: .utf8)) ?? ""
            identity = status.split(separator: "\n").filter { $0.hasPrefix("Uid:") || $0.hasPrefix("Gid:") || $0.hasPrefix("Groups:") || $0.hasPrefix("Seccomp:") }.joined(separator: " | ")
            if identity.contains("Uid:\t65534\t65534\t65534\t65534"), identity.contains("Seccomp:\t2") { break }
            Thread.sleep(forTimeInterval: 0.05)
        }
        process.terminate()
        process.waitUntilExit()
        // seccomp mode 2 (a filter) once the guest runs; the user switch comes before it.
        #expect(identity == "Uid:\t65534\t65534\t65534\t65534 | Gid:\t65534\t65534\t65534\t65534 | Groups:\t65534  | Seccomp:\t2")

        let unknown = try PackageExecutable.run(["run", "--user", "no-such-user-hv", spin.path])
        #expect(unknown.status == 64)
        #expect(unknown.stderr == "hv: error: --user no-such-user-hv: no user named no-such-user-hv in the user database\n")
        let root = try PackageExecutable.run(["run", "--user", "root", spin.path])
        #expect(root.status == 64)
        #expect(root.stderr.contains("--user root: root is root (uid 0); name an unprivileged user, such as nobody"))

        // The TPM writes its state files after the switch: a directory only root may write is
        // refused before the guest runs; one the user owns works.
        let state = folder.appendingPathComponent("tpm")
        try FileManager.default.createDirectory(at: state, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let locked = try PackageExecutable.run(["run", "--user", "nobody", "--tpm", state.path, "--timeout", "1", spin.path])
        #expect(locked.status == 64)
        #expect(locked.stderr.contains("hv: error: --user nobody: the TPM's state directory \(state.path) is not writable by nobody (uid 65534); chown it to that user, or leave --user out"))
        #expect(chown(state.path, 65534, 65534) == 0)
        #expect(chown(folder.path, 65534, 65534) == 0)
        let owned = try PackageExecutable.run(["run", "--user", "nobody", "--tpm", state.path, "--timeout", "1", spin.path])
        #expect(owned.stderr.contains("hv: the VM ran past its time limit"), "\(owned.stderr)")
    }
}
