// QEMU's isa-debug-exit convention: a write stops the VM with the value; the host exit status
// is (value << 1) | 1.
import HVCore
import Testing

@Suite struct DebugExitDeviceTests {
    @Test func writeStopsTheVMWithTheWrittenCode() {
        let device = DebugExitDevice()
        #expect(device.width == .doubleword)
        #expect(device.portCount == 4)
        #expect(device.name == "debug-exit")
        #expect(device.portWrite(offset: 0, size: 4, value: 0x31) == .stop(.debugExit(code: 0x31)))
        #expect(device.portWrite(offset: 0, size: 4, value: 0xDEAD_BEEF) == .stop(.debugExit(code: 0xDEAD_BEEF)))
        #expect(device.portWrite(offset: 0, size: 1, value: 0) == .stop(.debugExit(code: 0)))
    }

    @Test func codeIsLimitedToTheAccessSizeAndTheDeviceWidth() {
        let byte = DebugExitDevice(width: .byte)
        #expect(byte.portCount == 1)
        #expect(byte.portWrite(offset: 0, size: 4, value: 0x1234) == .stop(.debugExit(code: 0x34)))

        let word = DebugExitDevice(width: .word)
        #expect(word.portCount == 2)
        #expect(word.portWrite(offset: 0, size: 4, value: 0x1234_5678) == .stop(.debugExit(code: 0x5678)))
        #expect(word.portWrite(offset: 1, size: 1, value: 0x1FF) == .stop(.debugExit(code: 0xFF)))

        let doubleword = DebugExitDevice(width: .doubleword)
        #expect(doubleword.portWrite(offset: 0, size: 2, value: 0xABCD) == .stop(.debugExit(code: 0xABCD)))
        #expect(doubleword.portWrite(offset: 0, size: 1, value: 0x1FF) == .stop(.debugExit(code: 0xFF)))

        #expect(DebugExitDevice.Width(rawValue: 3) == nil)
        #expect(DebugExitDevice.Width.allCases.map(\.rawValue) == [1, 2, 4])
    }

    @Test func readsReturnAllOnesOfTheAccessSize() {
        let device = DebugExitDevice()
        #expect(device.portRead(offset: 0, size: 1) == 0xFF)
        #expect(device.portRead(offset: 0, size: 2) == 0xFFFF)
        #expect(device.portRead(offset: 0, size: 4) == 0xFFFF_FFFF)
    }

    @Test func exitStatusIsCodeShiftedLeftWithTheLowBitSet() {
        #expect(DebugExitDevice.exitStatus(forCode: 0) == 1)
        #expect(DebugExitDevice.exitStatus(forCode: 1) == 3)
        #expect(DebugExitDevice.exitStatus(forCode: 0x31) == 0x63)
        #expect(DebugExitDevice.exitStatus(forCode: 0x7F) == 0xFF)
        // Past 0x7F the status no longer fits the 8 bits a process exit status keeps.
        #expect(DebugExitDevice.exitStatus(forCode: 0x80) == 0x101)
        #expect(DebugExitDevice.exitStatus(forCode: 0x80) & 0xFF == 1)
        // Computed in 64 bits and converted to a C int: bit 31 of the code is shifted out.
        #expect(DebugExitDevice.exitStatus(forCode: 0x8000_0000) == 1)
        #expect(DebugExitDevice.exitStatus(forCode: 0xFFFF_FFFF) == -1)
    }
}
