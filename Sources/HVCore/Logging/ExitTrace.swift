// One line per exit for `HV_LOG_LEVEL=trace HV_LOG_CATEGORIES=exits`: the vCPU, the guest's
// RIP, the exit's kind and operands in hex, and what the monitor did, the way `perf kvm stat`
// and QEMU's trace events (kvm_run_exit, kvm_io, kvm_mmio) show them
// (https://docs.kernel.org/virt/kvm/api.html 4.10 "KVM_RUN": struct kvm_run's exit payloads).

/// The trace line for `exit` on vCPU `vcpu`, handled with `action`; `rip` is the guest's
/// instruction pointer when it could be read. An `IN`'s value is the one the guest receives, so
/// call this after the action has been completed.
///
///     vcpu0 rip=0x100045 io-out port=0x3f8 size=1 value=0x48 -> resume
///     vcpu0 rip=0x100052 io-in port=0xcfc size=2 value=0x1237 -> resume
///     vcpu0 rip=0x10006a io-out port=0xe0 size=1 count=3 values=0x41,0x42,0x43 -> resume
///     vcpu0 rip=0x100090 mmio-read addr=0xfee00020 width=4 -> resume value=0x0
///     vcpu0 rip=0x1000a4 hlt -> stop (the guest halted (HLT with nothing to wake it))
func exitTraceLine(vcpu: Int, rip: UInt64?, exit: VMExit, action: ExitAction) -> String {
    var line = "vcpu\(vcpu)"
    if let rip { line += " rip=\(hex(rip))" }
    line += " \(exit.kind.name)"
    switch exit {
    case .portIn(let io), .portOut(let io):
        line += " port=\(hex(io.port.rawValue)) size=\(io.size)"
        if io.data.count == 1 {
            line += " value=\(hex(io.data[0]))"
        } else {
            // A string instruction (REP INS/OUTS): every element, as the backend handed them over.
            line += " count=\(io.data.count) values=" + (0..<io.data.count).map { hex(io.data[$0]) }.joined(separator: ",")
        }
    case .mmioRead(let access):
        line += " addr=\(hex(access.address.rawValue)) width=\(access.width)"
    case .mmioWrite(let access):
        line += " addr=\(hex(access.address.rawValue)) width=\(access.width) value=\(hex(access.value))"
    case .entryFailure(let reason):
        line += " reason=\(hex(reason))"
    case .internalError(let error):
        let words = [error.data.0, error.data.1, error.data.2, error.data.3].prefix(Int(min(error.dataCount, 4)))
        line += " suberror=\(error.suberror)" + (words.isEmpty ? "" : " data=" + words.map { hex($0) }.joined(separator: ","))
    case .systemEvent(let event):
        line += " \(event)"
    case .debug(let exception):
        line += " vector=\(exception.vector) pc=\(hex(exception.pc)) dr6=\(hex(exception.dr6)) dr7=\(hex(exception.dr7))"
    case .msrRead(let index):
        line += " index=\(hex(index))"
    case .msrWrite(let index, let value):
        line += " index=\(hex(index)) value=\(hex(value))"
    case .ioapicEOI(let vector):
        line += " vector=\(hex(vector))"
    case .hyperVSynIC(let update):
        line += " msr=\(hex(update.msr)) control=\(hex(update.control)) siefp=\(hex(update.eventPage)) simp=\(hex(update.messagePage))"
    case .hyperVHypercall(let call):
        line += " code=\(hex(call.code))\(call.isFast ? " fast" : "") params=\(hex(call.firstParameter)),\(hex(call.secondParameter))"
    case .unknown(let reason):
        line += " reason=\(reason)"
    case .halt, .shutdown, .interruptWindow, .preemptionTimer, .interrupted:
        break
    }
    line += " -> "
    switch action {
    case .resume: line += "resume"
    case .resumeWith(let value): line += "resume value=\(hex(value))"
    case .fault: line += "fault (#GP)"
    case .stop(let reason): line += "stop (\(reason))"
    case .reset: line += "reset"
    case .suspend: line += "suspend"
    }
    return line
}

private func hex<T: BinaryInteger>(_ value: T) -> String { "0x" + String(value, radix: 16) }
