// CKVM is a header-only shim; SwiftPM needs one source file to build a C target.
