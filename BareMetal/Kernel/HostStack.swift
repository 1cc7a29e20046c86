// The host stack an engine runs a guest on: the configuration's host-stack size
// (`VMXConfiguration.hostStackSize`, `SVMConfiguration.hostStackSize`, the seed's "host stack
// size" knob) from the page allocator instead of the boot stack. Every VM exit returns to it (VMX
// loads HOST_RSP, which the world switch writes with this stack's pointer; SVM's VMRUN keeps
// RSP in the host save area), and the exit handlers run on it. It is filled with a pattern
// first, so the deepest use can be read back after the run. There is no guard page (the image
// maps its 4 GiB with 2 MiB pages): the use it reports is what to size the knob by.
import BareMetalSupport

final class HostStack {
    static let pattern: UInt8 = 0xCD
    let base: UnsafeMutableRawPointer
    let size: Int

    init(size: Int) {
        self.size = (size + 0xFFF) & ~0xFFF
        base = allocatePages(self.size)
        base.initializeMemory(as: UInt8.self, repeating: Self.pattern, count: self.size)
    }

    deinit { releasePages(base, bytes: size) }

    /// Runs `body` with the stack pointer at this stack's top, and comes back to the caller's.
    func run(_ body: @escaping () -> Void) {
        let call = Call(body)
        hv_call_on_stack({ context in Unmanaged<Call>.fromOpaque(context!).takeUnretainedValue().body() },
                         Unmanaged.passUnretained(call).toOpaque(), base + size)
        withExtendedLifetime(call) {}
    }

    /// Bytes the runs used: from the top down to the deepest byte that lost the pattern.
    var used: Int {
        var untouched = 0
        while untouched < size && base.load(fromByteOffset: untouched, as: UInt8.self) == Self.pattern { untouched += 1 }
        return size - untouched
    }

    private final class Call {
        let body: () -> Void
        init(_ body: @escaping () -> Void) { self.body = body }
    }
}
