// `hv tpm serve`: a TPM helper process speaking the swtpm protocol (or raw frames on stdio).
import ArgumentParser
import Foundation
import HVCore
import HVTPM

struct TPMServe: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serve a libtpms TPM 2.0 over the swtpm socket protocol or on stdin/stdout.",
        discussion: """
            Socket mode: TPM frames on --port, swtpm control commands on --port + 1, so that \
            `hv tpm serve --state DIR --port 2321 --startup-clear` then \
            `tpm2_getrandom -T swtpm:host=127.0.0.1,port=2321 8 --hex` work, and QEMU's \
            tpm-emulator (which sends TPM2_Startup itself: leave --startup-clear out). --port 0 \
            picks a free pair. The first line on standard output names the ports. The control \
            channel can replace the whole TPM (SET_STATEBLOB): --control-socket PATH puts it on a \
            Unix socket only this user can reach (mode 0600, as swtpm's --ctrl type=unixio) \
            instead of TCP; --data-socket PATH does the same for TPM frames (`swtpm_ioctl \
            --unix PATH` and QEMU's tpm-emulator chardev speak to such a control socket).

            Stdio mode (--stdio): TPM frames on standard input, responses on standard output, \
            for tpm2-tss's cmd TCTI: \
            `tpm2_getrandom -T "cmd:hv tpm serve --stdio --startup-clear --state DIR" 8 --hex`.

            tpm2-tools expect a started TPM: without --startup-clear a fresh state answers \
            TPM_RC_INITIALIZE until a client sends TPM2_Startup (`tpm2_startup -c`).

            SIGINT, SIGTERM, end of input (stdio) or the control command CMD_SHUTDOWN end the \
            server cleanly: the TPM's RAM state is saved next to its NVRAM (which is written on \
            every change anyway); --resume continues from it on the next start.
            """)

    @Option(name: .long, help: ArgumentHelp("The TPM's state directory (created if missing).", valueName: "dir"))
    var state: String

    @Option(name: .long, help: ArgumentHelp("Data port; the control port is this + 1. 0 picks free ports.", valueName: "port"))
    var port: UInt16?

    @Option(name: .long, help: ArgumentHelp("IPv4 address to listen on.", valueName: "address"))
    var host: String = "127.0.0.1"

    @Option(name: .long, help: ArgumentHelp("Serve the control channel on this Unix socket (created 0600) instead of TCP port + 1.", valueName: "path"))
    var controlSocket: String?

    @Option(name: .long, help: ArgumentHelp("Serve TPM frames on this Unix socket (created 0600) instead of --port; needs --control-socket.", valueName: "path"))
    var dataSocket: String?

    @Flag(name: .long, help: "Serve TPM frames on standard input and output instead of sockets.")
    var stdio = false

    @Flag(name: .long, help: "Send TPM2_Startup(CLEAR) at power-on, so clients need not (swtpm's startup-clear).")
    var startupClear = false

    @Flag(name: .long, help: "Continue the TPM saved at the last clean shutdown (PCRs, sessions) instead of powering on fresh.")
    var resume = false

    @Option(name: .long, help: ArgumentHelp("Seccomp confinement once the sockets listen and the state is open: kill (a system call outside the TPM server's allow-list is reported and stops the server, exit status 159), refuse (reported, fails with EPERM) or off (Documentation/Confinement.md).", valueName: "mode"))
    var seccomp: SeccompArgument = .kill

    func validate() throws {
        if stdio && (port != nil || dataSocket != nil || controlSocket != nil) {
            throw ValidationError("--stdio excludes --port, --data-socket and --control-socket; choose one transport.")
        }
        if port != nil && dataSocket != nil { throw ValidationError("--port and --data-socket exclude each other; choose one place for TPM frames.") }
        if !stdio && port == nil && dataSocket == nil {
            throw ValidationError("give --port P (TPM frames on P, control on P+1), --data-socket PATH with --control-socket PATH, or --stdio.")
        }
        if dataSocket != nil && controlSocket == nil {
            throw ValidationError("--data-socket needs --control-socket PATH: the control channel has no TCP port to go to.")
        }
        for (flag, path) in [("--data-socket", dataSocket), ("--control-socket", controlSocket)] {
            guard let path else { continue }
            // sockaddr_un's sun_path: 108 bytes with the terminating NUL.
            if path.isEmpty || path.utf8.count > 107 { throw ValidationError("\(flag) \(path.isEmpty ? "\"\"" : path): a Unix socket path needs 1 to 107 bytes.") }
        }
        if dataSocket != nil, dataSocket == controlSocket { throw ValidationError("--data-socket and --control-socket name the same path; give each its own.") }
        if port == UInt16.max, controlSocket == nil { throw ValidationError("--port 65535 leaves no room for the control port (port + 1); choose a lower port.") }
    }

    func run() throws {
        // Signals are taken by one waiting thread, so every other thread must block them
        // before it exists.
        var signals = sigset_t()
        sigemptyset(&signals)
        sigaddset(&signals, SIGINT)
        sigaddset(&signals, SIGTERM)
        pthread_sigmask(SIG_BLOCK, &signals, nil)

        let (engine, directory, server) = try reportingTPMErrors { () throws(TPMError) in
            let directory = try TPMStateDirectory(path: state)
            let engine = try LibTPMSEngine.open(directory: directory, resume: resume, holder: "hv tpm serve")
            let data: TPMServerEndpoint = dataSocket.map { .unix(path: $0) } ?? .tcp(host: host, port: stdio ? 0 : port ?? 0)
            let server = try TPMServer(engine: engine, directory: directory, data: data, control: controlSocket.map { .unix(path: $0) },
                                       startupClear: startupClear)
            try server.powerOn()
            return (engine, directory, server)
        }
        let waitedSignals = signals
        let signalThread = Thread {
            var caught: Int32 = 0
            var set = waitedSignals
            sigwait(&set, &caught)
            server.stop()
        }
        signalThread.start()
        // Everything the server opens from now on is its state files; clients are accepted on
        // sockets that already listen.
        if let mode = seccomp.mode {
            do throws(ConfinementError) { try SeccompFilter.tpmServer.install(mode: mode, allThreads: true) } catch {
                printError("hv: error: --seccomp: \(error)")
                throw ExitCode(ExitStatus.hostFailure)
            }
        }
        if stdio {
            printError("hv tpm serve: \(engine.engineDescription), state \(directory.path), serving on stdin/stdout")
            server.serveStream(input: STDIN_FILENO, output: STDOUT_FILENO)
        } else {
            // Unbuffered, so a parent reading the banner (tests, `hv tpm bench`) gets it at once.
            FileHandle.standardOutput.write(Data("hv tpm serve: data \(server.data) control \(server.control) (\(engine.engineDescription), state \(directory.path))\n".utf8))
            server.run()
        }
        _ = try reportingTPMErrors { () throws(TPMError) in try engine.close(savingVolatileState: true) }
        printError("hv tpm serve: stopped; state saved in \(directory.path)")
    }
}

/// Runs `body`, turning a TPM error into one line on stderr and exit status 65 for bad state, 70 otherwise.
func reportingTPMErrors<T>(_ body: () throws(TPMError) -> T) throws(ExitCode) -> T {
    do {
        return try body()
    } catch {
        printError("hv: error: \(error)")
        if case .state = error { throw ExitCode(dataErrorStatus) }
        throw ExitCode(ExitStatus.hostFailure)
    }
}
