/*
 * Lion for CPU tensors: one pass over every tensor of a parameter group in one call.
 *
 * Built when lionkit is installed, as the extension module lion_kernels._cpu_lion (setup.py); the
 * Python launcher is kernels/cpu_lion.py, which calls the functions whose addresses the module
 * exports. The math is lion_core/_rule.py, in the same operation order, so that the fp32 and fp64
 * kernels match lion_core.reference bit for bit:
 *
 *   g  = maximize ? -(g / grad_scale) : g / grad_scale        (unscale only when asked)
 *   c  = beta1 * m + (1 - beta1) * g
 *   u  = sign(c) + (c - c)                                     (NaN where c is NaN or +-inf)
 *   u  = cautious ? u * [u * g > 0] / kept_fraction : u        (kept_fraction per tensor)
 *   p  = p * decay - lr * u                                    (decay = 1 - lr * wd, from the host)
 *   m  = beta2 * m + (1 - beta2) * g
 *
 * Built with -ffp-contract=off and without -ffast-math: no fused multiply-adds, no reassociation, and
 * NaN comparisons keep their IEEE meaning. Plain C11 with POSIX threads (parallel_chunks below), or
 * OpenMP pragmas where there are none; without OpenMP the pragmas are ignored and the kernel runs on
 * one thread. No OpenMP runtime functions are called, so the module links without libgomp when the
 * compiler has no OpenMP.
 *
 * Instruction sets: one binary serves every x86-64 CPU. The streaming loops (segment_*, count_* and
 * stored_*) are compiled three times by GCC's target_clones (x86-64-v4, i.e. AVX-512 with BW and VL,
 * from GCC 12, AVX-512F before; AVX2; baseline x86-64); the dynamic
 * loader picks one per process from the CPU's features (an ifunc resolver, run once at load).
 * Elsewhere (other architectures, compilers without the attribute) they are compiled once, for the
 * baseline of the target.
 *
 * The tensors are concatenated into one index space [0, total) described by the prefix sums `offsets`
 * (int64, n + 1 entries), which is cut into fixed-size chunks; a chunk may span several small
 * tensors, so one call costs about the same whether the group holds 10 tensors or 10,000. Threads
 * take chunks one at a time (dynamic schedule): each chunk is a long streaming loop, and a thread
 * that the OS preempts (other processes, a data loader) does not leave its share for the others to
 * wait on.
 *
 * Threads (parallel_chunks): where POSIX threads exist, the calling thread and up to threads - 1
 * helper threads of this library claim chunks from one atomic ticket, and the call returns when every
 * chunk is done: it never waits for a helper that has not started. An OpenMP region would join all
 * its threads at its end, so a helper the OS has not yet scheduled (asleep since the last step, its
 * core busy with another process) stalls the whole call for a time slice: measured on 2 shared
 * vCPUs, a 2M-parameter step took 10 - 20 ms on 2 OpenMP threads against 1 ms on one
 * (docs/benchmarks-cpu.md). Elsewhere (Windows) the chunks run in an OpenMP loop.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if !defined(_WIN32) && !defined(__STDC_NO_ATOMICS__)
#define LIONKIT_POOL 1
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#define ATOMIC_ADD(target, value) __atomic_fetch_add(&(target), (value), __ATOMIC_RELAXED)
#else
#define ATOMIC_ADD(target, value) _Pragma("omp atomic") (target) += (value)
#endif

#define LIONKIT_CPU_ABI 3

/* (param, grad, momentum) dtype triples, numbered as lion_kernels._contract.triple_code does:
 * 16 * param + 4 * grad + momentum, with float32 = 0, bfloat16 = 1, float16 = 2, float64 = 3. */
enum { KIND_F32 = 0, KIND_F64 = 63, KIND_BF16 = 20, KIND_BF16_M_BF16 = 21 };
enum { FLAG_CAUTIOUS = 1, FLAG_MAXIMIZE = 2, FLAG_UNSCALE = 4 };
/* Order of the host-computed scalars (float64, converted here to the compute type, as NumPy
 * converts a Python float when it meets an array of that type). */
enum { S_BETA1, S_ONE_MINUS_BETA1, S_BETA2, S_ONE_MINUS_BETA2, S_LR, S_DECAY, S_GRAD_SCALE, S_COUNT };

#define INLINE static inline __attribute__((always_inline))

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#if __GNUC__ >= 12
/* x86-64-v4 (AVX-512 F, BW, VL, DQ, CD): the bfloat16 and int8 conversions need BW and VL to run
 * on 512-bit vectors (with F alone GCC falls back to 256-bit shuffles). */
#define DISPATCH __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define DISPATCH __attribute__((target_clones("avx512f", "avx2", "default")))
#endif
#endif
#endif
#ifndef DISPATCH
#define DISPATCH
#endif

/* A float32's bit pattern, and back (memcpy: the compiler emits a register move). */
INLINE uint32_t f32_bits(float f) {
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    return bits;
}

INLINE float f32_from_bits(uint32_t bits) {
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* bfloat16 is the top half of a float32: widening is exact. */
INLINE float bf16_load(uint16_t h) { return f32_from_bits((uint32_t)h << 16); }

/* Round to nearest, ties to even, as torch's c10::BFloat16 does; every NaN becomes the canonical
 * quiet NaN 0x7fc0 (as torch stores it; adding the rounding bias to a NaN could carry it into
 * infinity). The Triton kernel encodes NaN the same way. */
INLINE uint16_t bf16_store(float f) {
    const uint32_t bits = f32_bits(f);
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

/* Runs fn(ctx, c) once for every chunk c in [0, chunks), on up to `threads` threads. */
typedef void (*chunk_fn)(const void *ctx, int64_t chunk);

#ifdef LIONKIT_POOL
/*
 * The helper threads: started on first use (as many as a call has asked for, minus the caller), then
 * asleep on a condition variable between calls. A job is published as a generation number; its
 * chunks are claimed through `ticket` = (generation << 32) | next chunk, so a helper that wakes late,
 * after its job ended, fails the compare-and-swap and never touches a finished job's arguments (they
 * live on the caller's stack). The caller claims chunks too and then waits only for chunks that
 * helpers claimed and are running. One call at a time uses the helpers; a concurrent call (another
 * Python thread: ctypes releases the GIL) runs its chunks on its own thread.
 */
enum { POOL_MAX_HELPERS = 255 };
static pthread_mutex_t pool_mutex = PTHREAD_MUTEX_INITIALIZER;  /* guards everything below but the atomics */
static pthread_mutex_t pool_caller = PTHREAD_MUTEX_INITIALIZER; /* held by the call using the helpers */
static pthread_cond_t pool_wake = PTHREAD_COND_INITIALIZER;
static pthread_once_t pool_once = PTHREAD_ONCE_INIT;
static int pool_helpers;         /* helper threads started */
static uint32_t pool_generation; /* the current job; 0: none yet */
static int pool_seats;           /* helpers that may still join the current job */
static chunk_fn pool_fn;
static const void *pool_ctx;
static int64_t pool_chunks;
static _Atomic uint64_t pool_ticket;
static _Atomic int64_t pool_done;

INLINE void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Claims and runs chunks of job `generation` until none is left or another job has replaced it. */
static void pool_work(uint32_t generation, chunk_fn fn, const void *ctx, int64_t chunks) {
    uint64_t ticket = atomic_load_explicit(&pool_ticket, memory_order_acquire);
    for (;;) {
        if ((uint32_t)(ticket >> 32) != generation || (int64_t)(ticket & 0xffffffffu) >= chunks) return;
        if (atomic_compare_exchange_weak_explicit(&pool_ticket, &ticket, ticket + 1, memory_order_acq_rel,
                                                  memory_order_acquire)) {
            fn(ctx, (int64_t)(ticket & 0xffffffffu));
            atomic_fetch_add_explicit(&pool_done, 1, memory_order_release);
            ticket = atomic_load_explicit(&pool_ticket, memory_order_acquire);
        }
    }
}

static void *pool_helper(void *unused) {
    (void)unused;
    uint32_t seen = 0;
    pthread_mutex_lock(&pool_mutex);
    for (;;) { /* seen = 0 at first: a new helper joins the job it was started for */
        while (pool_generation == seen) pthread_cond_wait(&pool_wake, &pool_mutex);
        seen = pool_generation;
        if (pool_seats <= 0) continue;
        --pool_seats;
        chunk_fn fn = pool_fn;
        const void *ctx = pool_ctx;
        int64_t chunks = pool_chunks;
        pthread_mutex_unlock(&pool_mutex);
        pool_work(seen, fn, ctx, chunks);
        pthread_mutex_lock(&pool_mutex);
    }
    return NULL;
}

/* A forked child has none of the parent's helper threads: start again from none. */
static void pool_after_fork(void) {
    pthread_mutex_t mutex = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
    pool_mutex = mutex;
    pool_caller = mutex;
    pool_wake = cond;
    pool_helpers = 0;
    pool_seats = 0;
}

static void pool_register_fork(void) { pthread_atfork(NULL, NULL, pool_after_fork); }

static void parallel_chunks(chunk_fn fn, const void *ctx, int64_t chunks, int threads) {
    int64_t helpers = (int64_t)threads - 1;
    if (helpers > chunks - 1) helpers = chunks - 1;
    if (helpers > POOL_MAX_HELPERS) helpers = POOL_MAX_HELPERS;
    if (helpers <= 0 || chunks > (int64_t)0xffffffffu || pthread_mutex_trylock(&pool_caller) != 0) {
        for (int64_t c = 0; c < chunks; ++c) fn(ctx, c);
        return;
    }
    pthread_once(&pool_once, pool_register_fork);
    pthread_mutex_lock(&pool_mutex);
    if (pool_helpers < helpers) {
        /* Helpers block every signal (they inherit this mask): signals stay with Python's threads. */
        sigset_t all, previous;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &previous);
        while (pool_helpers < helpers) {
            pthread_t thread;
            pthread_attr_t attr;
            int failed = pthread_attr_init(&attr);
            if (!failed) {
                pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
                failed = pthread_create(&thread, &attr, pool_helper, NULL);
                pthread_attr_destroy(&attr);
            }
            if (failed) break; /* fewer helpers: the chunks still all run */
            ++pool_helpers;
        }
        pthread_sigmask(SIG_SETMASK, &previous, NULL);
    }
    uint32_t generation = pool_generation + 1;
    if (generation == 0) generation = 1;
    pool_generation = generation;
    pool_seats = (int)helpers;
    pool_fn = fn;
    pool_ctx = ctx;
    pool_chunks = chunks;
    atomic_store_explicit(&pool_done, 0, memory_order_relaxed);
    atomic_store_explicit(&pool_ticket, (uint64_t)generation << 32, memory_order_release);
    pthread_cond_broadcast(&pool_wake);
    pthread_mutex_unlock(&pool_mutex);
    pool_work(generation, fn, ctx, chunks);
    /* Only chunks a running helper claimed remain; let it have this core if it was preempted here. */
    for (unsigned spins = 1; atomic_load_explicit(&pool_done, memory_order_acquire) < chunks; ++spins) {
        if (spins % 4096 == 0) sched_yield();
        else cpu_relax();
    }
    pthread_mutex_unlock(&pool_caller);
}
#else
static void parallel_chunks(chunk_fn fn, const void *ctx, int64_t chunks, int threads) {
    if (threads > chunks) threads = (int)chunks;
    if (threads < 1) threads = 1;
    _Pragma("omp parallel for schedule(dynamic, 1) num_threads(threads)")
    for (int64_t c = 0; c < chunks; ++c) fn(ctx, c);
}
#endif

/*
 * DEFINE_KIND generates the segment functions and the drivers for one storage/compute combination.
 * PT: parameter and gradient storage, MT: momentum storage, CT: compute type; LOAD/STORE convert
 * parameters and gradients, MLOAD/MSTORE momenta. The boolean parameters of the always-inline loop
 * bodies are compile-time constants at each call site, so each combination of cautious and unscale
 * becomes its own branch-free, vectorised loop; maximize is a multiplication by -1, exact, so it
 * needs no loop of its own. segment_* and count_* carry DISPATCH: the inlined loops are compiled
 * once per instruction set.
 */
#define DEFINE_KIND(SUFFIX, PT, MT, CT, LOAD, STORE, MLOAD, MSTORE)                                   \
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
            const CT mi = MLOAD(m[i]);                                                                \
            const CT c = beta1 * mi + omb1 * gi;                                                      \
            CT u = sign_##SUFFIX(c);                                                                  \
            if (cautious) {                                                                           \
                /* u * mask / kept_fraction; for u * mask in {+-1, +-0, NaN} dividing by the      */  \
                /* fraction equals multiplying by its correctly rounded reciprocal `scale`.       */  \
                const CT mask = u * gi > (CT)0 ? u * u : (CT)0;                                       \
                u = u * mask * scale;                                                                 \
            }                                                                                         \
            p[i] = STORE((CT)(LOAD(p[i]) * decay - lr * u));                                          \
            m[i] = MSTORE((CT)(beta2 * mi + omb2 * gi));                                              \
        }                                                                                             \
    }                                                                                                 \
                                                                                                      \
    INLINE int64_t kept_##SUFFIX(const PT *restrict g, const MT *restrict m, int64_t len,             \
                                 const CT *sc, int unscale, CT direction) {                           \
        const CT beta1 = sc[S_BETA1], omb1 = sc[S_ONE_MINUS_BETA1], grad_scale = sc[S_GRAD_SCALE];    \
        int64_t kept = 0;                                                                             \
        for (int64_t i = 0; i < len; ++i) {                                                           \
            const CT gi = grad_##SUFFIX(g[i], unscale, grad_scale, direction);                        \
            const CT c = beta1 * MLOAD(m[i]) + omb1 * gi;                                             \
            const CT u = sign_##SUFFIX(c);                                                            \
            kept += u * gi > (CT)0;                                                                   \
        }                                                                                             \
        return kept;                                                                                  \
    }                                                                                                 \
                                                                                                      \
    DISPATCH static void segment_##SUFFIX(PT *p, const PT *g, MT *m, int64_t len, const CT *sc,       \
                                          int flags, CT scale) {                                      \
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
    DISPATCH static int64_t count_##SUFFIX(const PT *g, const MT *m, int64_t len, const CT *sc,       \
                                           int flags) {                                               \
        const CT direction = (flags & FLAG_MAXIMIZE) ? (CT)-1 : (CT)1;                                \
        if (flags & FLAG_UNSCALE) return kept_##SUFFIX(g, m, len, sc, 1, direction);                  \
        return kept_##SUFFIX(g, m, len, sc, 0, direction);                                            \
    }                                                                                                 \
                                                                                                      \
    static void load_scalars_##SUFFIX(CT *sc, const double *scalars) {                                \
        for (int k = 0; k < S_COUNT; ++k) sc[k] = (CT)scalars[k];                                     \
    }                                                                                                 \
                                                                                                      \
    /* One job of a call: what every chunk needs. */                                              \
    struct job_##SUFFIX {                                                                             \
        int64_t n, chunk, total;                                                                      \
        PT *const *ps;                                                                                \
        const PT *const *gs;                                                                          \
        MT *const *ms;                                                                                \
        const int64_t *offsets;                                                                       \
        const CT *sc;                                                                                 \
        int flags;                                                                                    \
        const CT *scale;                                                                              \
        int64_t *kept;                                                                                \
    };                                                                                                \
                                                                                                      \
    /* Chunk c: counts or (count_only == 0) updates each tensor's part; inlined, as constant. */      \
    INLINE void walk_chunk_##SUFFIX(const struct job_##SUFFIX *j, int64_t c, const int count_only) {  \
        int64_t lo = c * j->chunk, hi = lo + j->chunk < j->total ? lo + j->chunk : j->total;          \
        for (int64_t t = tensor_of(j->offsets, j->n, lo); lo < hi; ++t) {                             \
            int64_t end = j->offsets[t + 1] < hi ? j->offsets[t + 1] : hi;                            \
            if (end > lo) {                                                                           \
                int64_t start = lo - j->offsets[t];                                                   \
                if (count_only) {                                                                     \
                    int64_t k = count_##SUFFIX(j->gs[t] + start, j->ms[t] + start, end - lo, j->sc,   \
                                               j->flags);                                             \
                    ATOMIC_ADD(j->kept[t], k);                                                        \
                } else {                                                                              \
                    segment_##SUFFIX(j->ps[t] + start, j->gs[t] + start, j->ms[t] + start, end - lo,  \
                                     j->sc, j->flags, j->scale != NULL ? j->scale[t] : (CT)1);        \
                }                                                                                     \
            }                                                                                         \
            lo = end;                                                                                 \
        }                                                                                             \
    }                                                                                                 \
                                                                                                      \
    static void count_chunk_##SUFFIX(const void *arg, int64_t c) {                                    \
        walk_chunk_##SUFFIX((const struct job_##SUFFIX *)arg, c, 1);                                  \
    }                                                                                                 \
                                                                                                      \
    static void update_chunk_##SUFFIX(const void *arg, int64_t c) {                                   \
        walk_chunk_##SUFFIX((const struct job_##SUFFIX *)arg, c, 0);                                  \
    }                                                                                                 \
                                                                                                      \
    static void kept_counts_##SUFFIX(int64_t n, const PT *const *gs, const MT *const *ms,             \
                                     const int64_t *offsets, const double *scalars, int flags,        \
                                     int64_t chunk, int threads, int64_t *kept) {                     \
        CT sc[S_COUNT];                                                                               \
        load_scalars_##SUFFIX(sc, scalars);                                                           \
        const int64_t total = offsets[n];                                                             \
        for (int64_t t = 0; t < n; ++t) kept[t] = 0;                                                  \
        struct job_##SUFFIX job = {n, chunk, total, NULL, gs, (MT *const *)ms, offsets, sc, flags,    \
                                   NULL, kept};                                                       \
        parallel_chunks(count_chunk_##SUFFIX, &job, (total + chunk - 1) / chunk, threads);            \
    }                                                                                                 \
                                                                                                      \
    static int run_##SUFFIX(int64_t n, PT *const *ps, const PT *const *gs, MT *const *ms,             \
                            const int64_t *offsets, const double *scalars, int flags, int64_t chunk,  \
                            int threads, const int64_t *counts) {                                     \
        CT sc[S_COUNT];                                                                               \
        load_scalars_##SUFFIX(sc, scalars);                                                           \
        const int64_t total = offsets[n];                                                             \
        const int64_t chunks = (total + chunk - 1) / chunk;                                           \
        if (chunks == 0) return 0;                                                                    \
        CT *scale = NULL;                                                                             \
        if (flags & FLAG_CAUTIOUS) {                                                                  \
            /* counts: (kept, element count) per tensor, of the whole tensor (all shards). */         \
            scale = (CT *)malloc((size_t)n * sizeof *scale);                                          \
            if (scale == NULL) return -1;                                                             \
            for (int64_t t = 0; t < n; ++t) {                                                         \
                int64_t kept = counts[2 * t], size = counts[2 * t + 1];                               \
                /* NumPy's mean: the float sum of the 0/1 mask divided by the size in float64,   */   \
                /* rounded to the compute type; a tensor where nothing is kept divides by 1.      */  \
                CT fraction = size > 0 ? (CT)((double)kept / (double)size) : (CT)0;                   \
                CT divisor = fraction > (CT)0 ? fraction : (CT)1;                                     \
                scale[t] = (CT)1 / divisor;                                                           \
            }                                                                                         \
        }                                                                                             \
        struct job_##SUFFIX job = {n, chunk, total, ps, gs, ms, offsets, sc, flags, scale, NULL};     \
        parallel_chunks(update_chunk_##SUFFIX, &job, chunks, threads);                                \
        free(scale);                                                                                  \
        return 0;                                                                                     \
    }

#define IDENTITY(x) (x)
DEFINE_KIND(f32, float, float, float, IDENTITY, IDENTITY, IDENTITY, IDENTITY)
DEFINE_KIND(f64, double, double, double, IDENTITY, IDENTITY, IDENTITY, IDENTITY)
DEFINE_KIND(bf16, uint16_t, float, float, bf16_load, bf16_store, IDENTITY, IDENTITY)
DEFINE_KIND(bf16m, uint16_t, uint16_t, float, bf16_load, bf16_store, bf16_load, bf16_store)

/*
 * The two entry points share their arguments:
 *
 * kind: KIND_*; n: the number of tensors.
 * table: 3 * n pointers (parameters, gradients, momenta, each n long) followed by n + 1 int64 prefix
 *   offsets (offsets[0] = 0, offsets[n] = total number of elements). Pointers travel as int64.
 * scalars: S_COUNT float64 values in the order of the enum above.
 * flags: FLAG_*; chunk: elements per work item; threads: the most OpenMP threads to use.
 */
#define DISPATCH_KIND(CALL_F32, CALL_F64, CALL_BF16, CALL_BF16M)                                      \
    switch (kind) {                                                                                   \
    case KIND_F32: CALL_F32; break;                                                                   \
    case KIND_F64: CALL_F64; break;                                                                   \
    case KIND_BF16: CALL_BF16; break;                                                                 \
    case KIND_BF16_M_BF16: CALL_BF16M; break;                                                         \
    default: return -2;                                                                               \
    }

#define PS(T) ((T *const *)table)
#define GS(T) ((const T *const *)(table + n))
#define MS(T) ((T *const *)(table + 2 * n))

/* Cautious masking, first pass: kept[t] = how many entries of tensor t the mask keeps (this
 * process's tensors only; the caller may add up the counts of other shards). Returns 0, or -2 for an
 * unknown kind. */
static int lionkit_cpu_count(int kind, int64_t n, const int64_t *table, const double *scalars, int flags,
                             int64_t chunk, int threads, int64_t *kept) {
    if (n <= 0) return 0;
    const int64_t *offsets = table + 3 * n;
    DISPATCH_KIND(
        kept_counts_f32(n, GS(float), (const float *const *)MS(float), offsets, scalars, flags, chunk, threads, kept),
        kept_counts_f64(n, GS(double), (const double *const *)MS(double), offsets, scalars, flags, chunk, threads, kept),
        kept_counts_bf16(n, GS(uint16_t), (const float *const *)MS(float), offsets, scalars, flags, chunk, threads, kept),
        kept_counts_bf16m(n, GS(uint16_t), (const uint16_t *const *)MS(uint16_t), offsets, scalars, flags, chunk, threads, kept))
    return 0;
}

/* One Lion step over n tensors of one kind. counts: with FLAG_CAUTIOUS, 2 * n int64 values, (kept,
 * element count) per tensor, of the whole tensor; otherwise unused (may be NULL). Returns 0, -1 when
 * the cautious scales cannot be allocated, -2 for an unknown kind. */
static int lionkit_cpu_lion(int kind, int64_t n, const int64_t *table, const double *scalars, int flags,
                            int64_t chunk, int threads, const int64_t *counts) {
    if (n <= 0) return 0;
    const int64_t *offsets = table + 3 * n;
    int status = 0;
    DISPATCH_KIND(
        status = run_f32(n, PS(float), GS(float), MS(float), offsets, scalars, flags, chunk, threads, counts),
        status = run_f64(n, PS(double), GS(double), MS(double), offsets, scalars, flags, chunk, threads,
                         counts),
        status = run_bf16(n, PS(uint16_t), GS(uint16_t), MS(float), offsets, scalars, flags, chunk, threads,
                          counts),
        status = run_bf16m(n, PS(uint16_t), GS(uint16_t), MS(uint16_t), offsets, scalars, flags, chunk,
                           threads, counts))
    return status;
}

/*
 * State formats (lion_core.state_spec; the routine of lionkit_cpu_lion_stored): an 8-bit blockwise
 * momentum (lion_core.INT8) and bfloat16 parameters stored by stochastic rounding, per tensor, with
 * the float formats of the routines above in the same call (one plan, one cautious count, one
 * update). Per block of INT8_BLOCK elements of the flattened tensor, in float32:
 *
 *   m      = code * scale                                    (decode: one rounding)
 *   p, m'  = the Lion step above, same operation order
 *   p      = bf16: nearest (bf16_store) or stochastic (bf16_store_stochastic, param key)
 *   scale' = absmax(m') * INV_CODE_MAX                       (NaN if a NaN is in the block)
 *   y      = m' * (1 / (scale' == 0 ? 1 : scale'))
 *   code   = clip(floor(y) + (u < y - floor(y)), -127, 127), NaN -> 0;  u = (bits >> 8) * 2^-24
 *
 * which is BlockwiseInt8.encode's sequence of correctly rounded float32 operations (no FMA: the
 * file is built with -ffp-contract=off), so codes and scales equal lion_core's bit for bit. The
 * random bits are lion_core.counter_hash: bits = mix32(mix32(index ^ key) + key) for the step key
 * `key` (from the host: step_key(derive_seed(seed, stream, tensor), step)) and the element's flat
 * index modulo 2^32. Tensors start on block boundaries of the index space (the host pads each
 * tensor's offset to a multiple of INT8_BLOCK) and chunks are whole blocks, so one thread owns
 * each block.
 */
#define INT8_BLOCK 256
enum { SK_P_BF16 = 1, SK_M_BF16 = 2, SK_M_INT8 = 4, SK_STOCHASTIC = 8, SK_F64 = 16 };
/* lion_core.INV_CODE_MAX: 1/127 rounded to float32. */
#define INV_CODE_MAX ((float)(1.0 / 127.0))

INLINE uint32_t mix32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7FEB352Du;
    x ^= x >> 15;
    x *= 0x846CA68Bu;
    return x ^ (x >> 16);
}

INLINE uint32_t element_bits(uint32_t key, uint32_t index) { return mix32(mix32(index ^ key) + key); }

/* lion_core.stochastic_round_bfloat16_bits: add the top 16 random bits to the 16 dropped bits and
 * truncate (unbiased); NaN stays NaN with its sign and high payload, made quiet. */
INLINE uint16_t bf16_store_stochastic(float f, uint32_t random) {
    const uint32_t bits = f32_bits(f);
    uint32_t rounded = (bits + (random >> 16)) >> 16;
    uint32_t nan = (bits | 0x00400000u) >> 16;
    return (uint16_t)((bits & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
}

INLINE uint32_t abs_bits(float f) { return f32_bits(f) & 0x7fffffffu; }

/* The codes of one block: clip(floor(y) + (u < y - floor(y)), -127, 127) for y = m' * inverse, NaN
 * -> 0 (lion_core.BlockwiseInt8.encode), with integer masks rather than conditionals (GCC keeps a
 * floating conversion behind a conditional as a branch, which stops vectorisation). Unless
 * `bounded` (|y| <= 128 known), |y| > 128 is replaced by +-128 (the codes clip to +-127 either way)
 * and NaN by 0 (code 0) first, so the conversion to int32 is exact; y - floor(y) is exact. */
INLINE void encode_codes(const float *restrict fresh, int8_t *restrict m8, int32_t count, float inverse,
                         uint32_t mkey, uint32_t index, const int bounded) {
    for (int32_t i = 0; i < count; ++i) {
        float y = fresh[i] * inverse;
        if (!bounded) {
            uint32_t bits = f32_bits(y);
            const uint32_t magnitude = bits & 0x7fffffffu;
            const uint32_t outside = -(uint32_t)(magnitude > 0x43000000u); /* |y| > 128, inf, NaN */
            const uint32_t nan = -(uint32_t)(magnitude > 0x7f800000u);
            bits = ((bits & ~outside) | (((bits & 0x80000000u) | 0x43000000u) & outside)) & ~nan;
            y = f32_from_bits(bits);
        }
        const int32_t truncated = (int32_t)y;
        const int32_t low = truncated - (int32_t)((float)truncated > y);
        const float uniform = (float)(int32_t)(element_bits(mkey, index + (uint32_t)i) >> 8) * 0x1p-24f;
        int32_t q = low + (int32_t)(uniform < y - (float)low);
        q = q > 127 ? 127 : q;
        q = q < -127 ? -127 : q;
        m8[i] = (int8_t)q;
    }
}

/* Element i of a block of kind K, read through the caller's typed (restrict) pointers: its gradient
 * (grad_bf16 / grad_f32: unscaled, negated for maximize) and its decoded momentum (an int8 code
 * times the block's old scale, or a float momentum). */
INLINE float stored_grad(const uint16_t *g16, const float *g32, int32_t i, int unscale, float grad_scale,
                         float direction, const int K) {
    return (K & SK_P_BF16) ? grad_bf16(g16[i], unscale, grad_scale, direction)
                           : grad_f32(g32[i], unscale, grad_scale, direction);
}

INLINE float stored_momentum(const int8_t *m8, const uint16_t *m16, const float *m32, int32_t i,
                             float old_scale, const int K) {
    if (K & SK_M_INT8) return (float)m8[i] * old_scale;
    return (K & SK_M_BF16) ? bf16_load(m16[i]) : m32[i];
}

/* One block (len <= INT8_BLOCK elements starting at flat index `index`) of a tensor of kind K (SK_*,
 * a compile-time constant at every call site, as are cautious and unscale). */
INLINE void stored_block(void *pv, const void *gv, void *mv, float *scale, int64_t len, uint32_t index,
                         uint32_t mkey, uint32_t pkey, const float *sc, int cautious, float cscale, int unscale,
                         float direction, const int K) {
    uint16_t *restrict p16 = (uint16_t *)pv;
    float *restrict p32 = (float *)pv;
    const uint16_t *restrict g16 = (const uint16_t *)gv;
    const float *restrict g32 = (const float *)gv;
    int8_t *restrict m8 = (int8_t *)mv;
    uint16_t *restrict m16 = (uint16_t *)mv;
    float *restrict m32 = (float *)mv;
    const float beta1 = sc[S_BETA1], omb1 = sc[S_ONE_MINUS_BETA1];
    const float beta2 = sc[S_BETA2], omb2 = sc[S_ONE_MINUS_BETA2];
    const float lr = sc[S_LR], decay = sc[S_DECAY], grad_scale = sc[S_GRAD_SCALE];
    const float old_scale = (K & SK_M_INT8) ? *scale : 0.0f;
    const int32_t count = (int32_t)len; /* <= INT8_BLOCK: 32-bit lanes for the index */
    float fresh[INT8_BLOCK];
    uint32_t largest = 0;
    for (int32_t i = 0; i < count; ++i) {
        const float gi = stored_grad(g16, g32, i, unscale, grad_scale, direction, K);
        const float mi = stored_momentum(m8, m16, m32, i, old_scale, K);
        const float c = beta1 * mi + omb1 * gi;
        float u = sign_f32(c);
        if (cautious) {
            const float mask = u * gi > 0.0f ? u * u : 0.0f;
            u = u * mask * cscale;
        }
        const float pi = (K & SK_P_BF16) ? bf16_load(p16[i]) : p32[i];
        const float new_p = pi * decay - lr * u;
        if (K & SK_STOCHASTIC) p16[i] = bf16_store_stochastic(new_p, element_bits(pkey, index + (uint32_t)i));
        else if (K & SK_P_BF16) p16[i] = bf16_store(new_p);
        else p32[i] = new_p;
        const float new_m = beta2 * mi + omb2 * gi;
        if (K & SK_M_INT8) {
            fresh[i] = new_m;
            /* Largest magnitude on the bit patterns: NaN patterns exceed infinity's, so a NaN in the
             * block makes the scale NaN, as NumPy's max does. */
            const uint32_t a = abs_bits(new_m);
            largest = a > largest ? a : largest;
        } else if (K & SK_M_BF16) {
            m16[i] = bf16_store(new_m);
        } else {
            m32[i] = new_m;
        }
    }
    if (K & SK_M_INT8) {
        const float new_scale = f32_from_bits(largest) * INV_CODE_MAX;
        *scale = new_scale;
        const float inverse = 1.0f / (new_scale == 0.0f ? 1.0f : new_scale);
        /* A normal, finite scale (every block but degenerate ones) bounds |y| by 127 (1 + 4 eps):
         * the codes need no guard against NaN, infinity or overflow. */
        const uint32_t scale_bits = abs_bits(new_scale);
        if (scale_bits >= 0x00800000u && scale_bits < 0x7f800000u) encode_codes(fresh, m8, count, inverse, mkey, index, 1);
        else encode_codes(fresh, m8, count, inverse, mkey, index, 0);
    }
}

/* The cautious mask's kept entries of one block (the first pass of a cautious step). */
INLINE int64_t stored_kept(const void *gv, const void *mv, const float *scale, int64_t len, const float *sc,
                           int unscale, float direction, const int K) {
    const uint16_t *restrict g16 = (const uint16_t *)gv;
    const float *restrict g32 = (const float *)gv;
    const int8_t *restrict m8 = (const int8_t *)mv;
    const uint16_t *restrict m16 = (const uint16_t *)mv;
    const float *restrict m32 = (const float *)mv;
    const float beta1 = sc[S_BETA1], omb1 = sc[S_ONE_MINUS_BETA1], grad_scale = sc[S_GRAD_SCALE];
    const float old_scale = (K & SK_M_INT8) ? *scale : 0.0f;
    const int32_t count = (int32_t)len;
    int64_t kept = 0;
    for (int32_t i = 0; i < count; ++i) {
        const float gi = stored_grad(g16, g32, i, unscale, grad_scale, direction, K);
        const float mi = stored_momentum(m8, m16, m32, i, old_scale, K);
        const float u = sign_f32(beta1 * mi + omb1 * gi);
        kept += u * gi > 0.0f;
    }
    return kept;
}

/* float64 parameters and gradients with an int8 momentum (kind SK_F64 | SK_M_INT8): the step in
 * float64, as the float64 routine computes it; the codes decoded in float32 (code * scale, then
 * widened), and encoded from the float64 momentum as BlockwiseInt8.encode does in float64: scale =
 * float32(absmax * (double)INV_CODE_MAX), y = m' * (1 / scale) in float64. (Not vectorised with
 * the care of the float32 loops: float64 parameters with an 8-bit momentum are rare.) */
INLINE void stored_block_f64(double *restrict p, const double *restrict g, int8_t *restrict m8, float *scale,
                             int64_t len, uint32_t index, uint32_t mkey, const double *sc, int cautious,
                             double cscale, int unscale, double direction) {
    const double beta1 = sc[S_BETA1], omb1 = sc[S_ONE_MINUS_BETA1];
    const double beta2 = sc[S_BETA2], omb2 = sc[S_ONE_MINUS_BETA2];
    const double lr = sc[S_LR], decay = sc[S_DECAY], grad_scale = sc[S_GRAD_SCALE];
    const float old_scale = *scale;
    const int32_t count = (int32_t)len;
    double fresh[INT8_BLOCK];
    uint64_t largest = 0;
    for (int32_t i = 0; i < count; ++i) {
        double gi = g[i];
        if (unscale) gi = gi / grad_scale;
        gi = gi * direction;
        const double mi = (double)((float)m8[i] * old_scale);
        const double c = beta1 * mi + omb1 * gi;
        double u = ((c > 0.0 ? 1.0 : 0.0) - (c < 0.0 ? 1.0 : 0.0)) + (c - c);
        if (cautious) {
            const double mask = u * gi > 0.0 ? u * u : 0.0;
            u = u * mask * cscale;
        }
        p[i] = p[i] * decay - lr * u;
        const double new_m = beta2 * mi + omb2 * gi;
        fresh[i] = new_m;
        uint64_t bits;
        memcpy(&bits, &new_m, sizeof bits);
        bits &= 0x7fffffffffffffffull; /* NaN patterns exceed infinity's: a NaN makes the scale NaN */
        largest = bits > largest ? bits : largest;
    }
    double absmax;
    memcpy(&absmax, &largest, sizeof absmax);
    const float new_scale = (float)(absmax * (double)INV_CODE_MAX);
    *scale = new_scale;
    const double inverse = 1.0 / (new_scale == 0.0f ? 1.0 : (double)new_scale);
    for (int32_t i = 0; i < count; ++i) {
        const double y = fresh[i] * inverse;
        int32_t q = 0;
        if (y == y) {
            /* Out of [-128, 128] (infinity included) the code clips to +-127 either way. */
            const double clamped = y > 128.0 ? 128.0 : (y < -128.0 ? -128.0 : y);
            const int32_t truncated = (int32_t)clamped;
            const int32_t low = truncated - (int32_t)((double)truncated > clamped);
            const float uniform = (float)(int32_t)(element_bits(mkey, index + (uint32_t)i) >> 8) * 0x1p-24f;
            q = low + (int32_t)((double)uniform < clamped - (double)low);
            q = q > 127 ? 127 : q;
            q = q < -127 ? -127 : q;
        }
        m8[i] = (int8_t)q;
    }
}

INLINE int64_t stored_kept_f64(const double *restrict g, const int8_t *restrict m8, const float *scale,
                               int64_t len, const double *sc, int unscale, double direction) {
    const double beta1 = sc[S_BETA1], omb1 = sc[S_ONE_MINUS_BETA1], grad_scale = sc[S_GRAD_SCALE];
    const float old_scale = *scale;
    int64_t kept = 0;
    for (int64_t i = 0; i < len; ++i) {
        double gi = g[i];
        if (unscale) gi = gi / grad_scale;
        gi = gi * direction;
        const double c = beta1 * (double)((float)m8[i] * old_scale) + omb1 * gi;
        const double u = ((c > 0.0 ? 1.0 : 0.0) - (c < 0.0 ? 1.0 : 0.0)) + (c - c);
        kept += u * gi > 0.0;
    }
    return kept;
}

/* Element sizes of a kind's parameter (and gradient) and momentum. */
#define P_SIZE(K) (((K) & SK_P_BF16) ? 2 : 4)
#define M_SIZE(K) (((K) & SK_M_INT8) ? 1 : ((K) & SK_M_BF16) ? 2 : 4)

/* A run of whole blocks [start, stop) of one tensor (stop may end a short last block). */
#define DEFINE_STORED(K)                                                                                  \
    DISPATCH static void stored_segment_##K(char *p, const char *g, char *m, float *scales, int64_t start,  \
                                            int64_t stop, uint32_t mkey, uint32_t pkey, const float *sc,     \
                                            int flags, float cscale) {                                       \
        const float direction = (flags & FLAG_MAXIMIZE) ? -1.0f : 1.0f;                                      \
        for (int64_t b = start; b < stop; b += INT8_BLOCK) {                                                 \
            const int64_t len = stop - b < INT8_BLOCK ? stop - b : INT8_BLOCK;                               \
            char *pb = p + b * P_SIZE(K);                                                                    \
            const char *gb = g + b * P_SIZE(K);                                                              \
            char *mb = m + b * M_SIZE(K);                                                                    \
            float *sb = scales + b / INT8_BLOCK;                                                             \
            const uint32_t index = (uint32_t)b;                                                              \
            if (flags & FLAG_CAUTIOUS) {                                                                     \
                if (flags & FLAG_UNSCALE)                                                                    \
                    stored_block(pb, gb, mb, sb, len, index, mkey, pkey, sc, 1, cscale, 1, direction, K);    \
                else stored_block(pb, gb, mb, sb, len, index, mkey, pkey, sc, 1, cscale, 0, direction, K);   \
            } else {                                                                                         \
                if (flags & FLAG_UNSCALE)                                                                    \
                    stored_block(pb, gb, mb, sb, len, index, mkey, pkey, sc, 0, cscale, 1, direction, K);    \
                else stored_block(pb, gb, mb, sb, len, index, mkey, pkey, sc, 0, cscale, 0, direction, K);   \
            }                                                                                                \
        }                                                                                                    \
    }                                                                                                        \
                                                                                                             \
    DISPATCH static int64_t stored_count_##K(const char *g, const char *m, const float *scales,             \
                                             int64_t start, int64_t stop, const float *sc, int flags) {      \
        const float direction = (flags & FLAG_MAXIMIZE) ? -1.0f : 1.0f;                                      \
        int64_t kept = 0;                                                                                    \
        for (int64_t b = start; b < stop; b += INT8_BLOCK) {                                                 \
            const int64_t len = stop - b < INT8_BLOCK ? stop - b : INT8_BLOCK;                               \
            const char *gb = g + b * P_SIZE(K);                                                              \
            const char *mb = m + b * M_SIZE(K);                                                              \
            const float *sb = scales + b / INT8_BLOCK;                                                       \
            if (flags & FLAG_UNSCALE) kept += stored_kept(gb, mb, sb, len, sc, 1, direction, K);             \
            else kept += stored_kept(gb, mb, sb, len, sc, 0, direction, K);                                  \
        }                                                                                                    \
        return kept;                                                                                         \
    }

/* The kinds: float32 parameters with a float32 or int8 momentum; bfloat16 parameters with a
 * float32, bfloat16 or int8 momentum, rounded to nearest or stochastically. */
DEFINE_STORED(0)
DEFINE_STORED(4)
DEFINE_STORED(1)
DEFINE_STORED(3)
DEFINE_STORED(5)
DEFINE_STORED(9)
DEFINE_STORED(11)
DEFINE_STORED(13)

/* Kind 20 (SK_F64 | SK_M_INT8). The generic entry passes float32 scalars; this kind reads the
 * float64 ones (stored_run hands both over). */
static void stored_segment_20_f64(char *p, const char *g, char *m, float *scales, int64_t start, int64_t stop,
                                  uint32_t mkey, const double *sc, int flags, double cscale) {
    const double direction = (flags & FLAG_MAXIMIZE) ? -1.0 : 1.0;
    const int cautious = (flags & FLAG_CAUTIOUS) != 0, unscale = (flags & FLAG_UNSCALE) != 0;
    for (int64_t b = start; b < stop; b += INT8_BLOCK) {
        const int64_t len = stop - b < INT8_BLOCK ? stop - b : INT8_BLOCK;
        stored_block_f64((double *)p + b, (const double *)g + b, (int8_t *)m + b, scales + b / INT8_BLOCK, len,
                         (uint32_t)b, mkey, sc, cautious, cscale, unscale, direction);
    }
}

static int64_t stored_count_20_f64(const char *g, const char *m, const float *scales, int64_t start, int64_t stop,
                                   const double *sc, int flags) {
    const double direction = (flags & FLAG_MAXIMIZE) ? -1.0 : 1.0;
    int64_t kept = 0;
    for (int64_t b = start; b < stop; b += INT8_BLOCK) {
        const int64_t len = stop - b < INT8_BLOCK ? stop - b : INT8_BLOCK;
        kept += stored_kept_f64((const double *)g + b, (const int8_t *)m + b, scales + b / INT8_BLOCK, len, sc,
                                (flags & FLAG_UNSCALE) != 0, direction);
    }
    return kept;
}

typedef void (*stored_segment_fn)(char *, const char *, char *, float *, int64_t, int64_t, uint32_t, uint32_t,
                                  const float *, int, float);
typedef int64_t (*stored_count_fn)(const char *, const char *, const float *, int64_t, int64_t, const float *,
                                   int);

static int stored_functions(int kind, stored_segment_fn *segment, stored_count_fn *count) {
    switch (kind) {
#define STORED_CASE(K) case K: *segment = stored_segment_##K; *count = stored_count_##K; return 0;
    STORED_CASE(0) STORED_CASE(4) STORED_CASE(1) STORED_CASE(3) STORED_CASE(5) STORED_CASE(9)
    STORED_CASE(11) STORED_CASE(13)
#undef STORED_CASE
    default: return -2;
    }
}

/* One job of a stored-format call: what every chunk needs. */
struct stored_job {
    int count_only, f64;
    stored_segment_fn segment;
    stored_count_fn count;
    int64_t n, chunk, total;
    char *const *ps;
    const char *const *gs;
    char *const *ms;
    float *const *ss;
    const int64_t *numels, *offsets, *keys;
    const float *sc;
    const double *scalars;
    int flags;
    const float *cscale;
    const double *cscale64;
    int64_t *counts;
};

static void stored_chunk(const void *arg, int64_t c) {
    const struct stored_job *j = (const struct stored_job *)arg;
    int64_t lo = c * j->chunk, hi = lo + j->chunk < j->total ? lo + j->chunk : j->total;
    for (int64_t t = tensor_of(j->offsets, j->n, lo); lo < hi; ++t) {
        int64_t end = j->offsets[t + 1] < hi ? j->offsets[t + 1] : hi;
        int64_t start = lo - j->offsets[t];
        int64_t stop = end - j->offsets[t] < j->numels[t] ? end - j->offsets[t] : j->numels[t];
        if (stop > start) {
            if (j->count_only) {
                int64_t k = j->f64 ? stored_count_20_f64(j->gs[t], j->ms[t], j->ss[t], start, stop, j->scalars,
                                                         j->flags)
                                   : j->count(j->gs[t], j->ms[t], j->ss[t], start, stop, j->sc, j->flags);
                ATOMIC_ADD(j->counts[t], k);
            } else if (j->f64) {
                stored_segment_20_f64(j->ps[t], j->gs[t], j->ms[t], j->ss[t], start, stop, (uint32_t)j->keys[t],
                                      j->scalars, j->flags, j->cscale64 != NULL ? j->cscale64[t] : 1.0);
            } else {
                j->segment(j->ps[t], j->gs[t], j->ms[t], j->ss[t], start, stop, (uint32_t)j->keys[t],
                           (uint32_t)j->keys[j->n + t], j->sc, j->flags, j->cscale != NULL ? j->cscale[t] : 1.0f);
            }
        }
        lo = end;
    }
}

/*
 * The stored-format entry point (count or update), for n tensors of one kind.
 *
 * table: 4 * n pointers (parameters, gradients, momenta, scales: 0 for a float momentum), n element
 *   counts, then n + 1 int64 offsets of the tensors in the index space, each a multiple of
 *   INT8_BLOCK (offsets[t + 1] - offsets[t] = numel rounded up to whole blocks).
 * keys: 2 * n int64 step keys (momentum keys, then parameter keys; < 2^32; 0 where unused).
 * counts: update: with FLAG_CAUTIOUS, 2 * n int64 (kept, element count) of the whole tensors;
 *   count: n int64 outputs, the kept entries of this process's tensors.
 * chunk: elements per work item, a multiple of INT8_BLOCK. Returns 0, -1 (no memory), -2 (unknown
 * kind or a chunk of partial blocks).
 */
static int stored_run(int count_only, int kind, int64_t n, const int64_t *table, const int64_t *keys,
                      const double *scalars, int flags, int64_t chunk, int threads, int64_t *counts) {
    if (n <= 0) return 0;
    stored_segment_fn segment = NULL;
    stored_count_fn count = NULL;
    const int f64 = kind == (SK_F64 | SK_M_INT8);
    if ((!f64 && stored_functions(kind, &segment, &count) != 0) || chunk <= 0 || chunk % INT8_BLOCK != 0)
        return -2;
    float sc[S_COUNT];
    for (int k = 0; k < S_COUNT; ++k) sc[k] = (float)scalars[k];
    const int64_t *offsets = table + 5 * n;
    const int64_t total = offsets[n];
    const int64_t chunks = (total + chunk - 1) / chunk;
    if (count_only)
        for (int64_t t = 0; t < n; ++t) counts[t] = 0;
    if (chunks == 0) return 0;
    float *cscale = NULL;
    double *cscale64 = NULL;
    if (!count_only && (flags & FLAG_CAUTIOUS)) {
        cscale = (float *)malloc((size_t)n * sizeof *cscale);
        cscale64 = (double *)malloc((size_t)n * sizeof *cscale64);
        if (cscale == NULL || cscale64 == NULL) {
            free(cscale);
            free(cscale64);
            return -1;
        }
        for (int64_t t = 0; t < n; ++t) {
            int64_t kept = counts[2 * t], size = counts[2 * t + 1];
            float fraction = size > 0 ? (float)((double)kept / (double)size) : 0.0f;
            cscale[t] = 1.0f / (fraction > 0.0f ? fraction : 1.0f);
            double fraction64 = size > 0 ? (double)kept / (double)size : 0.0;
            cscale64[t] = 1.0 / (fraction64 > 0.0 ? fraction64 : 1.0);
        }
    }
    struct stored_job job = {
        count_only, f64, segment, count, n, chunk, total,
        (char *const *)table, (const char *const *)(table + n), (char *const *)(table + 2 * n),
        (float *const *)(table + 3 * n), table + 4 * n, offsets, keys, sc, scalars, flags, cscale, cscale64,
        counts,
    };
    parallel_chunks(stored_chunk, &job, chunks, threads);
    free(cscale);
    free(cscale64);
    return 0;
}

static int lionkit_cpu_lion_stored(int kind, int64_t n, const int64_t *table, const int64_t *keys,
                                   const double *scalars, int flags, int64_t chunk, int threads,
                                   int64_t *counts) {
    return stored_run(0, kind, n, table, keys, scalars, flags, chunk, threads, counts);
}

static int lionkit_cpu_count_stored(int kind, int64_t n, const int64_t *table, const int64_t *keys,
                                    const double *scalars, int flags, int64_t chunk, int threads,
                                    int64_t *kept) {
    return stored_run(1, kind, n, table, keys, scalars, flags, chunk, threads, kept);
}

/*
 * The Python module: no Python-callable functions, only the addresses of the four entry points
 * (called through ctypes, which releases the GIL for the call) and the ABI number the launcher
 * checks. Importing it is how the launcher loads the library: a file that is not a loadable shared
 * object raises ImportError there.
 */
static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "_cpu_lion",
    "Lion's CPU kernel, compiled at install time; called by lion_kernels.cpu_lion.",
    -1,
    NULL, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__cpu_lion(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddIntConstant(m, "ABI", LIONKIT_CPU_ABI) < 0 ||
        PyModule_AddObject(m, "lion_address", PyLong_FromVoidPtr((void *)&lionkit_cpu_lion)) < 0 ||
        PyModule_AddObject(m, "count_address", PyLong_FromVoidPtr((void *)&lionkit_cpu_count)) < 0 ||
        PyModule_AddObject(m, "stored_address", PyLong_FromVoidPtr((void *)&lionkit_cpu_lion_stored)) < 0 ||
        PyModule_AddObject(m, "count_stored_address", PyLong_FromVoidPtr((void *)&lionkit_cpu_count_stored)) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
