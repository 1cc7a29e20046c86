// Register state in and out of KVM: kvm_regs, kvm_sregs, kvm_msrs, kvm_fpu, kvm_xsave.
// Documentation/virt/kvm/api.rst 4.11-4.23.
#if os(Linux)
import CKVM
import HVCore
import Glibc

extension KVMVCPU {
    /// The corresponding ioctl is `KVM_GET_REGS`.
    public func registers() throws(HVError) -> Registers {
        var r = kvm_regs()
        try KVMSyscall.ioctl(fd, HV_KVM_GET_REGS, &r, "KVM_GET_REGS")
        var out = Registers()
        out.rax = r.rax; out.rbx = r.rbx; out.rcx = r.rcx; out.rdx = r.rdx
        out.rsi = r.rsi; out.rdi = r.rdi; out.rsp = r.rsp; out.rbp = r.rbp
        out.r8 = r.r8; out.r9 = r.r9; out.r10 = r.r10; out.r11 = r.r11
        out.r12 = r.r12; out.r13 = r.r13; out.r14 = r.r14; out.r15 = r.r15
        out.rip = r.rip; out.rflags = r.rflags
        return out
    }

    /// The corresponding ioctl is `KVM_SET_REGS`.
    public func setRegisters(_ v: Registers) throws(HVError) {
        var r = kvm_regs(rax: v.rax, rbx: v.rbx, rcx: v.rcx, rdx: v.rdx, rsi: v.rsi, rdi: v.rdi, rsp: v.rsp, rbp: v.rbp,
                         r8: v.r8, r9: v.r9, r10: v.r10, r11: v.r11, r12: v.r12, r13: v.r13, r14: v.r14, r15: v.r15,
                         rip: v.rip, rflags: v.rflags)
        try KVMSyscall.ioctl(fd, HV_KVM_SET_REGS, &r, "KVM_SET_REGS")
    }

    /// The corresponding ioctl is `KVM_GET_SREGS`.
    public func specialRegisters() throws(HVError) -> SpecialRegisters {
        var s = kvm_sregs()
        try KVMSyscall.ioctl(fd, HV_KVM_GET_SREGS, &s, "KVM_GET_SREGS")
        var out = SpecialRegisters()
        out.cs = Segment(s.cs); out.ds = Segment(s.ds); out.es = Segment(s.es)
        out.fs = Segment(s.fs); out.gs = Segment(s.gs); out.ss = Segment(s.ss)
        out.tr = Segment(s.tr); out.ldt = Segment(s.ldt)
        out.gdt = DescriptorTable(base: s.gdt.base, limit: s.gdt.limit)
        out.idt = DescriptorTable(base: s.idt.base, limit: s.idt.limit)
        out.cr0 = s.cr0; out.cr2 = s.cr2; out.cr3 = s.cr3; out.cr4 = s.cr4; out.cr8 = s.cr8
        out.efer = s.efer; out.apicBase = s.apic_base
        return out
    }

    /// The corresponding ioctls are `KVM_GET_SREGS` then `KVM_SET_SREGS` (the pending-interrupt
    /// bitmap is kept as KVM reported it).
    public func setSpecialRegisters(_ v: SpecialRegisters) throws(HVError) {
        var s = kvm_sregs()
        try KVMSyscall.ioctl(fd, HV_KVM_GET_SREGS, &s, "KVM_GET_SREGS")
        s.cs = kvm_segment(v.cs); s.ds = kvm_segment(v.ds); s.es = kvm_segment(v.es)
        s.fs = kvm_segment(v.fs); s.gs = kvm_segment(v.gs); s.ss = kvm_segment(v.ss)
        s.tr = kvm_segment(v.tr); s.ldt = kvm_segment(v.ldt)
        s.gdt.base = v.gdt.base; s.gdt.limit = v.gdt.limit
        s.idt.base = v.idt.base; s.idt.limit = v.idt.limit
        s.cr0 = v.cr0; s.cr2 = v.cr2; s.cr3 = v.cr3; s.cr4 = v.cr4; s.cr8 = v.cr8
        s.efer = v.efer
        if v.apicBase != 0 { s.apic_base = v.apicBase }
        try KVMSyscall.ioctl(fd, HV_KVM_SET_SREGS, &s, "KVM_SET_SREGS")
    }

    /// Reads MSRs one batch at a time; KVM stops a batch at the first MSR it cannot read, which
    /// is then left out. The corresponding ioctl is `KVM_GET_MSRS`.
    public func msrs(_ indices: [UInt32]) throws(HVError) -> [UInt32: UInt64] {
        var result: [UInt32: UInt64] = [:]
        var pending = indices[...]
        while !pending.isEmpty {
            let buffer = KVMMSRBuffer(indices: Array(pending))
            let read = Int(try KVMSyscall.ioctl(fd, HV_KVM_GET_MSRS, pointer: buffer.raw, "KVM_GET_MSRS"))
            for i in 0..<read { result[buffer[i].index] = buffer[i].data }
            pending = pending.dropFirst(read + 1)  // skip the one that failed
        }
        return result
    }

    /// The corresponding ioctl is `KVM_SET_MSRS`.
    public func setMSRs(_ values: [UInt32: UInt64]) throws(HVError) {
        let ordered = values.sorted { $0.key < $1.key }
        let buffer = KVMMSRBuffer(indices: ordered.map(\.key))
        for (i, pair) in ordered.enumerated() { buffer[i].data = pair.value }
        let written = Int(try KVMSyscall.ioctl(fd, HV_KVM_SET_MSRS, pointer: buffer.raw, "KVM_SET_MSRS"))
        if written < ordered.count {
            throw .systemCall(operation: "KVM_SET_MSRS(MSR 0x\(String(ordered[written].key, radix: 16)))", errno: EINVAL)
        }
    }

    /// The corresponding ioctl is `KVM_GET_FPU`.
    public func fpu() throws(HVError) -> FPUState {
        var f = kvm_fpu()
        try KVMSyscall.ioctl(fd, HV_KVM_GET_FPU, &f, "KVM_GET_FPU")
        var out = FPUState()
        out.fcw = f.fcw; out.fsw = f.fsw; out.ftwx = f.ftwx; out.lastOpcode = f.last_opcode
        out.lastIP = f.last_ip; out.lastDP = f.last_dp; out.mxcsr = f.mxcsr
        out.x87 = withUnsafeBytes(of: f.fpr) { Array($0) }
        out.xmm = withUnsafeBytes(of: f.xmm) { Array($0) }
        return out
    }

    /// The corresponding ioctl is `KVM_SET_FPU`.
    public func setFPU(_ v: FPUState) throws(HVError) {
        guard v.x87.count == 128, v.xmm.count == 256 else {
            throw .configuration(ConfigurationError(field: "FPUState", value: "x87 \(v.x87.count) bytes, xmm \(v.xmm.count) bytes",
                                                    expected: "x87 128 bytes and xmm 256 bytes"))
        }
        var f = kvm_fpu()
        f.fcw = v.fcw; f.fsw = v.fsw; f.ftwx = v.ftwx; f.last_opcode = v.lastOpcode
        f.last_ip = v.lastIP; f.last_dp = v.lastDP; f.mxcsr = v.mxcsr
        withUnsafeMutableBytes(of: &f.fpr) { $0.copyBytes(from: v.x87) }
        withUnsafeMutableBytes(of: &f.xmm) { $0.copyBytes(from: v.xmm) }
        try KVMSyscall.ioctl(fd, HV_KVM_SET_FPU, &f, "KVM_SET_FPU")
    }

    /// The 4 KiB legacy XSAVE area. The corresponding ioctl is `KVM_GET_XSAVE`.
    public func xsave() throws(HVError) -> [UInt8] {
        var x = kvm_xsave()
        try KVMSyscall.ioctl(fd, HV_KVM_GET_XSAVE, &x, "KVM_GET_XSAVE")
        return withUnsafeBytes(of: x.region) { Array($0) }
    }

    /// The corresponding ioctl is `KVM_SET_XSAVE`.
    public func setXSAVE(_ area: [UInt8]) throws(HVError) {
        var x = kvm_xsave()
        let size = MemoryLayout.size(ofValue: x.region)
        guard area.count == size else {
            throw .configuration(ConfigurationError(field: "xsave", value: "\(area.count) bytes", expected: "\(size) bytes"))
        }
        withUnsafeMutableBytes(of: &x.region) { $0.copyBytes(from: area) }
        try KVMSyscall.ioctl(fd, HV_KVM_SET_XSAVE, &x, "KVM_SET_XSAVE")
    }
}

/// A heap `struct kvm_msrs` with `indices.count` entries.
final class KVMMSRBuffer {
    let raw: UnsafeMutableRawPointer
    let count: Int

    init(indices: [UInt32]) {
        count = indices.count
        let bytes = MemoryLayout<kvm_msrs>.size + max(count, 1) * MemoryLayout<kvm_msr_entry>.stride
        raw = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 16)
        raw.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
        raw.assumingMemoryBound(to: kvm_msrs.self).pointee.nmsrs = UInt32(count)
        for (i, index) in indices.enumerated() { self[i].index = index }
    }

    deinit { raw.deallocate() }

    subscript(i: Int) -> kvm_msr_entry {
        get { entries[i] }
        set { entries[i] = newValue }
    }

    private var entries: UnsafeMutablePointer<kvm_msr_entry> {
        (raw + MemoryLayout<kvm_msrs>.size).assumingMemoryBound(to: kvm_msr_entry.self)
    }
}

extension Segment {
    init(_ s: kvm_segment) {
        self.init(base: s.base, limit: s.limit, selector: s.selector, type: s.type, dpl: s.dpl,
                  defaultSize32: s.db != 0, long: s.l != 0, granularity: s.g != 0, codeOrData: s.s != 0,
                  present: s.present != 0)
        available = s.avl != 0
        unusable = s.unusable != 0
    }
}

extension kvm_segment {
    init(_ s: Segment) {
        self.init(base: s.base, limit: s.limit, selector: s.selector, type: s.type, present: s.present ? 1 : 0,
                  dpl: s.dpl, db: s.defaultSize32 ? 1 : 0, s: s.codeOrData ? 1 : 0, l: s.long ? 1 : 0,
                  g: s.granularity ? 1 : 0, avl: s.available ? 1 : 0, unusable: s.unusable ? 1 : 0, padding: 0)
    }
}
#endif
