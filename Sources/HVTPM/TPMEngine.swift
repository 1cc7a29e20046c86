// What every TPM behind HV looks like: something that executes TPM 2.0 command frames. The
// TIS device, `hv tpm serve` and measured boot are written against this protocol, so a VM's TPM
// can be libtpms in this process or a helper process reached over the swtpm protocol.
#if canImport(Glibc)
import Glibc
#endif

/// A TPM 2.0 that executes command frames (TPM 2.0 Part 1, "Command/Response Structure").
///
/// Implementations serialise their own calls: any thread may call any method.
public protocol TPMEngine: AnyObject, Sendable {
    /// A short description for logs and `hv tpm info` ("libtpms 0.9.2 (in-process)").
    var engineDescription: String { get }

    /// Executes one command frame at `locality` (0-4) and returns the response frame.
    ///
    /// A command the TPM rejects is not an error here: its response code is in bytes 6-9 of the
    /// response (see `TPMResponse`). Errors mean the engine itself failed (I/O, a stopped TPM).
    func execute(_ command: [UInt8], locality: UInt8) throws(TPMError) -> [UInt8]

    /// Asks a command that is executing on another thread to finish early (libtpms
    /// `TPMLIB_CancelCommand`; swtpm `CMD_CANCEL_TPM_CMD`). Harmless when nothing runs.
    func cancelCommand()

    /// Power-cycles the TPM (swtpm `CMD_INIT`): volatile state is lost, TPM2_Startup is needed.
    func powerCycle() throws(TPMError)

    /// The running TPM's permanent and volatile state, for a VM snapshot.
    func saveState() throws(TPMError) -> TPMSnapshot

    /// Replaces the TPM's state with `snapshot`; the TPM continues from where it was saved
    /// (PCRs, loaded objects and sessions included).
    func restoreState(_ snapshot: TPMSnapshot) throws(TPMError)

    /// Writes whatever is not yet on stable storage and releases the TPM. Later calls fail
    /// with `.closed`.
    func close() throws(TPMError)

    /// Writes the running TPM's permanent and volatile state into `directory` (swtpm's
    /// `CMD_STORE_VOLATILE`), ordered with the engine's own state writes, so an older snapshot
    /// never lands after a newer NVRAM write.
    func storeState(into directory: TPMStateDirectory) throws(TPMError)

    /// A live migration's source, paused for its last copy: writes the TPM's NVRAM to its state
    /// directory and lets go of the directory, so the destination can take it. The TPM keeps
    /// running in memory.
    func releaseStorage()

    /// Takes the state directory (again) and writes the running TPM's NVRAM there: a
    /// migration's destination before its guest runs, or a source whose migration failed.
    func claimStorage() throws(TPMError)
}

extension TPMEngine {
    /// Engines whose storage lives elsewhere (a remote swtpm) hand nothing over.
    public func releaseStorage() {}
    public func claimStorage() throws(TPMError) {}

    /// Snapshot, then write: for engines whose state writes happen elsewhere (a remote swtpm).
    public func storeState(into directory: TPMStateDirectory) throws(TPMError) {
        let snapshot = try saveState()
        try directory.writePermanent(snapshot.permanent)
        try directory.writeVolatile(snapshot.volatile, permanent: snapshot.permanent)
    }
}

/// A running TPM's state: both libtpms blobs (`TPMLIB_GetState`), opaque to HV.
public struct TPMSnapshot: Sendable, Equatable {
    /// The NVRAM: seeds, NV indices, persistent objects, counters (libtpms "permall").
    public var permanent: [UInt8]
    /// RAM state of a running TPM: PCRs, loaded objects, sessions (libtpms "volatilestate").
    public var volatile: [UInt8]

    public init(permanent: [UInt8], volatile: [UInt8]) {
        self.permanent = permanent
        self.volatile = volatile
    }
}

/// Why a TPM operation failed.
public enum TPMError: Error, Equatable, CustomStringConvertible {
    /// libtpms is a process-wide singleton (Documentation/HostFacts.md): a second in-process engine was asked for
    /// while `holder` still has it.
    case engineInUse(holder: String)
    /// A libtpms call returned a TPM_RESULT other than success.
    case library(operation: String, result: UInt32)
    /// The state directory cannot be used: `path` and what is wrong with it.
    case state(path: String, problem: String)
    /// A file-system call failed.
    case io(operation: String, path: String, errno: Int32)
    /// The engine was closed.
    case closed
    /// A command or response frame is malformed (`problem` says how).
    case malformedFrame(String)
    /// The remote TPM could not be reached or broke the protocol.
    case connection(String)
    /// The TPM answered a command HV sent itself (measured boot, guest set-up) with an error.
    case command(name: String, responseCode: UInt32)

    public var description: String {
        switch self {
        case .engineInUse(let holder):
            "libtpms is already in use in this process by \(holder); libtpms is a process-wide singleton, so run one TPM per process (e.g. one `hv tpm serve` per VM)"
        case let .library(operation, result):
            "\(operation) failed with TPM_RESULT 0x\(String(result, radix: 16))"
        case let .state(path, problem):
            "TPM state \(path): \(problem)"
        case let .io(operation, path, code):
            "\(operation)\(path.isEmpty ? "" : " " + path) failed: \(String(cString: strerror(code))) (errno \(code))"
        case .closed:
            "the TPM engine is closed"
        case .malformedFrame(let problem):
            "malformed TPM frame: \(problem)"
        case .connection(let problem):
            "TPM connection: \(problem)"
        case let .command(name, code):
            "\(name) failed with TPM response code 0x\(String(code, radix: 16))"
        }
    }
}
