// The TIS register model without a VM or a TPM (PTP section 6 register tables).
import HVTPM
import Testing

@Suite struct TPMTISInterfaceTests {
    typealias Access = TISInterface.Access
    typealias Status = TISInterface.Status

    @Test func identificationRegistersReadTheSameFromEveryLocality() {
        var driver = TISDriver()
        for locality in 0..<5 {
            #expect(driver.read(locality, 0xF00, width: 4) == 0x0001_1014)
            #expect(driver.read(locality, 0xF04) == 0x01)
            #expect(driver.read(locality, 0x14, width: 4) == UInt64(TISInterface.interfaceCapability))
            #expect(driver.read(locality, 0x30, width: 4) == UInt64(TISInterface.interfaceID))
        }
        #expect(TISInterface.interfaceCapability == 0x3000_0697)
        #expect(driver.read(0, 0xF00, width: 2) == 0x1014)  // vendor ID alone
    }

    @Test func requestUseGrantsAFreeInterfaceAtOnce() {
        var driver = TISDriver()
        #expect(driver.read(0, 0x00) == UInt64(Access.registerValid | Access.establishment))
        #expect(driver.status(0) == 0xFFFF_FFFF)  // STS of an inactive locality floats high
        driver.write(0, 0x00, UInt64(Access.requestUse))
        #expect(driver.tis.activeLocality == 0)
        #expect(driver.read(0, 0x00) & UInt64(Access.activeLocality) != 0)
        #expect(driver.status(0) & Status.family20 != 0)
        #expect(driver.tis.state == .idle)
    }

    @Test func aPendingRequestIsGrantedWhenTheOwnerRelinquishes() {
        var driver = TISDriver()
        driver.write(0, 0x00, UInt64(Access.requestUse))
        driver.write(2, 0x00, UInt64(Access.requestUse))
        #expect(driver.tis.activeLocality == 0)
        #expect(driver.read(0, 0x00) & UInt64(Access.pendingRequest) != 0)
        #expect(driver.read(2, 0x00) & UInt64(Access.requestUse) != 0)
        driver.write(0, 0x00, UInt64(Access.activeLocality))  // relinquish
        #expect(driver.tis.activeLocality == 2)
        #expect(driver.read(0, 0x00) & UInt64(Access.pendingRequest) == 0)
    }

    @Test func onlyAHigherLocalityMaySeizeAndTheLoserSeesBeenSeized() {
        var driver = TISDriver()
        driver.write(3, 0x00, UInt64(Access.requestUse))
        driver.write(1, 0x00, UInt64(Access.seize))
        #expect(driver.tis.activeLocality == 3)
        driver.write(3, 0x18, 0x40)
        driver.write(3, 0x24, 0x80)  // a command in reception
        driver.write(4, 0x00, UInt64(Access.seize))
        #expect(driver.tis.activeLocality == 4)
        #expect(driver.tis.state == .idle)  // the seized command was dropped
        #expect(driver.read(3, 0x00) & UInt64(Access.beenSeized) != 0)
        driver.write(3, 0x00, UInt64(Access.beenSeized))  // write 1 to clear
        #expect(driver.read(3, 0x00) & UInt64(Access.beenSeized) == 0)
    }

    @Test func theStateMachineRunsIdleReadyReceptionExecutionCompletion() {
        var driver = TISDriver()
        var seenState: TISInterface.State?
        driver.write(0, 0x00, 0x02)
        #expect(driver.tis.state == .idle)
        driver.write(0, 0x18, 0x40)
        #expect(driver.tis.state == .ready)
        #expect(driver.status() & Status.commandReady != 0)
        #expect(driver.status() >> 8 & 0xFFFF == 4096)  // burstCount: the whole buffer
        let command = TPMCommand.getRandom(4)
        for (index, byte) in command.enumerated() {
            driver.write(0, 0x24, UInt64(byte))
            #expect(driver.tis.state == .reception)
            let expecting = driver.status() & Status.expect != 0
            #expect(expecting == (index < command.count - 1))
        }
        #expect(driver.read(0, 0x19, width: 2) == UInt64(4096 - command.count))  // burstCount as a 16-bit read
        driver.respond = { _, _ in
            [0x80, 0x01, 0, 0, 0, 16, 0, 0, 0, 0, 0, 4, 1, 2, 3, 4]
        }
        driver.write(0, 0x18, 0x20)  // tpmGo
        seenState = driver.tis.state
        #expect(seenState == .completion)
        #expect(driver.executed == [command])
        #expect(driver.status() & Status.dataAvailable != 0)
        #expect(driver.read(0, 0x24, width: 4) == 0x0000_0180)  // 4-byte FIFO read, little-endian
        var rest: [UInt8] = []
        while driver.status() & Status.dataAvailable != 0 { rest.append(UInt8(driver.read(0, 0x24))) }
        #expect(rest == [0, 16, 0, 0, 0, 0, 0, 4, 1, 2, 3, 4])
        #expect(driver.read(0, 0x24) == 0xFF)  // past the end
        driver.write(0, 0x18, UInt64(Status.responseRetry))
        #expect(driver.read(0, 0x24) == 0x80)  // from the start again
        driver.write(0, 0x18, 0x40)
        #expect(driver.tis.state == .ready)
    }

    @Test func readsInTheWrongStateAndWritesFromAnInactiveLocalityChangeNothing() {
        var driver = TISDriver()
        driver.write(0, 0x00, 0x02)
        #expect(driver.read(0, 0x24) == 0xFF)  // idle: no data
        driver.write(1, 0x18, 0x40)  // locality 1 is not active
        #expect(driver.tis.state == .idle)
        driver.write(0, 0x18, 0x40)
        driver.write(1, 0x24, 0x80)
        #expect(driver.tis.state == .ready)
        #expect(driver.read(1, 0x24) == 0xFF)
    }

    @Test func tpmGoIsIgnoredUntilTheWholeCommandArrived() {
        var driver = TISDriver()
        driver.write(0, 0x00, 0x02)
        driver.write(0, 0x18, 0x40)
        for byte in TPMCommand.getRandom(4).prefix(7) { driver.write(0, 0x24, UInt64(byte)) }
        driver.write(0, 0x18, 0x20)
        #expect(driver.executed.isEmpty)
        #expect(driver.tis.state == .reception)
        driver.write(0, 0x18, 0x40)  // commandReady aborts the truncated command
        #expect(driver.tis.state == .ready)
    }

    @Test func bytesPastTheAnnouncedSizeAreDropped() {
        var driver = TISDriver()
        driver.write(0, 0x00, 0x02)
        driver.write(0, 0x18, 0x40)
        let command = TPMCommand.getRandom(4)
        for byte in command + [0xAA, 0xBB] { driver.write(0, 0x24, UInt64(byte)) }
        #expect(driver.tis.droppedBytes == 2)
        driver.write(0, 0x18, 0x20)
        #expect(driver.executed == [command])
    }

    @Test func aGarbageHeaderIsAnsweredWithCommandSizeWithoutReachingTheTPM() {
        var driver = TISDriver()
        let response = driver.transact([0x80, 0x01, 0, 0, 0, 3, 0, 0, 1, 0x7B])  // size 3 < header
        #expect(driver.executed.isEmpty)
        #expect(TPMResponse.code(response) == TPMResponseCode.commandSize.rawValue)
    }

    @Test func aCommandLargerThanTheBufferIsReceivedUpToTheBufferAndRefused() {
        var driver = TISDriver(tis: TISInterface(bufferSize: 64))
        driver.write(0, 0x00, 0x02)
        driver.write(0, 0x18, 0x40)
        let header: [UInt8] = [0x80, 0x01, 0, 0, 0x10, 0, 0, 0, 1, 0x7B]  // announces 4096 bytes
        for byte in header + [UInt8](repeating: 0, count: 100) { driver.write(0, 0x24, UInt64(byte)) }
        #expect(driver.status() & Status.expect == 0)
        #expect(driver.tis.droppedBytes == 46)
        driver.write(0, 0x18, 0x20)
        #expect(driver.executed.isEmpty)
        var response: [UInt8] = []
        while driver.status() & Status.dataAvailable != 0 { response.append(UInt8(driver.read(0, 0x24))) }
        #expect(TPMResponse.code(response) == TPMResponseCode.commandSize.rawValue)
    }

    @Test func commandReadyDuringExecutionDropsTheResponse() {
        var tis = TISInterface()
        _ = tis.write(offset: 0, width: 1, value: 0x02)
        _ = tis.write(offset: 0x18, width: 1, value: 0x40)
        for byte in TPMCommand.getRandom(4) { _ = tis.write(offset: 0x24, width: 1, value: UInt64(byte)) }
        let action = tis.write(offset: 0x18, width: 1, value: 0x20)
        guard case .execute = action else {
            Issue.record("tpmGo did not start execution: \(action)")
            return
        }
        #expect(tis.state == .execution)
        #expect(tis.write(offset: 0x1B, width: 1, value: 0x01) == .cancel)  // commandCancel (bit 24)
        _ = tis.write(offset: 0x18, width: 1, value: 0x40)
        tis.complete(response: TPMResponse.error(.canceled))
        #expect(tis.state == .ready)
        #expect(tis.read(offset: 0x24, width: 1) == 0xFF)
    }

    @Test func enabledInterruptsAssertOnDataAvailableAndClearWhenAcknowledged() {
        var driver = TISDriver()
        driver.write(0, 0x00, 0x02)
        driver.write(0, 0x0C, 5)  // SIRQ 5
        driver.write(0, 0x08, UInt64(TISInterface.Interrupt.globalEnable | TISInterface.Interrupt.dataAvailable), width: 4)
        #expect(!driver.tis.interruptAsserted)
        _ = driver.transact(TPMCommand.getRandom(2))
        #expect(driver.tis.interruptAsserted)
        #expect(driver.tis.interruptLine == 5)
        #expect(driver.read(0, 0x10, width: 4) == UInt64(TISInterface.Interrupt.dataAvailable))
        driver.write(0, 0x10, UInt64(TISInterface.Interrupt.dataAvailable), width: 4)
        #expect(!driver.tis.interruptAsserted)
    }

    @Test func accessesOutsideTheWindowOrOfOddWidthsAreHarmless() {
        var tis = TISInterface()
        #expect(tis.read(offset: 0x5000, width: 4) == 0xFFFF_FFFF)
        #expect(tis.read(offset: 0x18, width: 3) == 0xFF_FFFF)
        #expect(tis.write(offset: 0x7000, width: 4, value: 0x40) == .none)
        #expect(tis.read(offset: 0xF00, width: 8) == 0x0000_0001_0001_1014)  // DID_VID, then RID
    }
}
