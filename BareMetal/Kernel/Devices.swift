// The devices the image's guests see, as `ExitHandler`s (HVModel's protocol, the same one the
// KVM backend's device bus and `hv demo`'s handler conform to): COM1, QEMU's debug-exit port
// and the demo's MMIO scratch register.
import BareMetalSupport
import HVModel

/// COM1 as the guest sees it: what it transmits goes out on the machine's own COM1 (the image's
/// console); the line status register says the transmitter is always ready; the other
/// registers read 0 and ignore writes (no receive path yet).
struct ConsolePassthrough: ExitHandler {
    static let base: UInt16 = 0x3F8

    func handle(_ exit: VMExit, context: ExitContext) -> ExitAction? {
        switch exit {
        case .portOut(let io) where io.port.rawValue == Self.base:
            _ = putchar(Int32(io.value & 0xFF))
            return .resume
        case .portOut(let io) where io.port.rawValue > Self.base && io.port.rawValue < Self.base + 8:
            return .resume
        case .portIn(let io) where io.port.rawValue == Self.base + 5:
            return .resumeWith(0x60)  // LSR: THRE and TEMT
        case .portIn(let io) where io.port.rawValue >= Self.base && io.port.rawValue < Self.base + 8:
            return .resumeWith(0)
        default:
            return nil
        }
    }
}

/// Port 0xF4 (QEMU's isa-debug-exit, and HV's debug-exit device): a write stops the guest with
/// its value as the exit code.
struct DebugExitPort: ExitHandler {
    func handle(_ exit: VMExit, context: ExitContext) -> ExitAction? {
        guard case .portOut(let io) = exit, io.port == 0xF4 else { return nil }
        return .stop(.debugExit(code: io.value))
    }
}

/// One 64-bit read/write register behind MMIO at 0xFEB00000 (`hv demo`'s scratch register).
final class ScratchRegister: ExitHandler {
    static let address: UInt64 = 0xFEB0_0000
    var value: UInt64 = 0

    func handle(_ exit: VMExit, context: ExitContext) -> ExitAction? {
        switch exit {
        case .mmioRead(let access) where access.address.rawValue & ~0xFFF == Self.address:
            return .resumeWith(value)
        case .mmioWrite(let access) where access.address.rawValue & ~0xFFF == Self.address:
            value = access.value
            return .resume
        default:
            return nil
        }
    }
}
