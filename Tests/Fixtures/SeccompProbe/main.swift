// seccomp-probe: a VMM whose one device makes a system call no device model should, for
// ConfinementTests. It runs a guest that writes port 0x510 once and halts; that write makes the
// device (on the vCPU thread), or a thread started before the VM (to show that the filter
// reaches threads that already exist), make CALL under confinement MODE.
//
//   seccomp-probe kill|refuse|off socket-inet|fork|execve|none [vcpu|thread]
//
// What the call returned goes to standard output ("probe: socket(AF_INET) = -1, errno 1"); so
// does "VM stopped: REASON" when the run ends. Test fixture only: not a product.
import Foundation
import HVCore
import HVKVM
import HVGuest
import Synchronization

let arguments = Array(CommandLine.arguments.dropFirst())
guard arguments.count >= 2, let call = ["socket-inet", "fork", "execve", "none"].first(where: { $0 == arguments[1] }) else {
    FileHandle.standardError.write(Data("usage: seccomp-probe kill|refuse|off socket-inet|fork|execve|none [vcpu|thread]\n".utf8))
    exit(64)
}
let mode: SeccompMode?
switch arguments[0] {
case "kill": mode = .kill
case "refuse": mode = .refuse
case "off": mode = nil
default:
    FileHandle.standardError.write(Data("seccomp-probe: error: mode \(arguments[0]) is not kill, refuse or off\n".utf8))
    exit(64)
}
let onThread = arguments.count > 2 && arguments[2] == "thread"

@Sendable func say(_ line: String) {
    // One write(2), as the allow-list permits; no buffering left behind by a kill.
    let bytes = Array((line + "\n").utf8)
    _ = bytes.withUnsafeBytes { write(STDOUT_FILENO, $0.baseAddress, $0.count) }
}

/// Makes `call` and says what it returned.
@Sendable func makeCall(_ call: String) {
    switch call {
    case "socket-inet":
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        say("probe: socket(AF_INET) = \(fd)\(fd < 0 ? ", errno \(errno)" : "")")
        if fd >= 0 { close(fd) }
    case "fork":
        let child = fork()
        if child == 0 { _exit(0) }
        say("probe: fork() = \(child < 0 ? -1 : 1)\(child < 0 ? ", errno \(errno)" : "")")
        if child > 0 { var status: Int32 = 0; waitpid(child, &status, 0) }
    case "execve":
        let path = "/bin/true"
        let argv: [UnsafeMutablePointer<CChar>?] = [strdup(path), nil]
        let status = execv(path, argv)
        say("probe: execv(/bin/true) = \(status), errno \(errno)")
    default:
        say("probe: no call")
    }
}

/// A thread started before the VM (and its filter), which makes the call when the device asks.
final class Helper: Sendable {
    let call: String
    init(call: String) { self.call = call }
    let request = DispatchSemaphore(value: 0), done = DispatchSemaphore(value: 0)
    func start() {
        let thread = Thread { [self] in
            request.wait()
            makeCall(call)
            done.signal()
        }
        thread.start()
    }
}

final class ProbeDevice: PortIODevice, Sendable {
    let name = "seccomp-probe"
    let helper: Helper?
    let call: String
    init(helper: Helper?, call: String) {
        self.helper = helper
        self.call = call
    }
    func portRead(offset: UInt16, size: Int) -> UInt32 { 0 }
    func portWrite(offset: UInt16, size: Int, value: UInt32) -> ExitAction {
        if let helper {
            helper.request.signal()
            helper.done.wait()
        } else {
            makeCall(call)
        }
        return .resume
    }
}

do {
    let guest = try GuestProgram.longMode { a in
        a.mov(Register16.dx, 0x510)
        a.out(Register16.dx, Register8.al)
        a.hlt()
    }
    var configuration = VirtualMachineConfiguration(memorySize: 2 << 20)
    configuration.confinement = mode.map { Confinement(mode: $0) }
    let machine = try Machine(configuration: configuration, backend: KVMBackend())
    let helper = onThread ? Helper(call: call) : nil
    helper?.start()
    try machine.devices.register(ProbeDevice(helper: helper, call: call), port: IOPort(0x510), count: 1)
    try machine.load(guest)
    let result = try machine.run()
    say("VM stopped: \(result.reason); refused calls: \(Confinement.refusals)")
} catch {
    FileHandle.standardError.write(Data("seccomp-probe: error: \(error)\n".utf8))
    exit(70)
}
