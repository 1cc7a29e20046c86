// The exit trace line (HV_LOG_LEVEL=trace HV_LOG_CATEGORIES=exits): one line, hex operands.

@testable import HVCore
import HVModel
import Testing

@Suite("exit trace lines")
struct ExitTraceTests {
    @Test("port I/O: port, size and the value (every element of a string instruction) in hex")
    func portIO() {
        var line = ""
        _ = withPortIO(IOPort(0x3F8), size: 1, elements: [0x48]) { io in
            line = exitTraceLine(vcpu: 0, rip: 0x10_0045, exit: .portOut(io), action: .resume)
            return nil
        }
        #expect(line == "vcpu0 rip=0x100045 io-out port=0x3f8 size=1 value=0x48 -> resume")
        _ = withPortIO(IOPort(0xE0), size: 2, elements: [0x41, 0x4243, 0xFFFF]) { io in
            line = exitTraceLine(vcpu: 3, rip: nil, exit: .portIn(io), action: .resume)
            return nil
        }
        #expect(line == "vcpu3 io-in port=0xe0 size=2 count=3 values=0x41,0x4243,0xffff -> resume")
    }

    @Test("MMIO, MSRs and the rest: operands in hex, then the action")
    func others() {
        let read = MMIOAccess(address: GuestPhysicalAddress(0xFEE0_0020), width: 4)
        #expect(exitTraceLine(vcpu: 0, rip: 0x90, exit: .mmioRead(read), action: .resumeWith(0x1400_0000))
            == "vcpu0 rip=0x90 mmio-read addr=0xfee00020 width=4 -> resume value=0x14000000")
        let write = MMIOAccess(address: GuestPhysicalAddress(0xD000_0000), width: 8, value: 0x1234)
        #expect(exitTraceLine(vcpu: 1, rip: 0x91, exit: .mmioWrite(write), action: .resume)
            == "vcpu1 rip=0x91 mmio-write addr=0xd0000000 width=8 value=0x1234 -> resume")
        #expect(exitTraceLine(vcpu: 0, rip: 0x92, exit: .msrWrite(index: 0x1B, value: 0xFEE0_0900), action: .fault)
            == "vcpu0 rip=0x92 msr-write index=0x1b value=0xfee00900 -> fault (#GP)")
        #expect(exitTraceLine(vcpu: 0, rip: 0x93, exit: .halt, action: .stop(.halted))
            == "vcpu0 rip=0x93 hlt -> stop (the guest halted (HLT with nothing to wake it))")
        #expect(exitTraceLine(vcpu: 0, rip: nil, exit: .internalError(InternalError(suberror: 1, data: (0xAB, 2, 0, 0), dataCount: 2)), action: .stop(.backendFailure))
            == "vcpu0 internal-error suberror=1 data=0xab,0x2 -> stop (the backend failed)")
    }
}
