/* AVX2 int8 kernel for RNNoise's linear layers, interposed over the pyrnnoise wheel's own.
 *
 * Why: the wheel's librnnoise.so (RNNoise 0.2, big model) is built without run-time CPU
 * detection, so every GRU and conv layer runs on its float weights with SSE: 11.5 MB of
 * weights streamed per 10 ms frame (0.2-1 ms, by memory bandwidth). The same library also carries each of those
 * layers as int8 weights with a per-row scale (what upstream RNNoise uses on AVX2/NEON
 * builds); read through AVX2 they are 4x less memory and 8x fewer instructions.
 *
 * How: the library calls rnn_compute_linear_c through its PLT, so a library that defines
 * the same global symbol and is loaded RTLD_GLOBAL before it takes those calls (ELF symbol
 * interposition; no patching). Dense float layers with outputs in eights (the first conv,
 * the gain output) run through AVX2/FMA here too; the rest, and every call in MODE_ORIGINAL,
 * go to the library's own function, which the loader hands over with parley_rnnoise_setup().
 *
 * Quantisation: inputs of the int8 layers are tanh/sigmoid outputs or GRU states, in
 * [-1, 1]; they are rounded to 127 levels, and out[i] = scale[i] * sum_j w[i][j] * x_q[j]
 * + bias[i] (+ the GRU's diagonal recurrent term), as in upstream RNNoise. Products go
 * through _mm256_maddubs_epi16 with |w| as the unsigned operand and x carrying w's sign,
 * so a pair sum is at most 2 * 127 * 127 and never saturates.
 *
 * The struct below mirrors LinearLayer of RNNoise 0.2 (Opus 1.5 nnet.h); the loader only
 * uses this file with the pyrnnoise build it was checked against (ns.py).
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define EXPORT __attribute__((visibility("default")))
#define MAX_INPUTS 4096

typedef struct {
    const float *bias;
    const float *subias;
    const int8_t *weights;
    const float *float_weights;
    const int *weights_idx;
    const float *diag;
    const float *scale;
    int nb_inputs;
    int nb_outputs;
} LinearLayer;

typedef void (*linear_fn)(const LinearLayer *, float *, const float *);

enum { MODE_ORIGINAL = 0, MODE_INT8 = 1, MODE_CHECK = 2 };

static linear_fn original;
static int mode = MODE_ORIGINAL;
static unsigned long long int8_calls;
static float worst_error; /* MODE_CHECK: max |int8 - float| / max |float| over all calls */

/* Whether this CPU runs the kernels (AVX2 and FMA). */
EXPORT int parley_rnnoise_cpu_ok(void) {
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

/* Hand over the library's own function and choose the mode (MODE_ORIGINAL on a CPU
 * without AVX2/FMA, whatever was asked); returns the mode set. */
EXPORT int parley_rnnoise_setup(linear_fn library_linear, int new_mode) {
    original = library_linear;
    mode = parley_rnnoise_cpu_ok() ? new_mode : MODE_ORIGINAL;
    return mode;
}

EXPORT unsigned long long parley_rnnoise_int8_calls(void) { return int8_calls; }

EXPORT float parley_rnnoise_worst_error(void) { return worst_error; }

__attribute__((target("avx2")))
static void quantize(int8_t *xq, const float *x, int n) {
    const __m256 k = _mm256_set1_ps(127.f), lo = _mm256_set1_ps(-127.f);
    for (int j = 0; j < n; j += 8) { /* n is a multiple of 4: a half vector at most */
        __m256 v = j + 8 <= n ? _mm256_loadu_ps(x + j) : _mm256_castps128_ps256(_mm_loadu_ps(x + j));
        __m256i q = _mm256_cvtps_epi32(_mm256_max_ps(_mm256_min_ps(_mm256_mul_ps(v, k), k), lo));
        __m128i q16 = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
        int8_t bytes[16];
        _mm_storeu_si128((__m128i *)bytes, _mm_packs_epi16(q16, q16));
        memcpy(xq + j, bytes, (size_t)(j + 8 <= n ? 8 : 4));
    }
}

/* One 8-row group: sum over its 4-column blocks of w[r][c] * x_q[col + c], 8 int32 lanes. */
__attribute__((target("avx2")))
static inline __m256i group_int8(const int8_t *w, const int8_t *xq, const int *cols, int blocks) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i acc0 = _mm256_setzero_si256(), acc1 = _mm256_setzero_si256();
    int k = 0;
    for (; k + 1 < blocks; k += 2) { /* two chains: the adds do not wait on each other */
        int32_t x0, x1;
        memcpy(&x0, xq + (cols ? cols[k] : 4 * k), sizeof x0);
        memcpy(&x1, xq + (cols ? cols[k + 1] : 4 * k + 4), sizeof x1);
        __m256i w0 = _mm256_loadu_si256((const __m256i *)(w + 32 * k));
        __m256i w1 = _mm256_loadu_si256((const __m256i *)(w + 32 * k + 32));
        __m256i p0 = _mm256_maddubs_epi16(_mm256_abs_epi8(w0), _mm256_sign_epi8(_mm256_set1_epi32(x0), w0));
        __m256i p1 = _mm256_maddubs_epi16(_mm256_abs_epi8(w1), _mm256_sign_epi8(_mm256_set1_epi32(x1), w1));
        acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(p0, ones));
        acc1 = _mm256_add_epi32(acc1, _mm256_madd_epi16(p1, ones));
    }
    if (k < blocks) {
        int32_t x0;
        memcpy(&x0, xq + (cols ? cols[k] : 4 * k), sizeof x0);
        __m256i w0 = _mm256_loadu_si256((const __m256i *)(w + 32 * k));
        __m256i p0 = _mm256_maddubs_epi16(_mm256_abs_epi8(w0), _mm256_sign_epi8(_mm256_set1_epi32(x0), w0));
        acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(p0, ones));
    }
    return _mm256_add_epi32(acc0, acc1);
}

/* Blocks of 8 rows x 4 columns, row-major inside a block; with weights_idx, each 8-row
 * group lists its block count and then the first column of every block. */
__attribute__((target("avx2")))
static void gemv_int8(const LinearLayer *l, float *out, const int8_t *xq) {
    const int8_t *w = l->weights;
    const int *idx = l->weights_idx;
    for (int i = 0; i < l->nb_outputs; i += 8) {
        int blocks = idx ? *idx++ : l->nb_inputs / 4;
        __m256i acc = group_int8(w, xq, idx, blocks);
        w += 32 * blocks;
        if (idx) idx += blocks;
        __m256 y = _mm256_mul_ps(_mm256_cvtepi32_ps(acc), _mm256_loadu_ps(l->scale + i));
        _mm256_storeu_ps(out + i, _mm256_add_ps(y, _mm256_loadu_ps(l->bias + i)));
    }
}

/* Dense float layer, column-major (w[j * rows + i]) as RNNoise stores it: 8 rows at a time. */
__attribute__((target("avx2,fma")))
static void gemv_float(const LinearLayer *l, float *out, const float *in) {
    const int rows = l->nb_outputs, cols = l->nb_inputs;
    const float *w = l->float_weights;
    for (int i = 0; i < rows; i += 8) {
        __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
        int j = 0;
        for (; j + 1 < cols; j += 2) {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + (size_t)j * rows + i), _mm256_set1_ps(in[j]), acc0);
            acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + (size_t)(j + 1) * rows + i), _mm256_set1_ps(in[j + 1]), acc1);
        }
        if (j < cols) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + (size_t)j * rows + i), _mm256_set1_ps(in[j]), acc0);
        __m256 y = _mm256_add_ps(acc0, acc1);
        if (l->bias) y = _mm256_add_ps(y, _mm256_loadu_ps(l->bias + i));
        _mm256_storeu_ps(out + i, y);
    }
}

static void add_diag(const LinearLayer *l, float *out, const float *in) {
    int m = l->nb_inputs;
    for (int i = 0; i < m; i++) {
        out[i] += l->diag[i] * in[i];
        out[i + m] += l->diag[i + m] * in[i];
        out[i + 2 * m] += l->diag[i + 2 * m] * in[i];
    }
}

static int has_dense_float(const LinearLayer *l) {
    return !l->weights && l->float_weights && !l->weights_idx && !l->diag && l->nb_outputs % 8 == 0;
}

static int has_int8(const LinearLayer *l) {
    return l->weights && l->scale && l->bias && l->nb_outputs % 8 == 0 && l->nb_inputs % 4 == 0
        && l->nb_inputs <= MAX_INPUTS;
}

static void check_against(const LinearLayer *l, const float *out, const float *in) {
    float ref[3 * MAX_INPUTS], peak = 1e-9f, err = 0.f;
    if (l->nb_outputs > 3 * MAX_INPUTS) return;
    original(l, ref, in);
    for (int i = 0; i < l->nb_outputs; i++) {
        peak = fmaxf(peak, fabsf(ref[i]));
        err = fmaxf(err, fabsf(out[i] - ref[i]));
    }
    worst_error = fmaxf(worst_error, err / peak);
}

/* The interposed symbol: RNNoise's compute_linear for the generic (non-RTCD) build. */
EXPORT void rnn_compute_linear_c(const LinearLayer *l, float *out, const float *in) {
    int8_t xq[MAX_INPUTS];
    if (mode != MODE_ORIGINAL && has_int8(l)) {
        quantize(xq, in, l->nb_inputs);
        gemv_int8(l, out, xq);
        if (l->diag) add_diag(l, out, in);
        int8_calls++;
    } else if (mode != MODE_ORIGINAL && has_dense_float(l)) {
        gemv_float(l, out, in);
    } else {
        original(l, out, in);
        return;
    }
    if (mode == MODE_CHECK) check_against(l, out, in);
}
