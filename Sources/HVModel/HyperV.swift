// The Hyper-V enlightenment vocabulary a monitor needs when its backend emulates Hyper-V's
// synthetic interrupt controller (SynIC) and the guest talks to the host through it: the
// exits, the hypercall status codes and the layout of a message slot. Microsoft's Hypervisor
// Top Level Functional Specification (TLFS) 6.0: 3 "Hypercall interface", 11 "Inter-partition
// communication" (messages, events, SynIC). Linux: Documentation/virt/kvm/api.rst
// (KVM_EXIT_HYPERV, KVM_CAP_HYPERV_SYNIC2, KVM_IRQ_ROUTING_HV_SINT, KVM_HYPERV_EVENTFD).

/// The guest wrote one of its SynIC's control MSRs; the values are the SynIC's state after it.
public struct HyperVSynICUpdate: Sendable, Equatable {
    /// The MSR written: `HyperVMSR.scontrol`, `.siefp` or `.simp`.
    public var msr: UInt32
    /// SCONTROL: bit 0 enables the SynIC.
    public var control: UInt64
    /// SIEFP: the event-flags page's guest-physical address, bit 0 enabling it.
    public var eventPage: UInt64
    /// SIMP: the message page's guest-physical address, bit 0 enabling it.
    public var messagePage: UInt64

    @inlinable public init(msr: UInt32, control: UInt64, eventPage: UInt64, messagePage: UInt64) {
        self.msr = msr
        self.control = control
        self.eventPage = eventPage
        self.messagePage = messagePage
    }

    /// Whether SCONTROL's enable bit is set.
    @inlinable public var isEnabled: Bool { control & 1 != 0 }
    /// The enabled message page's address, or nil (TLFS 11.8.4: bits 63:12 are the page number).
    @inlinable public var messagePageAddress: GuestPhysicalAddress? {
        messagePage & 1 != 0 ? GuestPhysicalAddress(messagePage & ~0xFFF) : nil
    }
    /// The enabled event-flags page's address, or nil (TLFS 11.8.5).
    @inlinable public var eventPageAddress: GuestPhysicalAddress? {
        eventPage & 1 != 0 ? GuestPhysicalAddress(eventPage & ~0xFFF) : nil
    }
}

/// A hypercall's input as the guest made it (TLFS 3.7 "Hypercall inputs"): on x64, the call
/// code and flags in RCX and the two parameters in RDX and R8.
public struct HyperVHypercall: Sendable, Equatable {
    /// The hypercall input value: call code in bits 15:0, the fast flag in bit 16, rep count
    /// and start index above.
    public var input: UInt64
    /// RDX: for a memory-based call the guest-physical address of the input block, for a fast
    /// call the first input value.
    public var firstParameter: UInt64
    /// R8: the output block's address, or the second fast input.
    public var secondParameter: UInt64

    @inlinable public init(input: UInt64, firstParameter: UInt64, secondParameter: UInt64) {
        self.input = input
        self.firstParameter = firstParameter
        self.secondParameter = secondParameter
    }

    /// The call code (HvPostMessage = 0x5C, HvSignalEvent = 0x5D, ...).
    @inlinable public var code: UInt16 { UInt16(truncatingIfNeeded: input) }
    /// Whether the input is in registers rather than a memory block (TLFS 3.8 "Register
    /// mapping for hypercall inputs when the fast flag is one").
    @inlinable public var isFast: Bool { input & (1 << 16) != 0 }

    public static let postMessage: UInt16 = 0x5C
    public static let signalEvent: UInt16 = 0x5D
}

/// Hypercall result codes (TLFS 3.11 "Hypercall status codes"), the low 16 bits of RAX.
public enum HyperVStatus {
    public static let success: UInt16 = 0x0000
    public static let invalidHypercallCode: UInt16 = 0x0002
    public static let invalidHypercallInput: UInt16 = 0x0003
    public static let invalidAlignment: UInt16 = 0x0004
    public static let insufficientMemory: UInt16 = 0x000B
    public static let invalidPortID: UInt16 = 0x0011
    public static let invalidConnectionID: UInt16 = 0x0012
    public static let insufficientBuffers: UInt16 = 0x0013
}

/// The synthetic MSRs the SynIC uses (TLFS 11.8, appendix "Hyper-V synthetic MSRs").
public enum HyperVMSR {
    public static let scontrol: UInt32 = 0x4000_0080
    public static let siefp: UInt32 = 0x4000_0082
    public static let simp: UInt32 = 0x4000_0083
    public static let eom: UInt32 = 0x4000_0084
    public static let sint0: UInt32 = 0x4000_0090
}

/// A SynIC message (TLFS 11.10.3 "SynIC message flags", 11.10.4 "HV_MESSAGE"): a 16-byte
/// header and up to 240 bytes of payload, one 256-byte slot per SINT in the message page.
public struct HyperVMessage: Sendable, Equatable {
    /// Slots per message page, one per synthetic interrupt source.
    public static let sintCount = 16
    public static let slotSize = 256
    public static let headerSize = 16
    public static let maximumPayloadSize = 240

    /// Non-zero: the slot holds a message (HvMessageTypeNone = 0 frees it).
    public var type: UInt32
    /// Payload bytes, at most `maximumPayloadSize`.
    public var payload: [UInt8]

    @inlinable public init(type: UInt32, payload: [UInt8]) {
        self.type = type
        self.payload = payload
    }

    /// The HvPostMessage input block (TLFS 11.11.1): connection id, reserved, message type,
    /// payload size and 240 payload bytes. Returns the connection id and the message, or the
    /// status that refuses the block.
    public static func postMessageInput(_ block: [UInt8]) -> Result<(connection: UInt32, message: HyperVMessage), HyperVStatusError> {
        guard block.count >= 16 + maximumPayloadSize else { return .failure(HyperVStatusError(HyperVStatus.insufficientMemory)) }
        func word(_ offset: Int) -> UInt32 {
            UInt32(block[offset]) | UInt32(block[offset + 1]) << 8 | UInt32(block[offset + 2]) << 16 | UInt32(block[offset + 3]) << 24
        }
        let size = Int(word(12))
        guard size <= maximumPayloadSize else { return .failure(HyperVStatusError(HyperVStatus.invalidHypercallInput)) }
        return .success((word(0) & 0x00FF_FFFF, HyperVMessage(type: word(8), payload: Array(block[16..<(16 + size)]))))
    }
}

/// A hypercall status carried as an error.
public struct HyperVStatusError: Error, Sendable, Equatable {
    public var status: UInt16
    @inlinable public init(_ status: UInt16) { self.status = status }
}
