// What a device looks like to the device bus: a guest-facing register model behind a range of
// I/O ports or guest-physical addresses.

/// A device reached through the I/O port space (`IN`/`OUT`).
///
/// The bus passes `offset`, the port minus the base the device was registered at, so one
/// device type can sit at several bases (COM1, COM2, ...). Calls come from vCPU threads; a
/// device shared by several vCPUs serialises its own state.
public protocol PortIODevice: AnyObject, Sendable {
    /// A short name for logs and errors ("uart16550", "debug-exit").
    var name: String { get }
    /// A read of `size` bytes (1, 2 or 4) at `offset`. Unused high bytes are ignored.
    func portRead(offset: UInt16, size: Int) -> UInt32
    /// A write of `size` bytes at `offset`. Returns `.resume` normally; a device may stop or
    /// reset the VM (the debug-exit port stops it).
    func portWrite(offset: UInt16, size: Int, value: UInt32) -> ExitAction
}

/// A device reached through guest-physical addresses that no RAM backs.
public protocol MMIODevice: AnyObject, Sendable {
    var name: String { get }
    /// A read of `width` bytes (1, 2, 4 or 8) at `offset` from the device's base.
    func mmioRead(offset: UInt64, width: Int) -> UInt64
    /// A write of `width` bytes at `offset`. Returns `.resume` normally.
    func mmioWrite(offset: UInt64, width: Int, value: UInt64) -> ExitAction
}

/// A device with state that a platform reset puts back to its power-on values (a UART's
/// registers and FIFOs, an interrupt controller's masks, a TPM's volatile state).
///
/// `Machine` calls `reset()` on every registered device that conforms, once per device, while
/// no vCPU runs, when a guest resets with `ResetPolicy.restart`. State the hardware keeps across
/// a reset (CMOS NVRAM and the clock, a TPM's NVRAM) stays.
public protocol ResettableDevice: AnyObject {
    func reset()
}
