// The SVM control area from a configuration: intercept words at the APM's bit positions, and the
// I/O and MSR permission maps made from VMX's bitmap types (AMD APM Vol. 2, 15.10.1, 15.11).
import HVModel
import Testing

@Suite("SVM configuration and permission maps")
struct SVMConfigurationTests {
    @Test("the default intercepts sit at Table B-1's bits: INTR, NMI, SMI, CPUID, HLT, IOIO, MSR, SHUTDOWN; VMRUN, VMMCALL")
    func interceptWords() {
        let intercepts = SVMConfiguration().intercepts
        let misc1: UInt32 = 0b1001_1001_0000_0100_0000_0000_0000_0111  // bits 0, 1, 2, 18, 24, 27, 28, 31
        #expect(intercepts.misc1 == misc1)
        #expect(intercepts.misc2 == 0b11)
    }

    @Test("MSR permission positions: two bits per MSR, read then write, in three 2-KiB vectors")
    func msrPositions() {
        func at(_ msr: UInt32, _ access: MSRAccess) -> [Int] {
            SVMMSRPermissionMap.position(of: msr, access).map { [$0.byte, $0.bit] } ?? []
        }
        #expect(at(0, .read) == [0, 0])
        #expect(at(0, .write) == [0, 1])
        #expect(at(0x10, .write) == [4, 1])
        #expect(at(0xC000_0080, .read) == [0x820, 0])
        #expect(at(0xC001_0117, .write) == [0x1045, 7])
        #expect(SVMMSRPermissionMap.position(of: 0x4000_0000, .read) == nil)
    }

    @Test("the MSR map intercepts exactly what the VMX bitmap makes exit; C001_xxxx and uncovered MSRs always")
    func msrMapFromBitmap() {
        var bitmap = MSRBitmap(trapAll: true)
        bitmap.passThrough(0xC000_0100)
        bitmap.setExits(0x10, .read, false)
        let map = SVMMSRPermissionMap(bitmap)
        #expect(map.bytes.count == 8192)
        #expect(!map.intercepts(0xC000_0100, .read) && !map.intercepts(0xC000_0100, .write))
        #expect(!map.intercepts(0x10, .read) && map.intercepts(0x10, .write))
        #expect(map.intercepts(0x1B, .read) && map.intercepts(0xC000_0080, .write))
        #expect(map.intercepts(0xC001_0114, .read) && map.intercepts(0x4000_0000, .read))
        // Every MSR in both covered ranges agrees with the bitmap.
        for base: UInt32 in [0, 0xC000_0000] {
            for msr in base..<(base + 0x2000) {
                for access in MSRAccess.allCases where map.intercepts(msr, access) != bitmap.exits(msr, access) {
                    Issue.record("MSR \(msr) \(access)")
                }
            }
        }
        let configuration = SVMConfiguration()
        #expect(!configuration.msrPermissionMap.intercepts(0xC000_0101, .write))
        #expect(configuration.msrPermissionMap.intercepts(0x10, .read))
    }

    @Test("the I/O map: one bit per port from bitmaps A and B, the bits past FFFFh set")
    func ioMapFromBitmaps() {
        var bitmaps = IOBitmaps(trapAll: true)
        bitmaps.setTrap(0x80, false)
        bitmaps.setTrap(0x9000, false)
        let map = SVMIOPermissionMap(bitmaps)
        #expect(map.bytes.count == 12288)
        #expect(!map.intercepts(0x80) && !map.intercepts(0x9000))
        #expect(map.intercepts(0x3F8) && map.intercepts(0xFFFF) && map.intercepts(0x8FFF))
        #expect(map.bytes[8192...].allSatisfy { $0 == 0xFF })
    }

    @Test("a real-mode guest under the default configuration passes VMRUN's checks")
    func passesVMRUNChecks() {
        let configuration = SVMConfiguration()
        let state = configuration.applied(to: SVMGuestState(), iopmBase: 0x10_0000, msrpmBase: 0x10_3000)
        #expect(VMRUNChecks.failures(state).isEmpty)
        var broken = configuration
        broken.intercepts.remove(.vmrun)
        broken.asid = 0
        let failures = VMRUNChecks.failures(broken.applied(to: SVMGuestState(), iopmBase: 0x10_0000, msrpmBase: 0x10_3000))
        #expect(failures.count == 2)
    }
}
