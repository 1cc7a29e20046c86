// The exit kinds hv-bench measures: each is a tiny guest loop that makes one exit per iteration
// (or, for cpuid, one doorbell exit per 128 in-kernel CPUIDs), and the trivial answer both the
// HVCore handler and the C baseline give it.
import CKVMBaseline
import Foundation
import HVCore

enum BenchKind: String, CaseIterable, Sendable {
    case ioOut = "io-out"
    case ioIn = "io-in"
    case mmioWrite = "mmio-write"
    case mmioRead = "mmio-read"
    case hlt
    case msrRead = "msr-read"
    case msrWrite = "msr-write"
    case cpuid
    case kvmRun = "kvm-run"
    case dispatch

    /// One line for `--list`, the table's legend and the JSON.
    var summary: String {
        switch self {
        case .ioOut: "OUT to port 0x70: KVM_EXIT_IO round trip, nothing to write back"
        case .ioIn: "IN from port 0x71: KVM_EXIT_IO round trip, the answer written into kvm_run"
        case .mmioWrite: "32-bit store to 0xD0000000 (no RAM): KVM_EXIT_MMIO round trip"
        case .mmioRead: "32-bit load from 0xD0000000: KVM_EXIT_MMIO round trip, the answer written back"
        case .hlt: "HLT with no irqchip: KVM_EXIT_HLT, resumed by haltPolicy .resume (HVCore's default handling)"
        case .msrRead: "RDMSR of unknown MSR 0x4B560001: KVM_EXIT_X86_RDMSR (user-space MSR exits), answered"
        case .msrWrite: "WRMSR of unknown MSR 0x4B560002: KVM_EXIT_X86_WRMSR, accepted"
        case .cpuid: "CPUID leaf 0, handled in the kernel (no user-space exit): time per loop iteration"
        case .kvmRun: "KVM_RUN with immediate_exit = 1: returns EINTR at once, the floor of any exit"
        case .dispatch: "user space only (scripted backend, no KVM): run loop, handler chain, device bus, write-back"
        }
    }

    /// Whether a raw C loop runs the same guest for a ratio.
    var hasBaseline: Bool { self != .dispatch }

    /// Whether the kind needs /dev/kvm.
    var needsKVM: Bool { self != .dispatch }

    /// The exit the guest makes (for cpuid: the doorbell after each batch).
    var expectedExit: ExitKind {
        switch self {
        case .ioOut, .cpuid, .dispatch: .portOut
        case .ioIn: .portIn
        case .mmioWrite: .mmioWrite
        case .mmioRead: .mmioRead
        case .hlt: .halt
        case .msrRead: .msrRead
        case .msrWrite: .msrWrite
        case .kvmRun: .interrupted
        }
    }

    /// The value reads get, on both sides.
    static let answer: UInt64 = 0x5A

    /// What the HVCore handler returns: nil hands the exit on (hlt to the defaults with
    /// haltPolicy .resume; dispatch to the device bus).
    var handlerAction: ExitAction? {
        switch self {
        case .ioOut, .mmioWrite, .msrWrite, .cpuid, .kvmRun: .resume
        case .ioIn, .mmioRead, .msrRead: .resumeWith(Self.answer)
        case .hlt, .dispatch: nil
        }
    }

    /// What the C loop expects and answers.
    var baselineKind: hvb_exit_kind {
        switch self {
        case .ioOut, .cpuid, .dispatch: HVB_IO_OUT
        case .ioIn: HVB_IO_IN
        case .mmioWrite: HVB_MMIO_WRITE
        case .mmioRead: HVB_MMIO_READ
        case .hlt: HVB_HLT
        case .msrRead: HVB_MSR_READ
        case .msrWrite: HVB_MSR_WRITE
        case .kvmRun: HVB_RUN_FLOOR
        }
    }

    /// Guest loop iterations per recorded interval (the histogram gets interval / this).
    var iterationsPerSample: UInt64 { self == .cpuid ? Self.cpuidBatch : 1 }

    /// What one sample is.
    var unit: String { self == .cpuid ? "cpuid loop iteration" : "exit" }

    static let cpuidBatch: UInt64 = 128
    static let mmioAddress: UInt32 = 0xD000_0000

    /// The guest loop, in long mode.
    func program() throws -> GuestProgram {
        try GuestProgram.longMode { a in
            switch self {
            case .ioOut, .kvmRun, .dispatch:
                let again = a.label()
                a.bind(again)
                a.out(0x70, Register8.al)
                a.jmp(again)
            case .ioIn:
                let again = a.label()
                a.bind(again)
                a.in(Register8.al, 0x71)
                a.jmp(again)
            case .mmioWrite:
                a.mov(Register32.ebx, Immediate(Self.mmioAddress))
                let again = a.label()
                a.bind(again)
                a.mov(Memory.at(Register64.rbx), Register32.eax)
                a.jmp(again)
            case .mmioRead:
                a.mov(Register32.ebx, Immediate(Self.mmioAddress))
                let again = a.label()
                a.bind(again)
                a.mov(Register32.eax, Memory.at(Register64.rbx))
                a.jmp(again)
            case .hlt:
                let again = a.label()
                a.bind(again)
                a.hlt()
                a.jmp(again)
            case .msrRead:
                a.mov(Register32.ecx, 0x4B56_0001)  // no such MSR: KVM sends the access to user space
                let again = a.label()
                a.bind(again)
                a.rdmsr()
                a.jmp(again)
            case .msrWrite:
                a.mov(Register32.ecx, 0x4B56_0002)
                a.xor(Register32.eax, Register32.eax)
                a.xor(Register32.edx, Register32.edx)
                let again = a.label()
                a.bind(again)
                a.wrmsr()
                a.jmp(again)
            case .cpuid:
                let batch = a.label()
                let inner = a.label()
                a.bind(batch)
                a.mov(Register32.esi, Immediate(Self.cpuidBatch))
                a.bind(inner)
                a.xor(Register32.eax, Register32.eax)
                a.cpuid()
                a.dec(Register32.esi)
                a.jnz(inner)
                a.out(0x70, Register8.al)  // the doorbell: one user-space exit per batch
                a.jmp(batch)
            }
        }
    }

    /// Parses `--kinds a,b`; the error names the unknown kind and lists the valid ones.
    static func parseList(_ text: String) -> Result<[BenchKind], ParseError> {
        var kinds: [BenchKind] = []
        for name in text.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) where !name.isEmpty {
            guard let kind = BenchKind(rawValue: name) else { return .failure(ParseError(name: name)) }
            if !kinds.contains(kind) { kinds.append(kind) }
        }
        return kinds.isEmpty ? .failure(ParseError(name: text)) : .success(kinds)
    }

    struct ParseError: Error {
        var name: String
        var message: String {
            "'\(name)' is not a kind; use a comma-separated list of: \(BenchKind.allCases.map(\.rawValue).joined(separator: ", "))"
        }
    }
}
