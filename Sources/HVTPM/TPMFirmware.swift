// What platform firmware does to a TPM before the operating system runs, so a guest cannot
// use the hierarchy firmware owns. On a PC the BIOS sends TPM2_Startup and then locks the
// platform hierarchy: SeaBIOS gives it a random password nobody keeps (tcgbios.c,
// tpm20_prepboot), OVMF turns it off (TPM2_HierarchyControl, Tcg2PlatformDxe). Without that
// the platform password stays empty and a guest's TPM2_Clear(TPM_RH_PLATFORM) or
// TPM2_ChangeEPS wipes the TPM's owner, NV indices and endorsement key.
// TCG PC Client Platform Firmware Profile, 9.5 "Platform hierarchy".

/// How the platform hierarchy is left for the guest.
public enum TPMPlatformPolicy: String, Sendable, CaseIterable {
    /// A random platform password that nobody keeps (SeaBIOS). The default.
    case randomAuth = "random-auth"
    /// The platform hierarchy disabled (phEnable = NO; OVMF).
    case disable
    /// Untouched: the guest starts the TPM itself and owns the platform hierarchy (empty
    /// password), for guests that play firmware's part.
    case guest
}

public enum TPMFirmware {
    /// Starts the TPM (TPM2_Startup(CLEAR); an already started TPM is fine) and locks the
    /// platform hierarchy as `policy` says. Run it before the guest's first instruction and
    /// after every TPM power cycle: a TPM2_Startup(CLEAR) re-enables the hierarchy and empties
    /// its password.
    public static func prepare(_ engine: any TPMEngine, policy: TPMPlatformPolicy) throws(TPMError) {
        guard policy != .guest else { return }
        try expect(engine.execute(TPMCommand.startup(.clear), locality: 0), "TPM2_Startup", allowing: [TPMResponseCode.initialize.rawValue])
        switch policy {
        case .randomAuth:
            // SystemRandomNumberGenerator is the kernel's getrandom(2) on Linux: unpredictable.
            var generator = SystemRandomNumberGenerator()
            let password = (0..<32).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
            try expect(engine.execute(TPMCommand.platformChangeAuth(password), locality: 0), "TPM2_HierarchyChangeAuth")
        case .disable:
            try expect(engine.execute(TPMCommand.hierarchyControl(TPMCommand.platformHierarchy, enable: false), locality: 0),
                       "TPM2_HierarchyControl")
        case .guest:
            break
        }
    }

    private static func expect(_ response: [UInt8], _ name: String, allowing allowed: [UInt32] = []) throws(TPMError) {
        let code = TPMResponse.code(response) ?? TPMResponseCode.failure.rawValue
        guard code == 0 || allowed.contains(code) else { throw .command(name: name, responseCode: code) }
    }
}
