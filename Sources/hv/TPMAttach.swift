// `hv run --tpm DIR`: a libtpms TPM on the VM's bus through the TIS interface.
import HVCore
import HVTPM

/// Opens the TPM whose state is in `directory` and places its TIS window at 0xFED40000; nil
/// when no directory was given. The caller closes the engine after the run.
/// With `claim` false (a migration's destination) the state directory is not locked or written
/// until `Machine.claimBackings()`, once the source let go of it.
func attachTPM<B>(directory: String?, platform: TPMPlatformPolicy, to machine: Machine<B>, claim: Bool = true) throws(HVError) -> LibTPMSEngine? {
    guard let directory else { return nil }
    let engine: LibTPMSEngine
    do {
        engine = try LibTPMSEngine.open(directory: TPMStateDirectory(path: directory, lock: claim), holder: "hv run --tpm")
    } catch {
        throw .configuration(ConfigurationError(field: "--tpm", value: directory, expected: "a usable TPM state directory (\(error))"))
    }
    do throws(HVError) {
        // Firmware's part before the guest's first instruction: start the TPM, lock the platform hierarchy.
        let tis: TISDevice
        do { tis = try TISDevice(engine: engine, platformPolicy: platform) } catch {
            throw .configuration(ConfigurationError(field: "--tpm-platform", value: platform.rawValue,
                                                    expected: "a policy the TPM accepts (\(error))"))
        }
        do throws(DeviceBusError) {
            try machine.devices.register(tis, address: GuestPhysicalAddress(TISInterface.baseAddress),
                                         length: TISInterface.windowSize)
        } catch { throw .device(error) }
        // With interrupt controllers the TPM raises the ISA IRQ the guest picks in TPM_INT_VECTOR.
        if machine.configuration.interruptController != .none { try machine.connect(tis) }
    } catch {
        try? engine.close()
        throw error
    }
    return engine
}
