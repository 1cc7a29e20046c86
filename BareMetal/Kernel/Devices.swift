// The devices the image's guests see, as `ExitHandler`s (HVModel's protocol, the same one the
// KVM backend's device bus and `hv demo`'s handler conform to): COM1, QEMU's debug-exit port,
// an MMIO scratch register, the local APIC and MSRs the host keeps.
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
            // Every element of a string OUT (REP OUTSB hands over a batch).
            for index in 0..<io.data.count { _ = putchar(Int32(io.data[index] & 0xFF)) }
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

/// Port 0x80, the POST-code port, as the cheapest device: writes are taken, reads return 0
/// (the latency guest's I/O exits).
struct PostCodePort: ExitHandler {
    func handle(_ exit: VMExit, context: ExitContext) -> ExitAction? {
        switch exit {
        case .portOut(let io) where io.port == 0x80: return .resume
        case .portIn(let io) where io.port == 0x80: return .resumeWith(0)
        default: return nil
        }
    }
}

/// One 64-bit read/write register behind a page of MMIO (`hv demo`'s scratch register, at
/// 0xFEB00000 unless told otherwise).
final class ScratchRegister: ExitHandler {
    let address: UInt64
    var value: UInt64 = 0

    init(address: UInt64 = 0xFEB0_0000) { self.address = address }

    func handle(_ exit: VMExit, context: ExitContext) -> ExitAction? {
        switch exit {
        case .mmioRead(let access) where access.address.rawValue & ~0xFFF == address:
            return .resumeWith(value)
        case .mmioWrite(let access) where access.address.rawValue & ~0xFFF == address:
            value = access.value
            return .resume
        default:
            return nil
        }
    }
}

/// The guest's local APIC: HVModel's `LocalAPIC` (the same model HVCore's userspace APIC uses),
/// reached through IA32_APIC_BASE and the x2APIC MSRs (SDM 11.12) or the xAPIC page at
/// 0xFEE00000, its timer counting TSC cycles (one per tick before the divider). Both engines
/// ask it, before each entry, for an interrupt to inject, and at HLT when the next one is due.
final class LocalAPICDevice: ExitHandler {
    var apic = LocalAPIC(LocalAPIC.Configuration(apicID: 0, isBootstrapProcessor: true, tscCyclesPerTimerTick: 1))

    /// The model's clock moved to the TSC: timer expiries up to now become pending interrupts.
    func advance() { _ = apic.advance(toCycles: hv_rdtsc()) }

    /// The TSC at which the timer next fires, nil when it is idle.
    var nextDeadline: UInt64? { apic.nextTimerExpiry }

    func handle(_ exit: VMExit, context: ExitContext) -> ExitAction? {
        switch exit {
        case .msrRead(let index) where index == APICBase.msr:
            return .resumeWith(apic.base.rawValue)
        case .msrWrite(let index, let value) where index == APICBase.msr:
            do throws(APICFault) { try apic.writeAPICBase(value) } catch { return .stop(.internalError(InternalError(suberror: 4))) }
            return .resume
        case .msrRead(let index) where (0x800...0x8FF).contains(index):
            advance()
            do throws(APICFault) { return .resumeWith(try apic.readMSR(index)) } catch { return .stop(.internalError(InternalError(suberror: 4))) }
        case .msrWrite(let index, let value) where (0x800...0x8FF).contains(index):
            advance()
            do throws(APICFault) { _ = try apic.writeMSR(index, value: value) } catch { return .stop(.internalError(InternalError(suberror: 4))) }
            return .resume
        case .mmioRead(let access) where access.address.rawValue & ~0xFFF == 0xFEE0_0000 && apic.mode == .xAPIC:
            advance()
            return .resumeWith(UInt64(apic.read(offset: UInt32(access.address.rawValue & 0xFF0))))
        case .mmioWrite(let access) where access.address.rawValue & ~0xFFF == 0xFEE0_0000 && apic.mode == .xAPIC:
            advance()
            _ = apic.write(offset: UInt32(access.address.rawValue & 0xFF0), value: UInt32(truncatingIfNeeded: access.value))
            return .resume
        default:
            return nil
        }
    }
}

/// MSRs the host keeps for the guest (trapped: every access is an exit): what a WRMSR stored,
/// a RDMSR returns; an MSR not listed is not this handler's.
final class StoredMSRs: ExitHandler {
    var values: [(index: UInt32, value: UInt64)]

    init(_ indices: [UInt32]) { values = indices.map { ($0, 0) } }

    func handle(_ exit: VMExit, context: ExitContext) -> ExitAction? {
        switch exit {
        case .msrRead(let index):
            guard let slot = values.firstIndex(where: { $0.index == index }) else { return nil }
            return .resumeWith(values[slot].value)
        case .msrWrite(let index, let value):
            guard let slot = values.firstIndex(where: { $0.index == index }) else { return nil }
            values[slot].value = value
            return .resume
        default:
            return nil
        }
    }
}
