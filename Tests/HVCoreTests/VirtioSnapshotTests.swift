// Virtio devices in snapshots (Documentation/Snapshots.md): a transport's state saved mid-use,
// restored into a new transport on a copy of guest memory, and driven on from where the driver
// was; holding a device's work while paused; refusals of state that does not fit; the disk
// image's lock handed over as in a live migration.
import Foundation
import HVCore
import Synchronization
import Testing

/// A copy of `memory`'s RAM in new memory of the same layout, as a restore maps a snapshot's.
func copyOfMemory(_ memory: GuestMemory) throws -> GuestMemory {
    let copy = try GuestMemory(regions: memory.regions.map { try MemoryRegion(guestAddress: $0.guestAddress, size: $0.size) })
    for (from, to) in zip(memory.regions, copy.regions) { to.hostAddress.copyMemory(from: from.hostAddress, byteCount: Int(from.size)) }
    return copy
}

@Suite("virtio devices in snapshots")
struct VirtioSnapshotTests {
    typealias Image = VirtioBlockTests.Image

    @Test("virtio-blk over virtio-mmio: saved after two requests, restored on a copy of RAM, the driver goes on: the third request is used in the next slot and reads what the first wrote")
    func blockContinues() throws {
        let image = try Image(sectors: 64)
        let first = try VirtioBlock(path: image.path)
        let driver = try VirtioTestDriver(first)
        driver.initialise()
        let pattern = (0..<512).map { UInt8(truncatingIfNeeded: $0 &* 5 &+ 1) }
        try driver.memory.write(bytes: pattern, at: GuestPhysicalAddress(VirtioBlockTests.buffer))
        #expect(try VirtioBlockTests.request(driver, type: 1, sector: 3, data: 512, toDevice: true) == (0, 1))
        #expect(try VirtioBlockTests.request(driver, type: 4, sector: 0, data: 0) == (0, 1))
        driver.transport.holdActivity()
        let state = try saved(driver.transport)
        let memory = try copyOfMemory(driver.memory)
        // The source lets go of the image (as a migration's source does); the copy takes it.
        first.releaseBacking()
        let second = try VirtioBlock(path: image.path, claim: false)
        try second.claimBacking()
        let transport = VirtioMMIOTransport(device: second, memory: memory, interrupt: nil)
        try restore(transport, state)
        #expect(transport.status == driver.transport.status && transport.negotiatedFeatures == driver.transport.negotiatedFeatures)
        transport.releaseActivity()
        let restored = VirtioTestDriver(transport: transport, memory: memory, availableIndex: driver.availableIndex)
        try memory.fill(0, count: 512, at: GuestPhysicalAddress(VirtioBlockTests.buffer))
        #expect(try VirtioBlockTests.request(restored, type: 0, sector: 3, data: 512) == (0, 513))
        #expect(restored.usedIndex == 3)
        #expect(try memory.readBytes(at: GuestPhysicalAddress(VirtioBlockTests.buffer), count: 512) == pattern)
        // The original memory never saw the third request.
        #expect(driver.usedIndex == 2)
    }

    @Test("a held transport serves nothing (a host thread's request and a doorbell wait) until released; the state saved meanwhile does not move")
    func holdAndRelease() throws {
        let driver = try VirtioTestDriver(VirtioEntropy())
        driver.initialise()
        try driver.descriptor(0, address: VirtioTestDriver<VirtioEntropy>.data, length: 32, flags: descriptorWrite)
        driver.transport.holdActivity()
        try driver.submit(0)
        driver.transport.serve(queue: 0)
        #expect(driver.usedIndex == 0, "held: nothing used")
        let before = try saved(driver.transport)
        #expect(try saved(driver.transport) == before)
        driver.transport.releaseActivity()
        #expect(driver.usedIndex == 1)
        #expect(try driver.used(0) == (0, 32))
    }

    @Test("a restored transport serves on release what the driver made available before the snapshot but the device had not taken (a notification on its way)")
    func pendingAtSnapshot() throws {
        let driver = try VirtioTestDriver(VirtioEntropy())
        driver.initialise()
        try driver.descriptor(0, address: VirtioTestDriver<VirtioEntropy>.data, length: 16, flags: descriptorWrite)
        driver.transport.holdActivity()
        try driver.submit(0, notify: false)
        let state = try saved(driver.transport)
        let memory = try copyOfMemory(driver.memory)
        let transport = VirtioMMIOTransport(device: VirtioEntropy(), memory: memory, interrupt: nil)
        try restore(transport, state)
        let restored = VirtioTestDriver(transport: transport, memory: memory, availableIndex: driver.availableIndex)
        #expect(restored.usedIndex == 0)
        transport.releaseActivity()
        #expect(restored.usedIndex == 1)
    }

    @Test("refusals name what differs: another device type, another disk size, another MAC address, rings outside the restoring VM's RAM, a truncated state")
    func refusals() throws {
        let image = try Image(sectors: 64), other = try Image(sectors: 32)
        let device = try VirtioBlock(path: image.path)
        let driver = try VirtioTestDriver(device)
        driver.initialise()
        let state = try saved(driver.transport)
        func refusal(_ transport: SnapshotDevice, _ bytes: [UInt8]) -> String {
            do throws(StateDecodingError) {
                try restore(transport, bytes)
                return "restored"
            } catch { return error.description }
        }
        let memory = try copyOfMemory(driver.memory)
        let entropy = VirtioMMIOTransport(device: VirtioEntropy(), memory: memory, interrupt: nil)
        #expect(refusal(entropy, state).contains("device type 2"))
        let smaller = VirtioMMIOTransport(device: try VirtioBlock(path: other.path), memory: memory, interrupt: nil)
        #expect(refusal(smaller, state).contains("has 32 sectors; the snapshot's disk had 64"))
        let tiny = try GuestMemory(regions: [MemoryRegion(guestAddress: 0, size: 64 << 10)])
        device.releaseBacking()
        let outside = VirtioMMIOTransport(device: try VirtioBlock(path: image.path), memory: tiny, interrupt: nil)
        #expect(refusal(outside, state).contains("is not inside guest RAM"))
        let same = VirtioMMIOTransport(device: VirtioEntropy(), memory: memory, interrupt: nil)
        let entropyDriver = VirtioTestDriver(transport: same, memory: memory, availableIndex: 0)
        entropyDriver.initialise()
        let entropyState = try saved(same)
        for cut in [1, 10, entropyState.count - 1] {
            #expect(refusal(VirtioMMIOTransport(device: VirtioEntropy(), memory: memory, interrupt: nil), Array(entropyState.prefix(cut))).contains("short"))
        }
        // virtio-net: the MAC address the guest knows.
        let a = SocketFrames(), b = SocketFrames()
        let net = VirtioMMIOTransport(device: VirtioNetwork(endpoint: a, mac: MACAddress(parsing: "52:54:00:00:00:01")!), memory: memory, interrupt: nil)
        let netState = try saved(net)
        let otherNet = VirtioMMIOTransport(device: VirtioNetwork(endpoint: b, mac: MACAddress(parsing: "52:54:00:00:00:02")!), memory: memory, interrupt: nil)
        #expect(refusal(otherNet, netState).contains("is 52:54:00:00:00:02 here; the snapshot's was 52:54:00:00:00:01"))
        net.device.stop()
        otherNet.device.stop()
    }

    @Test("a disk image's lock is handed over: a second opener is refused while the first holds it, may open without claiming, and claims once the first lets go")
    func diskHandOver() throws {
        let image = try Image(sectors: 8)
        let first = try VirtioBlock(path: image.path)
        #expect(throws: VirtioBlockError.self) { try VirtioBlock(path: image.path) }
        let second = try VirtioBlock(path: image.path, claim: false)
        let started = Date()
        #expect(throws: HVError.self) { try second.claimBacking() }
        #expect(Date().timeIntervalSince(started) >= 0.9, "it waits a second for a source that is letting go")
        first.releaseBacking()
        try second.claimBacking()
        #expect(throws: HVError.self) { try first.claimBacking() }
    }

    @Test("virtio-console: input typed while paused is in the state and reaches the restored driver's buffer")
    func consoleInput() throws {
        let console = VirtioConsole(output: .discard)
        let driver = try VirtioTestDriver(console)
        driver.initialise()
        driver.transport.holdActivity()
        console.receive(Array("ls\n".utf8))
        let state = try saved(driver.transport)
        let memory = try copyOfMemory(driver.memory)
        let restoredConsole = VirtioConsole(output: .discard)
        let transport = VirtioMMIOTransport(device: restoredConsole, memory: memory, interrupt: nil)
        try restore(transport, state)
        transport.releaseActivity()
        let restored = VirtioTestDriver(transport: transport, memory: memory, availableIndex: driver.availableIndex)
        try restored.descriptor(0, address: VirtioTestDriver<VirtioConsole>.data, length: 64, flags: descriptorWrite)
        try restored.submit(0)
        #expect(try restored.used(0) == (0, 3))
        #expect(try memory.readBytes(at: GuestPhysicalAddress(VirtioTestDriver<VirtioConsole>.data), count: 3) == Array("ls\n".utf8))
    }

    @Test("virtio-vsock: a restored device tells the driver its transport was reset (event id 0 in the driver's event buffer); the source keeps its connections")
    func vsockTransportReset() throws {
        let bench = try VsockBench()
        try bench.event.post(bench.driver, writableLength: 4)
        #expect(try bench.event.usedCount(bench.driver) == 0, "no event while nothing happened")
        bench.driver.transport.holdActivity()
        let state = try saved(bench.driver.transport)
        bench.driver.transport.releaseActivity()
        #expect(try bench.event.usedCount(bench.driver) == 0, "the source owes no reset")
        let memory = try copyOfMemory(bench.driver.memory)
        let device = try VirtioVsock(guestCID: 3, path: bench.folder.appendingPathComponent("restored.sock").path)
        defer { device.stop() }
        let transport = VirtioMMIOTransport(device: device, memory: memory, interrupt: nil)
        try restore(transport, state)
        transport.releaseActivity()
        let restored = VirtioTestDriver(transport: transport, memory: memory, availableIndex: 0)
        var event = bench.event
        #expect(try event.takeUsed(restored) == [[0, 0, 0, 0]])
    }

    @Test("virtio-balloon: the target and actual size the driver knows, the counters and the last report survive")
    func balloonState() throws {
        let balloon = try VirtioBalloon(targetBytes: 8 << 20, statisticsInterval: nil)
        let driver = try VirtioTestDriver(balloon)
        driver.initialise()
        driver.transport.mmioWrite(offset: 0x104, width: 4, value: 512)
        let state = try saved(driver.transport)
        let restoredBalloon = try VirtioBalloon(targetBytes: 0, statisticsInterval: nil)
        let transport = VirtioMMIOTransport(device: restoredBalloon, memory: try copyOfMemory(driver.memory), interrupt: nil)
        try restore(transport, state)
        #expect(restoredBalloon.targetPages == 2048 && restoredBalloon.actualPages == 512)
        #expect(transport.mmioRead(offset: 0x100, width: 4) == 2048)
        #expect(restoredBalloon.counters == balloon.counters && restoredBalloon.statistics == balloon.statistics)
    }

    @Test("virtio-pci: BAR, MSI-X table, a pending masked vector and the queue come back; the next request is used in the next slot and its interrupt is the restored vector's message")
    func pciContinues() throws {
        let bench = try PCIBench()
        bench.initialise()
        try bench.request(0)
        #expect(bench.usedIndex == 1 && bench.controller.sent == [0x41])
        bench.write(0x4000 + 28, 4, 1)  // mask vector 1: the next interrupt waits
        try bench.request(1)
        #expect(bench.read(0x5000, 8) == 0b10)
        bench.transport.holdActivity()
        var encoder = StateEncoder()
        bench.transport.saveFunctionState(to: &encoder)
        let restored = try PCIBench(memory: try copyOfMemory(bench.memory))
        restored.setConfig(0x10, 4, 0xD000_0000)  // elsewhere until the restore puts it back
        var decoder = StateDecoder(encoder.bytes)
        try restored.transport.restoreFunctionState(from: &decoder)
        try decoder.finish("state")
        restored.transport.releaseActivity()
        #expect(restored.transport.barAddress == PCIBench.base && restored.transport.msixEnabled)
        #expect(restored.read(0x5000, 8) == 0b10, "the pending bit")
        restored.write(0x4000 + 28, 4, 0)
        #expect(restored.controller.sent == [0x41], "unmasking sends what was pending, with the restored message")
        try restored.request(2)
        #expect(restored.usedIndex == 3 && restored.controller.sent == [0x41, 0x41])
    }
}
