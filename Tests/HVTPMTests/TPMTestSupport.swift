import Foundation
import HVTPM
import Testing

/// libtpms is one TPM per process (Documentation/HostFacts.md), so every test that opens the in-process engine
/// lives in a suite nested in this serialized one.
@Suite(.serialized) enum TPMLibTPMSSuites {}

/// A fresh directory under the temporary folder, removed by the caller.
func temporaryTPMDirectory() -> String {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("hv-tpm-tests-\(UUID().uuidString)").path
    try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

/// Drives a TIS model the way a driver does; executes commands with `respond`.
struct TISDriver {
    var tis = TISInterface()
    var respond: ([UInt8], UInt8) -> [UInt8] = { _, _ in TPMResponse.error(.success) }
    var executed: [[UInt8]] = []

    mutating func write(_ locality: Int, _ register: UInt64, _ value: UInt64, width: Int = 1) {
        let action = tis.write(offset: UInt64(locality) * 0x1000 + register, width: width, value: value)
        if case let .execute(command, locality) = action {
            executed.append(command)
            tis.complete(response: respond(command, locality))
        }
    }

    mutating func read(_ locality: Int, _ register: UInt64, width: Int = 1) -> UInt64 {
        tis.read(offset: UInt64(locality) * 0x1000 + register, width: width)
    }

    mutating func status(_ locality: Int = 0) -> UInt32 { UInt32(read(locality, 0x18, width: 4)) }

    /// requestUse, commandReady, the bytes, tpmGo; returns the response read back.
    mutating func transact(_ command: [UInt8], locality: Int = 0) -> [UInt8] {
        write(locality, 0x00, 0x02)
        write(locality, 0x18, 0x40)
        for byte in command { write(locality, 0x24, UInt64(byte)) }
        write(locality, 0x18, 0x20)
        var response: [UInt8] = []
        while status(locality) & TISInterface.Status.dataAvailable != 0 { response.append(UInt8(read(locality, 0x24))) }
        return response
    }
}
