// The console device (virtio 1.2, 5.3 "Console Device") with one port: receiveq0 carries
// host input into the driver's buffers, transmitq0 the guest's output to a SerialOutput.
// Linux's virtio_console makes it hvc0, which can be the kernel's console (`console=hvc0`) and
// a login shell's terminal.
import Synchronization

public final class VirtioConsole: VirtioDevice, ConsoleReceiver {
    /// Input bytes waiting for a receive buffer; the host side is paced by `receiveSpace`.
    public static let inputCapacity = 4096
    static let receiveQueue = 0, transmitQueue = 1

    public var type: VirtioDeviceType { .console }
    public var name: String { "virtio-console" }
    /// No VIRTIO_CONSOLE_F_SIZE, F_MULTIPORT or F_EMERG_WRITE: one port, no size.
    public var features: UInt64 { 0 }
    public var queueSizes: [UInt16] { [64, 64] }

    public let output: SerialOutput

    private struct Input: ~Copyable {
        let storage: UnsafeMutableBufferPointer<UInt8>
        var start = 0, count = 0
        init() { storage = .allocate(capacity: VirtioConsole.inputCapacity) }
        deinit { storage.deallocate() }
    }

    private let input = Mutex(Input())
    private let chain = Mutex(VirtqueueChain())
    private let serveQueue = VirtioQueueCallback()

    /// A console whose guest output goes to `output`.
    public init(output: SerialOutput) { self.output = output }

    public func readConfiguration(offset: Int, width: Int) -> UInt64 { 0 }

    public func connect(serve: @escaping @Sendable (Int) -> Void) { serveQueue.set(serve) }

    // MARK: Host side (ConsoleReceiver)

    public var receiveSpace: Int { input.withLock { Self.inputCapacity - $0.count } }

    /// Queues `bytes` for the guest (beyond `receiveSpace` they are dropped) and hands them to
    /// whatever receive buffers the driver has posted.
    public func receive(_ bytes: some Sequence<UInt8>) {
        input.withLock { input in
            for byte in bytes where input.count < Self.inputCapacity {
                input.storage[(input.start + input.count) % Self.inputCapacity] = byte
                input.count += 1
            }
        }
        serveQueue(Self.receiveQueue)
    }

    // MARK: Queues

    public func serve(queue index: Int, _ queue: inout Virtqueue, memory: GuestMemory) throws(VirtioDeviceError) -> Bool {
        try chain.withLock { (chain) throws(VirtioDeviceError) -> Bool in
            var used = false
            switch index {
            case Self.transmitQueue:
                while try queue.popRequest(into: &chain, memory: memory) {
                    chain.forEachPiece(writable: false, range: 0..<chain.readableLength, memory: memory) { pointer, count in
                        for offset in 0..<count { output.write(pointer.load(fromByteOffset: offset, as: UInt8.self)) }
                    }
                    queue.push(head: chain.head, written: 0, memory: memory)
                    used = true
                }
                output.flush()
            case Self.receiveQueue:
                // A buffer is taken only when there is input for it.
                while input.withLock({ $0.count > 0 }), try queue.popRequest(into: &chain, memory: memory) {
                    let written = input.withLock { input -> UInt64 in
                        var written: UInt64 = 0
                        chain.forEachPiece(writable: true, range: 0..<min(chain.writableLength, UInt64(input.count)), memory: memory) { pointer, count in
                            for offset in 0..<count {
                                pointer.storeBytes(of: input.storage[input.start], toByteOffset: offset, as: UInt8.self)
                                input.start = (input.start + 1) % Self.inputCapacity
                                input.count -= 1
                            }
                            written += UInt64(count)
                        }
                        return written
                    }
                    queue.push(head: chain.head, written: UInt32(written), memory: memory)
                    used = true
                }
            default:
                break
            }
            return used
        }
    }

    /// Input not yet delivered to the driver (what was typed while the VM was paused).
    public func saveState(to encoder: inout StateEncoder) {
        let pending = input.withLock { input in
            (0..<input.count).map { input.storage[(input.start + $0) % Self.inputCapacity] }
        }
        encoder.write(bytes: pending)
    }

    public func restoreState(from decoder: inout StateDecoder) throws(StateDecodingError) {
        let pending = try decoder.readBytes("virtio-console input", atMost: Self.inputCapacity)
        input.withLock { input in
            input.start = 0
            input.count = pending.count
            for (index, byte) in pending.enumerated() { input.storage[index] = byte }
        }
    }

    /// A device reset drops input nobody has read.
    public func reset() {
        input.withLock { $0.start = 0; $0.count = 0 }
    }
}
