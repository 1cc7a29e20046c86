// VM-entry checks on guest state (SDM Vol. 3C, 27.3.1.1-27.3.1.6).

/// A guest segment register as the VMCS holds it (SDM 25.4.1): access rights bits 3:0 type,
/// 4 S, 6:5 DPL, 7 P, 12 AVL, 13 L, 14 D/B, 15 G, 16 unusable.
struct GuestSegment {
    /// Position in `fields`: 0 ES, 1 CS, 2 SS, 3 DS, 4 FS, 5 GS, 6 LDTR, 7 TR.
    let index: Int
    let selector: UInt64
    let base: UInt64
    let limit: UInt64
    let rights: UInt64

    var name: String { Self.fields[index].0 }
    var accessRightsField: VMCSField { Self.fields[index].4 }
    var isCS: Bool { index == 1 }
    var isTR: Bool { index == 7 }

    var type: UInt64 { rights & 0xF }
    var s: Bool { rights & (1 << 4) != 0 }
    var dpl: UInt64 { (rights >> 5) & 3 }
    var present: Bool { rights & (1 << 7) != 0 }
    var long: Bool { rights & (1 << 13) != 0 }
    var defaultBig: Bool { rights & (1 << 14) != 0 }
    var granularity: Bool { rights & (1 << 15) != 0 }
    var usable: Bool { rights & (1 << 16) == 0 }
    var rpl: UInt64 { selector & 3 }

    static let fields: [(String, VMCSField, VMCSField, VMCSField, VMCSField)] = [
        ("ES", .guestESSelector, .guestESBase, .guestESLimit, .guestESAccessRights),
        ("CS", .guestCSSelector, .guestCSBase, .guestCSLimit, .guestCSAccessRights),
        ("SS", .guestSSSelector, .guestSSBase, .guestSSLimit, .guestSSAccessRights),
        ("DS", .guestDSSelector, .guestDSBase, .guestDSLimit, .guestDSAccessRights),
        ("FS", .guestFSSelector, .guestFSBase, .guestFSLimit, .guestFSAccessRights),
        ("GS", .guestGSSelector, .guestGSBase, .guestGSLimit, .guestGSAccessRights),
        ("LDTR", .guestLDTRSelector, .guestLDTRBase, .guestLDTRLimit, .guestLDTRAccessRights),
        ("TR", .guestTRSelector, .guestTRBase, .guestTRLimit, .guestTRAccessRights),
    ]

    // Iteration orders the checks use (indices into `fields`), fixed once instead of an array per check.
    /// DS, ES, FS, GS.
    static let dataOrder = [3, 0, 4, 5]
    /// CS, SS, DS, ES, FS, GS.
    static let codeAndDataOrder = [1, 2, 3, 0, 4, 5]
    /// TR, FS, GS.
    static let canonicalBaseOrder = [7, 4, 5]
    /// SS, DS, ES.
    static let lowBaseOrder = [2, 3, 0]

    init(_ vmcs: VMCSImage, _ index: Int) {
        let (_, selector, base, limit, rights) = Self.fields[index]
        self.index = index
        self.selector = vmcs[selector]
        self.base = vmcs[base]
        self.limit = vmcs[limit]
        self.rights = vmcs[rights]
    }

    var text: String { "\(name): selector \(hexString(selector, digits: 4)), base \(hexString(base)), limit \(hexString(limit)), access rights \(hexString(rights, digits: 4))" }
}

extension VMEntryContext {
    func guestViolation(_ check: VMEntryCheck) -> String? {
        switch check.stage {
        case .guestRegisters: return guestRegisterViolation(check)
        case .guestSegments: return guestSegmentViolation(check)
        default: return guestOtherViolation(check)
        }
    }

    func guestRegisterViolation(_ check: VMEntryCheck) -> String? {
        let loadDebug = entry.contains(.loadDebugControls)
        switch check {
        case .guestCR0Fixed:
            var mustBeOne = caps.cr0MustBeOne & ~(1 << 29 | 1 << 30)  // NW, CD never checked
            if unrestricted { mustBeOne &= ~(1 << 0 | 1 << 31) }      // PE, PG
            let mayBeOne = caps.cr0MayBeOne | (1 << 29 | 1 << 30)
            return guestCR0 & mustBeOne != mustBeOne || guestCR0 & ~mayBeOne != 0
                ? "\(hex(.guestCR0)), FIXED0 = \(hexString(caps.cr0MustBeOne))\(unrestricted ? " (PE/PG exempt: unrestricted guest)" : "")" : nil
        case .guestCR0PagingNeedsProtection:
            return guestCR0 & (1 << 31) != 0 && guestCR0 & 1 == 0 ? hex(.guestCR0) : nil
        case .guestCR4Fixed:
            return guestCR4 & caps.cr4MustBeOne != caps.cr4MustBeOne || guestCR4 & ~caps.cr4MayBeOne != 0
                ? "\(hex(.guestCR4)), FIXED0 = \(hexString(caps.cr4MustBeOne)), FIXED1 = \(hexString(caps.cr4MayBeOne))" : nil
        case .guestDebugCtl:
            return loadDebug && vmcs[.guestIA32DebugCtl] & (0x3C | ~0xFFFF) != 0 ? hex(.guestIA32DebugCtl) : nil
        case .guestIA32eModeNeedsPaging:
            return ia32eGuest && (guestCR0 & (1 << 31) == 0 || guestCR4 & (1 << 5) == 0) ? "\(hex(.guestCR0)), \(hex(.guestCR4))" : nil
        case .guestPCIDENeedsIA32eMode:
            return !ia32eGuest && guestCR4 & (1 << 17) != 0 ? hex(.guestCR4) : nil
        case .guestCR3Width:
            return vmcs[.guestCR3] & ~maxPhysical != 0 ? hex(.guestCR3) : nil
        case .guestDR7:
            return loadDebug && vmcs[.guestDR7] >> 32 != 0 ? hex(.guestDR7) : nil
        case .guestSysenterCanonical:
            if !canonical(vmcs[.guestIA32SysenterESP]) { return hex(.guestIA32SysenterESP) }
            return canonical(vmcs[.guestIA32SysenterEIP]) ? nil : hex(.guestIA32SysenterEIP)
        case .guestPAT:
            return entry.contains(.loadIA32PAT) && !Self.validPAT(vmcs[.guestIA32PAT]) ? hex(.guestIA32PAT) : nil
        case .guestEFER:
            guard entry.contains(.loadIA32EFER) else { return nil }
            let efer = vmcs[.guestIA32EFER]
            if efer & ~0xD01 != 0 { return "\(hex(.guestIA32EFER)): reserved bits set" }
            let lma = efer & (1 << 10) != 0
            if lma != ia32eGuest { return "\(hex(.guestIA32EFER)): LMA differs from 'IA-32e mode guest' = \(ia32eGuest ? 1 : 0)" }
            if guestCR0 & (1 << 31) != 0 && (efer & (1 << 8) != 0) != lma { return "\(hex(.guestIA32EFER)): LME differs from LMA with paging on" }
            return nil
        default: return nil
        }
    }

    func guestSegmentViolation(_ check: VMEntryCheck) -> String? {
        let segments = self.segments
        let cs = segments[1], ss = segments[2], ldtr = segments[6], tr = segments[7]
        switch check {
        case .guestSelectorTI:
            if tr.selector & 4 != 0 { return tr.text }
            return ldtr.usable && ldtr.selector & 4 != 0 ? ldtr.text : nil
        case .guestSSRPL:
            return !v86 && !unrestricted && ss.rpl != cs.rpl ? "SS.RPL = \(ss.rpl), CS.RPL = \(cs.rpl)" : nil
        case .guestVirtual8086Segments:
            guard v86 else { return nil }
            for i in GuestSegment.codeAndDataOrder {
                let segment = segments[i]
                if segment.base != segment.selector << 4 || segment.limit != 0xFFFF || segment.rights != 0xF3 { return segment.text }
            }
            return nil
        case .guestSegmentBases:
            for i in GuestSegment.canonicalBaseOrder where !canonical(segments[i].base) { return segments[i].text }
            if ldtr.usable && !canonical(ldtr.base) { return ldtr.text }
            if cs.base >> 32 != 0 { return cs.text }
            for i in GuestSegment.lowBaseOrder where segments[i].usable && segments[i].base >> 32 != 0 { return segments[i].text }
            return nil
        default: break
        }
        guard !v86 else { return nil }  // the remaining segment checks apply outside virtual-8086 mode
        switch check {
        case .guestCSType:
            return cs.type == 9 || cs.type == 11 || cs.type == 13 || cs.type == 15 || (unrestricted && cs.type == 3) ? nil : "CS type \(cs.type): \(cs.text)"
        case .guestSSType:
            return ss.usable && ss.type != 3 && ss.type != 7 ? "SS type \(ss.type)" : nil
        case .guestDataSegmentTypes:
            for i in GuestSegment.dataOrder {
                let segment = segments[i]
                if segment.usable && (segment.type & 1 == 0 || (segment.type & 8 != 0 && segment.type & 2 == 0)) {
                    return "\(segment.name) type \(segment.type)"
                }
            }
            return nil
        case .guestSegmentDescriptorType:
            for i in GuestSegment.codeAndDataOrder where (segments[i].isCS || segments[i].usable) && !segments[i].s { return "\(segments[i].name): S = 0" }
            return nil
        case .guestCSDPL:
            switch cs.type {
            case 3: return cs.dpl != 0 ? "CS type 3 with DPL \(cs.dpl)" : nil
            case 9, 11: return cs.dpl != ss.dpl ? "CS.DPL = \(cs.dpl), SS.DPL = \(ss.dpl) (non-conforming code)" : nil
            case 13, 15: return cs.dpl > ss.dpl ? "CS.DPL = \(cs.dpl) > SS.DPL = \(ss.dpl) (conforming code)" : nil
            default: return nil
            }
        case .guestSSDPL:
            if !unrestricted && ss.dpl != ss.rpl { return "SS.DPL = \(ss.dpl), SS.RPL = \(ss.rpl)" }
            if (cs.type == 3 || guestCR0 & 1 == 0) && ss.dpl != 0 { return "SS.DPL = \(ss.dpl) with CS type 3 or CR0.PE = 0" }
            return nil
        case .guestDataDPL:
            guard !unrestricted else { return nil }
            for i in GuestSegment.dataOrder {
                let segment = segments[i]
                if segment.usable && segment.type <= 11 && segment.dpl < segment.rpl {
                    return "\(segment.name).DPL = \(segment.dpl) < RPL = \(segment.rpl)"
                }
            }
            return nil
        case .guestSegmentPresent:
            for i in GuestSegment.codeAndDataOrder where (segments[i].isCS || segments[i].usable) && !segments[i].present { return "\(segments[i].name): P = 0" }
            return nil
        case .guestSegmentReservedBits:
            for segment in segments where (segment.isCS || segment.usable) && segment.rights & 0xFFFE_0F00 != 0 { return segment.text }
            return nil
        case .guestCSLongMode:
            return ia32eGuest && cs.long && cs.defaultBig ? "CS.L = 1 and CS.D = 1" : nil
        case .guestSegmentGranularity:
            for segment in segments where segment.isCS || segment.isTR || segment.usable {
                if segment.limit & 0xFFF != 0xFFF && segment.granularity { return "\(segment.name): limit \(hexString(segment.limit)) with G = 1" }
                if segment.limit & 0xFFF0_0000 != 0 && !segment.granularity { return "\(segment.name): limit \(hexString(segment.limit)) with G = 0" }
            }
            return nil
        case .guestTRType:
            let typeOK = tr.type == 11 || (tr.type == 3 && !ia32eGuest)
            return typeOK && !tr.s && tr.present && tr.usable ? nil : tr.text
        case .guestLDTRType:
            return ldtr.usable && (ldtr.type != 2 || ldtr.s || !ldtr.present) ? ldtr.text : nil
        default: return nil
        }
    }

    static let pdpteFields: [VMCSField] = [.guestPDPTE0, .guestPDPTE1, .guestPDPTE2, .guestPDPTE3]

    func guestOtherViolation(_ check: VMEntryCheck) -> String? {
        let interruptibility = vmcs[.guestInterruptibilityState]
        let activity = vmcs[.guestActivityState]
        let info = injection
        switch check {
        case .guestDescriptorTableBases:
            if !canonical(vmcs[.guestGDTRBase]) { return hex(.guestGDTRBase) }
            return canonical(vmcs[.guestIDTRBase]) ? nil : hex(.guestIDTRBase)
        case .guestDescriptorTableLimits:
            if vmcs[.guestGDTRLimit] >> 16 != 0 { return hex(.guestGDTRLimit) }
            return vmcs[.guestIDTRLimit] >> 16 != 0 ? hex(.guestIDTRLimit) : nil
        case .guestRIP:
            let csLong = vmcs[.guestCSAccessRights] & (1 << 13) != 0
            if ia32eGuest && csLong { return canonical(vmcs[.guestRIP]) ? nil : "\(hex(.guestRIP)) is not canonical" }
            return vmcs[.guestRIP] >> 32 != 0 ? "\(hex(.guestRIP)) does not fit 32 bits" : nil
        case .guestRFLAGSReserved:
            return rflags & (~0x3F_FFFF | 1 << 15 | 1 << 5 | 1 << 3) != 0 || rflags & 2 == 0 ? hex(.guestRFLAGS) : nil
        case .guestRFLAGSVirtual8086:
            return v86 && (ia32eGuest || guestCR0 & 1 == 0) ? hex(.guestRFLAGS) : nil
        case .guestRFLAGSInterruptFlag:
            return info.isValid && info.type == .externalInterrupt && rflags & (1 << 9) == 0 ? "\(hex(.guestRFLAGS)): IF = 0" : nil
        case .guestActivityState:
            let supported = caps.activityStates
            let ok = activity == 0 || (activity == 1 && supported.contains(.hlt)) || (activity == 2 && supported.contains(.shutdown))
                || (activity == 3 && supported.contains(.waitForSIPI))
            return ok ? nil : "\(hex(.guestActivityState)) not supported"
        case .guestActivityHLTNeedsDPL0:
            return activity == 1 && (vmcs[.guestSSAccessRights] >> 5) & 3 != 0 ? "HLT state with SS.DPL = \((vmcs[.guestSSAccessRights] >> 5) & 3)" : nil
        case .guestActivityInjection:
            guard info.isValid, activity != 0 else { return nil }
            let allowed: Bool = switch activity {
            case 1: info.type == .externalInterrupt || info.type == .nmi
                || (info.type == .hardwareException && (info.vector == 1 || info.vector == 18))
                || (info.type == .privilegedSoftwareException && info.vector == 1)
                || (info.type == .otherEvent && info.vector == 0)
            case 2: info.type == .nmi || (info.type == .hardwareException && info.vector == 18)
            default: false
            }
            return allowed ? nil : "injecting \(info.type.name) vector \(info.vector) in activity state \(activity)"
        case .guestInterruptibilityReserved:
            return interruptibility & ~0x1F != 0 ? hex(.guestInterruptibilityState) : nil
        case .guestSTIAndMOVSSBlocking:
            return interruptibility & 3 == 3 ? hex(.guestInterruptibilityState) : nil
        case .guestSTIBlockingNeedsIF:
            return interruptibility & 1 != 0 && rflags & (1 << 9) == 0 ? "blocking by STI with RFLAGS.IF = 0" : nil
        case .guestInjectionWhileBlocked:
            guard info.isValid else { return nil }
            if info.type == .externalInterrupt && interruptibility & 3 != 0 { return "external interrupt injected under STI/MOV-SS blocking" }
            return info.type == .nmi && interruptibility & 2 != 0 ? "NMI injected under MOV-SS blocking" : nil
        case .guestSMIBlockingOutsideSMM:
            return !env.inSMM && interruptibility & 4 != 0 ? "blocking by SMI outside SMM" : nil
        case .guestVirtualNMIBlocking:
            return pin.contains(.virtualNMIs) && info.isValid && info.type == .nmi && interruptibility & 8 != 0
                ? "NMI injected while blocking by NMI = 1" : nil
        case .guestPendingDebugExceptions:
            return vmcs[.guestPendingDebugExceptions] & (0xFF0 | 1 << 13 | 1 << 15 | ~0x1_FFFF) != 0 ? hex(.guestPendingDebugExceptions) : nil
        case .guestVMCSLinkPointer:
            let link = vmcs[.vmcsLinkPointer]
            return link == UInt64.max || physicalOK(link) ? nil : "\(hex(.vmcsLinkPointer)) (use 0xffffffffffffffff for no link)"
        case .guestPDPTEs:
            guard secondary.contains(.enableEPT), guestCR0 & (1 << 31) != 0, guestCR4 & (1 << 5) != 0, !ia32eGuest else { return nil }
            for field in Self.pdpteFields {
                let entry = vmcs[field]
                if entry & 1 != 0 && (entry & 0x1E6 != 0 || entry & ~0xFFF & ~maxPhysical != 0) { return hex(field) }
            }
            return nil
        default: return nil
        }
    }
}
