// libFuzzer target: the virtio-mmio transport, the split virtqueue and the block, entropy,
// console, network, vsock and balloon devices with guest memory that is entirely the fuzzer's. The first bytes choose the
// device, the negotiated features, the queue size and how many notifications to send; the rest
// is guest RAM (descriptor table at 0x1000, available ring at 0x2000, used ring at 0x3000,
// buffers anywhere). Whatever it holds, serving the queue must neither trap nor hang nor touch
// host memory outside guest RAM, and the disk image must keep its size. Inputs of kind 6 are
// register accesses to a virtio-pci function instead (its configuration space and BAR 0).
// Built and run by scripts/fuzz-virtio.sh against HVCore compiled with coverage.
import Foundation
import HVCore
import Logging

/// Everything built once per process: guest RAM, an image file, the devices.
private struct Harness {
    static let memorySize: UInt64 = 64 << 10
    static let imageSize = 64 * 512
    let memory: GuestMemory
    let imagePath: String
    let block: VirtioMMIOTransport<VirtioBlock>
    let entropy: VirtioMMIOTransport<VirtioEntropy>
    let console: VirtioMMIOTransport<VirtioConsole>
    let consoleDevice: VirtioConsole
    let vsock: VirtioMMIOTransport<VirtioVsock>
    let pci: VirtioPCITransport<VirtioBlock>
    let network: VirtioMMIOTransport<VirtioNetwork>
    let frames: FuzzFrames
    let balloon: VirtioMMIOTransport<VirtioBalloon>

    init() {
        // Device warnings (a broken chain is logged once per device) would flood the output.
        LoggingSystem.bootstrap { _ in SwiftLogNoOpLogHandler() }
        memory = try! GuestMemory(regions: [MemoryRegion(guestAddress: 0, size: Self.memorySize)])
        imagePath = NSTemporaryDirectory() + "hv-virtio-fuzz-\(getpid()).img"
        precondition(FileManager.default.createFile(atPath: imagePath, contents: Data(repeating: 0, count: Self.imageSize)))
        block = VirtioMMIOTransport(device: try! VirtioBlock(path: imagePath), memory: memory, interrupt: nil)
        entropy = VirtioMMIOTransport(device: VirtioEntropy(), memory: memory, interrupt: nil)
        consoleDevice = VirtioConsole(output: .discard)
        console = VirtioMMIOTransport(device: consoleDevice, memory: memory, interrupt: nil)
        // No host program listens beside the vsock socket: guest connections are refused (RST).
        vsock = VirtioMMIOTransport(device: try! VirtioVsock(guestCID: 3, path: NSTemporaryDirectory() + "hv-virtio-fuzz-\(getpid()).vsock"),
                                    memory: memory, interrupt: nil)
        // A second image: the first one's exclusive lock keeps it for the virtio-mmio disk.
        let pciImage = imagePath + ".pci"
        precondition(FileManager.default.createFile(atPath: pciImage, contents: Data(repeating: 0, count: Self.imageSize)))
        pci = try! VirtioPCITransport(device: try! VirtioBlock(path: pciImage), memory: memory, controller: nil)
        pci.assign(address: 0xC000_0000)
        // The network device's frames go to a socket pair (a TAP needs privileges); the
        // harness drains what it sends and feeds it frames of the input.
        frames = FuzzFrames()
        network = VirtioMMIOTransport(device: VirtioNetwork(endpoint: frames), memory: memory, interrupt: nil)
        balloon = VirtioMMIOTransport(device: try! VirtioBalloon(targetBytes: 32 << 10, statisticsInterval: nil), memory: memory, interrupt: nil)
    }
}

private let harness = Harness()

/// One end of a SOCK_SEQPACKET pair standing in for a TAP: each send is one frame.
final class FuzzFrames: FrameEndpoint {
    let frameDescriptor: Int32
    let peer: Int32
    init() {
        var fds: [Int32] = [0, 0]
        precondition(socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue), 0, &fds) == 0)
        _ = fcntl(fds[0], F_SETFL, O_NONBLOCK)
        _ = fcntl(fds[1], F_SETFL, O_NONBLOCK)
        frameDescriptor = fds[0]
        peer = fds[1]
    }
    func acceptOffloads(checksum: Bool, tso4: Bool, tso6: Bool) -> Bool { false }

    /// Sends a frame toward the device and throws away what the device sent.
    func exchange(_ frame: UnsafeBufferPointer<UInt8>) {
        _ = send(peer, frame.baseAddress, frame.count, 0)
        var sink = [UInt8](repeating: 0, count: 65536)
        while sink.withUnsafeMutableBytes({ recv(peer, $0.baseAddress, $0.count, 0) }) > 0 {}
    }
}

/// The driver's side of 3.1.1 through the registers, with the fuzzer's features and size.
private func initialise(_ transport: some MMIODevice, features: UInt64, size: UInt32, queues: UInt32) {
    func write(_ register: UInt64, _ value: UInt32) { _ = transport.mmioWrite(offset: register, width: 4, value: UInt64(value)) }
    write(0x70, 0)
    write(0x70, 3)
    write(0x24, 0); write(0x20, UInt32(truncatingIfNeeded: features))
    write(0x24, 1); write(0x20, UInt32(truncatingIfNeeded: features >> 32))
    write(0x70, 11)
    for queue: UInt32 in 0..<queues {
        write(0x30, queue)
        write(0x38, size)
        write(0x80, 0x1000 + queue * 0x4000); write(0x84, 0)
        write(0x90, 0x2000 + queue * 0x4000); write(0x94, 0)
        write(0xA0, 0x3000 + queue * 0x4000); write(0xA4, 0)
        write(0x44, 1)
    }
    write(0x70, 15)
}

@_cdecl("LLVMFuzzerTestOneInput")
public func virtioFuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size >= 4 else { return 0 }
    // unsafe: libFuzzer's buffer, read within `size`.
    let input = UnsafeBufferPointer(start: data, count: size)
    let kind = input[0] % 7
    var features = VirtioFeature.version1
    if input[1] & 1 != 0 { features |= VirtioFeature.eventIndex }
    if input[1] & 2 != 0 { features |= VirtioFeature.indirectDescriptors }
    // Mostly valid sizes (powers of two up to 256), sometimes anything.
    let queueSize = input[2] & 0x80 != 0 ? UInt32(input[2] & 0x7F) : UInt32(1) << UInt32(input[2] % 9)
    let notifications = Int(input[3] % 8) + 1

    let memory = harness.memory
    try! memory.fill(0, count: Harness.memorySize, at: 0)
    try! memory.write(bytes: input[4..<min(size, 4 + Int(Harness.memorySize))], at: 0)

    func run(_ transport: some MMIODevice, queues: Int, deviceFeatures: UInt64 = 0) {
        initialise(transport, features: features | deviceFeatures, size: queueSize, queues: UInt32(queues))
        for round in 0..<notifications {
            _ = transport.mmioWrite(offset: 0x50, width: 4, value: UInt64(round % queues))
        }
    }

    switch kind {
    case 0:
        run(harness.block, queues: 1)
        var info = stat()
        precondition(stat(harness.imagePath, &info) == 0 && info.st_size == Harness.imageSize, "the image changed size")
    case 1:
        run(harness.entropy, queues: 1)
    case 3:
        run(harness.vsock, queues: 3)
    case 6:
        // virtio-pci: the input is a list of 12-byte register accesses (operation, width,
        // offset, value) to the configuration space and BAR 0, a virtio-blk behind them.
        var at = 4
        while at + 12 <= min(size, 4 + 12 * 256) {
            let width = [1, 2, 4, 8][Int(input[at + 1] & 3)]
            let offset = UInt64(input[at + 2]) | UInt64(input[at + 3]) << 8
            var value: UInt64 = 0
            for index in 0..<8 { value |= UInt64(input[at + 4 + index]) << (8 * UInt64(index)) }
            switch input[at] % 4 {
            case 0: harness.pci.configurationWrite(offset: UInt8(truncatingIfNeeded: offset), size: min(width, 4), value: UInt32(truncatingIfNeeded: value))
            case 1: _ = harness.pci.configurationRead(offset: UInt8(truncatingIfNeeded: offset), size: min(width, 4))
            case 2: harness.pci.barWrite(0, offset: offset % VirtioPCILayout.barSize, width: width, value: value)
            default: _ = harness.pci.barRead(0, offset: offset % VirtioPCILayout.barSize, width: width)
            }
            at += 12
        }
        harness.pci.reset()
    case 5:
        harness.frames.exchange(UnsafeBufferPointer(rebasing: input[4..<min(size, 4 + 1514)]))
        run(harness.network, queues: 2)
        harness.frames.exchange(UnsafeBufferPointer(rebasing: input[4..<min(size, 64)]))
    case 4:
        // Statistics and free page reporting as the second control byte says.
        let balloonFeatures = (input[1] & 4 != 0 ? VirtioBalloon.Feature.statisticsQueue : 0)
            | (input[1] & 8 != 0 ? VirtioBalloon.Feature.pageReporting : 0)
        run(harness.balloon, queues: 2 + (input[1] & 4 != 0 ? 1 : 0) + (input[1] & 8 != 0 ? 1 : 0), deviceFeatures: balloonFeatures)
        harness.balloon.device.requestStatistics()
    case 2:
        harness.consoleDevice.receive(input.prefix(64))
        run(harness.console, queues: 2)
        harness.consoleDevice.receive(input.suffix(32))
    default:
        break
    }
    return 0
}
