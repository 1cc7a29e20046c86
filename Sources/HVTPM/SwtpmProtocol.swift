// The swtpm control-channel protocol (swtpm's include/swtpm/tpm_ioctl.h and man page
// swtpm-ioctls(8)): on the control port, a big-endian 32-bit command code followed by its
// input; every answer starts with a 32-bit TPM_RESULT except CMD_GET_CAPABILITY's. The data
// port carries raw TPM command and response frames.

/// Control commands (tpm_ioctl.h `enum ptm_cmd`).
public enum SwtpmControlCommand: UInt32, Sendable {
    case getCapability = 1
    case initialize = 2
    case shutdown = 3
    case getTPMEstablished = 4
    case setLocality = 5
    case hashStart = 6
    case hashData = 7
    case hashEnd = 8
    case cancelCommand = 9
    case storeVolatile = 10
    case resetTPMEstablished = 11
    case getStateBlob = 12
    case setStateBlob = 13
    case stop = 14
    case getConfig = 15
    case setDataFD = 16
    case setBufferSize = 17
    case getInfo = 18

    /// Bytes of input that follow the command code (SET_STATEBLOB adds its blob length).
    var fixedInputSize: Int {
        switch self {
        case .initialize, .setBufferSize: 4
        case .setLocality, .resetTPMEstablished: 1
        case .getStateBlob, .setStateBlob: 12
        case .getInfo: 16
        default: 0
        }
    }
}

/// TPM 1.2-style TPM_RESULT codes the control channel answers with (libtpms tpm_error.h).
public enum SwtpmResult: UInt32, Sendable {
    case success = 0
    case badParameter = 3
    case fail = 9
    case badOrdinal = 10
    case badLocality = 0x3D
    case invalidPostInit = 0x26
}

/// `ptm_cap` bits this server implements: INIT, SHUTDOWN, GET_TPMESTABLISHED, SET_LOCALITY,
/// CANCEL_TPM_CMD, STORE_VOLATILE, RESET_TPMESTABLISHED, GET_STATEBLOB, SET_STATEBLOB, STOP,
/// GET_CONFIG, SET_BUFFERSIZE. Not H-CRTM hashing, SET_DATAFD or GET_INFO.
public let swtpmServerCapabilities: UInt64 = 0x1 | 0x2 | 0x4 | 0x8 | 0x20 | 0x40 | 0x80 | 0x100 | 0x200 | 0x400 | 0x800 | 0x2000

/// State blob types (`PTM_BLOB_TYPE_*`).
enum SwtpmBlobType: UInt32 {
    case permanent = 1
    case volatile = 2
}

/// Splits a byte stream into TPM frames, reading as much as the kernel has in one read(2)
/// (one system call per frame when frames arrive whole). The header's size field says where a
/// frame ends; a size no TPM accepts is `.refused` with the response to send, after which the
/// stream's framing is lost and the caller closes it. nil: end of stream, including a frame
/// cut short, which is dropped unexecuted.
struct FrameReader {
    enum Outcome { case frame([UInt8]), refused([UInt8]) }

    let stream: StoppableDescriptor
    let maximum: Int
    private var buffer: [UInt8]
    private var count = 0

    init(stream: StoppableDescriptor, maximum: Int) {
        self.stream = stream
        self.maximum = maximum
        buffer = [UInt8](repeating: 0, count: maximum)
    }

    mutating func next() -> Outcome? {
        while count < 6 { guard stream.readSome(into: &buffer, count: &count) else { return nil } }
        let size = Int(buffer.bigEndianUInt32(at: 2))
        guard size >= TPMHeader.size, size <= maximum else { return .refused(TPMResponse.error(.commandSize)) }
        while count < size { guard stream.readSome(into: &buffer, count: &count) else { return nil } }
        let frame = Array(buffer[0..<size])
        // A client may pipeline: keep the bytes of the next frame.
        if count > size { buffer.withUnsafeMutableBufferPointer { $0.baseAddress!.update(from: $0.baseAddress! + size, count: count - size) } }
        count -= size
        return .frame(frame)
    }
}
