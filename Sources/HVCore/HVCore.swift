// HVCore: the hosted SDK. Importing it brings the shared machine model (exits, handlers,
// registers) and the guest-writing facility along.
@_exported import HVModel
@_exported import HVGuest
