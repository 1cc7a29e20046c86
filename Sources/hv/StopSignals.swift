// SIGINT, SIGTERM and SIGHUP stop `hv run`'s guest cleanly: the run ends as if the host asked
// (StopReason.requested), hv prints its closing line and the --stats table, and exits with the
// shell's status for the signal (128 + number). A second signal ends hv at once. One thread
// takes the signals with sigwait(3), so the vCPU threads never run a handler
// (signal-safety(7)); every thread blocks them, which is why `block()` must come before any
// thread exists.
import Foundation
import HVCore
import Synchronization

final class StopSignals: Sendable {
    /// The signals that stop the guest.
    static let numbers: [Int32] = [SIGINT, SIGTERM, SIGHUP]

    /// The first signal caught, 0 while none.
    private let caught = Atomic<Int32>(0)
    /// What stops the guest, once there is one.
    private let stopper = Mutex<(@Sendable () -> Void)?>(nil)

    /// Blocks the signals in the calling thread (and so in every thread it starts from now on)
    /// and starts the thread that waits for them.
    init() {
        var set = sigset_t()
        sigemptyset(&set)
        for number in Self.numbers { sigaddset(&set, number) }
        pthread_sigmask(SIG_BLOCK, &set, nil)
        let waited = set
        let thread = Thread { [self] in
            var set = waited
            var number: Int32 = 0
            while sigwait(&set, &number) == 0 {
                let first = caught.compareExchange(expected: 0, desired: number, ordering: .acquiringAndReleasing).exchanged
                let stop = stopper.withLock { $0 }
                guard first, let stop else {
                    // A second signal, or one before the guest exists: end now.
                    TerminalRawMode.restore()
                    _exit(128 + number)
                }
                printError("hv: \(Self.name(number)): stopping the guest (send it again to end hv at once)")
                stop()
            }
        }
        thread.start()
    }

    /// From now on a signal calls `stop` (Machine.stop).
    func whenCaught(_ stop: @escaping @Sendable () -> Void) {
        stopper.withLock { $0 = stop }
    }

    /// The signal that stopped the guest, if one did.
    var signal: Int32? {
        let number = caught.load(ordering: .acquiring)
        return number == 0 ? nil : number
    }

    static func name(_ number: Int32) -> String {
        switch number {
        case SIGINT: "SIGINT"
        case SIGTERM: "SIGTERM"
        case SIGHUP: "SIGHUP"
        default: "signal \(number)"
        }
    }
}
