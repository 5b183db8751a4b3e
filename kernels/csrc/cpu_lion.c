/*
 * Lion for CPU tensors: one pass over every tensor of a parameter group in one call.
 *
 * Built when lionkit is installed, as the extension module lion_kernels._cpu_lion (setup.py); the
 * Python launcher is kernels/cpu_lion.py, which calls the two functions whose addresses the module
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
 * Instruction sets: one binary serves every x86-64 CPU. The streaming loops (segment_* and count_*)
 * are compiled three times by GCC's target_clones (AVX-512F, AVX2, baseline x86-64); the dynamic
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

#define LIONKIT_CPU_ABI 2

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
#define DISPATCH __attribute__((target_clones("avx512f", "avx2", "default")))
#endif
#endif
#ifndef DISPATCH
#define DISPATCH
#endif

/* bfloat16 is the top half of a float32: widening is exact. */
INLINE float bf16_load(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* Round to nearest, ties to even, as torch's c10::BFloat16 does; every NaN becomes the canonical
 * quiet NaN 0x7fc0 (as torch stores it; adding the rounding bias to a NaN could carry it into
 * infinity). The Triton kernel encodes NaN the same way. */
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
    static void count_chunk_##SUFFIX(const void *arg, int64_t c) {                                    \
        const struct job_##SUFFIX *j = (const struct job_##SUFFIX *)arg;                              \
        int64_t lo = c * j->chunk, hi = lo + j->chunk < j->total ? lo + j->chunk : j->total;          \
        for (int64_t t = tensor_of(j->offsets, j->n, lo); lo < hi; ++t) {                             \
            int64_t end = j->offsets[t + 1] < hi ? j->offsets[t + 1] : hi;                            \
            if (end > lo) {                                                                           \
                int64_t start = lo - j->offsets[t];                                                   \
                int64_t k = count_##SUFFIX(j->gs[t] + start, j->ms[t] + start, end - lo, j->sc,       \
                                           j->flags);                                                 \
                ATOMIC_ADD(j->kept[t], k);                                                            \
            }                                                                                         \
            lo = end;                                                                                 \
        }                                                                                             \
    }                                                                                                 \
                                                                                                      \
    static void update_chunk_##SUFFIX(const void *arg, int64_t c) {                                   \
        const struct job_##SUFFIX *j = (const struct job_##SUFFIX *)arg;                              \
        int64_t lo = c * j->chunk, hi = lo + j->chunk < j->total ? lo + j->chunk : j->total;          \
        for (int64_t t = tensor_of(j->offsets, j->n, lo); lo < hi; ++t) {                             \
            int64_t end = j->offsets[t + 1] < hi ? j->offsets[t + 1] : hi;                            \
            if (end > lo) {                                                                           \
                int64_t start = lo - j->offsets[t];                                                   \
                segment_##SUFFIX(j->ps[t] + start, j->gs[t] + start, j->ms[t] + start, end - lo,      \
                                 j->sc, j->flags, j->scale != NULL ? j->scale[t] : (CT)1);            \
            }                                                                                         \
            lo = end;                                                                                 \
        }                                                                                             \
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
 * The Python module: no Python-callable functions, only the addresses of the two entry points
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
        PyModule_AddObject(m, "count_address", PyLong_FromVoidPtr((void *)&lionkit_cpu_count)) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
