/*
 * Lion for CPU tensors: one pass over every tensor of a parameter group in one call.
 *
 * The Python launcher is kernels/cpu_lion.py; the math is lion_core/_rule.py, reproduced here in
 * the same operation order so that the fp32 and fp64 kernels match lion_core.reference bit for bit:
 *
 *   g  = maximize ? -(g / grad_scale) : g / grad_scale        (unscale only when asked)
 *   c  = beta1 * m + (1 - beta1) * g
 *   u  = sign(c) + (c - c)                                     (NaN where c is NaN or +-inf)
 *   u  = cautious ? u * [u * g > 0] / kept_fraction : u        (kept_fraction per tensor)
 *   p  = p * decay - lr * u                                    (decay = 1 - lr * wd, from the host)
 *   m  = beta2 * m + (1 - beta2) * g
 *
 * Built with -ffp-contract=off and without -ffast-math: no fused multiply-adds, no reassociation, and
 * NaN comparisons keep their IEEE meaning. Plain C11 plus OpenMP pragmas; without OpenMP the pragmas
 * are ignored and the kernel runs on one thread. No OpenMP runtime functions are called, so the
 * library links without libgomp when the compiler has no OpenMP.
 *
 * The tensors are concatenated into one index space [0, total) described by the prefix sums `offsets`
 * (int64, n + 1 entries), which is cut into fixed-size chunks; a chunk may span several small
 * tensors, so one call costs about the same whether the group holds 10 tensors or 10,000. Threads
 * take chunks one at a time (dynamic schedule): each chunk is a long streaming loop, and a thread
 * that the OS preempts (other processes, a data loader) does not leave its share for the others to
 * wait on at the barrier.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LIONKIT_CPU_ABI 1

enum { KIND_F32 = 0, KIND_F64 = 1, KIND_BF16 = 2 };
enum { FLAG_CAUTIOUS = 1, FLAG_MAXIMIZE = 2, FLAG_UNSCALE = 4 };
/* Order of the host-computed scalars (float64, converted here to the compute type, as NumPy
 * converts a Python float when it meets an array of that type). */
enum { S_BETA1, S_ONE_MINUS_BETA1, S_BETA2, S_ONE_MINUS_BETA2, S_LR, S_DECAY, S_GRAD_SCALE, S_COUNT };

#define INLINE static inline __attribute__((always_inline))

int lionkit_cpu_abi(void) { return LIONKIT_CPU_ABI; }

/* bfloat16 is the top half of a float32: widening is exact. */
INLINE float bf16_load(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* Round to nearest, ties to even, as torch's c10::BFloat16 does; every NaN becomes the canonical
 * quiet NaN 0x7fc0 (adding the rounding bias to a NaN could carry it into infinity). */
INLINE uint16_t bf16_store(float f) {
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
    return (bits & 0x7fffffffu) > 0x7f800000u ? (uint16_t)0x7fc0u : (uint16_t)rounded;
}

/* Largest t with offsets[t] <= index; offsets[n] = total > index, so t < n and the tensor holds the
 * index even when zero-size tensors share its offset. */
static int64_t tensor_of(const int64_t *offsets, int64_t n, int64_t index) {
    int64_t lo = 0, hi = n;
    while (hi - lo > 1) {
        int64_t mid = lo + (hi - lo) / 2;
        if (offsets[mid] <= index) lo = mid; else hi = mid;
    }
    return lo;
}

/*
 * DEFINE_KIND generates the segment functions and the driver for one storage/compute combination.
 * PT: parameter and gradient storage, MT: momentum storage, CT: compute type.
 * The boolean parameters of the always-inline segment bodies are compile-time constants at each call
 * site, so each combination of cautious and unscale becomes its own branch-free, vectorised loop;
 * maximize is a multiplication by -1, exact, so it needs no loop of its own.
 */
#define DEFINE_KIND(SUFFIX, PT, MT, CT, LOAD, STORE)                                                  \
    INLINE CT grad_##SUFFIX(PT g, int unscale, CT grad_scale, CT direction) {                         \
        /* direction is +1 or -1 (maximize): multiplying by it negates exactly, NaN included. */     \
        CT x = LOAD(g);                                                                               \
        if (unscale) x = x / grad_scale;                                                              \
        return x * direction;                                                                         \
    }                                                                                                 \
                                                                                                      \
    INLINE CT sign_##SUFFIX(CT c) {                                                                   \
        /* sign(c) + (c - c): c - c is 0 for finite c and NaN for NaN or +-inf, as in lion_core. */  \
        CT s = (c > (CT)0 ? (CT)1 : (CT)0) - (c < (CT)0 ? (CT)1 : (CT)0);                             \
        return s + (c - c);                                                                           \
    }                                                                                                 \
                                                                                                      \
    INLINE void update_##SUFFIX(PT *restrict p, const PT *restrict g, MT *restrict m, int64_t len,    \
                                const CT *sc, int cautious, CT scale, int unscale, CT direction) {    \
        const CT beta1 = sc[S_BETA1], omb1 = sc[S_ONE_MINUS_BETA1];                                   \
        const CT beta2 = sc[S_BETA2], omb2 = sc[S_ONE_MINUS_BETA2];                                   \
        const CT lr = sc[S_LR], decay = sc[S_DECAY], grad_scale = sc[S_GRAD_SCALE];                   \
        for (int64_t i = 0; i < len; ++i) {                                                           \
            const CT gi = grad_##SUFFIX(g[i], unscale, grad_scale, direction);                        \
            const CT mi = (CT)m[i];                                                                   \
            const CT c = beta1 * mi + omb1 * gi;                                                      \
            CT u = sign_##SUFFIX(c);                                                                  \
            if (cautious) {                                                                           \
                /* u * mask / kept_fraction; for u * mask in {+-1, +-0, NaN} dividing by the      */  \
                /* fraction equals multiplying by its correctly rounded reciprocal `scale`.       */  \
                const CT mask = u * gi > (CT)0 ? u * u : (CT)0;                                       \
                u = u * mask * scale;                                                                 \
            }                                                                                         \
            p[i] = STORE((CT)(LOAD(p[i]) * decay - lr * u));                                          \
            m[i] = (MT)(beta2 * mi + omb2 * gi);                                                      \
        }                                                                                             \
    }                                                                                                 \
                                                                                                      \
    INLINE int64_t kept_##SUFFIX(const PT *restrict g, const MT *restrict m, int64_t len,             \
                                 const CT *sc, int unscale, CT direction) {                           \
        const CT beta1 = sc[S_BETA1], omb1 = sc[S_ONE_MINUS_BETA1], grad_scale = sc[S_GRAD_SCALE];    \
        int64_t kept = 0;                                                                             \
        for (int64_t i = 0; i < len; ++i) {                                                           \
            const CT gi = grad_##SUFFIX(g[i], unscale, grad_scale, direction);                        \
            const CT c = beta1 * (CT)m[i] + omb1 * gi;                                                \
            const CT u = sign_##SUFFIX(c);                                                            \
            kept += u * gi > (CT)0;                                                                   \
        }                                                                                             \
        return kept;                                                                                  \
    }                                                                                                 \
                                                                                                      \
    static void segment_##SUFFIX(PT *p, const PT *g, MT *m, int64_t len, const CT *sc, int flags,     \
                                 CT scale) {                                                          \
        const CT direction = (flags & FLAG_MAXIMIZE) ? (CT)-1 : (CT)1;                                \
        if (flags & FLAG_CAUTIOUS) {                                                                  \
            if (flags & FLAG_UNSCALE) update_##SUFFIX(p, g, m, len, sc, 1, scale, 1, direction);      \
            else update_##SUFFIX(p, g, m, len, sc, 1, scale, 0, direction);                           \
        } else {                                                                                      \
            if (flags & FLAG_UNSCALE) update_##SUFFIX(p, g, m, len, sc, 0, scale, 1, direction);      \
            else update_##SUFFIX(p, g, m, len, sc, 0, scale, 0, direction);                           \
        }                                                                                             \
    }                                                                                                 \
                                                                                                      \
    static int64_t count_##SUFFIX(const PT *g, const MT *m, int64_t len, const CT *sc, int flags) {   \
        const CT direction = (flags & FLAG_MAXIMIZE) ? (CT)-1 : (CT)1;                                \
        if (flags & FLAG_UNSCALE) return kept_##SUFFIX(g, m, len, sc, 1, direction);                  \
        return kept_##SUFFIX(g, m, len, sc, 0, direction);                                            \
    }                                                                                                 \
                                                                                                      \
    static int run_##SUFFIX(int64_t n, PT *const *ps, const PT *const *gs, MT *const *ms,             \
                            const int64_t *offsets, const double *scalars, int flags, int64_t chunk,  \
                            int threads) {                                                            \
        CT sc[S_COUNT];                                                                               \
        for (int k = 0; k < S_COUNT; ++k) sc[k] = (CT)scalars[k];                                     \
        const int64_t total = offsets[n];                                                             \
        const int64_t chunks = (total + chunk - 1) / chunk;                                           \
        if (chunks == 0) return 0;                                                                    \
        if (threads > chunks) threads = (int)chunks;                                                  \
        if (threads < 1) threads = 1;                                                                 \
        int64_t *kept = NULL;                                                                         \
        CT *scale = NULL;                                                                             \
        if (flags & FLAG_CAUTIOUS) {                                                                  \
            /* First pass: per tensor, how many entries the mask keeps. */                            \
            kept = (int64_t *)calloc((size_t)n, sizeof *kept);                                        \
            scale = (CT *)malloc((size_t)n * sizeof *scale);                                          \
            if (kept == NULL || scale == NULL) { free(kept); free(scale); return -1; }                \
            _Pragma("omp parallel for schedule(dynamic, 1) num_threads(threads)")                         \
            for (int64_t c = 0; c < chunks; ++c) {                                                    \
                int64_t lo = c * chunk, hi = lo + chunk < total ? lo + chunk : total;                 \
                for (int64_t t = tensor_of(offsets, n, lo); lo < hi; ++t) {                           \
                    int64_t end = offsets[t + 1] < hi ? offsets[t + 1] : hi;                          \
                    if (end > lo) {                                                                   \
                        int64_t start = lo - offsets[t];                                              \
                        int64_t k = count_##SUFFIX(gs[t] + start, ms[t] + start, end - lo, sc, flags); \
                        _Pragma("omp atomic")                                                         \
                        kept[t] += k;                                                                 \
                    }                                                                                 \
                    lo = end;                                                                         \
                }                                                                                     \
            }                                                                                         \
            for (int64_t t = 0; t < n; ++t) {                                                         \
                int64_t size = offsets[t + 1] - offsets[t];                                           \
                /* NumPy's mean: the float sum of the 0/1 mask divided by the size in float64,   */   \
                /* rounded to the compute type; a tensor where nothing is kept divides by 1.      */  \
                CT fraction = size > 0 ? (CT)((double)kept[t] / (double)size) : (CT)0;                \
                CT divisor = fraction > (CT)0 ? fraction : (CT)1;                                     \
                scale[t] = (CT)1 / divisor;                                                           \
            }                                                                                         \
        }                                                                                             \
        _Pragma("omp parallel for schedule(dynamic, 1) num_threads(threads)")                             \
        for (int64_t c = 0; c < chunks; ++c) {                                                        \
            int64_t lo = c * chunk, hi = lo + chunk < total ? lo + chunk : total;                     \
            for (int64_t t = tensor_of(offsets, n, lo); lo < hi; ++t) {                               \
                int64_t end = offsets[t + 1] < hi ? offsets[t + 1] : hi;                              \
                if (end > lo) {                                                                       \
                    int64_t start = lo - offsets[t];                                                  \
                    segment_##SUFFIX(ps[t] + start, gs[t] + start, ms[t] + start, end - lo, sc,       \
                                     flags, scale != NULL ? scale[t] : (CT)1);                        \
                }                                                                                     \
                lo = end;                                                                             \
            }                                                                                         \
        }                                                                                             \
        free(kept);                                                                                   \
        free(scale);                                                                                  \
        return 0;                                                                                     \
    }

#define IDENTITY(x) (x)
DEFINE_KIND(f32, float, float, float, IDENTITY, IDENTITY)
DEFINE_KIND(f64, double, double, double, IDENTITY, IDENTITY)
DEFINE_KIND(bf16, uint16_t, float, float, bf16_load, bf16_store)

/*
 * One Lion step over n tensors of one kind.
 *
 * table: 3 * n pointers (parameters, gradients, momenta, each n long) followed by n + 1 int64 prefix
 *   offsets (offsets[0] = 0, offsets[n] = total number of elements). Pointers travel as int64.
 * scalars: S_COUNT float64 values in the order of the enum above.
 * Returns 0, or -1 when the cautious pass cannot allocate its per-tensor counters, -2 for an
 * unknown kind.
 */
int lionkit_cpu_lion(int kind, int64_t n, const int64_t *table, const double *scalars, int flags,
                     int64_t chunk, int threads) {
    if (n <= 0) return 0;
    const int64_t *offsets = table + 3 * n;
    switch (kind) {
    case KIND_F32:
        return run_f32(n, (float *const *)table, (const float *const *)(table + n),
                       (float *const *)(table + 2 * n), offsets, scalars, flags, chunk, threads);
    case KIND_F64:
        return run_f64(n, (double *const *)table, (const double *const *)(table + n),
                       (double *const *)(table + 2 * n), offsets, scalars, flags, chunk, threads);
    case KIND_BF16:
        return run_bf16(n, (uint16_t *const *)table, (const uint16_t *const *)(table + n),
                        (float *const *)(table + 2 * n), offsets, scalars, flags, chunk, threads);
    default:
        return -2;
    }
}
