/* parafill's CPU kernels: packed-weight linear layers and ordered attention.
 *
 * Built once per machine by kernels.py with the system C compiler (-O2 -fopenmp; AVX2 + FMA
 * code selected at run time, portable C elsewhere) and called through ctypes.
 *
 * Every result is batch-invariant by construction: an output row of a linear layer is computed
 * by the same instructions in the same order whatever the number of rows, and a query's
 * attention reads its visible keys in the order it is given them (the sequence's positions),
 * whatever cache row or column they sit in and whatever else the step holds. So packed weights
 * and fp32 attention give the same tokens in every packing mode without float64.
 *
 * Linear: w = d * q + m per group of 32 inputs (GGUF's Q4_1 rule), q 4-bit (two per byte, the
 * group's element j in the low nibble of byte j and element j + 16 in its high nibble, as in
 * GGUF blocks) or 8-bit; d and m fp32 per (output, group). y = sum_g d_g * (q_g . x_g) +
 * sum_g m_g * sum(x_g). Activations are rounded per group of 32 to int16 with their own
 * scale (llama.cpp's Q8 rule at 16 bits: int8 activations cost 7 points of greedy agreement
 * with fp32 on SmolLM2, whose outlier channels reach ~600), and the dot products run in
 * integers (vpmaddwd); the m term uses the group's exact fp32 sum.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define PF_X86 1
#endif

#define GROUP 32
#define ROWS 4 /* activation rows per pass over a weight group */

static int g_avx2 = -1;

int pf_has_avx2(void) {
#ifdef PF_X86
    if (g_avx2 < 0) {
        __builtin_cpu_init();
        g_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
    return g_avx2;
#else
    return 0;
#endif
}

/* the eight lanes' fixed reduction order, shared by both paths (bit-identical results) */
static inline float reduce8(const float l[8]) {
    float a0 = l[0] + l[4], a1 = l[1] + l[5], a2 = l[2] + l[6], a3 = l[3] + l[7];
    return (a0 + a2) + (a1 + a3);
}

/* sum of a[i] * b[i]: lane l takes i = l (mod 8), the fixed reduction, then the tail */
static float mdot_c(const float *a, const float *b, int64_t n) {
    float acc[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) acc[l] = fmaf(a[i + l], b[i + l], acc[l]);
    float s = reduce8(acc);
    for (; i < n; i++) s = fmaf(a[i], b[i], s);
    return s;
}

#ifdef PF_X86
__attribute__((target("avx2,fma"))) static inline float hsum8(__m256 v) {
    float l[8];
    _mm256_storeu_ps(l, v);
    return reduce8(l);
}

__attribute__((target("avx2,fma"))) static inline float mdot_avx2(const float *a, const float *b,
                                                                   int64_t n) {
    __m256 acc = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
    float s = hsum8(acc);
    for (; i < n; i++) s = fmaf(a[i], b[i], s);
    return s;
}
#endif

/* ---- packed weights, blocked for streaming ----
 * Output features in blocks of NB = 4, groups of 32 inputs in pairs ("steps"). Per block and
 * step one contiguous record: the 4 features' values for the two groups (4-bit: per feature
 * 32 bytes, group 2s's 16 then group 2s+1's, each byte holding element j in its low nibble and
 * j + 16 in its high one as GGUF blocks do; 8-bit: per feature 64 signed bytes), then d (8
 * floats: feature f's pair at 2f) and m (8 floats). w = d * q + m. A block is one sequential
 * stream. The features are padded to a multiple of 4 and the groups to an even count, with
 * zeros. Activations: each group rounded to int16 with its own scale (see the top). */
#define NB 4

static inline int64_t pairs_of(int64_t k) { return (k / GROUP + 1) / 2; }
static inline int64_t rec_bytes(int bits) { return NB * 2 * GROUP * bits / 8 + 64; }

/* one row: xq (64 * pairs bytes), dx and xs (2 * pairs floats), zero past k */
static void quantize_row(const float *x, int64_t k, int16_t *xq, float *dx, float *xs) {
    int64_t groups = k / GROUP, padded = 2 * pairs_of(k);
    for (int64_t g = 0; g < groups; g++) {
        const float *p = x + g * GROUP;
        float amax = 0.0f, s = 0.0f;
        for (int i = 0; i < GROUP; i++) {
            float a = fabsf(p[i]);
            amax = a > amax ? a : amax;
            s += p[i];
        }
        float d = amax / 32767.0f, id = d > 0.0f ? 1.0f / d : 0.0f;
        for (int i = 0; i < GROUP; i++) {
            long v = lrintf(p[i] * id);
            xq[g * GROUP + i] = (int16_t)(v > 32767 ? 32767 : v < -32767 ? -32767 : v);
        }
        dx[g] = d;
        xs[g] = s;
    }
    for (int64_t g = groups; g < padded; g++) {
        memset(xq + g * GROUP, 0, GROUP * sizeof(int16_t));
        dx[g] = 0.0f;
        xs[g] = 0.0f;
    }
}

/* the portable path: feature n of row (xq, dx, xs); the SIMD path computes the same lanes */
static float feature_c(const int16_t *xq, const float *dx, const float *xs, int64_t pairs,
                       const uint8_t *blob, int64_t n, int bits) {
    const int64_t b = n / NB, f = n % NB, rb = rec_bytes(bits), qb = 2 * GROUP * bits / 8;
    float acc[8] = {0}, me = 0.0f, mo = 0.0f;
    for (int64_t st = 0; st < pairs; st++) {
        const uint8_t *rec = blob + (b * pairs + st) * rb;
        const float *dp = (const float *)(rec + NB * qb) + 2 * f;
        const float *mp = (const float *)(rec + NB * qb + 32) + 2 * f;
        for (int half = 0; half < 2; half++) { /* group 2s, then 2s+1, over all eight lanes */
            const int64_t g = 2 * st + half;
            const int16_t *xg = xq + g * GROUP;
            const float sc = dp[half] * dx[g];
            int w[GROUP];
            if (bits == 4) {
                const uint8_t *qg = rec + f * qb + half * 16;
                for (int j = 0; j < 16; j++) {
                    w[j] = qg[j] & 15;
                    w[j + 16] = qg[j] >> 4;
                }
            } else {
                const uint8_t *qg = rec + f * qb + half * 32;
                for (int j = 0; j < GROUP; j++) w[j] = (int)(int8_t)qg[j];
            }
            for (int l = 0; l < 8; l++) { /* lane l: elements 2l, 2l+1, 16+2l, 17+2l */
                int isum = w[2 * l] * xg[2 * l] + w[2 * l + 1] * xg[2 * l + 1] +
                           w[16 + 2 * l] * xg[16 + 2 * l] + w[17 + 2 * l] * xg[17 + 2 * l];
                acc[l] = fmaf((float)isum, sc, acc[l]);
            }
        }
        me = fmaf(mp[0], xs[2 * st], me);
        mo = fmaf(mp[1], xs[2 * st + 1], mo);
    }
    return reduce8(acc) + (me + mo);
}

#ifdef PF_X86
/* one block of 4 features for CNT rows (from r0): y[r][n0 + f] */
#define PF_BLOCK_KERNEL(BITS, CNT)                                                               \
    __attribute__((target("avx2,fma"))) static void block_##BITS##_##CNT(                       \
        const int16_t *xq, const float *dx, const float *xs, int64_t pairs, const uint8_t *blob, \
        int64_t b, int64_t r0, float out[CNT][NB]) {                                             \
        const int64_t rb = rec_bytes(BITS), qb = 2 * GROUP * BITS / 8, kp = 64 * pairs;         \
        const __m256i m4 = _mm256_set1_epi8(15);                                                 \
        (void)m4;                                                                                \
        __m256 acc[NB][CNT], macc[CNT];                                                          \
        _Pragma("GCC unroll 4") for (int r = 0; r < CNT; r++) {                                  \
            macc[r] = _mm256_setzero_ps();                                                       \
            _Pragma("GCC unroll 4") for (int f = 0; f < NB; f++) acc[f][r] = _mm256_setzero_ps(); \
        }                                                                                        \
        const uint8_t *rec = blob + b * pairs * rb;                                              \
        for (int64_t st = 0; st < pairs; st++, rec += rb) {                                      \
            _mm_prefetch((const char *)(rec + 4 * rb), _MM_HINT_T0);                             \
            _mm_prefetch((const char *)(rec + 4 * rb + 64), _MM_HINT_T0);                        \
            _mm_prefetch((const char *)(rec + 4 * rb + 128), _MM_HINT_T0);                       \
            if (BITS == 8) {                                                                     \
                _mm_prefetch((const char *)(rec + 4 * rb + 192), _MM_HINT_T0);                   \
                _mm_prefetch((const char *)(rec + 4 * rb + 256), _MM_HINT_T0);                   \
            }                                                                                    \
            const float *dp = (const float *)(rec + NB * qb);                                    \
            const __m256 m8 = _mm256_loadu_ps(dp + 8);                                           \
            __m256i x0[CNT], x1[CNT], x2[CNT], x3[CNT];                                          \
            _Pragma("GCC unroll 4") for (int r = 0; r < CNT; r++) {                              \
                const int16_t *xr = xq + (r0 + r) * kp + st * 64;                                \
                x0[r] = _mm256_loadu_si256((const __m256i *)xr);                                 \
                x1[r] = _mm256_loadu_si256((const __m256i *)(xr + 16));                          \
                x2[r] = _mm256_loadu_si256((const __m256i *)(xr + 32));                          \
                x3[r] = _mm256_loadu_si256((const __m256i *)(xr + 48));                          \
                const __m256 xs2 = _mm256_castpd_ps(                                             \
                    _mm256_broadcast_sd((const double *)(xs + (r0 + r) * 2 * pairs + 2 * st)));  \
                macc[r] = _mm256_fmadd_ps(m8, xs2, macc[r]);                                     \
            }                                                                                    \
            _Pragma("GCC unroll 4") for (int f = 0; f < NB; f++) {                               \
                const uint8_t *qf = rec + f * qb;                                                \
                __m256i w0, w1, w2, w3; /* int16: group 2s's elements 0-15, 16-31, then 2s+1's */ \
                if (BITS == 4) {                                                                 \
                    __m256i v = _mm256_loadu_si256((const __m256i *)qf);                         \
                    __m256i lo = _mm256_and_si256(v, m4);                                        \
                    __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);                  \
                    w0 = _mm256_cvtepu8_epi16(_mm256_castsi256_si128(lo));                       \
                    w1 = _mm256_cvtepu8_epi16(_mm256_castsi256_si128(hi));                       \
                    w2 = _mm256_cvtepu8_epi16(_mm256_extracti128_si256(lo, 1));                  \
                    w3 = _mm256_cvtepu8_epi16(_mm256_extracti128_si256(hi, 1));                  \
                } else {                                                                         \
                    w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)qf));             \
                    w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(qf + 16)));      \
                    w2 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(qf + 32)));      \
                    w3 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(qf + 48)));      \
                }                                                                                \
                const __m256 d0 = _mm256_broadcast_ss(dp + 2 * f);                               \
                const __m256 d1 = _mm256_broadcast_ss(dp + 2 * f + 1);                           \
                _Pragma("GCC unroll 4") for (int r = 0; r < CNT; r++) {                          \
                    const float *dxr = dx + (r0 + r) * 2 * pairs + 2 * st;                       \
                    __m256 s0 = _mm256_mul_ps(d0, _mm256_broadcast_ss(dxr));                     \
                    __m256 s1 = _mm256_mul_ps(d1, _mm256_broadcast_ss(dxr + 1));                 \
                    __m256i a = _mm256_add_epi32(_mm256_madd_epi16(w0, x0[r]),                   \
                                                 _mm256_madd_epi16(w1, x1[r]));                  \
                    __m256i b = _mm256_add_epi32(_mm256_madd_epi16(w2, x2[r]),                   \
                                                 _mm256_madd_epi16(w3, x3[r]));                  \
                    acc[f][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a), s0, acc[f][r]);           \
                    acc[f][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(b), s1, acc[f][r]);           \
                }                                                                                \
            }                                                                                    \
        }                                                                                        \
        _Pragma("GCC unroll 4") for (int r = 0; r < CNT; r++) {                                  \
            float ml[8];                                                                         \
            _mm256_storeu_ps(ml, macc[r]);                                                       \
            _Pragma("GCC unroll 4") for (int f = 0; f < NB; f++)                                 \
                out[r][f] = hsum8(acc[f][r]) + (ml[2 * f] + ml[2 * f + 1]);                      \
        }                                                                                        \
    }
PF_BLOCK_KERNEL(4, 1)
PF_BLOCK_KERNEL(4, 2)
PF_BLOCK_KERNEL(8, 1)
PF_BLOCK_KERNEL(8, 2)
#endif

/* inside a parallel region: y (m, n) = x @ W.T from the quantized rows (row strides 64 *
 * pairs and 2 * pairs), blocks of features split across the threads; `acc` (or NULL):
 * acc += y (+ bias) instead, the residual stream updated in place. Every row goes through the
 * same code in the same order, so a row's result never depends on the others. */
static void linear_omp(const int16_t *xq, const float *dx, const float *xs, int64_t m_rows,
                       int64_t k, const uint8_t *blob, int64_t n, int bits, const float *bias,
                       float *y, float *acc, int avx2) {
    const int64_t pairs = pairs_of(k), blocks = (n + NB - 1) / NB;
    (void)avx2;
#pragma omp for schedule(static)
    for (int64_t b = 0; b < blocks; b++) {
        for (int64_t r0 = 0; r0 < m_rows; r0 += 2) {
            const int cnt = m_rows - r0 >= 2 ? 2 : 1;
            float out[2][NB];
#ifdef PF_X86
            if (avx2) {
                if (bits == 4 && cnt == 2) block_4_2(xq, dx, xs, pairs, blob, b, r0, out);
                if (bits == 4 && cnt == 1) block_4_1(xq, dx, xs, pairs, blob, b, r0, out);
                if (bits == 8 && cnt == 2) block_8_2(xq, dx, xs, pairs, blob, b, r0, out);
                if (bits == 8 && cnt == 1) block_8_1(xq, dx, xs, pairs, blob, b, r0, out);
            } else
#endif
                for (int r = 0; r < cnt; r++)
                    for (int f = 0; f < NB; f++)
                        out[r][f] = feature_c(xq + (r0 + r) * 64 * pairs, dx + (r0 + r) * 2 * pairs,
                                              xs + (r0 + r) * 2 * pairs, pairs, blob, b * NB + f,
                                              bits);
            for (int r = 0; r < cnt; r++)
                for (int f = 0; f < NB && b * NB + f < n; f++) {
                    const int64_t j = b * NB + f;
                    float v = out[r][f];
                    if (bias != NULL) v += bias[j];
                    if (acc != NULL) acc[(r0 + r) * n + j] += v;
                    else y[(r0 + r) * n + j] = v;
                }
        }
    }
}

/* y (m, n) = x (m, k) @ W.T for a blocked packed W. `portable`: the plain C path. */
static void linear_any(const float *x, int64_t m_rows, int64_t k, const uint8_t *blob,
                       int64_t n, float *y, int bits, int threads, int avx2) {
    const int64_t pairs = pairs_of(k);
    int16_t *xq = (int16_t *)malloc(sizeof(int16_t) * (size_t)(m_rows * 64 * pairs));
    float *dx = (float *)malloc(sizeof(float) * (size_t)(m_rows * 2 * pairs));
    float *xs = (float *)malloc(sizeof(float) * (size_t)(m_rows * 2 * pairs));
    for (int64_t r = 0; r < m_rows; r++)
        quantize_row(x + r * k, k, xq + r * 64 * pairs, dx + r * 2 * pairs, xs + r * 2 * pairs);
#pragma omp parallel num_threads(threads)
    linear_omp(xq, dx, xs, m_rows, k, blob, n, bits, NULL, y, NULL, avx2);
    free(xq);
    free(dx);
    free(xs);
}

void pf_linear(const float *x, int64_t m_rows, int64_t k, const uint8_t *blob, int64_t n,
               float *y, int bits, int threads) {
    linear_any(x, m_rows, k, blob, n, y, bits, threads, pf_has_avx2());
}

/* the portable path on any CPU, one thread (tests compare it with the SIMD path: equal bits) */
void pf_linear_portable(const float *x, int64_t m_rows, int64_t k, const uint8_t *blob,
                        int64_t n, float *y, int bits) {
    linear_any(x, m_rows, k, blob, n, y, bits, 1, 0);
}

/* ---- ordered attention ----
 * q (t, h, dim) fp32; the layer's K and V caches (rows, hkv, width, dim) fp32. Query i sees
 * the keys at columns cols_i[0 .. len_i) of cache row row_i, in that order (its sequence's
 * positions). out (t, h, dim). Work is split over (query, kv head) pairs. */
static void softmax_weights_c(float *s, int64_t len, float *inv) {
    float mx = s[0];
    for (int64_t j = 1; j < len; j++) mx = s[j] > mx ? s[j] : mx;
    float sum = 0.0f;
    for (int64_t j = 0; j < len; j++) {
        s[j] = expf(s[j] - mx);
        sum += s[j];
    }
    *inv = 1.0f / sum;
}

#ifdef PF_X86
/* exp on [-87, 88] (clamped), Cephes' polynomial on [-ln2/2, ln2/2] */
__attribute__((target("avx2,fma"))) static inline __m256 exp8(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
    __m256 fx = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

__attribute__((target("avx2,fma"))) static void softmax_weights_avx2(float *s, int64_t len,
                                                                      float *inv) {
    float mx = s[0];
    for (int64_t j = 1; j < len; j++) mx = s[j] > mx ? s[j] : mx;
    __m256 m8 = _mm256_set1_ps(mx), sum8 = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 8 <= len; j += 8) {
        __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + j), m8));
        _mm256_storeu_ps(s + j, e);
        sum8 = _mm256_add_ps(sum8, e);
    }
    float sum = hsum8(sum8);
    for (; j < len; j++) {
        s[j] = expf(s[j] - mx);
        sum += s[j];
    }
    *inv = 1.0f / sum;
}

__attribute__((target("avx2,fma"))) static void attend_avx2_any(
    const float *qh, const float *kh, const float *vh, const int32_t *cols, int64_t len,
    int64_t dim, float scale, float *s, float *out) {
    for (int64_t j = 0; j < len; j++)
        s[j] = mdot_avx2(qh, kh + (int64_t)cols[j] * dim, dim) * scale;
    float inv;
    softmax_weights_avx2(s, len, &inv);
    if (dim % 8 == 0 && dim <= 256) {
        __m256 acc[32];
        int64_t c = dim / 8;
        for (int64_t u = 0; u < c; u++) acc[u] = _mm256_setzero_ps();
        for (int64_t j = 0; j < len; j++) {
            const float *vr = vh + (int64_t)cols[j] * dim;
            __m256 p = _mm256_set1_ps(s[j]);
            for (int64_t u = 0; u < c; u++)
                acc[u] = _mm256_fmadd_ps(p, _mm256_loadu_ps(vr + 8 * u), acc[u]);
        }
        __m256 iv = _mm256_set1_ps(inv);
        for (int64_t u = 0; u < c; u++) _mm256_storeu_ps(out + 8 * u, _mm256_mul_ps(acc[u], iv));
        return;
    }
    for (int64_t i = 0; i < dim; i++) out[i] = 0.0f;
    for (int64_t j = 0; j < len; j++) {
        const float *vr = vh + (int64_t)cols[j] * dim;
        for (int64_t i = 0; i < dim; i++) out[i] += s[j] * vr[i];
    }
    for (int64_t i = 0; i < dim; i++) out[i] *= inv;
}

/* eight keys' scores at once: per key a vector of partial sums over the head dimension, then
 * one fixed reduction tree for all eight (a key's score depends on its place in the list, and
 * lists are the same in every packing mode) */
__attribute__((target("avx2,fma"), always_inline)) static inline __m256 sum8x8(__m256 a[8]) {
    __m256 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]);
    __m256 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
    __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

#define PF_ATTEND(C)                                                                             \
    __attribute__((target("avx2,fma"))) static void attend_avx2_##C(                            \
        const float *qh, const float *kh, const float *vh, const int32_t *cols, int64_t len,   \
        float scale, float *s, float *out) {                                                     \
        const int64_t dim = 8 * C;                                                               \
        __m256 qv[C];                                                                            \
        for (int u = 0; u < C; u++) qv[u] = _mm256_loadu_ps(qh + 8 * u);                         \
        const __m256 sc = _mm256_set1_ps(scale);                                                 \
        for (int64_t j = 0; j < len; j += 8) {                                                   \
            __m256 a[8];                                                                         \
            _Pragma("GCC unroll 8") for (int e = 0; e < 8; e++) {                                \
                int64_t jj = j + e < len ? j + e : len - 1;                                      \
                const float *kr = kh + (int64_t)cols[jj] * dim;                                  \
                __m256 acc = _mm256_mul_ps(qv[0], _mm256_loadu_ps(kr));                          \
                for (int u = 1; u < C; u++)                                                      \
                    acc = _mm256_fmadd_ps(qv[u], _mm256_loadu_ps(kr + 8 * u), acc);              \
                a[e] = acc;                                                                      \
            }                                                                                    \
            __m256 r = _mm256_mul_ps(sum8x8(a), sc);                                             \
            if (j + 8 <= len) {                                                                  \
                _mm256_storeu_ps(s + j, r);                                                      \
            } else {                                                                             \
                float tmp[8];                                                                    \
                _mm256_storeu_ps(tmp, r);                                                        \
                for (int64_t e = 0; j + e < len; e++) s[j + e] = tmp[e];                         \
            }                                                                                    \
        }                                                                                        \
        float inv;                                                                               \
        softmax_weights_avx2(s, len, &inv);                                                      \
        __m256 acc[C];                                                                           \
        for (int u = 0; u < C; u++) acc[u] = _mm256_setzero_ps();                                \
        for (int64_t j = 0; j < len; j++) {                                                      \
            const float *vr = vh + (int64_t)cols[j] * dim;                                       \
            __m256 p = _mm256_set1_ps(s[j]);                                                     \
            for (int u = 0; u < C; u++)                                                          \
                acc[u] = _mm256_fmadd_ps(p, _mm256_loadu_ps(vr + 8 * u), acc[u]);                \
        }                                                                                        \
        __m256 iv = _mm256_set1_ps(inv);                                                         \
        for (int u = 0; u < C; u++) _mm256_storeu_ps(out + 8 * u, _mm256_mul_ps(acc[u], iv));   \
    }
PF_ATTEND(2)
PF_ATTEND(4)
PF_ATTEND(8)
PF_ATTEND(16)

__attribute__((target("avx2,fma"))) static void attend_avx2(
    const float *qh, const float *kh, const float *vh, const int32_t *cols, int64_t len,
    int64_t dim, float scale, float *s, float *out) {
    switch (dim) {
    case 16: attend_avx2_2(qh, kh, vh, cols, len, scale, s, out); return;
    case 32: attend_avx2_4(qh, kh, vh, cols, len, scale, s, out); return;
    case 64: attend_avx2_8(qh, kh, vh, cols, len, scale, s, out); return;
    case 128: attend_avx2_16(qh, kh, vh, cols, len, scale, s, out); return;
    default: attend_avx2_any(qh, kh, vh, cols, len, dim, scale, s, out);
    }
}
#endif

static void attend_c(const float *qh, const float *kh, const float *vh, const int32_t *cols,
                     int64_t len, int64_t dim, float scale, float *s, float *out) {
    for (int64_t j = 0; j < len; j++) {
        const float *kr = kh + (int64_t)cols[j] * dim;
        float t = 0.0f;
        for (int64_t i = 0; i < dim; i++) t += qh[i] * kr[i];
        s[j] = t * scale;
    }
    float inv;
    softmax_weights_c(s, len, &inv);
    for (int64_t i = 0; i < dim; i++) out[i] = 0.0f;
    for (int64_t j = 0; j < len; j++) {
        const float *vr = vh + (int64_t)cols[j] * dim;
        for (int64_t i = 0; i < dim; i++) out[i] += s[j] * vr[i];
    }
    for (int64_t i = 0; i < dim; i++) out[i] *= inv;
}

/* inside a parallel region: one task per (query, head), in contiguous runs per thread, so the
 * heads sharing a KV head mostly run on one thread one after another and read its keys and
 * values from that core's cache */
static void attention_omp(const float *q, int64_t t, int64_t h, int64_t hkv, int64_t dim,
                          const float *kc, const float *vc, int64_t row_stride, int64_t width,
                          const int32_t *rows, const int64_t *col_ptrs, const int32_t *lens,
                          float scale, float *out, int avx2) {
    int64_t group = h / hkv;
    (void)avx2;
#pragma omp for schedule(static)
    for (int64_t task = 0; task < t * h; task++) {
        int64_t i = task / h, head = task % h, kvh = head / group;
        const int32_t *cols = (const int32_t *)(intptr_t)col_ptrs[i];
        int64_t len = lens[i];
        const float *kh = kc + rows[i] * row_stride + kvh * width * dim;
        const float *vh = vc + rows[i] * row_stride + kvh * width * dim;
        const float *qh = q + (i * h + head) * dim;
        float *o = out + (i * h + head) * dim;
        float stack[1024];
        float *s = len <= 1024 ? stack : (float *)malloc(sizeof(float) * (size_t)len);
#ifdef PF_X86
        if (avx2)
            attend_avx2(qh, kh, vh, cols, len, dim, scale, s, o);
        else
#endif
            attend_c(qh, kh, vh, cols, len, dim, scale, s, o);
        if (s != stack) free(s);
    }
}

#ifdef PF_X86
__attribute__((target("avx2,fma"))) static int64_t silu_mul_avx2(const float *g, const float *u,
                                                                 float *a, int64_t n) {
    const __m256 one = _mm256_set1_ps(1.0f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 gv = _mm256_loadu_ps(g + i);
        __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), gv));
        __m256 sv = _mm256_div_ps(gv, _mm256_add_ps(one, e));
        _mm256_storeu_ps(a + i, _mm256_mul_ps(sv, _mm256_loadu_ps(u + i)));
    }
    return i;
}
#endif

void pf_attention(const float *q, int64_t t, int64_t h, int64_t hkv, int64_t dim,
                  const float *kc, const float *vc, int64_t row_stride, int64_t width,
                  const int32_t *rows, const int64_t *col_ptrs, const int32_t *lens, float scale,
                  float *out, int threads) {
    int avx2 = pf_has_avx2();
#pragma omp parallel num_threads(threads)
    attention_omp(q, t, h, hkv, dim, kc, vc, row_stride, width, rows, col_ptrs, lens, scale, out,
                  avx2);
}

/* ---- whole decoder layers (Llama / Qwen2 / Mistral shape) over packed weights ----
 * x (t, hidden) is the residual stream, updated in place. Per layer, in one parallel region:
 * RMS norm, q/k/v (+ bias), RoPE, K/V written to the cache, ordered attention, o (+ bias) added
 * to x, RMS norm, gate/up, SiLU(gate) * up, down added to x. */
typedef struct {
    const uint8_t *blob; /* blocked packed weights */
    const float *bias;   /* or NULL */
    int64_t n, k, bits;
} pf_qw;

typedef struct {
    const float *ln1, *ln2;
    pf_qw qkv, o, gate_up, down;
} pf_lw;

typedef struct {
    int64_t hidden, heads, kv_heads, head_dim, inter;
    double eps, scale;
} pf_dims;

typedef struct {
    int64_t t;
    const int64_t *pos;                  /* (t,) positions */
    const float *cos, *sin;              /* rotary tables (P, head_dim) */
    const int32_t *rows, *cols;          /* (t,) the KV row and column each token writes */
    const int64_t *key_ptrs;             /* (t,) each query's key-column array */
    const int32_t *key_lens;             /* (t,) and its length */
    float *kc, *vc;                      /* the caches (layers, rows, kv_heads, width, dim) */
    int64_t cache_rows, width;
} pf_step;

static void rms_row(const float *x, const float *w, int64_t n, float eps, float *y, int avx2) {
    float ss;
    (void)avx2;
#ifdef PF_X86
    if (avx2) ss = mdot_avx2(x, x, n);
    else
#endif
        ss = mdot_c(x, x, n);
    float inv = 1.0f / sqrtf(ss / (float)n + eps);
    for (int64_t i = 0; i < n; i++) y[i] = (x[i] * inv) * w[i];
}

static void rope_head(float *v, const float *c, const float *s, int64_t dim) {
    int64_t half = dim / 2;
    float tmp[512];
    memcpy(tmp, v, sizeof(float) * (size_t)dim);
    for (int64_t j = 0; j < half; j++) v[j] = tmp[j] * c[j] - tmp[j + half] * s[j];
    for (int64_t j = half; j < dim; j++) v[j] = tmp[j] * c[j] + tmp[j - half] * s[j];
}

static void silu_mul(const float *g, const float *u, float *a, int64_t n, int avx2) {
    int64_t i = 0;
    (void)avx2;
#ifdef PF_X86
    if (avx2) {
        i = silu_mul_avx2(g, u, a, n);
    }
#endif
    for (; i < n; i++) a[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

/* inside a parallel region: quantize t rows of width k (row stride `stride` floats) */
static void quantize_omp(const float *x, int64_t t, int64_t k, int64_t stride, int16_t *xq,
                         float *dx, float *xs) {
    const int64_t pairs = pairs_of(k);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < t; r++)
        quantize_row(x + r * stride, k, xq + r * 64 * pairs, dx + r * 2 * pairs,
                     xs + r * 2 * pairs);
}

void pf_forward(float *x, const pf_lw *layers, const int32_t *which, int64_t nwhich,
                const pf_dims *dm, const pf_step *st, int threads) {
    const int64_t t = st->t, hid = dm->hidden, hd = dm->head_dim, nh = dm->heads;
    const int64_t nkv = dm->kv_heads, inter = dm->inter;
    const int64_t nqkv = (nh + 2 * nkv) * hd, natt = nh * hd;
    int64_t kmax = hid > natt ? hid : natt;
    kmax = kmax > inter ? kmax : inter;
    const int64_t wide = 2 * inter > nqkv ? 2 * inter : nqkv;
    const int64_t row_stride = nkv * st->width * hd, layer_stride = st->cache_rows * row_stride;
    const float eps = (float)dm->eps, scale = (float)dm->scale;
    const int64_t pq = pairs_of(kmax);
    float *h = malloc(sizeof(float) * (size_t)(t * (kmax > natt ? kmax : natt)));
    float *big = malloc(sizeof(float) * (size_t)(t * wide)); /* q/k/v, then gate/up */
    float *att = malloc(sizeof(float) * (size_t)(t * natt));
    float *q = malloc(sizeof(float) * (size_t)(t * natt));
    int16_t *xq = malloc(sizeof(int16_t) * (size_t)(t * 64 * pq));
    float *dx = malloc(sizeof(float) * (size_t)(t * 2 * pq));
    float *xs = malloc(sizeof(float) * (size_t)(t * 2 * pq));
    const int avx2 = pf_has_avx2();
    for (int64_t li = 0; li < nwhich; li++) {
        const pf_lw *w = &layers[which[li]];
        float *kc = st->kc + which[li] * layer_stride, *vc = st->vc + which[li] * layer_stride;
#pragma omp parallel num_threads(threads)
        {
#pragma omp for schedule(static)
            for (int64_t r = 0; r < t; r++) {
                rms_row(x + r * hid, w->ln1, hid, eps, h + r * hid, avx2);
                quantize_row(h + r * hid, hid, xq + r * 64 * pairs_of(hid),
                             dx + r * 2 * pairs_of(hid), xs + r * 2 * pairs_of(hid));
            }
            const pf_qw *p = &w->qkv;
            linear_omp(xq, dx, xs, t, p->k, p->blob, p->n, (int)p->bits, p->bias, big, NULL,
                       avx2);
#pragma omp for schedule(static)
            for (int64_t r = 0; r < t; r++) { /* RoPE; K and V into the cache; q aside */
                float *row = big + r * nqkv;
                const float *c = st->cos + st->pos[r] * hd, *sn = st->sin + st->pos[r] * hd;
                for (int64_t hh = 0; hh < nh + nkv; hh++) rope_head(row + hh * hd, c, sn, hd);
                for (int64_t kh = 0; kh < nkv; kh++) {
                    int64_t at = st->rows[r] * row_stride + kh * st->width * hd +
                                 (int64_t)st->cols[r] * hd;
                    memcpy(kc + at, row + (nh + kh) * hd, sizeof(float) * (size_t)hd);
                    memcpy(vc + at, row + (nh + nkv + kh) * hd, sizeof(float) * (size_t)hd);
                }
                memcpy(q + r * natt, row, sizeof(float) * (size_t)natt);
            }
            attention_omp(q, t, nh, nkv, hd, kc, vc, row_stride, st->width, st->rows,
                          st->key_ptrs, st->key_lens, scale, att, avx2);
            quantize_omp(att, t, natt, natt, xq, dx, xs);
            p = &w->o;
            linear_omp(xq, dx, xs, t, p->k, p->blob, p->n, (int)p->bits, p->bias, NULL, x, avx2);
#pragma omp for schedule(static)
            for (int64_t r = 0; r < t; r++) {
                rms_row(x + r * hid, w->ln2, hid, eps, h + r * hid, avx2);
                quantize_row(h + r * hid, hid, xq + r * 64 * pairs_of(hid),
                             dx + r * 2 * pairs_of(hid), xs + r * 2 * pairs_of(hid));
            }
            p = &w->gate_up;
            linear_omp(xq, dx, xs, t, p->k, p->blob, p->n, (int)p->bits, NULL, big, NULL, avx2);
#pragma omp for schedule(static)
            for (int64_t r = 0; r < t; r++) {
                float *a = h + r * inter;
                const float *g = big + r * 2 * inter;
                silu_mul(g, g + inter, a, inter, avx2);
                quantize_row(a, inter, xq + r * 64 * pairs_of(inter), dx + r * 2 * pairs_of(inter),
                             xs + r * 2 * pairs_of(inter));
            }
            p = &w->down;
            linear_omp(xq, dx, xs, t, p->k, p->blob, p->n, (int)p->bits, NULL, NULL, x, avx2);
        }
    }
    free(h);
    free(big);
    free(att);
    free(q);
    free(xq);
    free(dx);
    free(xs);
}
