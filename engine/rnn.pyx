"""Recurrent kernels: Elman RNN (tanh/relu), LSTM and GRU, forward and backward.

One call runs one layer in one direction over the whole sequence under
nogil (see rnn.pxd for the layout). The GEMMs are hoisted and merged
(PERFORMANCE.md, technique 5): the input projection of all steps is one GEMM
(float32 LSTM/Elman, batch >= 16: part of each step's GEMM instead),
each step costs one hidden GEMM plus one fused gate pass, and after backward's
time loop d_x, grad w_ih and grad w_hh are each one GEMM with K = T*B.
"""

import numpy as np
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport exp, tanh
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memcpy, memset

from engine._common cimport (ENGINE_OK, ENGINE_EBADARG, ENGINE_ENOMEM, ceil_div,
                             work_chunks, engine_ftz_enter, engine_ftz_exit)
from engine._threads cimport engine_num_threads
from engine.blas cimport gemm, gemm_parallel
from scipy.linalg.cython_blas cimport sgemv
from engine._validate import float_array, check_blas_size, export_entries

# The fused gate passes, written in C so that `restrict` tells the compiler the
# gate rows do not alias and every loop over the hidden units vectorises.
# float32 uses vectorisable exp/tanh (Cephes polynomials, a few ulp); float64
# uses libm (exact enough for gradcheck, speed matters less there).
cdef extern from *:
    """
    #include <math.h>
    #include <stdint.h>
    #include <string.h>

    /* The gate passes select with comparisons (clamps, signs, branches of
       tanh). With the default -ftrapping-math GCC if-converts a compare only
       where AVX-512 masks make it safe, so under AVX2 every gate loop stayed
       scalar (~100 cycles per element, a quarter of an LSTM step).
       Nothing here reads the floating-point exception flags, and the result
       of each operation is unchanged: only the traps are assumed away. */
    #pragma GCC push_options
    #pragma GCC optimize ("no-trapping-math")

    /* exp(x) = 2^n * e^r, |r| <= ln2/2, Cephes expf polynomial. x is clamped
       to [-87, 88] so 2^n stays a normal float. */
    static inline float rnn_expf(float x) {
        x = x < -87.0f ? -87.0f : x;
        x = x > 88.0f ? 88.0f : x;
        float t = x * 1.44269504088896341f + 12582912.0f;
        float n = t - 12582912.0f;
        float r = fmaf(n, -0.693359375f, x);
        r = fmaf(n, 2.12194440e-4f, r);
        float p = 1.9875691500e-4f;
        p = fmaf(p, r, 1.3981999507e-3f);
        p = fmaf(p, r, 8.3334519073e-3f);
        p = fmaf(p, r, 4.1665795894e-2f);
        p = fmaf(p, r, 1.6666665459e-1f);
        p = fmaf(p, r, 5.0000001201e-1f);
        p = fmaf(p, r * r, r) + 1.0f;
        /* 2^n from t's bits: t = 1.5 * 2^23 + n exactly, so its low mantissa
           bits hold n (two's complement); (bits + 127) << 23 keeps the low 9,
           n + 127 in [1, 254], as the exponent field. No float -> int
           conversion (undefined for the NaN that the clamps let through;
           p is NaN then and so is the result) and no NaN test per lane. */
        uint32_t bits;
        memcpy(&bits, &t, sizeof bits);
        bits = (bits + 127u) << 23;
        float scale;
        memcpy(&scale, &bits, sizeof scale);
        return p * scale;
    }
    static inline float rnn_sigmoidf(float x) { return 1.0f / (1.0f + rnn_expf(-x)); }
    /* tanh: Cephes' odd polynomial below 0.625 (keeps relative accuracy near
       0), (1 - e^-2|x|) / (1 + e^-2|x|) above. */
    static inline float rnn_tanhf(float x) {
        float a = x < 0.0f ? -x : x;
        float z = a * a;
        float small = ((((-5.70498872745e-3f * z + 2.06390887954e-2f) * z
                         - 5.37397155531e-2f) * z + 1.33314422036e-1f) * z
                       - 3.33332819422e-1f) * z * a + a;
        float e = rnn_expf(-2.0f * a);
        float big = (1.0f - e) / (1.0f + e);
        float y = a < 0.625f ? small : big;
        return x < 0.0f ? -y : y;
    }
    static inline double rnn_sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }
    static inline double rnn_tanh(double x) { return tanh(x); }

    /* One batch row of each cell, forward and backward, for type T with
       suffix S. Gate pointers are separate restrict arguments (i, f, g, o
       for the LSTM; r, z, n, hn for the GRU) so each loop vectorises. The
       forward passes take n units of H (bias and gh gate blocks H apart), so
       a slice of the hidden units can run on its own. */
    #define RNN_DEFINE_CELLS(T, S, SIGM, TANH) \
    static void rnn_lstm_fwd_##S(Py_ssize_t n, Py_ssize_t H, T* restrict gi, \
            T* restrict gf, T* restrict gg, T* restrict go, const T* restrict bias, \
            const T* restrict c_prev, T* restrict c_new, T* restrict tc_new, \
            T* restrict h) { \
        for (Py_ssize_t j = 0; j < n; j++) { \
            T i = SIGM(gi[j] + bias[j]); \
            T f = SIGM(gf[j] + bias[H + j]); \
            T g = TANH(gg[j] + bias[2 * H + j]); \
            T o = SIGM(go[j] + bias[3 * H + j]); \
            T c = f * c_prev[j] + i * g; \
            c_new[j] = c; \
            gi[j] = i; gf[j] = f; gg[j] = g; go[j] = o; \
        } \
        /* A second loop: one loop with tanh(c) at the end of the chain of \
           four gates is latency-bound (measured 18 percent slower). tanh(c) \
           is kept for the backward pass. */ \
        for (Py_ssize_t j = 0; j < n; j++) { \
            T tc = TANH(c_new[j]); \
            tc_new[j] = tc; \
            h[j] = go[j] * tc; \
        } \
    } \
    static void rnn_lstm_bwd_##S(Py_ssize_t H, T* restrict gi, T* restrict gf, \
            T* restrict gg, T* restrict go, const T* restrict tc_t, \
            const T* restrict c_prev, const T* restrict dy, const T* restrict dh_rec, \
            T* restrict dc) { \
        for (Py_ssize_t j = 0; j < H; j++) { \
            T i = gi[j], f = gf[j], g = gg[j], o = go[j]; \
            T tc = tc_t[j]; \
            T dh = dy[j] + dh_rec[j]; \
            T dcj = dc[j] + dh * o * (1 - tc * tc); \
            go[j] = dh * tc * o * (1 - o); \
            gi[j] = dcj * g * i * (1 - i); \
            gf[j] = dcj * c_prev[j] * f * (1 - f); \
            gg[j] = dcj * i * (1 - g * g); \
            dc[j] = dcj * f; \
        } \
    } \
    static void rnn_gru_fwd_##S(Py_ssize_t n, Py_ssize_t H, T* restrict ar, \
            T* restrict az, T* restrict an, T* restrict ahn, const T* restrict gh, \
            const T* restrict bias, const T* restrict bias_hn, \
            const T* restrict h_prev, T* restrict h) { \
        for (Py_ssize_t j = 0; j < n; j++) { \
            T r = SIGM(ar[j] + bias[j] + gh[j]); \
            T z = SIGM(az[j] + bias[H + j] + gh[H + j]); \
            T hn = gh[2 * H + j] + bias_hn[j]; \
            T n = TANH(an[j] + bias[2 * H + j] + r * hn); \
            h[j] = (1 - z) * n + z * h_prev[j]; \
            ar[j] = r; az[j] = z; an[j] = n; ahn[j] = hn; \
        } \
    } \
    static void rnn_gru_bwd_##S(Py_ssize_t H, T* restrict ar, T* restrict az, \
            T* restrict an, const T* restrict ahn, T* restrict dgh, \
            const T* restrict h_prev, const T* restrict dy, T* restrict dh) { \
        for (Py_ssize_t j = 0; j < H; j++) { \
            T r = ar[j], z = az[j], n = an[j]; \
            T d = dy[j] + dh[j]; \
            T dn = d * (1 - z) * (1 - n * n); \
            T dz = d * (h_prev[j] - n) * z * (1 - z); \
            T dr = dn * ahn[j] * r * (1 - r); \
            ar[j] = dr; az[j] = dz; an[j] = dn; \
            dgh[j] = dr; dgh[H + j] = dz; dgh[2 * H + j] = dn * r; \
            dh[j] = d * z; \
        } \
    } \
    static void rnn_elman_fwd_##S(Py_ssize_t H, int relu, const T* restrict bias, \
            T* restrict h) { \
        if (relu) { \
            for (Py_ssize_t j = 0; j < H; j++) { \
                T v = h[j] + bias[j]; \
                h[j] = v > 0 ? v : 0; \
            } \
        } else { \
            for (Py_ssize_t j = 0; j < H; j++) h[j] = TANH(h[j] + bias[j]); \
        } \
    } \
    static void rnn_elman_bwd_##S(Py_ssize_t H, int relu, const T* restrict h, \
            const T* restrict dy, const T* restrict dh_rec, T* restrict dg) { \
        if (relu) { \
            for (Py_ssize_t j = 0; j < H; j++) \
                dg[j] = h[j] > 0 ? dy[j] + dh_rec[j] : 0; \
        } else { \
            for (Py_ssize_t j = 0; j < H; j++) \
                dg[j] = (dy[j] + dh_rec[j]) * (1 - h[j] * h[j]); \
        } \
    } \
    static void rnn_colsum_add_##S(Py_ssize_t rows, Py_ssize_t cols, \
            const T* restrict a, Py_ssize_t lda, T* restrict out) { \
        for (Py_ssize_t r = 0; r < rows; r++) \
            for (Py_ssize_t j = 0; j < cols; j++) out[j] += a[r * lda + j]; \
    }

    /* Per-step GEMM for float32: C[M, N] (+)= A[M, K] @ W[K, N], W rows contiguous.
       BLAS repacks the whole weight matrix on every call, which costs as much
       as the product itself at the sizes of one time step (B rows); this
       kernel streams W as it is instead, keeping a tile of C in registers
       (gcc vector extensions). The tile fits the register file of the ISA
       compiled for: AVX-512 (32 zmm): 6 rows x 4 vectors of 16; AVX2 or SSE
       (16 registers): 6 rows x 2 vectors of 8 (or 4). A tile wider than the
       register file spills on every k and runs 20x slower (measured: a
       6 x 64 tile built for AVX2 reached 3.5 GFLOPS, the 6 x 16 one 66-80). */
    #pragma GCC push_options
    #pragma GCC optimize ("fp-contract=fast")
    #if defined(__AVX512F__)
    #define RNN_VL 16
    #define RNN_NV 4
    #elif defined(__AVX__)
    #define RNN_VL 8
    #define RNN_NV 2
    #else
    #define RNN_VL 4
    #define RNN_NV 2
    #endif
    typedef float rnn_vec __attribute__((vector_size(4 * RNN_VL)));
    typedef float rnn_vecu __attribute__((vector_size(4 * RNN_VL), aligned(4)));

    /* Rows [m, M) of one column block: tiles of 6, 4, 2 and 1 rows. */
    #define RNN_ROW_TILES(NV) \
        for (m = 0; m + 6 <= M; m += 6) \
            rnn_sgemm_tile(6, NV, K, a + m * lda, lda, w + n0, ldw, c + m * ldc + n0, \
                           ldc, accumulate); \
        if (m + 4 <= M) { \
            rnn_sgemm_tile(4, NV, K, a + m * lda, lda, w + n0, ldw, c + m * ldc + n0, \
                           ldc, accumulate); \
            m += 4; \
        } \
        if (m + 2 <= M) { \
            rnn_sgemm_tile(2, NV, K, a + m * lda, lda, w + n0, ldw, c + m * ldc + n0, \
                           ldc, accumulate); \
            m += 2; \
        } \
        if (m < M) \
            rnn_sgemm_tile(1, NV, K, a + m * lda, lda, w + n0, ldw, c + m * ldc + n0, \
                           ldc, accumulate);

    static inline __attribute__((always_inline)) void rnn_sgemm_tile(
            const int R, const int NV, Py_ssize_t K, const float* restrict a,
            Py_ssize_t lda, const float* restrict w, Py_ssize_t ldw,
            float* restrict c, Py_ssize_t ldc, int accumulate) {
        rnn_vec acc[6][8];
        #pragma GCC unroll 6
        for (int r = 0; r < R; r++) {
            #pragma GCC unroll 8
            for (int v = 0; v < NV; v++)
                acc[r][v] = accumulate ? *(const rnn_vecu*)(c + r * ldc + RNN_VL * v)
                                       : (rnn_vec){0};
        }
        for (Py_ssize_t k = 0; k < K; k++) {
            rnn_vec wv[8];
            #pragma GCC unroll 8
            for (int v = 0; v < NV; v++) {
                wv[v] = *(const rnn_vecu*)(w + k * ldw + RNN_VL * v);
                /* Keep W in registers: folded into each FMA it is loaded R times. */
    #if defined(__AVX512F__)
                __asm__("" : "+v"(wv[v]));
    #else
                __asm__("" : "+x"(wv[v]));
    #endif
            }
            #pragma GCC unroll 6
            for (int r = 0; r < R; r++) {
                float s = a[r * lda + k];
                #pragma GCC unroll 8
                for (int v = 0; v < NV; v++) acc[r][v] += s * wv[v];
            }
        }
        #pragma GCC unroll 6
        for (int r = 0; r < R; r++) {
            #pragma GCC unroll 8
            for (int v = 0; v < NV; v++) *(rnn_vecu*)(c + r * ldc + RNN_VL * v) = acc[r][v];
        }
    }

    static void rnn_sgemm_rows(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K,
            const float* restrict a, Py_ssize_t lda, const float* restrict w,
            Py_ssize_t ldw, float* restrict c, Py_ssize_t ldc, int accumulate) {
        Py_ssize_t n0 = 0, m;
        if (M < 4) {
            /* Few rows (batch-1 inference): more vectors per row hide the FMA
               latency (8 + 8 registers of the 32 with AVX-512, 4 + 4 of 16). */
            for (; n0 + 2 * RNN_NV * RNN_VL <= N; n0 += 2 * RNN_NV * RNN_VL)
                for (m = 0; m < M; m++)
                    rnn_sgemm_tile(1, 2 * RNN_NV, K, a + m * lda, lda, w + n0, ldw,
                                   c + m * ldc + n0, ldc, accumulate);
        }
        for (; n0 + RNN_NV * RNN_VL <= N; n0 += RNN_NV * RNN_VL) {
            RNN_ROW_TILES(RNN_NV)
        }
        for (; n0 + RNN_VL <= N; n0 += RNN_VL) {
            RNN_ROW_TILES(1)
        }
        if (n0 < N) {
            for (m = 0; m < M; m++) {
                for (Py_ssize_t n = n0; n < N; n++) {
                    float s = accumulate ? c[m * ldc + n] : 0.0f;
                    for (Py_ssize_t k = 0; k < K; k++) s += a[m * lda + k] * w[k * ldw + n];
                    c[m * ldc + n] = s;
                }
            }
        }
    }
    #pragma GCC pop_options

    /* Batch-1 (and < 4) steps: y[n] (+)= sum_k W[n, k] x[k] on W_hh as stored
       (row-major, no transpose per call). A step is bound by streaming W_hh
       (G*H x H floats) from L2: 4 rows at a time, two accumulators each over
       k, software prefetch ~6 KB ahead (measured 3.5 us for 512 x 128 on this
       Zen 3, ~74 GB/s). Without AVX2 + FMA the caller uses BLAS sgemv.
       Every row is summed in the same order whether it falls in a block of 4
       or in the tail (rnn_sgemv_row mirrors the block's reduction tree), so a
       row's result does not depend on how the rows are grouped into calls. */
    #if defined(__AVX2__) && defined(__FMA__)
    #include <immintrin.h>
    #define RNN_HAVE_GEMV 1
    static inline float rnn_sgemv_tail(float v, Py_ssize_t k, Py_ssize_t K,
                                       const float* restrict wr, const float* restrict x) {
        for (; k < K; k++) v += wr[k] * x[k];
        return v;
    }
    static void rnn_sgemv_row(Py_ssize_t K, const float* restrict wr,
                              const float* restrict x, float* restrict y, int accumulate) {
        __m256 a0 = _mm256_setzero_ps(), b0 = a0;
        Py_ssize_t k;
        for (k = 0; k + 16 <= K; k += 16) {
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(wr + k), _mm256_loadu_ps(x + k), a0);
            b0 = _mm256_fmadd_ps(_mm256_loadu_ps(wr + k + 8), _mm256_loadu_ps(x + k + 8), b0);
        }
        a0 = _mm256_add_ps(a0, b0);
        __m256 u = _mm256_hadd_ps(_mm256_hadd_ps(a0, a0), _mm256_hadd_ps(a0, a0));
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(u), _mm256_extractf128_ps(u, 1));
        float v = rnn_sgemv_tail(_mm_cvtss_f32(s), k, K, wr, x);
        *y = accumulate ? *y + v : v;
    }
    /* Rows r of nseg segments of N rows: W[g * seg + r, :] -> y[g * ldy_seg + r]
       (the rows of one hidden chunk in every gate). The prefetch runs ahead
       in that sequence of rows, across segment ends. */
    static void rnn_sgemv_segs(Py_ssize_t nseg, Py_ssize_t seg, Py_ssize_t N, Py_ssize_t K,
                               const float* restrict w, Py_ssize_t ldw,
                               const float* restrict x, float* restrict y,
                               Py_ssize_t ldy_seg, int accumulate) {
        Py_ssize_t ahead = (6144 / (4 * ldw) + 3) / 4 * 4, n, k, i;
        if (ahead < 4) ahead = 4;
        for (Py_ssize_t g = 0; g < nseg; g++) {
            const float* ws = w + g * seg * ldw;
            float* ys = y + g * ldy_seg;
            for (n = 0; n + 4 <= N; n += 4) {
                const float* wr = ws + n * ldw;
                Py_ssize_t pn = n + ahead, pg = g;
                if (pn >= N && pg + 1 < nseg) {
                    pn -= N;
                    pg++;
                }
                const char* pf = (const char*)(w + (pg * seg + pn) * ldw);
                __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
                __m256 b0 = a0, b1 = a0, b2 = a0, b3 = a0;
                for (k = 0; k + 16 <= K; k += 16) {
                    _mm_prefetch(pf + 4 * k, _MM_HINT_T0);
                    _mm_prefetch(pf + 4 * (ldw + k), _MM_HINT_T0);
                    _mm_prefetch(pf + 4 * (2 * ldw + k), _MM_HINT_T0);
                    _mm_prefetch(pf + 4 * (3 * ldw + k), _MM_HINT_T0);
                    __m256 xv = _mm256_loadu_ps(x + k), xw = _mm256_loadu_ps(x + k + 8);
                    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(wr + k), xv, a0);
                    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(wr + ldw + k), xv, a1);
                    a2 = _mm256_fmadd_ps(_mm256_loadu_ps(wr + 2 * ldw + k), xv, a2);
                    a3 = _mm256_fmadd_ps(_mm256_loadu_ps(wr + 3 * ldw + k), xv, a3);
                    b0 = _mm256_fmadd_ps(_mm256_loadu_ps(wr + k + 8), xw, b0);
                    b1 = _mm256_fmadd_ps(_mm256_loadu_ps(wr + ldw + k + 8), xw, b1);
                    b2 = _mm256_fmadd_ps(_mm256_loadu_ps(wr + 2 * ldw + k + 8), xw, b2);
                    b3 = _mm256_fmadd_ps(_mm256_loadu_ps(wr + 3 * ldw + k + 8), xw, b3);
                }
                a0 = _mm256_add_ps(a0, b0);
                a1 = _mm256_add_ps(a1, b1);
                a2 = _mm256_add_ps(a2, b2);
                a3 = _mm256_add_ps(a3, b3);
                __m256 u = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
                __m128 s = _mm_add_ps(_mm256_castps256_ps128(u), _mm256_extractf128_ps(u, 1));
                float part[4];
                _mm_storeu_ps(part, s);
                for (i = 0; i < 4; i++) {
                    float v = rnn_sgemv_tail(part[i], k, K, wr + i * ldw, x);
                    ys[n + i] = accumulate ? ys[n + i] + v : v;
                }
            }
            for (; n < N; n++) rnn_sgemv_row(K, ws + n * ldw, x, ys + n, accumulate);
        }
    }
    static void rnn_sgemv_rows(Py_ssize_t N, Py_ssize_t K, const float* restrict w,
                               Py_ssize_t ldw, const float* restrict x, float* restrict y,
                               int accumulate) {
        rnn_sgemv_segs(1, N, N, K, w, ldw, x, y, N, accumulate);
    }
    #else
    #define RNN_HAVE_GEMV 0
    static void rnn_sgemv_segs(Py_ssize_t nseg, Py_ssize_t seg, Py_ssize_t N, Py_ssize_t K,
                               const float* w, Py_ssize_t ldw, const float* x, float* y,
                               Py_ssize_t ldy_seg, int accumulate) {
        (void)nseg; (void)seg; (void)N; (void)K; (void)w; (void)ldw; (void)x; (void)y;
        (void)ldy_seg; (void)accumulate;
    }
    static void rnn_sgemv_rows(Py_ssize_t N, Py_ssize_t K, const float* w, Py_ssize_t ldw,
                               const float* x, float* y, int accumulate) {
        (void)N; (void)K; (void)w; (void)ldw; (void)x; (void)y; (void)accumulate;
    }
    #endif

    /* The per-step weights packed in column panels: panel widths RNN_NV *
       RNN_VL (as many as fit), then RNN_VL, then the last N % RNN_VL columns;
       panel p holds W[k, n0 : n0 + width] for k = 0..K-1 contiguously. Streaming
       W with its own row stride (2 KB for a 4H = 512 wide step) put every k of
       a column block in the same two L1 sets, so each tile re-read the block
       from L2; packed, a block stays in L1 across the row tiles (measured
       66-80 -> 89-94 GFLOPS on the LSTM step shapes). W[k, n] = src[k*sk + n*sn]. */
    static void rnn_pack_panels(Py_ssize_t K, Py_ssize_t N, const float* restrict src,
                                Py_ssize_t sk, Py_ssize_t sn, float* restrict dst) {
        Py_ssize_t n0 = 0, k, j, wdt;
        while (n0 < N) {
            wdt = n0 + RNN_NV * RNN_VL <= N ? RNN_NV * RNN_VL
                  : (n0 + RNN_VL <= N ? RNN_VL : N - n0);
            if (sn == 1) {
                for (k = 0; k < K; k++)
                    for (j = 0; j < wdt; j++) dst[k * wdt + j] = src[k * sk + n0 + j];
            } else {
                for (j = 0; j < wdt; j++)
                    for (k = 0; k < K; k++) dst[k * wdt + j] = src[k * sk + (n0 + j) * sn];
            }
            dst += K * wdt;
            n0 += wdt;
        }
    }

    /* dst[c * ldd + r] = src[r * lds + c]: 8 x 8 blocks through AVX registers
       where there are whole ones (a scalar loop, column by column, was a
       third of the weight-gradient set-up), element by element elsewhere. */
    static void rnn_transpose_f(Py_ssize_t rows, Py_ssize_t cols, const float* restrict src,
                                Py_ssize_t lds, float* restrict dst, Py_ssize_t ldd) {
        Py_ssize_t r0 = 0, c0, r, c;
    #if RNN_HAVE_GEMV       /* immintrin.h is in, AVX2 */
        for (; r0 + 8 <= rows; r0 += 8) {
            for (c0 = 0; c0 + 8 <= cols; c0 += 8) {
                const float* s = src + r0 * lds + c0;
                __m256 a0 = _mm256_loadu_ps(s), a1 = _mm256_loadu_ps(s + lds);
                __m256 a2 = _mm256_loadu_ps(s + 2 * lds), a3 = _mm256_loadu_ps(s + 3 * lds);
                __m256 a4 = _mm256_loadu_ps(s + 4 * lds), a5 = _mm256_loadu_ps(s + 5 * lds);
                __m256 a6 = _mm256_loadu_ps(s + 6 * lds), a7 = _mm256_loadu_ps(s + 7 * lds);
                __m256 t0 = _mm256_unpacklo_ps(a0, a1), t1 = _mm256_unpackhi_ps(a0, a1);
                __m256 t2 = _mm256_unpacklo_ps(a2, a3), t3 = _mm256_unpackhi_ps(a2, a3);
                __m256 t4 = _mm256_unpacklo_ps(a4, a5), t5 = _mm256_unpackhi_ps(a4, a5);
                __m256 t6 = _mm256_unpacklo_ps(a6, a7), t7 = _mm256_unpackhi_ps(a6, a7);
                __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
                __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
                __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
                __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
                float* d = dst + c0 * ldd + r0;
                _mm256_storeu_ps(d, _mm256_permute2f128_ps(u0, u4, 0x20));
                _mm256_storeu_ps(d + ldd, _mm256_permute2f128_ps(u1, u5, 0x20));
                _mm256_storeu_ps(d + 2 * ldd, _mm256_permute2f128_ps(u2, u6, 0x20));
                _mm256_storeu_ps(d + 3 * ldd, _mm256_permute2f128_ps(u3, u7, 0x20));
                _mm256_storeu_ps(d + 4 * ldd, _mm256_permute2f128_ps(u0, u4, 0x31));
                _mm256_storeu_ps(d + 5 * ldd, _mm256_permute2f128_ps(u1, u5, 0x31));
                _mm256_storeu_ps(d + 6 * ldd, _mm256_permute2f128_ps(u2, u6, 0x31));
                _mm256_storeu_ps(d + 7 * ldd, _mm256_permute2f128_ps(u3, u7, 0x31));
            }
            for (; c0 < cols; c0++)
                for (r = r0; r < r0 + 8; r++) dst[c0 * ldd + r] = src[r * lds + c0];
        }
    #endif
        for (c = 0; c < cols; c++)
            for (r = r0; r < rows; r++) dst[c * ldd + r] = src[r * lds + c];
    }

    /* [A | B]^T packed as rnn_pack_panels does, K = K1 + K2 rows: W[k, n] =
       a[n * K1 + k] for k < K1, then b[n * K2 + k - K1] (a step's input and
       hidden weights, w_ih and w_hh, as one product over [x_t | h_{t-1}]). */
    static void rnn_pack_panels_cat(Py_ssize_t K1, Py_ssize_t K2, Py_ssize_t N,
                                    const float* restrict a, const float* restrict b,
                                    float* restrict dst) {
        Py_ssize_t K = K1 + K2, n0 = 0, k, j, wdt;
        while (n0 < N) {
            wdt = n0 + RNN_NV * RNN_VL <= N ? RNN_NV * RNN_VL
                  : (n0 + RNN_VL <= N ? RNN_VL : N - n0);
            for (j = 0; j < wdt; j++) {
                for (k = 0; k < K1; k++) dst[k * wdt + j] = a[(n0 + j) * K1 + k];
                for (k = 0; k < K2; k++) dst[(K1 + k) * wdt + j] = b[(n0 + j) * K2 + k];
            }
            dst += K * wdt;
            n0 += wdt;
        }
    }

    /* C[M, N] (+)= A[M, k0:k1] @ W[k0:k1, :] with W packed by rnn_pack_panels
       for Ktot rows (panel p spans Ktot * width floats; rows k0..k1 of it are
       used). A's columns are indexed from k0 (a points at column 0). */
    #pragma GCC push_options
    #pragma GCC optimize ("fp-contract=fast")
    static void rnn_sgemm_panels_k(Py_ssize_t M, Py_ssize_t N, Py_ssize_t Ktot,
            Py_ssize_t k0, Py_ssize_t k1, const float* restrict a0, Py_ssize_t lda,
            const float* restrict wp, float* restrict c, Py_ssize_t ldc, int accumulate) {
        Py_ssize_t n0 = 0, m, ldw, K = k1 - k0;
        const float* w;
        const float* a = a0 + k0;
        for (; n0 + RNN_NV * RNN_VL <= N; n0 += RNN_NV * RNN_VL) {
            ldw = RNN_NV * RNN_VL;
            w = wp + k0 * ldw - n0;          /* the tile macro indexes w + n0 */
            RNN_ROW_TILES(RNN_NV)
            wp += Ktot * ldw;
        }
        for (; n0 + RNN_VL <= N; n0 += RNN_VL) {
            ldw = RNN_VL;
            w = wp + k0 * ldw - n0;
            RNN_ROW_TILES(1)
            wp += Ktot * ldw;
        }
        if (n0 < N) {
            Py_ssize_t wdt = N - n0;
            for (m = 0; m < M; m++) {
                for (Py_ssize_t n = 0; n < wdt; n++) {
                    float s = accumulate ? c[m * ldc + n0 + n] : 0.0f;
                    for (Py_ssize_t k = 0; k < K; k++)
                        s += a[m * lda + k] * wp[(k0 + k) * wdt + n];
                    c[m * ldc + n0 + n] = s;
                }
            }
        }
    }

    /* C[M, N] (+)= A[M, K] @ W with W packed by rnn_pack_panels. */
    static void rnn_sgemm_panels(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K,
            const float* restrict a, Py_ssize_t lda, const float* restrict wp,
            float* restrict c, Py_ssize_t ldc, int accumulate) {
        rnn_sgemm_panels_k(M, N, K, 0, K, a, lda, wp, c, ldc, accumulate);
    }

    /* Rows [k0, k0 + rows) of a panel set for Ktot rows and N columns, from
       a row-major src (row stride lds): the layout rnn_pack_panels makes. */
    static void rnn_rows_to_panels(Py_ssize_t rows, Py_ssize_t N, const float* restrict src,
                                   Py_ssize_t lds, Py_ssize_t Ktot, Py_ssize_t k0,
                                   float* restrict dst) {
        Py_ssize_t n0 = 0, r, wdt;
        while (n0 < N) {
            wdt = n0 + RNN_NV * RNN_VL <= N ? RNN_NV * RNN_VL
                  : (n0 + RNN_VL <= N ? RNN_VL : N - n0);
            for (r = 0; r < rows; r++) {
                float* restrict o = dst + (k0 + r) * wdt;
                const float* restrict i = src + r * lds + n0;
                for (Py_ssize_t j = 0; j < wdt; j++) o[j] = i[j];
            }
            dst += Ktot * wdt;
            n0 += wdt;
        }
    }
    #pragma GCC pop_options

    RNN_DEFINE_CELLS(float, f, rnn_sigmoidf, rnn_tanhf)
    RNN_DEFINE_CELLS(double, d, rnn_sigmoid, rnn_tanh)

    /* The float32 forward steps of a batch < 4 (GEMV on W_hh as stored), the
       hidden units of each step cut into nchunks chunks of `step` units, one
       per thread. A chunk computes its units' rows of every gate (j, H + j,
       2H + j, ... of W_hh), then the gate pass of those units: it needs
       nothing else of its step, only all of the previous step's h.
       A step is a few microseconds, too short for a parallel region each,
       and a barrier per step stalls whenever one thread is not scheduled
       (measured: median 7.9 ms instead of 0.43 for the batch-1 LSTM T100 on
       the shared 2-core machine). So one region runs every step; chunk c
       belongs to thread c % nthreads, which claims it each step once the
       step is ready (all chunks of the step before done). Each thread so
       keeps streaming its own rows of W_hh from its own L2, and reads the
       input projection of its units, which it computed itself as the first
       tasks (npre of them, also owned round-robin). A task whose owner has
       not claimed it 20 us after it became ready (not scheduled, or late to
       wake) is taken by whichever thread is waiting, which from then on
       takes any ready task (its own first): a descheduled thread holds
       nothing up but the chunk it is computing. That stall still costs
       a time slice of the scheduler (ms), many per call when other processes
       keep the cores busy (median 19 ms with two busy loops running); so
       after a wait of over 100 us (for a step, or for the helper thread at
       the end of the region) the rest of the call runs on the first thread
       alone, and when stalls recur (another within 16 parallel calls) the
       next calls run on one thread (64 calls, doubling up to 4096 while they
       recur). A single stall does not: on the shared machine one comes every
       200 or so calls, and 64 calls on one thread after each kept over half
       of all calls off the second core. Who computes a chunk does not change
       its bits: every GEMV row is summed in one fixed order wherever it falls
       (rnn_sgemv_segs) and the gate passes are element-wise, with the same
       operations on a vector lane as in a scalar tail (no contraction here);
       so the results are the same for any thread count.
       Modes as rnn.pxd's enum (1 relu, 2 LSTM, 3 GRU, else tanh). */
    #ifdef _OPENMP
    #include <omp.h>
    #endif
    #include <sched.h>
    typedef struct {
        int mode, reverse, keep_cells;
        Py_ssize_t T, B, H, ldy, nchunks, step;
        const float *w_hh, *bias, *bias_hn, *h0, *c0;
        float *acts, *gh, *cells, *y;
        /* npre tasks before the steps (the input projection's column
           chunks, fixed by the shape): pre(pre_ctx, i), i < npre. */
        Py_ssize_t npre;
        void (*pre)(void*, Py_ssize_t);
        void* pre_ctx;
    } rnn_gemv_steps_args;

    static void rnn_gemv_chunk(const rnn_gemv_steps_args* p, Py_ssize_t s, Py_ssize_t c) {
        const Py_ssize_t T = p->T, B = p->B, H = p->H, ldy = p->ldy, BH = B * H;
        const Py_ssize_t AW = p->mode >= 2 ? 4 * H : 0;
        const Py_ssize_t j0 = c * p->step;
        const Py_ssize_t n = j0 + p->step <= H ? p->step : H - j0;
        const float* w = p->w_hh;
        Py_ssize_t t = p->reverse ? T - 1 - s : s, tp = p->reverse ? T - s : s - 1;
        const float* hp = s == 0 ? p->h0 : p->y + tp * B * ldy;
        Py_ssize_t ldh = s == 0 ? H : ldy;
        const float* cp = NULL;
        float *cn = NULL, *tcn = NULL;
        /* All units: the gates' rows are one run of W_hh. */
        int nseg = n == H ? 1 : (p->mode == 2 ? 4 : 3);
        if (n <= 0)
            return;
        if (p->mode == 2) {
            if (p->keep_cells) {    /* cells, then tanh(cells) (rnn_workspace_size) */
                cn = p->cells + t * BH;
                cp = s == 0 ? p->c0 : p->cells + tp * BH;
                tcn = p->cells + (T + t) * BH;
            } else {        /* inference: two cell rows used alternately, tanh(c) row */
                cn = p->cells + (s % 2) * BH;
                cp = s == 0 ? p->c0 : p->cells + ((s + 1) % 2) * BH;
                tcn = p->cells + 2 * BH;
            }
        }
        for (Py_ssize_t b = 0; b < B; b++) {
            const float* h = hp + b * ldh;
            float* yb = p->y + (t * B + b) * ldy + j0;
            float* a = p->mode >= 2 ? p->acts + (t * B + b) * AW + j0 : NULL;
            if (p->mode == 2) {         /* acts_t holds x W_ih^T: add h W_hh^T */
                rnn_sgemv_segs(nseg, H, n * 4 / nseg, H, w + j0 * H, H, h, a, H, 1);
                rnn_lstm_fwd_f(n, H, a, a + H, a + 2 * H, a + 3 * H, p->bias + j0,
                               cp + b * H + j0, cn + b * H + j0, tcn + b * H + j0, yb);
            } else if (p->mode == 3) {  /* hidden part apart: r * (W_hn h + b_hn) */
                float* gh = p->gh + b * 3 * H + j0;
                rnn_sgemv_segs(nseg, H, n * 3 / nseg, H, w + j0 * H, H, h, gh, H, 0);
                rnn_gru_fwd_f(n, H, a, a + H, a + 2 * H, a + 3 * H, gh, p->bias + j0,
                              p->bias_hn + j0, h + j0, yb);
            } else {                    /* y_t holds x W_ih^T */
                rnn_sgemv_rows(n, H, w + j0 * H, H, h, yb, 1);
                rnn_elman_fwd_f(n, p->mode == 1, p->bias + j0, yb);
            }
        }
    }

    /* done counts finished tasks: the npre input tasks, then nchunks per
       step; solo: a stall was seen, only thread 0 goes on; claim[i] (one
       cache line each, i < npre + nchunks): input task i claimed (0 or 1),
       then the steps of chunk c claimed so far. */
    #define RNN_GEMV_MAX_PRE 8
    #define RNN_GEMV_MAX_CHUNKS 64
    typedef struct {
        Py_ssize_t done __attribute__((aligned(64)));
        int solo __attribute__((aligned(64)));
        char* claims;
    } rnn_tickets;
    #define RNN_CLAIM(tk, i) ((Py_ssize_t*)((tk)->claims + 64 * (i)))

    #if defined(__x86_64__) || defined(__i386__)
    #include <x86intrin.h>
    #include <time.h>
    /* TSC ticks in 100 us (the TSC runs at a constant rate), measured once. */
    static unsigned long long rnn_stall_ticks(void) {
        static unsigned long long ticks = 0;
        unsigned long long v = __atomic_load_n(&ticks, __ATOMIC_RELAXED);
        if (v == 0) {
            struct timespec a, b;
            clock_gettime(CLOCK_MONOTONIC, &a);
            unsigned long long t0 = __rdtsc();
            do clock_gettime(CLOCK_MONOTONIC, &b);
            while ((b.tv_sec - a.tv_sec) * 1000000000LL + (b.tv_nsec - a.tv_nsec) < 200000);
            v = (__rdtsc() - t0) / 2 + 1;
            __atomic_store_n(&ticks, v, __ATOMIC_RELAXED);
        }
        return v;
    }
    #define RNN_NOW() __rdtsc()
    #else
    static unsigned long long rnn_stall_ticks(void) { return 100000; }
    static __thread unsigned long long rnn_spin_clock = 0;
    #define RNN_NOW() (rnn_spin_clock += 50)   /* about 50 ns a spin, per thread */
    #endif

    /* Claim and run one ready task (d tasks done): an input task while
       those are not all done, else a chunk of step (d - npre) / nchunks;
       the thread's own ones first, then (if any) the others. Returns 1 if
       one ran. */
    static int rnn_gemv_try_task(const rnn_gemv_steps_args* p, rnn_tickets* tk, Py_ssize_t d,
                                 int tid, int nthreads, int any) {
        const Py_ssize_t npre = p->npre, C = p->nchunks;
        const Py_ssize_t s = d < npre ? -1 : (d - npre) / C;
        const Py_ssize_t first = d < npre ? 0 : npre, n = d < npre ? npre : C;
        Py_ssize_t i, want;
        if (s >= p->T)
            return 0;
        for (int others = 0; others <= any; others++) {
            for (i = 0; i < n; i++) {
                /* input task i: 0 -> 1; chunk i: steps claimed s -> s + 1 */
                want = s < 0 ? 0 : s;
                if ((i % nthreads == tid) == !others
                        && __atomic_load_n(RNN_CLAIM(tk, first + i), __ATOMIC_RELAXED) == want
                        && __atomic_compare_exchange_n(RNN_CLAIM(tk, first + i), &want, want + 1,
                                                       0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
                    if (s < 0)
                        p->pre(p->pre_ctx, i);
                    else
                        rnn_gemv_chunk(p, s, i);
                    __atomic_fetch_add(&tk->done, 1, __ATOMIC_RELEASE);
                    return 1;
                }
            }
        }
        return 0;
    }

    static void rnn_gemv_steps_run(const rnn_gemv_steps_args* p, rnn_tickets* tk, int tid,
                                   int nthreads, unsigned long long stall) {
        const Py_ssize_t total = p->npre + p->T * p->nchunks;
        const unsigned long long steal = stall / 5;
        unsigned int fp_mode = engine_ftz_enter();
        int greedy = 0;     /* took a late owner's task: from now on take any at once */
        for (;;) {
            int solo = __atomic_load_n(&tk->solo, __ATOMIC_RELAXED);
            if (tid != 0 && solo)
                break;
            Py_ssize_t d = __atomic_load_n(&tk->done, __ATOMIC_ACQUIRE);
            if (d >= total)
                break;
            if (rnn_gemv_try_task(p, tk, d, tid, nthreads, solo || greedy))
                continue;
            /* Nothing of ours is ready: wait for a task to finish; past
               `steal`, take a ready task whose owner has not claimed it (and
               do not wait for that owner again this call: a thread off its
               core for milliseconds would cost `steal` every step). */
            unsigned long long t0 = RNN_NOW();
            while (__atomic_load_n(&tk->done, __ATOMIC_ACQUIRE) == d) {
    #if defined(__SSE2__)
                _mm_pause();
    #endif
                unsigned long long waited = RNN_NOW() - t0;
                if (waited > steal && rnn_gemv_try_task(p, tk, d, tid, nthreads, 1)) {
                    greedy = 1;
                    break;
                }
                if (waited > stall) {
                    __atomic_store_n(&tk->solo, 1, __ATOMIC_RELAXED);
                    if (tid != 0)
                        break;
                    sched_yield();  /* the thread we wait for may need this core */
                }
            }
        }
        engine_ftz_exit(fp_mode);
    }

    /* Calls left to run on one thread after recurring stalls, the next such
       run, and the parallel calls since the last stall. */
    #define RNN_STALL_RECUR 16
    static int rnn_solo_calls = 0, rnn_solo_backoff = 64;
    static int rnn_calls_since_stall = RNN_STALL_RECUR;

    static void rnn_gemv_steps(const rnn_gemv_steps_args* p, int nthreads) {
        char claims[64 * (RNN_GEMV_MAX_PRE + RNN_GEMV_MAX_CHUNKS)] __attribute__((aligned(64)));
        rnn_tickets tk;
        if (p->npre > RNN_GEMV_MAX_PRE || p->nchunks > RNN_GEMV_MAX_CHUNKS) {
            /* More tasks than claims (the callers keep to the limits): in order. */
            Py_ssize_t i, s;
            unsigned int fp_mode = engine_ftz_enter();
            for (i = 0; i < p->npre; i++) p->pre(p->pre_ctx, i);
            for (s = 0; s < p->T; s++)
                for (i = 0; i < p->nchunks; i++) rnn_gemv_chunk(p, s, i);
            engine_ftz_exit(fp_mode);
            return;
        }
        memset(claims, 0, 64 * (size_t)(p->npre + p->nchunks));
        tk.done = 0;
        tk.solo = 0;
        tk.claims = claims;
    #ifdef _OPENMP
        if (nthreads > 1) {
            int left = __atomic_load_n(&rnn_solo_calls, __ATOMIC_RELAXED);
            if (left > 0) {
                __atomic_store_n(&rnn_solo_calls, left - 1, __ATOMIC_RELAXED);
                nthreads = 1;
            }
        }
        if (nthreads > 1) {
            unsigned long long stall = rnn_stall_ticks(), t_end = 0;
            #pragma omp parallel num_threads(nthreads)
            {
                int tid = omp_get_thread_num();
                rnn_gemv_steps_run(p, &tk, tid, omp_get_num_threads(), stall);
                if (tid == 0)
                    t_end = RNN_NOW();
            }
            /* A helper that was not scheduled in time holds up the join. */
            if (RNN_NOW() - t_end > stall)
                tk.solo = 1;
            int backoff = __atomic_load_n(&rnn_solo_backoff, __ATOMIC_RELAXED);
            int since = __atomic_load_n(&rnn_calls_since_stall, __ATOMIC_RELAXED);
            if (tk.solo) {
                if (since < RNN_STALL_RECUR) {
                    __atomic_store_n(&rnn_solo_calls, backoff, __ATOMIC_RELAXED);
                    __atomic_store_n(&rnn_solo_backoff, backoff < 4096 ? 2 * backoff : 4096,
                                     __ATOMIC_RELAXED);
                }
                __atomic_store_n(&rnn_calls_since_stall, 0, __ATOMIC_RELAXED);
            } else if (since < RNN_STALL_RECUR) {
                __atomic_store_n(&rnn_calls_since_stall, since + 1, __ATOMIC_RELAXED);
            } else if (backoff != 64) {
                __atomic_store_n(&rnn_solo_backoff, 64, __ATOMIC_RELAXED);
            }
            return;
        }
    #endif
        (void)nthreads;
        rnn_gemv_steps_run(p, &tk, 0, 1, ~0ULL);
    }
    #pragma GCC pop_options
    """
    void rnn_lstm_fwd_f(Py_ssize_t n, Py_ssize_t H, float* gi, float* gf, float* gg, float* go,
                        const float* bias, const float* c_prev, float* c_new,
                        float* tc_new, float* h) noexcept nogil
    void rnn_lstm_fwd_d(Py_ssize_t n, Py_ssize_t H, double* gi, double* gf, double* gg, double* go,
                        const double* bias, const double* c_prev, double* c_new,
                        double* tc_new, double* h) noexcept nogil
    void rnn_lstm_bwd_f(Py_ssize_t H, float* gi, float* gf, float* gg, float* go,
                        const float* tc_t, const float* c_prev, const float* dy,
                        const float* dh_rec, float* dc) noexcept nogil
    void rnn_lstm_bwd_d(Py_ssize_t H, double* gi, double* gf, double* gg, double* go,
                        const double* tc_t, const double* c_prev, const double* dy,
                        const double* dh_rec, double* dc) noexcept nogil
    void rnn_gru_fwd_f(Py_ssize_t n, Py_ssize_t H, float* ar, float* az, float* an, float* ahn,
                       const float* gh, const float* bias, const float* bias_hn,
                       const float* h_prev, float* h) noexcept nogil
    void rnn_gru_fwd_d(Py_ssize_t n, Py_ssize_t H, double* ar, double* az, double* an, double* ahn,
                       const double* gh, const double* bias, const double* bias_hn,
                       const double* h_prev, double* h) noexcept nogil
    void rnn_gru_bwd_f(Py_ssize_t H, float* ar, float* az, float* an, const float* ahn,
                       float* dgh, const float* h_prev, const float* dy,
                       float* dh) noexcept nogil
    void rnn_gru_bwd_d(Py_ssize_t H, double* ar, double* az, double* an,
                       const double* ahn, double* dgh, const double* h_prev,
                       const double* dy, double* dh) noexcept nogil
    void rnn_elman_fwd_f(Py_ssize_t H, int relu, const float* bias, float* h) noexcept nogil
    void rnn_elman_fwd_d(Py_ssize_t H, int relu, const double* bias, double* h) noexcept nogil
    void rnn_elman_bwd_f(Py_ssize_t H, int relu, const float* h, const float* dy,
                         const float* dh_rec, float* dg) noexcept nogil
    void rnn_elman_bwd_d(Py_ssize_t H, int relu, const double* h, const double* dy,
                         const double* dh_rec, double* dg) noexcept nogil
    void rnn_sgemm_rows(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const float* a,
                        Py_ssize_t lda, const float* w, Py_ssize_t ldw, float* c,
                        Py_ssize_t ldc, int accumulate) noexcept nogil
    void rnn_pack_panels(Py_ssize_t K, Py_ssize_t N, const float* src, Py_ssize_t sk,
                         Py_ssize_t sn, float* dst) noexcept nogil
    void rnn_pack_panels_cat(Py_ssize_t K1, Py_ssize_t K2, Py_ssize_t N, const float* a,
                             const float* b, float* dst) noexcept nogil
    void rnn_sgemv_segs(Py_ssize_t nseg, Py_ssize_t seg, Py_ssize_t N, Py_ssize_t K,
                        const float* w, Py_ssize_t ldw, const float* x, float* y,
                        Py_ssize_t ldy_seg, int accumulate) noexcept nogil
    void rnn_transpose_f(Py_ssize_t rows, Py_ssize_t cols, const float* src, Py_ssize_t lds,
                         float* dst, Py_ssize_t ldd) noexcept nogil
    void rnn_sgemm_panels(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const float* a,
                          Py_ssize_t lda, const float* wp, float* c, Py_ssize_t ldc,
                          int accumulate) noexcept nogil
    void rnn_sgemm_panels_k(Py_ssize_t M, Py_ssize_t N, Py_ssize_t Ktot, Py_ssize_t k0,
                            Py_ssize_t k1, const float* a, Py_ssize_t lda, const float* wp,
                            float* c, Py_ssize_t ldc, int accumulate) noexcept nogil
    void rnn_rows_to_panels(Py_ssize_t rows, Py_ssize_t N, const float* src, Py_ssize_t lds,
                            Py_ssize_t Ktot, Py_ssize_t k0, float* dst) noexcept nogil
    const int RNN_HAVE_GEMV
    const int RNN_GEMV_MAX_PRE
    const int RNN_GEMV_MAX_CHUNKS
    ctypedef struct rnn_gemv_steps_args:
        int mode, reverse, keep_cells
        Py_ssize_t T, B, H, ldy, nchunks, step
        const float* w_hh
        const float* bias
        const float* bias_hn
        const float* h0
        const float* c0
        float* acts
        float* gh
        float* cells
        float* y
        Py_ssize_t npre
        void (*pre)(void*, Py_ssize_t) noexcept nogil
        void* pre_ctx
    void rnn_gemv_steps(const rnn_gemv_steps_args* p, int nthreads) noexcept nogil
    void rnn_colsum_add_f(Py_ssize_t rows, Py_ssize_t cols, const float* a,
                          Py_ssize_t lda, float* out) noexcept nogil
    void rnn_colsum_add_d(Py_ssize_t rows, Py_ssize_t cols, const double* a,
                          Py_ssize_t lda, double* out) noexcept nogil


# Per step, batch rows are cut into chunks (fixed by the shapes) that threads
# take: each chunk runs its slice of the hidden GEMM and the fused gate pass.
# A step is short (B=32, H=128: ~45 us forward), and an OpenMP region per step
# costs more than it saves when the cores are shared (a thread that is not
# scheduled stalls every barrier), so steps only split when each chunk has at
# least this much work. 2 MFLOP splits B=32, H=128 in two: measured at 2
# threads on the 2-core machine while other jobs loaded it (load ~4), the
# LSTM T50 b32 step's best run went 27 -> 18 ms and its median 56 -> 83 ms
# (torch 2 threads: 116-132 ms median in the same runs); at 1 thread the two
# chunks run in turn at no measurable cost. Rows are independent within a
# step, so results are the same bits whatever the chunking.
cdef Py_ssize_t _STEP_MIN_ROWS = 16
cdef double _STEP_MIN_FLOPS = 2.0e6
# Below this batch the float32 forward steps use BLAS GEMV on W_hh as stored
# instead of transposing it for the tiled kernel (the transpose costs more
# than a whole batch-1 sequence of GEMVs saves).
cdef Py_ssize_t _TILE_MIN_BATCH = 4
# Bias-gradient sums run on the calling thread below this many elements.
cdef Py_ssize_t _DB_PARALLEL_MIN = 1 << 19
cdef Py_ssize_t _MAX_CHUNKS = 8
# Column block of the bias-gradient sums (one block per task, rows in order).
cdef Py_ssize_t _DB_BLOCK = 64


cdef Py_ssize_t rnn_num_gates(int mode) noexcept nogil:
    if mode == RNN_TANH or mode == RNN_RELU:
        return 1
    if mode == RNN_LSTM:
        return 4
    if mode == RNN_GRU:
        return 3
    return 0


cdef inline Py_ssize_t _acts_width(const rnn_dims* d) noexcept nogil:
    """Row width of the stored gate activations (LSTM i,f,g,o; GRU r,z,n,hn)."""
    return 4 * d.H if (d.mode == RNN_LSTM or d.mode == RNN_GRU) else 0


cdef Py_ssize_t rnn_workspace_size(const rnn_dims* d) noexcept nogil:
    cdef Py_ssize_t TB = d.T * d.B, BH = d.B * d.H, H = d.H
    if d.mode == RNN_LSTM:    # acts | cells | tanh(cells) | dh | dc
        return TB * 4 * H + 2 * TB * H + 2 * BH
    if d.mode == RNN_GRU:     # acts | step gh | d gates_h | dh
        return TB * 4 * H + d.B * 3 * H + TB * 3 * H + BH
    return TB * H + BH        # Elman: d gates | dh


cdef inline Py_ssize_t _time_index(const rnn_dims* d, Py_ssize_t s) noexcept nogil:
    """Time index of processing step s (steps run backwards in time when reversed)."""
    return d.T - 1 - s if d.reverse else s


cdef inline const floating* _prev_hidden(const rnn_dims* d, Py_ssize_t s, const floating* h0,
                                        const floating* y, Py_ssize_t* ld) noexcept nogil:
    """h_{t-1} of processing step s (B rows, `ld` apart): h0 at the first step,
    else the previous step's rows of the output y."""
    if s == 0:
        ld[0] = d.H
        return h0
    ld[0] = d.ldy
    return y + _time_index(d, s - 1) * d.B * d.ldy


cdef inline Py_ssize_t _step_chunks(const rnn_dims* d) noexcept nogil:
    cdef Py_ssize_t G = rnn_num_gates(d.mode)
    return work_chunks(d.B // _STEP_MIN_ROWS, 2.0 * d.B * G * d.H * d.H,
                       _STEP_MIN_FLOPS, _MAX_CHUNKS)


cdef int _check_dims(const rnn_dims* d) noexcept nogil:
    if rnn_num_gates(d.mode) == 0:
        return ENGINE_EBADARG
    if d.T < 1 or d.B < 1 or d.F < 1 or d.H < 1 or d.ldy < d.H:
        return ENGINE_EBADARG
    return ENGINE_OK


cdef void _colsum_add(Py_ssize_t rows, Py_ssize_t cols, const floating* a,
                      Py_ssize_t lda, floating* out) noexcept nogil:
    """out[j] += sum_r a[r, j], column blocks in parallel, rows in fixed order."""
    cdef Py_ssize_t blk, lo, nblk = ceil_div(cols, _DB_BLOCK)
    if rows * cols < _DB_PARALLEL_MIN:
        if floating is float:
            rnn_colsum_add_f(rows, cols, a, lda, out)
        else:
            rnn_colsum_add_d(rows, cols, a, lda, out)
        return
    for blk in prange(nblk, nogil=True, schedule='static',
                      num_threads=engine_num_threads()):
        lo = blk * _DB_BLOCK
        if floating is float:
            rnn_colsum_add_f(rows, min(cols - lo, _DB_BLOCK), a + lo, lda, out + lo)
        else:
            rnn_colsum_add_d(rows, min(cols - lo, _DB_BLOCK), a + lo, lda, out + lo)


cdef inline void _hidden_gemm(int rows, int N, int K, const floating* a, Py_ssize_t lda,
                              const floating* w_hh, const floating* w_hh_t,
                              floating beta, floating* c, Py_ssize_t ldc) noexcept nogil:
    """c = beta * c + a @ w_hh^T for one step's rows.

    float32: the register-tiled kernel on w_hh_t = w_hh^T packed in column
    panels (rnn_pack_panels), or, for a batch too small to pay for that
    packing (w_hh_t == NULL), one BLAS sgemv per row on W_hh as stored (with
    AVX2 + FMA such batches run rnn_gemv_steps instead).
    """
    cdef char trans = b'T'
    cdef int one = 1, r
    cdef float alpha = 1
    cdef float fbeta
    if floating is float:
        if w_hh_t != NULL:
            rnn_sgemm_panels(rows, N, K, a, lda, w_hh_t, c, ldc, beta != 0)
        else:
            fbeta = beta
            for r in range(rows):
                sgemv(&trans, &K, &N, &alpha, <float*>w_hh, &K, <float*>(a + r * lda), &one,
                      &fbeta, c + r * ldc, &one)
    else:
        gemm(False, True, rows, N, K, <floating>1, a, <int>lda, w_hh, K, beta, c, <int>ldc)


cdef inline void _hidden_grad_gemm(int rows, int N, int K, const floating* a,
                                   Py_ssize_t lda, const floating* w_hh,
                                   const floating* w_hh_p, floating beta,
                                   floating* c, Py_ssize_t ldc) noexcept nogil:
    """c = beta * c + a @ w_hh for one step's rows (a: gate gradients, K = G*H).

    float32: the tiled kernel on w_hh packed in panels (w_hh_p), or on w_hh as
    stored when the batch is too small to pay for packing (w_hh_p == NULL).
    """
    if floating is float:
        if w_hh_p != NULL:
            rnn_sgemm_panels(rows, N, K, a, lda, w_hh_p, c, ldc, beta != 0)
        else:
            rnn_sgemm_rows(rows, N, K, a, lda, w_hh, N, c, ldc, beta != 0)
    else:
        gemm(False, False, rows, N, K, <floating>1, a, <int>lda, w_hh, N, beta, c, <int>ldc)


cdef void _fused_step_gemm(const rnn_dims* d, Py_ssize_t b0, Py_ssize_t b1,
                           const float* x_t, const float* h_prev, Py_ssize_t ld_hp,
                           float* xh, const float* w_cat, Py_ssize_t N, float* c,
                           Py_ssize_t ldc) noexcept nogil:
    """c = [x_t | h_{t-1}] @ [w_ih | w_hh]^T for batch rows [b0, b1) (w_cat from
    rnn_pack_panels_cat), the rows copied side by side into xh first."""
    cdef Py_ssize_t F = d.F, H = d.H, K = d.F + d.H, b
    for b in range(b0, b1):
        memcpy(xh + b * K, x_t + b * F, F * sizeof(float))
        memcpy(xh + b * K + F, h_prev + b * ld_hp, H * sizeof(float))
    rnn_sgemm_panels(b1 - b0, N, K, xh + b0 * K, K, w_cat, c + b0 * ldc, ldc, 0)


cdef void _forward_rows(const rnn_dims* d, Py_ssize_t b0, Py_ssize_t b1,
                        const floating* w_hh, const floating* w_hh_t, const floating* bias,
                        const floating* bias_hn, const floating* h_prev,
                        Py_ssize_t ld_hp, const floating* c_prev, floating* c_new,
                        floating* tc_new, floating* acts, floating* gh, floating* y_t,
                        const floating* x_t, floating* xh) noexcept nogil:
    """One time step for batch rows [b0, b1): hidden GEMM, then the fused gates.

    With x_t (float32, see _fuse_input): w_hh_t holds [w_ih | w_hh]^T and the
    step's GEMM includes the input projection (xh: the step's [x_t | h] rows).
    """
    cdef Py_ssize_t H = d.H, ldy = d.ldy, b
    cdef int rows = <int>(b1 - b0)
    cdef floating* a
    cdef unsigned int fp_mode = engine_ftz_enter()
    if d.mode == RNN_LSTM:
        if floating is float and x_t != NULL:
            _fused_step_gemm(d, b0, b1, x_t, h_prev, ld_hp, xh, w_hh_t, 4 * H, acts, 4 * H)
        else:
            # acts_t already holds x W_ih^T; add h_{t-1} W_hh^T on top.
            _hidden_gemm(rows, <int>(4 * H), <int>H, h_prev + b0 * ld_hp, ld_hp, w_hh,
                         w_hh_t, <floating>1, acts + b0 * 4 * H, 4 * H)
        for b in range(b0, b1):
            a = acts + b * 4 * H
            if floating is float:
                rnn_lstm_fwd_f(H, H, a, a + H, a + 2 * H, a + 3 * H, bias, c_prev + b * H,
                               c_new + b * H, tc_new + b * H, y_t + b * ldy)
            else:
                rnn_lstm_fwd_d(H, H, a, a + H, a + 2 * H, a + 3 * H, bias, c_prev + b * H,
                               c_new + b * H, tc_new + b * H, y_t + b * ldy)
    elif d.mode == RNN_GRU:
        # The hidden part stays separate: n needs r * (W_hn h + b_hn).
        _hidden_gemm(rows, <int>(3 * H), <int>H, h_prev + b0 * ld_hp, ld_hp, w_hh, w_hh_t,
                     <floating>0, gh + b0 * 3 * H, 3 * H)
        for b in range(b0, b1):
            a = acts + b * 4 * H
            if floating is float:
                rnn_gru_fwd_f(H, H, a, a + H, a + 2 * H, a + 3 * H, gh + b * 3 * H, bias,
                              bias_hn, h_prev + b * ld_hp, y_t + b * ldy)
            else:
                rnn_gru_fwd_d(H, H, a, a + H, a + 2 * H, a + 3 * H, gh + b * 3 * H, bias,
                              bias_hn, h_prev + b * ld_hp, y_t + b * ldy)
    else:
        if floating is float and x_t != NULL:
            _fused_step_gemm(d, b0, b1, x_t, h_prev, ld_hp, xh, w_hh_t, H, y_t, ldy)
        else:
            # Elman: y_t holds x W_ih^T; the activation is applied in place.
            _hidden_gemm(rows, <int>H, <int>H, h_prev + b0 * ld_hp, ld_hp, w_hh, w_hh_t,
                         <floating>1, y_t + b0 * ldy, ldy)
        for b in range(b0, b1):
            if floating is float:
                rnn_elman_fwd_f(H, d.mode == RNN_RELU, bias, y_t + b * ldy)
            else:
                rnn_elman_fwd_d(H, d.mode == RNN_RELU, bias, y_t + b * ldy)
    engine_ftz_exit(fp_mode)


# Batch < 4 float32 forward steps split by hidden units among the threads
# (rnn_gemv_steps): only when each thread's GEMVs stream at least this many
# W_hh bytes per step (below that a barrier per step costs more than it
# saves), in chunks of whole 8-unit vectors.
cdef double _GEMV_SPLIT_MIN_BYTES = 96.0 * 1024
cdef Py_ssize_t _GEMV_SPLIT_UNITS = 8


# ... and its input projection in chunks of hidden units (all their gate
# columns) of at least this much work (fixed by the shape; the batch-1 LSTM
# T100 64->128 makes two), run as the first tasks of the same parallel
# region: with as many step chunks, each thread then reads the projection of
# its own units, written by itself. From this many rows of x (T*B) it runs on
# the tiled kernel over w_ih transposed (one pass of w_ih there and back),
# below as GEMVs on w_ih as stored (one pass per row). Batch-1 LSTM 64->128
# calls at 1 thread: T6 60 us with GEMVs against 55 tiled; T1 19-21 against
# 24-35 (the transpose alone is a pass over w_ih).
cdef double _GEMV_INPUT_MIN_FLOPS = 2.0e6
cdef Py_ssize_t _GEMV_INPUT_TILE_ROWS = 4


ctypedef struct _input_task:
    int M, H, G, K, ldc, units
    const float* x
    const float* w_ih
    float* w_t
    float* c


cdef void _input_chunk(void* ctx, Py_ssize_t i) noexcept nogil:
    """Units [i * units, (i + 1) * units) of c = x @ w_ih^T: their columns
    g * H + j of every gate g. BLAS would take four calls of a quarter of the
    columns (one per gate), each packing its operands; instead each gate's
    rows of w_ih are transposed into w_t (at the same offset) for the tiled
    kernel, or with fewer than _GEMV_INPUT_TILE_ROWS rows of x multiplied as
    stored by GEMV.
    Batch-1 LSTM 64->128 at 1 thread, against one BLAS call per column chunk:
    T100 536-575 -> 505-546 us, T10 88-110 -> 68-70 us. Every element is
    summed in one order fixed by the shape, whoever computes its chunk."""
    cdef _input_task* p = <_input_task*>ctx
    cdef int lo = <int>(i * p.units), g, m
    cdef int n = min(p.H - lo, p.units)
    cdef Py_ssize_t off
    if n <= 0:      # units rounded up to whole vectors: the last chunks may be empty
        return
    if p.M < _GEMV_INPUT_TILE_ROWS:
        for m in range(p.M):
            rnn_sgemv_segs(p.G, p.H, n, p.K, p.w_ih + <Py_ssize_t>lo * p.K, p.K,
                           p.x + <Py_ssize_t>m * p.K, p.c + <Py_ssize_t>m * p.ldc + lo, p.H, 0)
        return
    for g in range(p.G):
        off = <Py_ssize_t>(g * p.H + lo)
        rnn_transpose_f(n, p.K, p.w_ih + off * p.K, p.K, p.w_t + off * p.K, n)
        rnn_sgemm_rows(p.M, n, p.K, p.x, p.K, p.w_t + off * p.K, n, p.c + off, p.ldc, 0)


cdef void _gemv_forward_steps(const rnn_dims* d, const float* x, const float* w_ih,
                              float* w_ih_t, const float* w_hh, const float* bias,
                              const float* bias_hn, const float* h0, const float* c0,
                              float* acts, float* gh, float* cells, float* y,
                              bint keep_cells) noexcept nogil:
    """The input projection and every forward step of a float32 batch < 4
    layer, a chunk of hidden units per thread (rnn_gemv_steps; the same bits
    for any thread count). w_ih_t: G*H*F floats of workspace, used from
    _GEMV_INPUT_TILE_ROWS rows of x."""
    cdef rnn_gemv_steps_args p
    cdef _input_task task
    cdef Py_ssize_t G = rnn_num_gates(d.mode), H = d.H
    cdef Py_ssize_t most = <Py_ssize_t>(4.0 * d.B * G * H * H / _GEMV_SPLIT_MIN_BYTES)
    p.mode, p.reverse, p.keep_cells = d.mode, d.reverse, keep_cells
    p.T, p.B, p.H, p.ldy = d.T, d.B, d.H, d.ldy
    p.nchunks = max(1, min(<Py_ssize_t>engine_num_threads(), most, H // _GEMV_SPLIT_UNITS,
                           RNN_GEMV_MAX_CHUNKS))
    p.step = ceil_div(ceil_div(H, p.nchunks), _GEMV_SPLIT_UNITS) * _GEMV_SPLIT_UNITS
    p.w_hh, p.bias, p.bias_hn, p.h0, p.c0 = w_hh, bias, bias_hn, h0, c0
    p.acts, p.gh, p.cells, p.y = acts, gh, cells, y
    task.M, task.H, task.G, task.K = <int>(d.T * d.B), <int>H, <int>G, <int>d.F
    task.x, task.w_ih, task.w_t = x, w_ih, w_ih_t
    if d.mode == RNN_LSTM or d.mode == RNN_GRU:
        task.c, task.ldc = acts, <int>(4 * H)
    else:
        task.c, task.ldc = y, <int>d.ldy
    p.npre = work_chunks(H // _GEMV_SPLIT_UNITS, 2.0 * task.M * G * H * task.K,
                         _GEMV_INPUT_MIN_FLOPS, RNN_GEMV_MAX_PRE)
    task.units = <int>(ceil_div(ceil_div(H, p.npre), _GEMV_SPLIT_UNITS) * _GEMV_SPLIT_UNITS)
    p.pre, p.pre_ctx = _input_chunk, &task
    rnn_gemv_steps(&p, <int>p.nchunks)


# float32 LSTM / Elman steps with at least this batch and [w_ih | w_hh]^T
# panels of at most this size (they stream from L2 every step) do the input
# projection inside each step's GEMM (K = F + H, _fused_step_gemm) instead of
# one BLAS GEMM over all steps first: no T*B x G*H pass written to memory and
# read back step by step, and one K loop per output tile instead of two.
cdef Py_ssize_t _FUSE_MIN_BATCH = 16
cdef Py_ssize_t _FUSE_MAX_PANEL_BYTES = 448 * 1024


cdef bint _fuse_input(const rnn_dims* d) noexcept nogil:
    return (d.mode != RNN_GRU and d.B >= _FUSE_MIN_BATCH
            and (d.F + d.H) * rnn_num_gates(d.mode) * d.H * 4 <= _FUSE_MAX_PANEL_BYTES)


cdef int rnn_forward(const rnn_dims* d, const floating* x,
                     const floating* w_ih, const floating* w_hh,
                     const floating* b_ih, const floating* b_hh,
                     const floating* h0, const floating* c0,
                     floating* y, floating* h_n, floating* c_n,
                     floating* ws) noexcept nogil:
    cdef Py_ssize_t T = d.T, B = d.B, I = d.F, H = d.H, ldy = d.ldy
    cdef Py_ssize_t G = rnn_num_gates(d.mode), TB = d.T * d.B, BH = d.B * d.H
    cdef Py_ssize_t AW = _acts_width(d)
    cdef Py_ssize_t s, t, tp, k, b, c, b0, b1, nchunks, step
    cdef bint training = ws != NULL, gemv_steps, fuse
    cdef Py_ssize_t extra
    cdef const floating* x_t
    cdef floating* xh = NULL
    cdef floating* buf = NULL
    cdef floating* bias = NULL
    cdef floating* bias_hn
    cdef floating* w_hh_t = NULL
    cdef floating* acts = NULL
    cdef floating* cells = NULL
    cdef floating* gh = NULL
    cdef const floating* h_prev
    cdef const floating* c_prev = NULL
    cdef floating* c_new = NULL
    cdef floating* tc_new = NULL
    cdef Py_ssize_t ld_hp
    cdef unsigned int fp_mode
    if _check_dims(d) != ENGINE_OK:
        return ENGINE_EBADARG
    if x == NULL or w_ih == NULL or w_hh == NULL or h0 == NULL or y == NULL or h_n == NULL:
        return ENGINE_EBADARG
    if d.mode == RNN_LSTM and (c0 == NULL or c_n == NULL):
        return ENGINE_EBADARG

    # Buffers: the gate activations (and LSTM cells) live in the training
    # workspace; inference uses a per-call buffer (thread-safe by ownership).
    if training:
        acts = ws
        if d.mode == RNN_LSTM:
            cells = ws + TB * AW
        elif d.mode == RNN_GRU:
            gh = ws + TB * AW
    elif d.mode == RNN_LSTM or d.mode == RNN_GRU:
        # LSTM: acts | two cell rows used alternately, a tanh(c) row;
        # GRU: acts | step gh.
        buf = <floating*>malloc((TB * AW + 3 * BH) * sizeof(floating))
        if buf == NULL:
            return ENGINE_ENOMEM
        acts = buf
        cells = buf + TB * AW
        gh = buf + TB * AW
    # Combined biases: b_ih + b_hh, except the GRU's b_hn that stays inside r * (.).
    # For float32 also W_hh^T packed in panels, the layout the per-step kernel streams.
    # (Only the biases need zeroing; the panels, only allocated where used, are
    # overwritten whole: a calloc of them cost ~8% of a short batch-1 call.)
    fuse = floating is float and _fuse_input(d)
    gemv_steps = floating is float and RNN_HAVE_GEMV and B < _TILE_MIN_BATCH
    if fuse:        # [w_ih | w_hh]^T panels, then the step's [x_t | h] rows
        extra = G * H * (I + H) + B * (I + H)
    elif floating is float and B >= _TILE_MIN_BATCH:
        extra = G * H * H
    elif gemv_steps and TB >= _GEMV_INPUT_TILE_ROWS:   # w_ih transposed (input projection)
        extra = G * H * I
    else:
        extra = 0
    bias = <floating*>malloc(((G + 1) * H + extra) * sizeof(floating))
    if bias == NULL:
        free(buf)
        return ENGINE_ENOMEM
    memset(bias, 0, (G + 1) * H * sizeof(floating))
    if fuse:
        w_hh_t = bias + (G + 1) * H
        xh = w_hh_t + G * H * (I + H)
        rnn_pack_panels_cat(I, H, G * H, <const float*>w_ih, <const float*>w_hh,
                            <float*>w_hh_t)
    elif floating is float and B >= _TILE_MIN_BATCH:
        w_hh_t = bias + (G + 1) * H
        # W[k, n] = w_hh[n, k]: K = H, N = G*H.
        rnn_pack_panels(H, G * H, w_hh, 1, H, w_hh_t)
    bias_hn = bias + G * H
    for k in range(G * H):
        if b_ih != NULL:
            bias[k] += b_ih[k]
        if b_hh != NULL:
            if d.mode == RNN_GRU and k >= 2 * H:
                bias_hn[k - 2 * H] = b_hh[k]
            else:
                bias[k] += b_hh[k]

    fp_mode = engine_ftz_enter()
    # Input projection of every step at once (unless each step does its own,
    # or rnn_gemv_steps does it).
    if fuse or gemv_steps:
        pass
    elif AW > 0:
        gemm_parallel(False, True, <int>TB, <int>(G * H), <int>I, <floating>1, x, <int>I,
                      w_ih, <int>I, <floating>0, acts, <int>AW)
    else:
        gemm_parallel(False, True, <int>TB, <int>H, <int>I, <floating>1, x, <int>I,
                      w_ih, <int>I, <floating>0, y, <int>ldy)

    if gemv_steps:
        _gemv_forward_steps(d, <const float*>x, <const float*>w_ih,
                            <float*>(bias + (G + 1) * H), <const float*>w_hh,
                            <const float*>bias, <const float*>bias_hn, <const float*>h0,
                            <const float*>c0, <float*>acts, <float*>gh, <float*>cells,
                            <float*>y, training)
        if d.mode == RNN_LSTM:
            c_new = cells + (_time_index(d, T - 1) * BH if training else ((T - 1) % 2) * BH)
    nchunks = _step_chunks(d)
    step = ceil_div(B, nchunks)
    for s in range(0 if gemv_steps else T):
        t = _time_index(d, s)
        if s == 0:
            h_prev = h0
            ld_hp = H
        else:
            tp = _time_index(d, s - 1)
            h_prev = y + tp * B * ldy
            ld_hp = ldy
        if d.mode == RNN_LSTM:
            if training:        # cells, then tanh(cells) (rnn_workspace_size)
                c_new = cells + t * BH
                c_prev = c0 if s == 0 else cells + tp * BH
                tc_new = cells + (T + t) * BH
            else:               # two cell rows used alternately, a tanh(c) row
                c_new = cells + (s % 2) * BH
                c_prev = c0 if s == 0 else cells + ((s + 1) % 2) * BH
                tc_new = cells + 2 * BH
        x_t = x + t * B * I if fuse else NULL
        if nchunks == 1:
            _forward_rows(d, 0, B, w_hh, w_hh_t, bias, bias_hn, h_prev, ld_hp, c_prev, c_new,
                          tc_new, acts + t * B * AW, gh, y + t * B * ldy, x_t, xh)
        else:
            for c in prange(nchunks, nogil=True, schedule='static',
                            num_threads=engine_num_threads()):
                b0 = c * step
                b1 = min(B, b0 + step)
                if b0 < b1:
                    _forward_rows(d, b0, b1, w_hh, w_hh_t, bias, bias_hn, h_prev, ld_hp, c_prev,
                                  c_new, tc_new, acts + t * B * AW, gh, y + t * B * ldy, x_t,
                                  xh)

    # Final states: the last processed step.
    t = _time_index(d, T - 1)
    for b in range(B):
        memcpy(h_n + b * H, y + (t * B + b) * ldy, H * sizeof(floating))
    if d.mode == RNN_LSTM:
        memcpy(c_n, c_new, BH * sizeof(floating))
    engine_ftz_exit(fp_mode)
    free(bias)
    free(buf)
    return ENGINE_OK


cdef void _backward_rows(const rnn_dims* d, Py_ssize_t b0, Py_ssize_t b1,
                         const floating* w_hh, const floating* w_hh_p,
                         const floating* dg_next, Py_ssize_t ldg,
                         floating* dh, floating* dc, floating* acts_t, floating* dgh_t,
                         const floating* tc_t, const floating* c_prev,
                         const floating* h_prev, Py_ssize_t ld_hp,
                         const floating* y_t, const floating* dy_t) noexcept nogil:
    """One backward step for batch rows [b0, b1): dh = dG_next W_hh, then the fused gates.

    dg_next is the hidden-side gate gradient of the step processed after this
    one in the forward pass (NULL for the last step, where dh holds d_hn).
    """
    cdef Py_ssize_t H = d.H, ldy = d.ldy, b
    cdef int rows = <int>(b1 - b0)
    cdef floating* a
    cdef unsigned int fp_mode = engine_ftz_enter()
    if d.mode == RNN_LSTM:
        if dg_next != NULL:
            _hidden_grad_gemm(rows, <int>H, <int>(4 * H), dg_next + b0 * ldg, ldg, w_hh, w_hh_p,
                              <floating>0, dh + b0 * H, H)
        for b in range(b0, b1):
            a = acts_t + b * 4 * H
            if floating is float:
                rnn_lstm_bwd_f(H, a, a + H, a + 2 * H, a + 3 * H, tc_t + b * H,
                               c_prev + b * H, dy_t + b * ldy, dh + b * H, dc + b * H)
            else:
                rnn_lstm_bwd_d(H, a, a + H, a + 2 * H, a + 3 * H, tc_t + b * H,
                               c_prev + b * H, dy_t + b * ldy, dh + b * H, dc + b * H)
    elif d.mode == RNN_GRU:
        # dh already holds the direct term dh_next * z; add the gates' part.
        if dg_next != NULL:
            _hidden_grad_gemm(rows, <int>H, <int>(3 * H), dg_next + b0 * ldg, ldg, w_hh, w_hh_p,
                              <floating>1, dh + b0 * H, H)
        for b in range(b0, b1):
            a = acts_t + b * 4 * H
            if floating is float:
                rnn_gru_bwd_f(H, a, a + H, a + 2 * H, a + 3 * H, dgh_t + b * 3 * H,
                              h_prev + b * ld_hp, dy_t + b * ldy, dh + b * H)
            else:
                rnn_gru_bwd_d(H, a, a + H, a + 2 * H, a + 3 * H, dgh_t + b * 3 * H,
                              h_prev + b * ld_hp, dy_t + b * ldy, dh + b * H)
    else:
        if dg_next != NULL:
            _hidden_grad_gemm(rows, <int>H, <int>H, dg_next + b0 * ldg, ldg, w_hh, w_hh_p,
                              <floating>0, dh + b0 * H, H)
        for b in range(b0, b1):
            if floating is float:
                rnn_elman_bwd_f(H, d.mode == RNN_RELU, y_t + b * ldy, dy_t + b * ldy,
                                dh + b * H, acts_t + b * H)
            else:
                rnn_elman_bwd_d(H, d.mode == RNN_RELU, y_t + b * ldy, dy_t + b * ldy,
                                dh + b * H, acts_t + b * H)
    engine_ftz_exit(fp_mode)


cdef int _merged_weight_grads(const rnn_dims* d, const floating* x, const floating* y,
                              const floating* h0, const floating* dg, Py_ssize_t ldg,
                              floating* grad_w_ih, floating* grad_w_hh,
                              floating* grad_b_ih, floating* grad_b_hh) noexcept nogil:
    """[grad W_ih | grad W_hh | grad b] += dG^T [x_t | h_{t-1} | 1]: ONE GEMM, K = T*B.

    For the LSTM and Elman RNN the input and hidden sides share dG, so both
    weight gradients come from one product (dG is packed once, not twice).
    When a bias gradient is wanted, a column of ones rides along: the GEMM's
    last output column is the column sum of dG (both biases' gradient), which
    saves a separate pass over the T*B x G*H gradients.
    Returns ENGINE_ENOMEM (caller falls back to two GEMMs) if buffers fail.
    """
    cdef bint with_bias = grad_b_ih != NULL or grad_b_hh != NULL
    cdef Py_ssize_t T = d.T, B = d.B, I = d.F, H = d.H
    cdef Py_ssize_t W = d.F + d.H + (1 if with_bias else 0)
    cdef Py_ssize_t GH = rnn_num_gates(d.mode) * d.H, s, t, b, k, j
    cdef const floating* hp
    cdef Py_ssize_t ld_hp
    cdef floating* xh = <floating*>malloc(T * B * W * sizeof(floating))
    cdef floating* prod = <floating*>malloc(GH * W * sizeof(floating))
    cdef floating* row
    if xh == NULL or prod == NULL:
        free(xh)
        free(prod)
        return ENGINE_ENOMEM
    for s in range(T):
        t = _time_index(d, s)
        hp = _prev_hidden(d, s, h0, y, &ld_hp)
        for b in range(B):
            row = xh + (t * B + b) * W
            memcpy(row, x + (t * B + b) * I, I * sizeof(floating))
            memcpy(row + I, hp + b * ld_hp, H * sizeof(floating))
            if with_bias:
                row[I + H] = 1
    gemm_parallel(True, False, <int>GH, <int>W, <int>(T * B), <floating>1, dg, <int>ldg,
                  xh, <int>W, <floating>0, prod, <int>W)
    for k in range(GH):
        for j in range(I):
            grad_w_ih[k * I + j] += prod[k * W + j]
        for j in range(H):
            grad_w_hh[k * H + j] += prod[k * W + I + j]
        if grad_b_ih != NULL:
            grad_b_ih[k] += prod[k * W + I + H]
        if grad_b_hh != NULL:
            grad_b_hh[k] += prod[k * W + I + H]
    free(xh)
    free(prod)
    return ENGINE_OK


# Weight gradients on the float32 panel kernel: K-blocks of this many T*B rows
# (a 16-wide panel block of dG, 128 KB, stays in L2 across the row tiles;
# measured for T*B = 1600: unblocked 92, blocks of 256 rows 86, of 128 83 GFLOPS).
cdef Py_ssize_t _WG_KBLOCK = 2048
# ... used while [x | h | 1] has at most this many columns; wider layers keep
# the BLAS GEMM.
cdef Py_ssize_t _WG_MAX_W = 256


cdef bint _use_panel_weight_grads(const rnn_dims* d) noexcept nogil:
    return (d.mode != RNN_GRU and d.B >= _TILE_MIN_BATCH
            and d.F + d.H + 1 <= _WG_MAX_W)


cdef int _panel_weight_grads(const rnn_dims* d, const float* x, const float* y,
                             const float* h0, const float* dgp, float* grad_w_ih,
                             float* grad_w_hh, float* grad_b_ih,
                             float* grad_b_hh) noexcept nogil:
    """[grad W_ih | grad W_hh | grad b]^T += [x_t | h_{t-1} | 1]^T dG, float32.

    dG comes packed in column panels (rnn_rows_to_panels, filled step by step
    during the backward loop while each step's gradients are in L1), so no
    T*B x G*H repacking pass; the [x | h | 1]^T rows are built once. One
    register-tiled product (rnn_sgemm_panels_k) in K-blocks; its rows (the
    input/hidden features) are cut into chunks fixed by the shape for the
    threads, each element's K-sum in the same order for any thread count.
    Returns ENGINE_ENOMEM (caller falls back to BLAS) if buffers fail.
    """
    cdef bint with_bias = grad_b_ih != NULL or grad_b_hh != NULL
    cdef Py_ssize_t T = d.T, B = d.B, I = d.F, H = d.H, TB = d.T * d.B
    cdef Py_ssize_t W = d.F + d.H + (1 if with_bias else 0)
    cdef Py_ssize_t GH = rnn_num_gates(d.mode) * d.H
    cdef Py_ssize_t s, t, j, k, ld_hp, nchunks, step, c, m0, m1, k0
    cdef const float* hp
    cdef float* xht = <float*>malloc(max(W * TB, GH * (I + H)) * sizeof(float))
    cdef float* ct = <float*>malloc(W * GH * sizeof(float))
    if xht == NULL or ct == NULL:
        free(xht)
        free(ct)
        return ENGINE_ENOMEM
    for s in range(T):
        t = _time_index(d, s)
        hp = _prev_hidden(d, s, h0, y, &ld_hp)
        rnn_transpose_f(B, I, x + t * B * I, I, xht + t * B, TB)
        rnn_transpose_f(B, H, hp, ld_hp, xht + I * TB + t * B, TB)
    if with_bias:
        for k in range(TB):
            xht[(I + H) * TB + k] = 1

    nchunks = work_chunks(W // 48, 2.0 * W * GH * TB, 4.0e6, _MAX_CHUNKS)
    step = ceil_div(ceil_div(W, nchunks), 6) * 6
    for c in prange(nchunks, nogil=True, schedule='static',
                    num_threads=engine_num_threads()):
        m0 = c * step
        m1 = min(W, m0 + step)
        if m0 < m1:
            k0 = 0
            while k0 < TB:
                rnn_sgemm_panels_k(m1 - m0, GH, TB, k0, min(TB, k0 + _WG_KBLOCK),
                                   xht + m0 * TB, TB, dgp, ct + m0 * GH, GH, k0 > 0)
                k0 = k0 + _WG_KBLOCK

    # Add the transposed product: transposed into xht (no longer needed; sized
    # for this too), then added row by row (contiguous, vectorised).
    rnn_transpose_f(I + H, GH, ct, GH, xht, I + H)
    for k in range(GH):
        for j in range(I):
            grad_w_ih[k * I + j] += xht[k * (I + H) + j]
        for j in range(H):
            grad_w_hh[k * H + j] += xht[k * (I + H) + I + j]
    if with_bias:
        for k in range(GH):
            if grad_b_ih != NULL:
                grad_b_ih[k] += ct[(I + H) * GH + k]
            if grad_b_hh != NULL:
                grad_b_hh[k] += ct[(I + H) * GH + k]
    free(xht)
    free(ct)
    return ENGINE_OK


cdef void _separate_weight_grads(const rnn_dims* d, const floating* x, const floating* y,
                                 const floating* h0, const floating* dgx, Py_ssize_t ldgx,
                                 const floating* dgh, Py_ssize_t ldgh, floating* grad_w_ih,
                                 floating* grad_w_hh) noexcept nogil:
    """grad W_ih += dGx^T x and grad W_hh += dGh^T h_prev, GEMMs with K = T*B."""
    cdef Py_ssize_t T = d.T, B = d.B, I = d.F, H = d.H, ldy = d.ldy
    cdef Py_ssize_t GH = rnn_num_gates(d.mode) * d.H, t0 = _time_index(d, 0)
    gemm_parallel(True, False, <int>GH, <int>I, <int>(T * B), <floating>1, dgx, <int>ldgx,
                  x, <int>I, <floating>1, grad_w_ih, <int>I)
    # The steps after the first pair with the outputs y of the step before
    # (one GEMM), the first with h0.
    if T > 1:
        if d.reverse:
            gemm_parallel(True, False, <int>GH, <int>H, <int>((T - 1) * B), <floating>1,
                          dgh, <int>ldgh, y + B * ldy, <int>ldy, <floating>1,
                          grad_w_hh, <int>H)
        else:
            gemm_parallel(True, False, <int>GH, <int>H, <int>((T - 1) * B), <floating>1,
                          dgh + B * ldgh, <int>ldgh, y, <int>ldy, <floating>1,
                          grad_w_hh, <int>H)
    gemm_parallel(True, False, <int>GH, <int>H, <int>B, <floating>1,
                  dgh + t0 * B * ldgh, <int>ldgh, h0, <int>H, <floating>1,
                  grad_w_hh, <int>H)


cdef int rnn_backward(const rnn_dims* d, const floating* x,
                      const floating* w_ih, const floating* w_hh,
                      const floating* y, const floating* h0, const floating* c0,
                      floating* ws, const floating* d_y,
                      const floating* d_hn, const floating* d_cn,
                      floating* d_x, bint accumulate_dx,
                      floating* d_h0, floating* d_c0,
                      floating* grad_w_ih, floating* grad_w_hh,
                      floating* grad_b_ih, floating* grad_b_hh) noexcept nogil:
    cdef Py_ssize_t T = d.T, B = d.B, I = d.F, H = d.H, ldy = d.ldy
    cdef Py_ssize_t G = rnn_num_gates(d.mode), GH, TB = d.T * d.B, BH = d.B * d.H
    cdef Py_ssize_t AW = _acts_width(d)
    cdef Py_ssize_t s, t, tp, t0, c, b0, b1, nchunks, step
    cdef floating* acts          # per step: gate activations in, gate gradients out
    cdef floating* cells = NULL
    cdef floating* dgh = NULL
    cdef floating* dh
    cdef floating* dc = NULL
    cdef floating* dgx           # gradients of the input-side gate pre-activations
    cdef floating* dgh_all       # ... and of the hidden-side ones (differ for the GRU)
    cdef Py_ssize_t ldgx, ldgh
    cdef const floating* h_prev
    cdef const floating* c_prev = NULL
    cdef const floating* dg_next
    cdef Py_ssize_t ld_hp
    cdef unsigned int fp_mode
    cdef floating* w_hh_p = NULL
    cdef floating* dgp = NULL    # float32: dG in column panels for the weight grads
    if _check_dims(d) != ENGINE_OK:
        return ENGINE_EBADARG
    if (x == NULL or w_ih == NULL or w_hh == NULL or y == NULL or h0 == NULL
            or ws == NULL or d_y == NULL or grad_w_ih == NULL or grad_w_hh == NULL):
        return ENGINE_EBADARG
    if d.mode == RNN_LSTM and c0 == NULL:
        return ENGINE_EBADARG
    GH = G * H

    if d.mode == RNN_LSTM:
        acts = ws
        cells = ws + TB * AW        # then tanh(cells), TB * H each
        dh = cells + 2 * TB * H
        dc = dh + BH
        dgx = dgh_all = acts
        ldgx = ldgh = AW
    elif d.mode == RNN_GRU:
        acts = ws
        dgh = ws + TB * AW + B * 3 * H
        dh = dgh + TB * 3 * H
        dgx = acts
        ldgx = AW
        dgh_all = dgh
        ldgh = 3 * H
    else:
        acts = ws           # Elman: (T, B, H) gate gradients
        dh = ws + TB * H
        dgx = dgh_all = acts
        ldgx = ldgh = H

    if d_hn != NULL:
        memcpy(dh, d_hn, BH * sizeof(floating))
    else:
        memset(dh, 0, BH * sizeof(floating))
    if d.mode == RNN_LSTM:
        if d_cn != NULL:
            memcpy(dc, d_cn, BH * sizeof(floating))
        else:
            memset(dc, 0, BH * sizeof(floating))

    # float32 per-step kernel: W_hh packed in column panels once per call
    # (W[k, n] = w_hh[k, n], K = G*H, N = H); unpacked if the buffer fails.
    if floating is float and B >= _TILE_MIN_BATCH and T > 1:
        w_hh_p = <floating*>malloc(GH * H * sizeof(floating))
        if w_hh_p != NULL:
            rnn_pack_panels(GH, H, w_hh, H, 1, w_hh_p)
    if floating is float and _use_panel_weight_grads(d):
        dgp = <floating*>malloc(TB * GH * sizeof(floating))

    fp_mode = engine_ftz_enter()
    nchunks = _step_chunks(d)
    step = ceil_div(B, nchunks)
    for s in range(T - 1, -1, -1):
        t = _time_index(d, s)
        if s == 0:
            h_prev = h0
            ld_hp = H
            c_prev = c0
        else:
            tp = _time_index(d, s - 1)
            h_prev = y + tp * B * ldy
            ld_hp = ldy
            if cells != NULL:
                c_prev = cells + tp * BH
        dg_next = NULL if s == T - 1 else dgh_all + _time_index(d, s + 1) * B * ldgh
        if nchunks == 1:
            _backward_rows(d, 0, B, w_hh, w_hh_p, dg_next, ldgh, dh, dc,
                           acts + t * B * (AW if AW > 0 else H),
                           dgh + t * B * 3 * H if dgh != NULL else NULL,
                           cells + (T + t) * BH if cells != NULL else NULL, c_prev,
                           h_prev, ld_hp, y + t * B * ldy, d_y + t * B * ldy)
            if floating is float:
                if dgp != NULL:
                    rnn_rows_to_panels(B, GH, dgx + t * B * ldgx, ldgx, TB, t * B, dgp)
        else:
            for c in prange(nchunks, nogil=True, schedule='static',
                            num_threads=engine_num_threads()):
                b0 = c * step
                b1 = min(B, b0 + step)
                if b0 < b1:
                    _backward_rows(d, b0, b1, w_hh, w_hh_p, dg_next, ldgh, dh, dc,
                                   acts + t * B * (AW if AW > 0 else H),
                                   dgh + t * B * 3 * H if dgh != NULL else NULL,
                                   cells + (T + t) * BH if cells != NULL else NULL, c_prev,
                                   h_prev, ld_hp, y + t * B * ldy, d_y + t * B * ldy)
                    if floating is float:
                        if dgp != NULL:
                            rnn_rows_to_panels(b1 - b0, GH, dgx + (t * B + b0) * ldgx,
                                               ldgx, TB, t * B + b0, dgp)

    # Gradients of the initial states: the recurrence once more, from step 0.
    t0 = _time_index(d, 0)
    if d_h0 != NULL:
        if d.mode == RNN_GRU:
            memcpy(d_h0, dh, BH * sizeof(floating))
        gemm_parallel(False, False, <int>B, <int>H, <int>GH, <floating>1,
                      dgh_all + t0 * B * ldgh, <int>ldgh, w_hh, <int>H,
                      <floating>(1 if d.mode == RNN_GRU else 0), d_h0, <int>H)
    if d.mode == RNN_LSTM and d_c0 != NULL:
        memcpy(d_c0, dc, BH * sizeof(floating))

    # The merged GEMMs, K = T*B.
    if d_x != NULL:
        gemm_parallel(False, False, <int>TB, <int>I, <int>GH, <floating>1, dgx, <int>ldgx,
                      w_ih, <int>I, <floating>(1 if accumulate_dx else 0), d_x, <int>I)
    if floating is float and dgp != NULL and _panel_weight_grads(
            d, x, y, h0, dgp, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh) == ENGINE_OK:
        pass    # bias gradients included
    elif dgx == dgh_all and _merged_weight_grads(d, x, y, h0, dgx, ldgx, grad_w_ih, grad_w_hh,
                                                 grad_b_ih, grad_b_hh) == ENGINE_OK:
        pass    # bias gradients included
    else:
        _separate_weight_grads(d, x, y, h0, dgx, ldgx, dgh_all, ldgh, grad_w_ih, grad_w_hh)
        if grad_b_ih != NULL:
            _colsum_add(TB, GH, dgx, ldgx, grad_b_ih)
        if grad_b_hh != NULL:
            _colsum_add(TB, GH, dgh_all, ldgh, grad_b_hh)
    engine_ftz_exit(fp_mode)
    free(w_hh_p)
    free(dgp)
    return ENGINE_OK


# ---------------------------------------------------------------------------
# Python entries

_MODES = {"RNN_TANH": RNN_TANH, "RNN_RELU": RNN_RELU, "LSTM": RNN_LSTM, "GRU": RNN_GRU}


def _mode_id(mode):
    try:
        return _MODES[mode]
    except (KeyError, TypeError):
        raise ValueError(f"mode must be one of {sorted(_MODES)}, got {mode!r}") from None


def _workspace_size_py(mode, T, B, H):
    """Elements of the training workspace of one layer and direction."""
    cdef rnn_dims d
    d.mode = _mode_id(mode)
    d.T, d.B, d.H, d.F, d.ldy, d.reverse = T, B, H, 1, H, False
    return int(rnn_workspace_size(&d))


cdef inline floating* _ptr(floating[::1] a) noexcept:
    return NULL if a is None else &a[0]


def _flat(a):
    return None if a is None else a.reshape(-1)


def _check_state(h, name, B, H, dtype):
    h = float_array(h, name, ndim=2, dtype=dtype)
    if h.shape != (B, H):
        raise ValueError(f"{name} must have shape {(B, H)} (batch, hidden_size), "
                         f"got {h.shape}")
    return h


def _check_common(mode, x, w_ih, w_hh, b_ih, b_hh, h0, c0, out, out_offset):
    m = _mode_id(mode)
    G = rnn_num_gates(m)
    x = float_array(x, "x", ndim=3)
    T, B, I = x.shape
    if T < 1 or B < 1 or I < 1:
        raise ValueError(f"x must have non-empty (seq_len, batch, input_size), got {x.shape}")
    w_hh = float_array(w_hh, "w_hh", ndim=2, dtype=x.dtype)
    H = w_hh.shape[1]
    if H < 1 or w_hh.shape[0] != G * H:
        raise ValueError(f"w_hh must have shape ({G}*hidden_size, hidden_size) for {mode}, "
                         f"got {w_hh.shape}")
    w_ih = float_array(w_ih, "w_ih", ndim=2, dtype=x.dtype)
    if w_ih.shape != (G * H, I):
        raise ValueError(f"w_ih must have shape {(G * H, I)} (gates*hidden, input_size "
                         f"of x), got {w_ih.shape}")
    if b_ih is not None:
        b_ih = float_array(b_ih, "b_ih", ndim=1, dtype=x.dtype)
        if b_ih.shape != (G * H,):
            raise ValueError(f"b_ih must have shape {(G * H,)}, got {b_ih.shape}")
    if b_hh is not None:
        b_hh = float_array(b_hh, "b_hh", ndim=1, dtype=x.dtype)
        if b_hh.shape != (G * H,):
            raise ValueError(f"b_hh must have shape {(G * H,)}, got {b_hh.shape}")
    h0 = (np.zeros((B, H), x.dtype) if h0 is None
          else _check_state(h0, "h0", B, H, x.dtype))
    if m == RNN_LSTM:
        c0 = (np.zeros((B, H), x.dtype) if c0 is None
              else _check_state(c0, "c0", B, H, x.dtype))
    else:
        c0 = None
    if out is not None:
        if not isinstance(out, np.ndarray) or out.dtype != x.dtype:
            raise TypeError(f"out must be a {x.dtype} array")
        if (out.ndim != 3 or out.shape[:2] != (T, B) or out_offset < 0
                or out.shape[2] < out_offset + H):
            raise ValueError(f"out must have shape ({T}, {B}, >= {out_offset + H}) to hold "
                             f"hidden_size={H} columns at offset {out_offset}, got {out.shape}")
        if not out.flags.c_contiguous or not out.flags.writeable:
            raise ValueError("out must be a writeable C-contiguous array")
    for name, v in (("seq_len*batch", T * B), ("input_size", I), ("gates*hidden", G * H)):
        check_blas_size(name, v)
    return m, x, w_ih, w_hh, b_ih, b_hh, h0, c0


def _check_workspace(ws, size, dtype):
    if (not isinstance(ws, np.ndarray) or ws.dtype != dtype or ws.ndim != 1
            or ws.size < size or not ws.flags.c_contiguous or not ws.flags.writeable):
        raise ValueError(f"workspace must be a writeable 1-D {np.dtype(dtype)} array of at "
                         f"least {size} elements (rnn.workspace_size), got "
                         f"{getattr(ws, 'shape', type(ws).__name__)}")


cdef _forward_call(rnn_dims* d, floating[::1] x, floating[::1] w_ih, floating[::1] w_hh,
                   floating[::1] b_ih, floating[::1] b_hh, floating[::1] h0,
                   floating[::1] c0, floating[::1] y, Py_ssize_t y_offset,
                   floating[::1] h_n, floating[::1] c_n, floating[::1] ws):
    cdef int rc
    cdef const floating* px = _ptr(x)
    cdef const floating* pw_ih = _ptr(w_ih)
    cdef const floating* pw_hh = _ptr(w_hh)
    cdef const floating* pb_ih = _ptr(b_ih)
    cdef const floating* pb_hh = _ptr(b_hh)
    cdef const floating* ph0 = _ptr(h0)
    cdef const floating* pc0 = _ptr(c0)
    cdef floating* py = _ptr(y) + y_offset
    cdef floating* ph_n = _ptr(h_n)
    cdef floating* pc_n = _ptr(c_n)
    cdef floating* pws = _ptr(ws)
    with nogil:
        rc = rnn_forward(d, px, pw_ih, pw_hh, pb_ih, pb_hh, ph0, pc0, py, ph_n, pc_n, pws)
    if rc == ENGINE_ENOMEM:
        raise MemoryError("rnn_forward: could not allocate its gate buffer")
    if rc != ENGINE_OK:
        raise RuntimeError(f"rnn_forward failed with code {rc}")


def _rnn_forward_py(mode, x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, c0=None, *,
                    reverse=False, out=None, out_offset=0, workspace=None):
    """Forward of one recurrent layer in one direction over a whole sequence.

    Args:
        mode: 'RNN_TANH', 'RNN_RELU', 'LSTM' or 'GRU'.
        x: (T, B, I) float32/float64 input.
        w_ih: (G*H, I); w_hh: (G*H, H); b_ih, b_hh: (G*H,) or None (torch's
            gate order: LSTM i, f, g, o; GRU r, z, n).
        h0, c0: (B, H) initial states, zeros when None (c0 for the LSTM only).
        reverse: run from the last step to the first (backward direction).
        out: optional (T, B, D) array; the outputs go to columns
            [out_offset, out_offset + H) (a bidirectional layer's halves).
        workspace: None for inference, or a 1-D array of
            workspace_size(mode, T, B, H) elements that keeps what
            rnn_backward needs.

    Returns:
        (out, h_n, c_n): c_n is None except for the LSTM.
    """
    m, x, w_ih, w_hh, b_ih, b_hh, h0, c0 = _check_common(
        mode, x, w_ih, w_hh, b_ih, b_hh, h0, c0, out, out_offset)
    T, B, I = x.shape
    H = w_hh.shape[1]
    if out is None:
        out = np.empty((T, B, H), x.dtype)
        out_offset = 0
    cdef rnn_dims d
    d.mode, d.T, d.B, d.F, d.H = m, T, B, I, H
    d.ldy, d.reverse = out.shape[2], bool(reverse)
    if workspace is not None:
        _check_workspace(workspace, rnn_workspace_size(&d), x.dtype)
    h_n = np.empty((B, H), x.dtype)
    c_n = np.empty((B, H), x.dtype) if m == RNN_LSTM else None
    if x.dtype == np.float32:
        _forward_call[float](&d, x.reshape(-1), w_ih.reshape(-1), w_hh.reshape(-1),
                             _flat(b_ih), _flat(b_hh), h0.reshape(-1), _flat(c0),
                             out.reshape(-1), out_offset, h_n.reshape(-1), _flat(c_n),
                             workspace)
    else:
        _forward_call[double](&d, x.reshape(-1), w_ih.reshape(-1), w_hh.reshape(-1),
                              _flat(b_ih), _flat(b_hh), h0.reshape(-1), _flat(c0),
                              out.reshape(-1), out_offset, h_n.reshape(-1), _flat(c_n),
                              workspace)
    return out, h_n, c_n


cdef _backward_call(rnn_dims* d, floating[::1] x, floating[::1] w_ih, floating[::1] w_hh,
                    floating[::1] y, Py_ssize_t y_offset, floating[::1] h0,
                    floating[::1] c0, floating[::1] ws, floating[::1] d_y,
                    floating[::1] d_hn, floating[::1] d_cn, floating[::1] d_x,
                    bint accumulate_dx, floating[::1] d_h0, floating[::1] d_c0,
                    floating[::1] g_w_ih, floating[::1] g_w_hh, floating[::1] g_b_ih,
                    floating[::1] g_b_hh):
    cdef int rc
    cdef const floating* px = _ptr(x)
    cdef const floating* pw_ih = _ptr(w_ih)
    cdef const floating* pw_hh = _ptr(w_hh)
    cdef const floating* py = _ptr(y) + y_offset
    cdef const floating* ph0 = _ptr(h0)
    cdef const floating* pc0 = _ptr(c0)
    cdef floating* pws = _ptr(ws)
    cdef const floating* pdy = _ptr(d_y) + y_offset
    cdef const floating* pd_hn = _ptr(d_hn)
    cdef const floating* pd_cn = _ptr(d_cn)
    cdef floating* pd_x = _ptr(d_x)
    cdef floating* pd_h0 = _ptr(d_h0)
    cdef floating* pd_c0 = _ptr(d_c0)
    cdef floating* pg_w_ih = _ptr(g_w_ih)
    cdef floating* pg_w_hh = _ptr(g_w_hh)
    cdef floating* pg_b_ih = _ptr(g_b_ih)
    cdef floating* pg_b_hh = _ptr(g_b_hh)
    with nogil:
        rc = rnn_backward(d, px, pw_ih, pw_hh, py, ph0, pc0, pws, pdy, pd_hn, pd_cn,
                          pd_x, accumulate_dx, pd_h0, pd_c0, pg_w_ih, pg_w_hh,
                          pg_b_ih, pg_b_hh)
    if rc != ENGINE_OK:
        raise RuntimeError(f"rnn_backward failed with code {rc}")


def _grad_array(g, name, shape, dtype):
    if g is None:
        return np.zeros(shape, dtype)
    if (not isinstance(g, np.ndarray) or g.dtype != dtype or g.shape != tuple(shape)
            or not g.flags.c_contiguous or not g.flags.writeable):
        raise ValueError(f"{name} must be a writeable C-contiguous {np.dtype(dtype)} array "
                         f"of shape {tuple(shape)}")
    return g


def _rnn_backward_py(mode, x, w_ih, w_hh, out, h0, c0, workspace, d_out, d_hn=None,
                     d_cn=None, *, reverse=False, out_offset=0, bias=True, d_x=None,
                     input_grad=True, grad_w_ih=None, grad_w_hh=None, grad_b_ih=None,
                     grad_b_hh=None):
    """Backward of one layer and direction after _rnn_forward_py(workspace=...).

    `out`, `d_out` and `out_offset` describe the outputs as in the forward
    call (d_out: gradient of the whole `out` array; this direction reads its
    columns). The workspace is consumed. d_x, when given, is added to (the two
    directions of a layer share one input); otherwise a fresh array is
    returned (None with input_grad=False). grad_* arrays, when given, are
    accumulated into; otherwise fresh ones are returned (bias grads only with
    bias=True).

    Returns:
        (d_x, d_h0, d_c0, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh)
    """
    m, x, w_ih, w_hh, _, _, h0, c0 = _check_common(
        mode, x, w_ih, w_hh, None, None, h0, c0, out, out_offset)
    if out is None:
        raise ValueError("out (the forward outputs) is required")
    T, B, I = x.shape
    H = w_hh.shape[1]
    G = rnn_num_gates(m)
    d_out = float_array(d_out, "d_out", ndim=3, dtype=x.dtype)
    if d_out.shape != out.shape:
        raise ValueError(f"d_out must have the shape of out {out.shape}, got {d_out.shape}")
    if d_hn is not None:
        d_hn = _check_state(d_hn, "d_hn", B, H, x.dtype)
    if d_cn is not None and m == RNN_LSTM:
        d_cn = _check_state(d_cn, "d_cn", B, H, x.dtype)
    else:
        d_cn = None
    cdef rnn_dims d
    d.mode, d.T, d.B, d.F, d.H = m, T, B, I, H
    d.ldy, d.reverse = out.shape[2], bool(reverse)
    _check_workspace(workspace, rnn_workspace_size(&d), x.dtype)
    accumulate_dx = False
    if input_grad:
        if d_x is None:
            d_x = np.empty_like(x)
        else:
            d_x = _grad_array(d_x, "d_x", x.shape, x.dtype)
            accumulate_dx = True
    else:
        d_x = None
    d_h0 = np.empty((B, H), x.dtype)
    d_c0 = np.empty((B, H), x.dtype) if m == RNN_LSTM else None
    grad_w_ih = _grad_array(grad_w_ih, "grad_w_ih", w_ih.shape, x.dtype)
    grad_w_hh = _grad_array(grad_w_hh, "grad_w_hh", w_hh.shape, x.dtype)
    if bias:
        grad_b_ih = _grad_array(grad_b_ih, "grad_b_ih", (G * H,), x.dtype)
        grad_b_hh = _grad_array(grad_b_hh, "grad_b_hh", (G * H,), x.dtype)
    else:
        grad_b_ih = grad_b_hh = None
    if x.dtype == np.float32:
        _backward_call[float](&d, x.reshape(-1), w_ih.reshape(-1), w_hh.reshape(-1),
                              out.reshape(-1), out_offset, h0.reshape(-1), _flat(c0),
                              workspace, d_out.reshape(-1), _flat(d_hn), _flat(d_cn),
                              _flat(d_x), accumulate_dx, d_h0.reshape(-1), _flat(d_c0),
                              grad_w_ih.reshape(-1), grad_w_hh.reshape(-1),
                              _flat(grad_b_ih), _flat(grad_b_hh))
    else:
        _backward_call[double](&d, x.reshape(-1), w_ih.reshape(-1), w_hh.reshape(-1),
                               out.reshape(-1), out_offset, h0.reshape(-1), _flat(c0),
                               workspace, d_out.reshape(-1), _flat(d_hn), _flat(d_cn),
                               _flat(d_x), accumulate_dx, d_h0.reshape(-1), _flat(d_c0),
                               grad_w_ih.reshape(-1), grad_w_hh.reshape(-1),
                               _flat(grad_b_ih), _flat(grad_b_hh))
    return d_x, d_h0, d_c0, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh


export_entries(globals(), rnn_forward=_rnn_forward_py, rnn_backward=_rnn_backward_py,
               workspace_size=_workspace_size_py)
