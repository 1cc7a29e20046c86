// `hv run --tpm DIR`: a libtpms TPM on the VM's bus through the TIS interface.
import HVCore
import HVTPM

/// Opens the TPM whose state is in `directory` and places its TIS window at 0xFED40000; nil
/// when no directory was given. The caller closes the engine after the run.
func attachTPM<B>(directory: String?, to machine: Machine<B>) throws(HVError) -> LibTPMSEngine? {
    guard let directory else { return nil }
    let engine: LibTPMSEngine
    do {
        engine = try LibTPMSEngine.open(directory: TPMStateDirectory(path: directory), holder: "hv run --tpm")
    } catch {
        throw .configuration(ConfigurationError(field: "--tpm", value: directory, expected: "a usable TPM state directory (\(error))"))
    }
    do {
        try machine.devices.register(TISDevice(engine: engine), address: GuestPhysicalAddress(TISInterface.baseAddress),
                                     length: TISInterface.windowSize)
    } catch {
        try? engine.close()
        throw .device(error)
    }
    return engine
}
