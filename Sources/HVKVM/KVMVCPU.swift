// A KVM vCPU: its fd, its kvm_run mapping, the run call and exit decoding.
// Documentation/virt/kvm/api.rst, 4.10 KVM_RUN and 5 "The kvm_run structure".
#if os(Linux)
import CKVM
import HVCore
import Glibc
import Synchronization

/// A vCPU's `kvm_run` mapping as the buffer its port exits view (`PortIOBuffer`): unmapped
/// when the vCPU and every view of its exits are gone.
final class KVMRunMapping: PortIOBuffer, @unchecked Sendable {
    // @unchecked: as PortIOBuffer; the mapping's address and size never change.
    init(base: UnsafeMutableRawPointer, size: Int) { super.init(borrowing: base, capacity: size) }
    deinit { KVMSyscall.unmap(base, size: capacity) }
}

/// Owns a vCPU file descriptor and its `kvm_run` mapping (`shared`).
public final class KVMVCPU: VCPU, @unchecked Sendable {
    // Sendable: `run()` and the register calls are used from the vCPU's own thread only (the
    // protocol's contract); `requestExit()` touches just `immediate_exit` and `thread`.

    public let id: Int
    let fd: Int32
    let shared: UnsafeMutablePointer<kvm_run>
    /// `shared` as the buffer port exits view; it owns the mapping.
    let mapping: KVMRunMapping
    let vm: KVMVirtualMachine
    /// The pthread running this vCPU, 0 when none (for the kick signal). A Mutex, not an atomic:
    /// `finishThread()` cannot clear it, and the thread cannot end, while a kick is signalling it.
    private let thread = Mutex<UInt>(0)

    init(id: Int, fd: Int32, run: UnsafeMutableRawPointer, mapSize: Int, vm: KVMVirtualMachine) {
        self.id = id
        self.fd = fd
        self.shared = run.assumingMemoryBound(to: kvm_run.self)
        self.mapping = KVMRunMapping(base: run, size: mapSize)
        self.vm = vm
    }

    deinit {
        // The mapping goes with the last view of it (KVMRunMapping).
        KVMSyscall.close(fd)
    }

    // MARK: Running

    /// Enters the guest (`KVM_RUN`) and decodes why it came back. Allocates nothing.
    @inline(__always)
    public func run() throws(HVError) -> VMExit {
        // kvm_run's data area is about to be reused: views of the last exit go stale.
        mapping.beginRun()
        guard try KVMSyscall.run(fd) else { return .interrupted }
        return decodeExit()
    }

    /// Turns `kvm_run` into a `VMExit`. Every length KVM reports is checked against the mapping.
    @inline(__always)
    func decodeExit() -> VMExit {
        let r = shared
        switch Int32(r.pointee.exit_reason) {
        case KVM_EXIT_IO:
            let io = r.pointee.io
            let offset = Int(clamping: io.data_offset)
            // The view refuses an offset or a length past the mapping.
            guard let data = PortIOData(buffer: mapping, offset: offset, size: Int(io.size), count: Int(io.count))
            else { return .unknown(reason: UInt32(KVM_EXIT_IO)) }
            let access = PortIO(port: IOPort(io.port), size: io.size, count: io.count, data: data)
            return io.direction == UInt8(KVM_EXIT_IO_OUT) ? .portOut(access) : .portIn(access)
        case KVM_EXIT_MMIO:
            let mmio = r.pointee.mmio
            let width = UInt8(truncatingIfNeeded: min(mmio.len, 8))
            if mmio.is_write != 0 {
                var value: UInt64 = 0
                withUnsafeBytes(of: mmio.data) { bytes in
                    for i in 0..<Int(width) { value |= UInt64(bytes[i]) << (8 * UInt64(i)) }
                }
                return .mmioWrite(MMIOAccess(address: GuestPhysicalAddress(mmio.phys_addr), width: width, value: value))
            }
            return .mmioRead(MMIOAccess(address: GuestPhysicalAddress(mmio.phys_addr), width: width))
        case KVM_EXIT_HLT:
            return .halt
        case KVM_EXIT_SHUTDOWN:
            return .shutdown
        case KVM_EXIT_FAIL_ENTRY:
            return .entryFailure(hardwareReason: r.pointee.fail_entry.hardware_entry_failure_reason)
        case KVM_EXIT_INTERNAL_ERROR:
            let failure = r.pointee.`internal`
            let count = min(Int(failure.ndata), 4)
            var words: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
            withUnsafeBytes(of: failure.data) { source in
                withUnsafeMutableBytes(of: &words) { target in
                    target.copyMemory(from: UnsafeRawBufferPointer(rebasing: source[0..<(count * 8)]))
                }
            }
            return .internalError(InternalError(suberror: failure.suberror, data: words, dataCount: UInt8(count)))
        case KVM_EXIT_SYSTEM_EVENT:
            switch Int32(r.pointee.system_event.type) {
            case KVM_SYSTEM_EVENT_SHUTDOWN: return .systemEvent(.shutdown)
            case KVM_SYSTEM_EVENT_RESET: return .systemEvent(.reset)
            case KVM_SYSTEM_EVENT_CRASH: return .systemEvent(.crash)
            default: return .systemEvent(.other(r.pointee.system_event.type))
            }
        case KVM_EXIT_DEBUG:
            let arch = r.pointee.debug.arch
            return .debug(DebugException(vector: arch.exception, pc: arch.pc, dr6: arch.dr6, dr7: arch.dr7))
        case KVM_EXIT_X86_RDMSR:
            return .msrRead(index: r.pointee.msr.index)
        case KVM_EXIT_X86_WRMSR:
            return .msrWrite(index: r.pointee.msr.index, value: r.pointee.msr.data)
        case KVM_EXIT_IRQ_WINDOW_OPEN:
            return .interruptWindow
        case KVM_EXIT_IOAPIC_EOI:
            return .ioapicEOI(vector: r.pointee.eoi.vector)
        case KVM_EXIT_INTR:
            return .interrupted
        case KVM_EXIT_HYPERV:
            // api.rst 5, KVM_EXIT_HYPERV: SynIC MSR writes and the hypercalls KVM leaves to us.
            let exit = r.pointee.hyperv
            switch Int32(exit.type) {
            case KVM_EXIT_HYPERV_SYNIC:
                let synic = exit.u.synic
                return .hyperVSynIC(HyperVSynICUpdate(msr: synic.msr, control: synic.control,
                                                      eventPage: synic.evt_page, messagePage: synic.msg_page))
            case KVM_EXIT_HYPERV_HCALL:
                let call = exit.u.hcall
                return .hyperVHypercall(HyperVHypercall(input: call.input, firstParameter: call.params.0, secondParameter: call.params.1))
            default:
                return .unknown(reason: r.pointee.exit_reason)
            }
        default:
            return .unknown(reason: r.pointee.exit_reason)
        }
    }

    /// Writes a handler's result into `kvm_run` for the kernel to finish the instruction with.
    @inline(__always)
    public func complete(_ exit: VMExit, with action: ExitAction) {
        switch exit {
        case .portIn(let io):
            if case .resumeWith(let value) = action {
                for index in 0..<io.data.count { io.data[index] = UInt32(truncatingIfNeeded: value) }
            }
        case .mmioRead(let access):
            let value: UInt64 = if case .resumeWith(let v) = action { v } else { 0 }
            withUnsafeMutableBytes(of: &shared.pointee.mmio.data) { bytes in
                for i in 0..<min(Int(access.width), 8) { bytes[i] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))) }
            }
        case .msrRead:
            // api.rst 5 (KVM_EXIT_X86_RDMSR): error = 1 makes the guest take #GP.
            switch action {
            case .resumeWith(let value):
                shared.pointee.msr.data = value
                shared.pointee.msr.error = 0
            case .resume:
                shared.pointee.msr.data = 0
                shared.pointee.msr.error = 0
            default:
                shared.pointee.msr.error = 1
            }
        case .msrWrite:
            switch action {
            case .resume, .resumeWith: shared.pointee.msr.error = 0
            default: shared.pointee.msr.error = 1
            }
        case .hyperVHypercall:
            // The status goes to RAX (api.rst: hcall.result); a handler that only resumed
            // succeeded, anything else did not take the call.
            switch action {
            case .resumeWith(let status): shared.pointee.hyperv.u.hcall.result = status
            case .resume: shared.pointee.hyperv.u.hcall.result = UInt64(HyperVStatus.success)
            default: shared.pointee.hyperv.u.hcall.result = UInt64(HyperVStatus.invalidHypercallCode)
            }
        default:
            break
        }
    }

    // MARK: Kicking a running vCPU (immediate_exit plus a signal, as Firecracker does)

    public func requestExit() {
        hv_store_immediate_exit(shared, 1)
        thread.withLock { target in
            if target != 0 { _ = pthread_kill(pthread_t(target), hv_kick_signal()) }
        }
    }

    public func clearExitRequest() {
        hv_store_immediate_exit(shared, 0)
    }

    public func prepareThread() throws(HVError) {
        // The handler itself was installed with the vCPU (`createVCPU`).
        KVMKickSignal.unblock()
        thread.withLock { $0 = UInt(pthread_self()) }
    }

    /// Forgets the thread so no signal is sent to it after it ends.
    public func finishThread() {
        thread.withLock { $0 = 0 }
    }
}

/// The process-wide handler for the kick signal: it does nothing; its only effect is that a
/// blocked `KVM_RUN` returns `EINTR`. SA_RESTART keeps other system calls unaffected
/// (KVM_RUN's -EINTR is never restarted).
enum KVMKickSignal {
    private static let installed = Mutex(false)

    static func install() throws(HVError) {
        let result: Int32 = installed.withLock { done in
            if done { return 0 }
            var action = sigaction()
            action.__sigaction_handler.sa_handler = { _ in }
            action.sa_flags = SA_RESTART
            sigemptyset(&action.sa_mask)
            guard sigaction(hv_kick_signal(), &action, nil) == 0 else { return errno }
            done = true
            return 0
        }
        if result != 0 { throw .systemCall(operation: "sigaction(vCPU kick signal)", errno: result) }
    }

    /// Lets the kick signal reach the calling thread (a vCPU thread).
    static func unblock() {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, hv_kick_signal())
        pthread_sigmask(SIG_UNBLOCK, &set, nil)
    }
}
#endif
