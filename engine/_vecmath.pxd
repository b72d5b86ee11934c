# Vectorised libm for the element-wise kernels (header-only).
#
# GCC vectorises a loop that calls expf/exp/log1pf/tanhf/erfcf/... only when it
# knows a SIMD variant exists. glibc's libmvec provides them (exp, log since
# 2.22; log1p, tanh, erf, erfc since 2.35; accuracy within 4 ulp), but <math.h>
# announces them only under -ffast-math, which we do not want (it would also
# drop NaN/inf semantics). Redeclaring the functions with the `simd`
# attribute announces the variants without changing any other semantics.
# Elsewhere (other compilers or C libraries) nothing changes and the loops
# call scalar libm. The library links libm, whose linker script pulls in
# libmvec as needed (engine/meson.build).
#
# cimport ENGINE_VECMATH from a kernel module to put these declarations in
# its C file; its value says whether the vector variants are announced.

cdef extern from *:
    """
    #include <math.h>
    #if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) \
        && defined(__GLIBC__) && !defined(__FAST_MATH__) \
        && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 35))
    #define ENGINE_VECMATH 1
    #define ENGINE_SIMD __attribute__((__simd__("notinbranch")))
    float expf(float) ENGINE_SIMD;
    double exp(double) ENGINE_SIMD;
    float logf(float) ENGINE_SIMD;
    double log(double) ENGINE_SIMD;
    float log1pf(float) ENGINE_SIMD;
    double log1p(double) ENGINE_SIMD;
    float tanhf(float) ENGINE_SIMD;
    double tanh(double) ENGINE_SIMD;
    float erff(float) ENGINE_SIMD;
    double erf(double) ENGINE_SIMD;
    float erfcf(float) ENGINE_SIMD;
    double erfc(double) ENGINE_SIMD;
    #else
    #define ENGINE_VECMATH 0
    #endif
    """
    const int ENGINE_VECMATH
