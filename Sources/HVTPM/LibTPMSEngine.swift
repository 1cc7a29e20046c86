// The in-process TPM: libtpms called directly. libtpms keeps one TPM in global variables, so
// this engine is a process-wide singleton and every TPMLIB_* call runs under one lock
// (Documentation/HostFacts.md, "libtpms"). Order of calls (TPMLIB_MainInit(3)): ChooseTPMVersion ->
// RegisterCallbacks -> [SetState] -> MainInit -> Process... -> Terminate.
import CLibTPMS
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// What libtpms's C callbacks reach. Only touched while `LibTPMSEngine.lock` is held: the
/// callbacks run inside TPMLIB_* calls made under it.
private final class CallbackContext {
    let directory: TPMStateDirectory?
    /// The NVRAM as libtpms last stored it; loaded back on MainInit.
    var permanent: [UInt8]?
    /// The locality of the command being processed (`tpm_io_getlocality`).
    var locality: UInt8 = 0
    /// A failed write of the NVRAM, reported by the next call.
    var storageError: TPMError?

    init(directory: TPMStateDirectory?, permanent: [UInt8]?) {
        self.directory = directory
        self.permanent = permanent
    }
}

nonisolated(unsafe) private var context: CallbackContext?

/// The libtpms callback table (TPMLIB_RegisterCallbacks(3)). Closures that capture nothing
/// become C function pointers.
private func makeCallbacks() -> libtpms_callbacks {
    var callbacks = libtpms_callbacks()
    callbacks.sizeOfStruct = Int32(MemoryLayout<libtpms_callbacks>.size)
    callbacks.tpm_nvram_init = { hv_tpm_success }
    callbacks.tpm_nvram_loaddata = { data, length, _, name in
        // TPM_RETRY tells libtpms "no such blob": for permall it then manufactures a new TPM.
        guard let data, let length, let name, String(cString: name) == "permall",
              let permanent = context?.permanent else { return hv_tpm_retry }
        // libtpms frees the buffer, so it must come from malloc.
        guard let buffer = malloc(max(permanent.count, 1))?.assumingMemoryBound(to: UInt8.self) else { return hv_tpm_fail }
        permanent.withUnsafeBufferPointer { buffer.update(from: $0.baseAddress!, count: $0.count) }
        data.pointee = buffer
        length.pointee = UInt32(permanent.count)
        return hv_tpm_success
    }
    callbacks.tpm_nvram_storedata = { data, length, _, name in
        guard let context, let name, String(cString: name) == "permall" else { return hv_tpm_success }
        let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: Int(length))) } ?? []
        do throws(TPMError) {
            // A directory this process does not hold (handed over in a migration) is not
            // written; `claimStorage` writes what runs once it is held.
            if let directory = context.directory, directory.isLocked { try directory.writePermanent(bytes) }
        } catch {
            context.storageError = error
            return hv_tpm_fail
        }
        context.permanent = bytes
        return hv_tpm_success
    }
    callbacks.tpm_nvram_deletename = { _, _, _ in hv_tpm_success }
    callbacks.tpm_io_init = { hv_tpm_success }
    callbacks.tpm_io_getlocality = { locality, _ in
        locality?.pointee = TPM_MODIFIER_INDICATOR(context?.locality ?? 0)
        return hv_tpm_success
    }
    callbacks.tpm_io_getphysicalpresence = { present, _ in
        present?.pointee = 0
        return hv_tpm_success
    }
    return callbacks
}

/// libtpms in this process, with its state in a `TPMStateDirectory` (or only in memory).
///
/// ```swift
/// let tpm = try LibTPMSEngine.open(directory: TPMStateDirectory(path: "vm1.tpm"))
/// let response = try tpm.execute(TPMCommand.startup(.clear), locality: 0)
/// try tpm.close()
/// ```
public final class LibTPMSEngine: TPMEngine, @unchecked Sendable {
    // Sendable: all state is behind `lock`.

    /// Who holds libtpms in this process, if anyone.
    private static let holder = Mutex<String?>(nil)

    private let lock = Mutex<Bool>(false)  // true once closed
    private var responseBuffer: UnsafeMutablePointer<UInt8>?
    private var responseBufferSize: UInt32 = 0
    private let directory: TPMStateDirectory?

    public let engineDescription: String

    /// Starts libtpms with the state in `directory` (nil: memory only, for tests), or
    /// manufactures a new TPM when the directory holds none. With `resume`, a volatile state
    /// saved by `close(savingVolatileState: true)` is restored, so the TPM continues without a
    /// new TPM2_Startup; otherwise the TPM starts powered on and waits for TPM2_Startup.
    ///
    /// Throws `.engineInUse` while another engine of this process is open, and a `.state` error
    /// when a state file is corrupted or truncated.
    public static func open(directory: TPMStateDirectory?, resume: Bool = false,
                            holder name: String = "a LibTPMSEngine") throws(TPMError) -> LibTPMSEngine
    {
        let claimed = holder.withLock { current -> String? in
            if let current { return current }
            current = name
            return nil
        }
        if let claimed { throw .engineInUse(holder: claimed) }
        do {
            return try LibTPMSEngine(directory: directory, resume: resume)
        } catch {
            holder.withLock { $0 = nil }
            throw error
        }
    }

    private init(directory: TPMStateDirectory?, resume: Bool) throws(TPMError) {
        self.directory = directory
        let version = TPMLIB_GetVersion()
        engineDescription = "libtpms \(version >> 16).\((version >> 8) & 0xFF).\(version & 0xFF) (in-process)"
        let permanent = try directory?.readPermanent()
        var volatile: [UInt8]?
        if resume, let permanent, let directory { volatile = try directory.readVolatile(matching: permanent) }
        try lock.withLock { _ throws(TPMError) in
            context = CallbackContext(directory: directory, permanent: permanent)
            if let permanent, let volatile {
                try start(with: TPMSnapshot(permanent: permanent, volatile: volatile))
            } else {
                try start(with: nil)
            }
        }
        // A resumed volatile state is consumed: resuming it twice would replay a TPM's past.
        if volatile != nil { try directory?.removeVolatile() }
    }

    /// ChooseTPMVersion, RegisterCallbacks, optionally SetState, MainInit. Caller holds `lock`.
    private func start(with snapshot: TPMSnapshot?) throws(TPMError) {
        try check(TPMLIB_ChooseTPMVersion(TPMLIB_TPM_VERSION_2), "TPMLIB_ChooseTPMVersion")
        var callbacks = makeCallbacks()
        try check(TPMLIB_RegisterCallbacks(&callbacks), "TPMLIB_RegisterCallbacks")
        if let snapshot {
            try check(snapshot.permanent.withUnsafeBufferPointer { TPMLIB_SetState(TPMLIB_STATE_PERMANENT, $0.baseAddress, UInt32($0.count)) },
                      "TPMLIB_SetState(permanent)")
            try check(snapshot.volatile.withUnsafeBufferPointer { TPMLIB_SetState(TPMLIB_STATE_VOLATILE, $0.baseAddress, UInt32($0.count)) },
                      "TPMLIB_SetState(volatile)")
        }
        let result = TPMLIB_MainInit()
        if let error = context?.storageError {
            TPMLIB_Terminate()
            throw error
        }
        if result != hv_tpm_success {
            TPMLIB_Terminate()
            throw .library(operation: "TPMLIB_MainInit", result: result)
        }
        // MainInit may not store a SetState'd NVRAM; make the directory match what runs.
        if let snapshot {
            context?.permanent = snapshot.permanent
            if let directory, directory.isLocked { try directory.writePermanent(snapshot.permanent) }
        }
    }

    private func check(_ result: TPM_RESULT, _ operation: String) throws(TPMError) {
        guard result == hv_tpm_success else { throw .library(operation: operation, result: result) }
    }

    public func execute(_ command: [UInt8], locality: UInt8) throws(TPMError) -> [UInt8] {
        // Shorter than a header: libtpms would read past the frame; answer as a TPM would.
        guard command.count >= TPMHeader.size else { return TPMResponse.error(.commandSize) }
        return try lock.withLock { closed throws(TPMError) -> [UInt8] in
            guard !closed else { throw .closed }
            context?.locality = min(locality, 4)
            var size: UInt32 = 0
            var mutableCommand = command
            let result = mutableCommand.withUnsafeMutableBufferPointer {
                TPMLIB_Process(&responseBuffer, &size, &responseBufferSize, $0.baseAddress, UInt32($0.count))
            }
            if let error = context?.storageError {
                context?.storageError = nil
                throw error
            }
            guard result == hv_tpm_success, let responseBuffer else {
                throw .library(operation: "TPMLIB_Process", result: result)
            }
            return Array(UnsafeBufferPointer(start: responseBuffer, count: Int(size)))
        }
    }

    public func cancelCommand() {
        // libtpms checks the cancel flag from within long operations (RSA key generation);
        // this call does not take the lock, since the command holding it is what we cancel.
        _ = TPMLIB_CancelCommand()
    }

    public func powerCycle() throws(TPMError) {
        try lock.withLock { closed throws(TPMError) in
            guard !closed else { throw .closed }
            TPMLIB_Terminate()
            try start(with: nil)
        }
    }

    public func saveState() throws(TPMError) -> TPMSnapshot {
        try lock.withLock { closed throws(TPMError) -> TPMSnapshot in
            guard !closed else { throw .closed }
            return try currentState()
        }
    }

    /// Snapshot and write under the engine's lock, where libtpms' own NVRAM writes (the store
    /// callback, during `execute`) also happen: the two can neither interleave nor reorder.
    public func storeState(into directory: TPMStateDirectory) throws(TPMError) {
        try lock.withLock { closed throws(TPMError) in
            guard !closed else { throw .closed }
            let state = try currentState()
            try directory.writePermanent(state.permanent)
            try directory.writeVolatile(state.volatile, permanent: state.permanent)
        }
    }

    /// Both blobs of the running TPM. Caller holds `lock`.
    private func currentState() throws(TPMError) -> TPMSnapshot {
        func blob(_ type: TPMLIB_StateType, _ name: String) throws(TPMError) -> [UInt8] {
            var buffer: UnsafeMutablePointer<UInt8>?
            var length: UInt32 = 0
            let result = TPMLIB_GetState(type, &buffer, &length)
            defer { free(buffer) }
            guard result == hv_tpm_success, let buffer else { throw .library(operation: "TPMLIB_GetState(\(name))", result: result) }
            return Array(UnsafeBufferPointer(start: buffer, count: Int(length)))
        }
        return TPMSnapshot(permanent: try blob(TPMLIB_STATE_PERMANENT, "permanent"), volatile: try blob(TPMLIB_STATE_VOLATILE, "volatile"))
    }

    public func restoreState(_ snapshot: TPMSnapshot) throws(TPMError) {
        try lock.withLock { closed throws(TPMError) in
            guard !closed else { throw .closed }
            TPMLIB_Terminate()
            try start(with: snapshot)
        }
    }

    public func releaseStorage() {
        lock.withLock { closed in
            guard !closed, let directory, directory.isLocked else { return }
            if let state = try? currentState() { try? directory.writePermanent(state.permanent) }
            directory.release()
        }
    }

    public func claimStorage() throws(TPMError) {
        try lock.withLock { closed throws(TPMError) in
            guard !closed else { throw .closed }
            guard let directory, !directory.isLocked else { return }
            try directory.claim()
            try directory.writePermanent(try currentState().permanent)
        }
    }

    /// Powers the TPM off: the NVRAM is already on disk (written through on every change).
    public func close() throws(TPMError) { try close(savingVolatileState: false) }

    /// Powers the TPM off; with `savingVolatileState`, first writes its RAM state next to the
    /// NVRAM so `open(directory:resume: true)` continues where it stopped.
    public func close(savingVolatileState: Bool) throws(TPMError) {
        try lock.withLock { closed throws(TPMError) in
            guard !closed else { return }
            defer {
                TPMLIB_Terminate()
                free(responseBuffer)
                responseBuffer = nil
                context = nil
                directory?.release()
                closed = true
                Self.holder.withLock { $0 = nil }
            }
            if savingVolatileState, let directory {
                let state = try currentState()
                try directory.writePermanent(state.permanent)
                try directory.writeVolatile(state.volatile, permanent: state.permanent)
            }
        }
    }

    deinit { try? close() }
}
