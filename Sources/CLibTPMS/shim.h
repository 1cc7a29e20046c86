// libtpms (Debian libtpms-dev) for Swift: headers only, no logic (Documentation/Architecture.md, layer 4).
// API reference: libtpms man pages TPMLIB_Process(3), TPMLIB_RegisterCallbacks(3),
// TPMLIB_GetState(3), TPMLIB_SetState(3).
#ifndef HV_CLIBTPMS_SHIM_H
#define HV_CLIBTPMS_SHIM_H

#include <stdint.h>
#include <stdlib.h>
#include <libtpms/tpm_types.h>
#include <libtpms/tpm_error.h>
#include <libtpms/tpm_library.h>
#include <libtpms/tpm_memory.h>
#include <libtpms/tpm_nvfilename.h>
#include <libtpms/tpm_tis.h>

// TPM_RETRY and friends are macros built from TPM_BASE arithmetic; Swift imports simple
// macros, but spelling them as constants keeps the Swift side independent of that.
static const uint32_t hv_tpm_success = TPM_SUCCESS;
static const uint32_t hv_tpm_retry = TPM_RETRY;
static const uint32_t hv_tpm_fail = TPM_FAIL;
static const uint32_t hv_tpm_bad_parameter = TPM_BAD_PARAMETER;

#endif
