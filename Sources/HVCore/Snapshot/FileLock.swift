// The advisory lock a disk image or a TPM state directory is held with (flock(2)), taken with a
// short wait: in a live migration on one host the destination claims what the source is letting
// go of at that moment (`HandOverDevice`).
#if canImport(Glibc)
import Glibc
#endif

/// Takes the `flock` on `fd` (exclusive, or shared), trying again every 10 ms for up to
/// `seconds` while another process holds it. Returns nil once it is held, or the errno of the
/// last attempt.
public func lockFile(_ fd: Int32, exclusive: Bool, waiting seconds: Double) -> Int32? {
    var tries = Int(seconds * 100)
    while flock(fd, (exclusive ? LOCK_EX : LOCK_SH) | LOCK_NB) != 0 {
        let error = errno
        guard error == EWOULDBLOCK, tries > 0 else { return error }
        tries -= 1
        usleep(10_000)
    }
    return nil
}
