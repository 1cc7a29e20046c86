// The entropy device (virtio 1.2, 5.4 "Entropy Device"): one queue of device-writable
// buffers, filled from the host's getrandom(2). Linux's virtio-rng driver makes it
// /dev/hwrng and feeds the kernel's pool from it.
#if canImport(Glibc)
import Glibc
#endif
import CKVM
import Synchronization

public final class VirtioEntropy: VirtioDevice {
    /// The most bytes one request gets (a guest asking for gigabytes gets them a piece at a time,
    /// and its vCPU is not held up filling them).
    public static let requestLimit = 64 * 1024

    public var type: VirtioDeviceType { .entropy }
    public var name: String { "virtio-rng" }
    public var features: UInt64 { 0 }
    public var queueSizes: [UInt16] { [256] }

    private let chain = Mutex(VirtqueueChain())
    /// Bytes handed to the guest so far.
    private let delivered = Atomic<UInt64>(0)

    public init() {}

    public var bytesDelivered: UInt64 { delivered.load(ordering: .relaxed) }

    public func readConfiguration(offset: Int, width: Int) -> UInt64 { 0 }

    /// Nothing of its own: each request is answered as it is taken.
    public func saveState(to encoder: inout StateEncoder) {}
    public func restoreState(from decoder: inout StateDecoder) throws(StateDecodingError) {}

    public func serve(queue index: Int, _ queue: inout Virtqueue, memory: GuestMemory) throws(VirtioDeviceError) -> Bool {
        try chain.withLock { (chain) throws(VirtioDeviceError) -> Bool in
            var used = false
            while true {
                guard try queue.popRequest(into: &chain, memory: memory) else { break }
                let count = min(chain.writableLength, UInt64(Self.requestLimit))
                var filled: UInt64 = 0, short = false
                chain.forEachPiece(writable: true, range: 0..<count, memory: memory) { pointer, length in
                    // The used length counts bytes from the start: stop at the first gap.
                    guard !short else { return }
                    var done = 0
                    while done < length {
                        let got = getrandom(pointer + done, length - done, 0)
                        if got < 0 {
                            if errno == EINTR { continue }
                            break
                        }
                        done += got
                    }
                    filled += UInt64(done)
                    short = done < length
                }
                queue.push(head: chain.head, written: UInt32(filled), memory: memory)
                delivered.add(filled, ordering: .relaxed)
                used = true
            }
            return used
        }
    }
}
