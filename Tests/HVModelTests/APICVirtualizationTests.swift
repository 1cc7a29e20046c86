import HVModel
import Testing

@Suite("APIC virtualisation and posted interrupts")
struct APICVirtualizationTests {
    @Test("without virtual-interrupt delivery a TPR write below the threshold exits (SDM 30.1.2)")
    func tprThreshold() throws {
        var virtual = APICVirtualization()
        virtual.tprThreshold = 5
        #expect(virtual.writeVTPR(0x60) == nil)
        #expect(virtual.writeVTPR(0x4F) == .tprBelowThreshold)
        #expect(try virtual.moveToCR8(5) == nil)
        #expect(virtual.page.vtpr == 0x50)
        #expect(try virtual.moveToCR8(4) == .tprBelowThreshold)
        #expect(virtual.cr8 == 4 && virtual.page.vtpr == 0x40)
        #expect(raisesGP { try virtual.moveToCR8(0x10) })
        #expect(VirtualAPICExit.tprBelowThreshold.basicExitReason == 43)
    }

    @Test("VM entry checks the TPR threshold against VTPR, or exits at once with virtualised APIC accesses")
    func entryChecks() {
        var virtual = APICVirtualization()
        virtual.tprThreshold = 0x15
        #expect(virtual.tprThresholdEntryCheckFailure()?.hasPrefix("27.2.1.1") == true)
        virtual.tprThreshold = 6
        virtual.page.vtpr = 0x50
        #expect(virtual.tprThresholdEntryCheckFailure() != nil)
        virtual.virtualizeAPICAccesses = true
        #expect(virtual.tprThresholdEntryCheckFailure() == nil)
        #expect(virtual.vmEntry() == .tprBelowThreshold)
        virtual.tprThreshold = 5
        #expect(virtual.vmEntry() == nil)
    }

    /// Virtual-interrupt delivery on, VIRR {0x31, 0x52}, RVI 0x52, VTPR 0x40.
    func twoRequests() -> APICVirtualization {
        var virtual = APICVirtualization(virtualInterruptDelivery: true)
        virtual.page.virr = APICVectorSet([0x31, 0x52])
        virtual.guestInterruptStatus.rvi = 0x52
        virtual.page.vtpr = 0x40
        return virtual
    }

    @Test("virtual-interrupt delivery moves RVI to SVI and the next VIRR vector becomes RVI (SDM 30.2)")
    func delivery() {
        var virtual = twoRequests()
        #expect(virtual.vmEntry() == nil)
        #expect(virtual.page.vppr == 0x40)
        #expect(virtual.recognizedVirtualInterrupt == 0x52)
        #expect(virtual.deliverVirtualInterrupt() == 0x52)
        #expect(virtual.guestInterruptStatus == GuestInterruptStatus(rvi: 0x31, svi: 0x52))
        #expect(virtual.guestInterruptStatus.rawValue == 0x5231)
        #expect(virtual.page.vppr == 0x50 && virtual.page.visr == APICVectorSet([0x52]))
        #expect(virtual.evaluatePendingVirtualInterrupts() == nil)
        #expect(virtual.virtualizeEOI() == nil)
        #expect(virtual.guestInterruptStatus.svi == 0 && virtual.page.vppr == 0x40)
        #expect(virtual.recognizedVirtualInterrupt == nil)  // 0x31 is below VTPR's class
        #expect(virtual.writeVTPR(0x20) == nil)
        #expect(virtual.recognizedVirtualInterrupt == 0x31)
    }

    @Test("interrupt-window exiting holds back recognition")
    func interruptWindow() {
        var virtual = twoRequests()
        virtual.interruptWindowExiting = true
        _ = virtual.vmEntry()
        #expect(virtual.recognizedVirtualInterrupt == nil && virtual.deliverVirtualInterrupt() == nil)
    }

    @Test("EOI virtualisation exits for vectors in the EOI-exit bitmap, after updating SVI and VPPR")
    func eoiExit() {
        var virtual = twoRequests()
        virtual.eoiExitBitmap.insert(0x52)
        _ = virtual.vmEntry()
        _ = virtual.deliverVirtualInterrupt()
        #expect(virtual.virtualizeEOI() == .eoiInduced(vector: 0x52))
        #expect(VirtualAPICExit.eoiInduced(vector: 0x52).basicExitReason == 45)
        #expect(virtual.page.visr.isEmpty && virtual.page.vppr == 0x40)
    }

    @Test("nested virtual interrupts retire in order: SVI falls back to the next VISR vector")
    func nestedVirtualEOI() {
        var virtual = APICVirtualization(virtualInterruptDelivery: true)
        virtual.virtualizeSelfIPI(vector: 0x41)
        #expect(virtual.deliverVirtualInterrupt() == 0x41)
        virtual.virtualizeSelfIPI(vector: 0x61)
        #expect(virtual.guestInterruptStatus.rvi == 0x61)
        #expect(virtual.deliverVirtualInterrupt() == 0x61)
        _ = virtual.virtualizeEOI()
        #expect(virtual.guestInterruptStatus.svi == 0x41 && virtual.page.vppr == 0x40)
    }

    @Test("posted-interrupt descriptor fields sit at PIR 255:0, ON 256, SN 257, NV 279:272, NDST 319:288")
    func descriptorLayout() {
        var descriptor = PostedInterruptDescriptor(notificationVector: 0xF2, apicID: 0x1234_5678, x2APIC: true)
        descriptor.pir = APICVectorSet([0, 63, 64, 255])
        descriptor.outstandingNotification = true
        descriptor.suppressNotification = true
        let words = descriptor.words
        #expect(words.0 == 0x8000_0000_0000_0001 && words.1 == 1 && words.2 == 0 && words.3 == 0x8000_0000_0000_0000)
        #expect(words.4 == 0x1234_5678_00F2_0003)
        let bytes = descriptor.bytes
        #expect(bytes.count == 64 && bytes[32] == 0x03 && bytes[34] == 0xF2)
        #expect(Array(bytes[36..<40]) == [0x78, 0x56, 0x34, 0x12])
        #expect(PostedInterruptDescriptor(bytes: bytes) == descriptor)
        #expect(PostedInterruptDescriptor(words: words) == descriptor)
        let xAPIC = PostedInterruptDescriptor(notificationVector: 0xF2, apicID: 5, x2APIC: false)
        #expect(xAPIC.notificationDestination == 0x500 && xAPIC.destinationAPICID(x2APIC: false) == 5)
    }

    @Test("posting notifies only when ON was clear and SN is clear, unless urgent")
    func posting() {
        var descriptor = PostedInterruptDescriptor(notificationVector: 0xF2, apicID: 1, x2APIC: true)
        let first = descriptor.post(vector: 0x45)
        let second = descriptor.post(vector: 0x46)
        #expect(first && !second)
        #expect(descriptor.pir == APICVectorSet([0x45, 0x46]))
        var suppressed = PostedInterruptDescriptor()
        suppressed.suppressNotification = true
        let quiet = suppressed.post(vector: 0x30)
        #expect(!quiet && !suppressed.outstandingNotification)
        let urgent = suppressed.post(vector: 0x31, urgent: true)
        #expect(urgent)
    }

    @Test("posted-interrupt processing moves PIR into VIRR, clears ON and raises RVI (SDM 30.6)")
    func processing() {
        var descriptor = PostedInterruptDescriptor()
        _ = descriptor.post(vector: 0x45)
        _ = descriptor.post(vector: 0x66)
        var virtual = APICVirtualization(virtualInterruptDelivery: true)
        virtual.page.virr = APICVectorSet([0x50])
        virtual.guestInterruptStatus.rvi = 0x50
        virtual.processPostedInterrupts(&descriptor)
        #expect(!descriptor.outstandingNotification && descriptor.pir.isEmpty)
        #expect(virtual.page.virr == APICVectorSet([0x45, 0x50, 0x66]))
        #expect(virtual.guestInterruptStatus.rvi == 0x66 && virtual.recognizedVirtualInterrupt == 0x66)
    }

    @Test("the virtual-APIC page keeps registers at their xAPIC offsets, little-endian")
    func pageBytes() {
        var page = VirtualAPICPage()
        page.vtpr = 0x20
        page.virr = APICVectorSet([0x31])
        page.vicr = 0x0000_0003_0000_4031
        let bytes = page.bytes
        #expect(bytes[0x80] == 0x20 && bytes[0x212] == 0x02 && bytes[0x300] == 0x31 && bytes[0x310] == 3)
        #expect(VirtualAPICPage(bytes: bytes) == page)
        #expect(VirtualAPICPage(bytes: [UInt8](repeating: 0, count: 10)) == nil)
    }
}
