// VM-entry checks on the entry controls (SDM 27.2.1.3) and on host state (27.2.2-27.2.4).

extension VMEntryContext {
    static let hostSelectorFields: [VMCSField] = [.hostESSelector, .hostCSSelector, .hostSSSelector, .hostDSSelector, .hostFSSelector, .hostGSSelector, .hostTRSelector]
    static let hostBaseFields: [VMCSField] = [.hostFSBase, .hostGSBase, .hostGDTRBase, .hostIDTRBase, .hostTRBase]

    func entryControlViolation(_ check: VMEntryCheck) -> String? {
        let info = injection
        switch check {
        case .injectionType:
            guard info.isValid else { return nil }
            if info.type == .reserved { return "interruption type 1 is reserved" }
            if info.type == .otherEvent && caps.allowedSettings(.primaryProcessorBased).mayBeOne & (1 << 27) == 0 {
                return "type 7 (other event) without monitor-trap-flag support"
            }
            return nil
        case .injectionVector:
            guard info.isValid else { return nil }
            switch info.type {
            case .nmi where info.vector != 2: return "NMI with vector \(info.vector)"
            case .hardwareException where info.vector > 31: return "hardware exception with vector \(info.vector)"
            case .otherEvent where info.vector != 0: return "other event with vector \(info.vector)"
            default: return nil
            }
        case .injectionErrorCodeConsistency:
            guard info.isValid else { return nil }
            let protected = !unrestricted || guestCR0 & 1 != 0
            let pushesErrorCode = switch info.vector { case 8, 10, 11, 12, 13, 14, 17, 21: true; default: false }
            let hardware = info.type == .hardwareException
            if caps.relaxedErrorCodeInjection {
                return info.errorCodeValid && !(hardware && protected) ? "error code delivered for a \(info.type.name) or in real mode" : nil
            }
            let required = protected && hardware && pushesErrorCode
            if info.errorCodeValid == required { return nil }
            return required ? "vector \(info.vector) (\(exceptionMnemonic(info.vector))) needs 'deliver error code'"
                : "'deliver error code' set for \(info.type.name) vector \(info.vector)\(protected ? "" : " in real mode")"
        case .injectionReservedBits:
            return info.isValid && info.rawValue & 0x7FFF_F000 != 0 ? hex(.entryInterruptionInformation) : nil
        case .injectionErrorCode:
            return info.isValid && info.errorCodeValid && vmcs[.entryExceptionErrorCode] & 0xFFFF_0000 != 0 ? hex(.entryExceptionErrorCode) : nil
        case .injectionInstructionLength:
            guard info.isValid, info.type == .softwareInterrupt || info.type == .privilegedSoftwareException || info.type == .softwareException
            else { return nil }
            let length = vmcs[.entryInstructionLength]
            if length == 0 && caps.allowsZeroLengthInjection { return nil }
            return (1...15).contains(length) ? nil : "\(hex(.entryInstructionLength)) for a \(info.type.name)"
        case .entryMSRLoadAddress:
            let count = vmcs[.entryMSRLoadCount]
            return count > 0 ? addressProblem(.entryMSRLoadAddress, alignment: 16, length: count * 16) : nil
        case .entryToSMMOutsideSMM:
            guard !env.inSMM else { return nil }
            return entry.contains(.entryToSMM) || entry.contains(.deactivateDualMonitorTreatment)
                ? "'entry to SMM' or 'deactivate dual-monitor treatment' set outside SMM" : nil
        default: return nil
        }
    }

    func hostViolation(_ check: VMEntryCheck) -> String? {
        let hostIA32e = exit.contains(.hostAddressSpaceSize)
        switch check {
        case .hostCR0Fixed:
            let cr0 = vmcs[.hostCR0]
            return cr0 & caps.cr0MustBeOne != caps.cr0MustBeOne || cr0 & ~caps.cr0MayBeOne != 0
                ? "\(hex(.hostCR0)), FIXED0 = \(hexString(caps.cr0MustBeOne)), FIXED1 = \(hexString(caps.cr0MayBeOne))" : nil
        case .hostCR4Fixed:
            let cr4 = vmcs[.hostCR4]
            return cr4 & caps.cr4MustBeOne != caps.cr4MustBeOne || cr4 & ~caps.cr4MayBeOne != 0
                ? "\(hex(.hostCR4)), FIXED0 = \(hexString(caps.cr4MustBeOne)), FIXED1 = \(hexString(caps.cr4MayBeOne))" : nil
        case .hostCR3Width:
            return vmcs[.hostCR3] & ~maxPhysical != 0 ? hex(.hostCR3) : nil
        case .hostSysenterCanonical:
            guard env.hostInIA32eMode else { return nil }
            if !canonical(vmcs[.hostIA32SysenterESP]) { return hex(.hostIA32SysenterESP) }
            return canonical(vmcs[.hostIA32SysenterEIP]) ? nil : hex(.hostIA32SysenterEIP)
        case .hostPAT:
            return exit.contains(.loadIA32PAT) && !Self.validPAT(vmcs[.hostIA32PAT]) ? hex(.hostIA32PAT) : nil
        case .hostEFER:
            guard exit.contains(.loadIA32EFER) else { return nil }
            let efer = vmcs[.hostIA32EFER]
            if efer & ~0xD01 != 0 { return "\(hex(.hostIA32EFER)): reserved bits set" }
            let lma = efer & (1 << 10) != 0
            let lme = efer & (1 << 8) != 0
            return lma == hostIA32e && lme == hostIA32e ? nil : "\(hex(.hostIA32EFER)): LMA/LME differ from 'host address-space size' = \(hostIA32e ? 1 : 0)"
        case .hostSelectorRPLAndTI:
            for field in Self.hostSelectorFields where vmcs[field] & 7 != 0 { return hex(field) }
            return nil
        case .hostCSNotNull: return vmcs[.hostCSSelector] == 0 ? hex(.hostCSSelector) : nil
        case .hostTRNotNull: return vmcs[.hostTRSelector] == 0 ? hex(.hostTRSelector) : nil
        case .hostSSNotNullWithout64BitHost:
            return !hostIA32e && vmcs[.hostSSSelector] == 0 ? hex(.hostSSSelector) : nil
        case .hostBasesCanonical:
            guard env.hostInIA32eMode else { return nil }
            for field in Self.hostBaseFields where !canonical(vmcs[field]) { return hex(field) }
            return nil
        case .hostAddressSpaceSize:
            if env.hostInIA32eMode { return hostIA32e ? nil : "the VMM runs in IA-32e mode but 'host address-space size' = 0" }
            if hostIA32e { return "'host address-space size' = 1 outside IA-32e mode" }
            return ia32eGuest ? "'IA-32e mode guest' = 1 outside IA-32e mode" : nil
        case .hostLongModeState:
            if hostIA32e {
                if vmcs[.hostCR4] & (1 << 5) == 0 { return "\(hex(.hostCR4)): PAE = 0" }
                return canonical(vmcs[.hostRIP]) ? nil : hex(.hostRIP)
            }
            if vmcs[.hostCR4] & (1 << 17) != 0 { return "\(hex(.hostCR4)): PCIDE = 1" }
            return vmcs[.hostRIP] >> 32 != 0 ? hex(.hostRIP) : nil
        default: return nil
        }
    }
}
