/*
 * Test harness only, never shipped: Rust's standard library (1.78 and later) imports
 * ProcessPrng from bcryptprimitives.dll, which Wine 8 (Debian 12's) does not have. This
 * stand-in, built with mingw-w64 into the test's throwaway Wine prefix, answers it from
 * RtlGenRandom (advapi32's SystemFunction036) so the Windows test binary of charlie-outlook
 * can start under Wine. Windows 10 and later have the real DLL.
 */
#include <windows.h>
#include <ntsecapi.h>

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG n = len > 0x10000000 ? 0x10000000 : (ULONG)len;
        if (!RtlGenRandom(data, n))
            return FALSE;
        data += n;
        len -= n;
    }
    return TRUE;
}
