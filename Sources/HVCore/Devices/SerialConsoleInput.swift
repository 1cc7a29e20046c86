// The host side of an interactive serial console: a file descriptor (a terminal, a pipe) read
// on a thread of its own and fed to a 16550's receiver, paced by its FIFO the way QEMU's
// serial_can_receive paces a character device; with QEMU's escape key (Ctrl-A x quits).
#if os(Linux)
import Foundation
import Glibc
import Synchronization

/// QEMU's `-nographic` escape sequences, as a pure state machine: Ctrl-A then `x` quits,
/// Ctrl-A then Ctrl-A sends one Ctrl-A to the guest, Ctrl-A then `h` asks for help; any other
/// byte after Ctrl-A is dropped, and every byte outside an escape goes to the guest.
public struct ConsoleEscape: Sendable {
    /// What a key means.
    public enum Action: Equatable, Sendable {
        /// Send this byte to the guest.
        case send(UInt8)
        /// The first key of an escape: nothing yet.
        case pending
        /// End the session (Ctrl-A x).
        case quit
        /// Show the escape keys (Ctrl-A h).
        case help
        /// Drop the key (an unknown escape).
        case ignore
    }

    /// The escape key: Ctrl-A, as in QEMU and screen.
    public static let key: UInt8 = 0x01
    /// One line naming the keys, for `help`.
    public static let helpText = "C-a x  quit    C-a C-a  send C-a    C-a h  this help"

    private var escaped = false

    public init() {}

    public mutating func feed(_ byte: UInt8) -> Action {
        if !escaped {
            if byte == Self.key { escaped = true; return .pending }
            return .send(byte)
        }
        escaped = false
        switch byte {
        case Self.key: return .send(Self.key)
        case UInt8(ascii: "x"), UInt8(ascii: "X"): return .quit
        case UInt8(ascii: "h"), UInt8(ascii: "H"), UInt8(ascii: "?"): return .help
        default: return .ignore
        }
    }
}

/// Where console input goes: a UART's receiver, or a virtio console's receive queue.
public protocol ConsoleReceiver: AnyObject, Sendable {
    /// How many bytes `receive` takes now without losing any.
    var receiveSpace: Int { get }
    /// Takes bytes from the host side.
    func receive(_ bytes: some Sequence<UInt8>)
}

extension UART16550: ConsoleReceiver {}

/// Reads a file descriptor on its own thread and feeds what it reads to a UART's receiver (or
/// another `ConsoleReceiver`), never faster than the receiver drains, so nothing typed is lost
/// to an overrun. With
/// `escapes`, Ctrl-A x calls `onQuit` (and Ctrl-A h `onHelp`); without, every byte goes through
/// (for pipes, which have no keyboard). End of input ends the thread; the guest keeps running.
public final class SerialConsoleInput: Sendable {
    private let receiver: any ConsoleReceiver
    private let fd: Int32
    private let escapes: Bool
    private let onQuit: @Sendable () -> Void
    private let onHelp: @Sendable () -> Void
    private let stopped = Atomic<Bool>(false)

    public init(receiver: any ConsoleReceiver, fileDescriptor fd: Int32 = STDIN_FILENO, escapes: Bool,
                onQuit: @escaping @Sendable () -> Void, onHelp: @escaping @Sendable () -> Void = {}) {
        self.receiver = receiver
        self.fd = fd
        self.escapes = escapes
        self.onQuit = onQuit
        self.onHelp = onHelp
    }

    /// Feeds COM1's (or another UART's) receiver.
    public convenience init(uart: UART16550, fileDescriptor fd: Int32 = STDIN_FILENO, escapes: Bool,
                            onQuit: @escaping @Sendable () -> Void, onHelp: @escaping @Sendable () -> Void = {}) {
        self.init(receiver: uart, fileDescriptor: fd, escapes: escapes, onQuit: onQuit, onHelp: onHelp)
    }

    /// Starts the reader thread (never joined: a read blocked on a terminal cannot be
    /// interrupted portably, and the process's end ends it).
    public func start() {
        let thread = Thread { [self] in pump() }
        thread.name = "console-input"
        thread.start()
    }

    /// Stops feeding the guest; a read in progress still returns first.
    public func stop() { stopped.store(true, ordering: .relaxed) }

    private func pump() {
        var escape = ConsoleEscape()
        var buffer = [UInt8](repeating: 0, count: 256)
        while !stopped.load(ordering: .relaxed) {
            let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count < 0, errno == EINTR { continue }
            guard count > 0 else { return }  // end of input or an error: the console goes quiet
            for byte in buffer[..<count] {
                let action = escapes ? escape.feed(byte) : .send(byte)
                switch action {
                case .send(let byte):
                    guard deliver(byte) else { return }
                case .quit:
                    onQuit()
                    return
                case .help:
                    onHelp()
                case .pending, .ignore:
                    break
                }
            }
        }
    }

    /// Waits (1 ms at a time) for room in the receiver, then hands the byte over.
    private func deliver(_ byte: UInt8) -> Bool {
        while receiver.receiveSpace == 0 {
            if stopped.load(ordering: .relaxed) { return false }
            usleep(1000)
        }
        receiver.receive(CollectionOfOne(byte))
        return true
    }
}

/// Puts a terminal into raw mode for an interactive guest console and puts it back on every
/// way out: a normal return (`restore()`), `exit()` (an `atexit` handler), and fatal or
/// terminating signals (a handler restores, then re-raises with the default action). Raw as
/// QEMU's stdio character device makes it: no echo, no line editing, no signals from keys
/// (Ctrl-C goes to the guest), 8-bit input; output processing stays on, so "\n" still returns
/// the carriage.
public enum TerminalRawMode {
    /// Switches `fd` (a terminal) to raw mode; false when it is not a terminal.
    @discardableResult
    public static func enable(fd: Int32 = STDIN_FILENO) -> Bool {
        guard isatty(fd) == 1 else { return false }
        var original = termios()
        guard tcgetattr(fd, &original) == 0 else { return false }
        var raw = original
        raw.c_iflag &= ~tcflag_t(IGNBRK | BRKINT | PARMRK | ISTRIP | INLCR | IGNCR | ICRNL | IXON)
        raw.c_oflag |= tcflag_t(OPOST)
        raw.c_lflag &= ~tcflag_t(ECHO | ECHONL | ICANON | ISIG | IEXTEN)
        raw.c_cflag &= ~tcflag_t(CSIZE | PARENB)
        raw.c_cflag |= tcflag_t(CS8)
        withUnsafeMutableBytes(of: &raw.c_cc) { cc in
            cc[Int(VMIN)] = 1
            cc[Int(VTIME)] = 0
        }
        savedTerminal.fd = fd
        savedTerminal.attributes = original
        savedTerminal.saved = true
        atexit { TerminalRawMode.restore() }
        for signal in [SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGILL, SIGTRAP, SIGABRT, SIGBUS, SIGFPE, SIGSEGV] {
            Glibc.signal(signal) { number in
                TerminalRawMode.restore()
                Glibc.signal(number, SIG_DFL)
                raise(number)
            }
        }
        return tcsetattr(fd, TCSANOW, &raw) == 0
    }

    /// Puts the terminal back as `enable` found it (async-signal-safe: one tcsetattr).
    public static func restore() {
        guard savedTerminal.saved else { return }
        _ = tcsetattr(savedTerminal.fd, TCSANOW, &savedTerminal.attributes)
    }
}

/// The terminal state to restore, where a signal handler can reach it without allocating.
private struct SavedTerminal {
    var fd: Int32 = 0
    var attributes = termios()
    var saved = false
}

// Written once by `enable` before any handler is installed, read by handlers afterwards.
nonisolated(unsafe) private var savedTerminal = SavedTerminal()
#endif
