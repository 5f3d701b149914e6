/* Compiled CPU kernels for the two per-image stages that torch cannot fuse (see forward/native.py).
 *
 * spline_slices: central slices of a Fourier projector, one loop per copy and frequency: the cubic B-spline's
 *   64 coefficients per channel, the copy's phase ramp and the transfer in one pass (torch needs a 2-D grid_sample
 *   of 16 bilinear fetches, its weights and a complex product, each a pass over memory).
 * poisson: exact Poisson draws: most of an image's pixels from tables of the rates they lie between (levels_t),
 *   the others alone, by inversion below a mean of 10 (one uniform) and Hoermann's transformed rejection (PTRS)
 *   above; torch.poisson draws about a dozen uniforms per pixel at a mean of 10.
 * spread_gaussians: atoms gridded as separable Gaussians straight into the grid (torch builds every atom's
 *   kernel values and indices as tensors, then scatters them with index_add).
 * axis_factors: the per-atom factors of a separable structure factor along one axis, walked by recurrence.
 *
 * All take Python buffers (numpy arrays of torch tensors' memory) and release the interpreter lock while they
 * run, so the tilt workers' threads run them side by side. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------------------------------ buffers */
static int get_buffer(PyObject *obj, Py_buffer *view, const char *fmt, Py_ssize_t items, int writable,
                      const char *name) {
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) < 0)
        return -1;
    if (strcmp(view->format, fmt) != 0 || view->len != items * view->itemsize) {
        PyErr_Format(PyExc_ValueError, "%s: expected %zd items of format '%s', got %zd bytes of '%s'", name,
                     items, fmt, view->len, view->format);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* The floating-point kernels are also built for x86-64-v3 (AVX2, FMA), chosen at load time where the CPU has it (GCC
 * on x86-64 Linux; 15% off spline_slices on the project's machines). Not the Poisson kernel: its draws stay the same
 * on every CPU for a seed (a fused multiply-add could move a uniform across a count's boundary). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define CPU_CLONES
#endif

/* ------------------------------------------------------------------------------------------- spline slices */
static inline void bspline_weights(double a, double w[4]) {
    double a2 = a * a, a3 = a2 * a, b = 1.0 - a;
    w[0] = b * b * b / 6.0;
    w[1] = 0.5 * a3 - a2 + 2.0 / 3.0;
    w[3] = a3 / 6.0;
    w[2] = 1.0 - w[0] - w[1] - w[3];
}

/* vol: (n + 6)^3 x c float32, the coefficients [z][y][x][channel] with 3 zero voxels on every side;
 * kxy: (k, 2) float64 frequencies (1/A); rot: (b, 6) float64, the rows R[0], R[1] of each copy's rotation;
 * offsets: (b, 2) float64, each copy's (x, y) position in its box (A); weights: (k,) float32, the transfer times
 * the inverse DFT's scale; out: (b, c/2, k) complex64 written as float32 pairs. */
CPU_CLONES static PyObject *spline_slices(PyObject *self, PyObject *args) {
    PyObject *o_vol, *o_kxy, *o_rot, *o_off, *o_w, *o_out;
    Py_ssize_t n, c, nk, nb;
    double scale, centre;
    if (!PyArg_ParseTuple(args, "OnnOOOOOnndd", &o_vol, &n, &c, &o_kxy, &o_rot, &o_off, &o_w, &o_out, &nk, &nb,
                          &scale, &centre))
        return NULL;
    if (n < 1 || c < 2 || c > 64 || c % 2 || nk < 0 || nb < 0) {
        PyErr_SetString(PyExc_ValueError, "spline_slices: bad sizes");
        return NULL;
    }
    const Py_ssize_t d = n + 6;
    Py_buffer vol, kxy, rot, off, w, out;
    if (get_buffer(o_vol, &vol, "f", d * d * d * c, 0, "vol") < 0) return NULL;
    if (get_buffer(o_kxy, &kxy, "d", nk * 2, 0, "kxy") < 0) goto fail1;
    if (get_buffer(o_rot, &rot, "d", nb * 6, 0, "rot") < 0) goto fail2;
    if (get_buffer(o_off, &off, "d", nb * 2, 0, "offsets") < 0) goto fail3;
    if (get_buffer(o_w, &w, "f", nk, 0, "weights") < 0) goto fail4;
    if (get_buffer(o_out, &out, "f", nb * (c / 2) * nk * 2, 1, "out") < 0) goto fail5;

    Py_BEGIN_ALLOW_THREADS
    const float *v = (const float *)vol.buf;
    const double *k = (const double *)kxy.buf, *r = (const double *)rot.buf, *o = (const double *)off.buf;
    const float *wt = (const float *)w.buf;
    float *dst = (float *)out.buf;
    const Py_ssize_t sy = d * c, sz = d * d * c, half = c / 2;
    double acc[64];  /* channels: at most 64 */
    for (Py_ssize_t b = 0; b < nb; b++) {
        const double *rb = r + 6 * b;
        const double ox = o[2 * b], oy = o[2 * b + 1];
        /* the phase ramp along a run of equally spaced frequencies (a row of the DFT grid) by one complex product
         * per step instead of a cosine and a sine: e(k + dk) = e(k) e(dk); recomputed at each row's start */
        double er = 1.0, ei = 0.0, sr = 1.0, si = 0.0, dkx = NAN, dky = NAN;
        for (Py_ssize_t q = 0; q < nk; q++) {
            const double kx = k[2 * q], ky = k[2 * q + 1];
            const double px = (kx * rb[0] + ky * rb[3]) * scale + centre;
            const double py = (kx * rb[1] + ky * rb[4]) * scale + centre;
            const double pz = (kx * rb[2] + ky * rb[5]) * scale + centre;
            const double fx = floor(px), fy = floor(py), fz = floor(pz);
            if (q + 1 < nk) {  /* the next frequency's 16 rows of taps, fetched while this one is summed */
                const double kx1 = k[2 * q + 2], ky1 = k[2 * q + 3];
                const Py_ssize_t ix = (Py_ssize_t)floor((kx1 * rb[0] + ky1 * rb[3]) * scale + centre) + 2;
                const Py_ssize_t iy = (Py_ssize_t)floor((kx1 * rb[1] + ky1 * rb[4]) * scale + centre) + 2;
                const Py_ssize_t iz = (Py_ssize_t)floor((kx1 * rb[2] + ky1 * rb[5]) * scale + centre) + 2;
                if (ix >= 0 && ix <= n + 2 && iy >= 0 && iy <= n + 2 && iz >= 0 && iz <= n + 2)
                    for (int t = 0; t < 16; t++) __builtin_prefetch(v + (iz + t / 4) * sz + (iy + t % 4) * sy + ix * c);
            }
            for (Py_ssize_t ch = 0; ch < c; ch++) acc[ch] = 0.0;
            /* a floor outside [-2, n] touches only zero coefficients */
            if (fx >= -2 && fx <= n && fy >= -2 && fy <= n && fz >= -2 && fz <= n) {
                double wx[4], wy[4], wz[4];
                bspline_weights(px - fx, wx);
                bspline_weights(py - fy, wy);
                bspline_weights(pz - fz, wz);
                /* padded index of the first tap: floor - 1 + 3 */
                const float *base = v + ((Py_ssize_t)fz + 2) * sz + ((Py_ssize_t)fy + 2) * sy + ((Py_ssize_t)fx + 2) * c;
                if (c == 2) {  /* one complex channel (absorption proportional to the potential): the common case */
                    float re = 0.f, im = 0.f;
                    const float x0 = (float)wx[0], x1 = (float)wx[1], x2 = (float)wx[2], x3 = (float)wx[3];
                    for (int tz = 0; tz < 4; tz++) {
                        float pre = 0.f, pim = 0.f;
                        for (int ty = 0; ty < 4; ty++) {
                            const float *row = base + tz * sz + ty * sy;
                            const float wyy = (float)wy[ty];
                            pre += wyy * (x0 * row[0] + x1 * row[2] + x2 * row[4] + x3 * row[6]);
                            pim += wyy * (x0 * row[1] + x1 * row[3] + x2 * row[5] + x3 * row[7]);
                        }
                        re += (float)wz[tz] * pre;
                        im += (float)wz[tz] * pim;
                    }
                    acc[0] = re;
                    acc[1] = im;
                } else {
                    for (int tz = 0; tz < 4; tz++) {
                        for (int ty = 0; ty < 4; ty++) {
                            const float *row = base + tz * sz + ty * sy;
                            const double wzy = wz[tz] * wy[ty];
                            const double w0 = wzy * wx[0], w1 = wzy * wx[1], w2 = wzy * wx[2], w3 = wzy * wx[3];
                            for (Py_ssize_t ch = 0; ch < c; ch++)
                                acc[ch] += w0 * row[ch] + w1 * row[c + ch] + w2 * row[2 * c + ch] + w3 * row[3 * c + ch];
                        }
                    }
                }
            }
            /* the copy's sub-pixel position as a phase ramp exp(-2 pi i k.offset) */
            const double tol = 1e-12 * (fabs(dkx) + fabs(dky));  /* false while no step is set (NaN) */
            if (q > 0 && fabs(kx - k[2 * q - 2] - dkx) <= tol && fabs(ky - k[2 * q - 1] - dky) <= tol) {
                const double t = er * sr - ei * si;
                ei = er * si + ei * sr;
                er = t;
            } else {
                const double angle = -2.0 * M_PI * (ox * kx + oy * ky);
                er = cos(angle);
                ei = sin(angle);
                if (q + 1 < nk) {  /* the step to the next frequency, used while the spacing holds */
                    dkx = k[2 * q + 2] - kx;
                    dky = k[2 * q + 3] - ky;
                    const double step = -2.0 * M_PI * (ox * dkx + oy * dky);
                    sr = cos(step);
                    si = sin(step);
                }
            }
            const double cr = er * wt[q], ci = ei * wt[q];
            for (Py_ssize_t j = 0; j < half; j++) {
                const double re = acc[2 * j], im = acc[2 * j + 1];
                float *t = dst + 2 * ((b * half + j) * nk + q);
                t[0] = (float)(re * cr - im * ci);
                t[1] = (float)(re * ci + im * cr);
            }
        }
    }
    Py_END_ALLOW_THREADS

    PyBuffer_Release(&out);
    PyBuffer_Release(&w);
    PyBuffer_Release(&off);
    PyBuffer_Release(&rot);
    PyBuffer_Release(&kxy);
    PyBuffer_Release(&vol);
    Py_RETURN_NONE;
fail5:
    PyBuffer_Release(&w);
fail4:
    PyBuffer_Release(&off);
fail3:
    PyBuffer_Release(&rot);
fail2:
    PyBuffer_Release(&kxy);
fail1:
    PyBuffer_Release(&vol);
    return NULL;
}

/* --------------------------------------------------------------------------------------- gaussian spreading */
/* grid: (d^3,) float64, periodic; pos: (n, 3) float64 voxel positions (z, y, x); sigma, weight: (n,) float64;
 * half: (n,) float64, each atom's kernel reach in whole voxels. Adds w N(r; pos, sigma^2) per voxel, separable, rounded
 * centre as torch.round does (half to even). */
CPU_CLONES static PyObject *spread_gaussians(PyObject *self, PyObject *args) {
    PyObject *o_grid, *o_pos, *o_sig, *o_w, *o_half;
    Py_ssize_t d, n;
    if (!PyArg_ParseTuple(args, "OnOOOOn", &o_grid, &d, &o_pos, &o_sig, &o_w, &o_half, &n)) return NULL;
    if (d < 1 || n < 0) {
        PyErr_SetString(PyExc_ValueError, "spread_gaussians: bad sizes");
        return NULL;
    }
    Py_buffer grid, pos, sig, w, half;
    if (get_buffer(o_grid, &grid, "d", d * d * d, 1, "grid") < 0) return NULL;
    if (get_buffer(o_pos, &pos, "d", n * 3, 0, "pos") < 0) goto f1;
    if (get_buffer(o_sig, &sig, "d", n, 0, "sigma") < 0) goto f2;
    if (get_buffer(o_w, &w, "d", n, 0, "weight") < 0) goto f3;
    if (get_buffer(o_half, &half, "d", n, 0, "half") < 0) goto f4;
    int bad = 0;
    Py_BEGIN_ALLOW_THREADS
    double *g = (double *)grid.buf;
    const double *p = (const double *)pos.buf, *sg = (const double *)sig.buf, *wt = (const double *)w.buf;
    const double *hw = (const double *)half.buf;
    for (Py_ssize_t j = 0; j < n && !bad; j++) {
        if (!(hw[j] >= 0 && hw[j] <= 256)) { bad = 1; break; }
        const long h = (long)hw[j], m = 2 * h + 1;
        double wz[513], wy[513], wx[513];
        Py_ssize_t iz[513], iy[513], ix[513];
        const double s = sg[j], norm = 1.0 / (sqrt(2.0 * M_PI) * s);
        double *ws[3] = {wz, wy, wx};
        Py_ssize_t *is[3] = {iz, iy, ix};
        for (int a = 0; a < 3; a++) {
            const double c = p[3 * j + a], r = nearbyint(c);
            for (long t = 0; t < m; t++) {
                const double x = r - h + t, u = (x - c) / s;
                ws[a][t] = exp(-0.5 * u * u) * norm;
                Py_ssize_t i = (Py_ssize_t)x % d;
                is[a][t] = i < 0 ? i + d : i;
            }
        }
        const double wj = wt[j];
        for (long tz = 0; tz < m; tz++) {
            const double az = wj * wz[tz];
            const Py_ssize_t oz = iz[tz] * d;
            for (long ty = 0; ty < m; ty++) {
                const double ay = az * wy[ty];
                double *row = g + (oz + iy[ty]) * d;
                for (long tx = 0; tx < m; tx++) row[ix[tx]] += ay * wx[tx];
            }
        }
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&half);
    PyBuffer_Release(&w);
    PyBuffer_Release(&sig);
    PyBuffer_Release(&pos);
    PyBuffer_Release(&grid);
    if (bad) {
        PyErr_SetString(PyExc_ValueError, "spread_gaussians: a kernel reach outside 0-256 voxels");
        return NULL;
    }
    Py_RETURN_NONE;
f4:
    PyBuffer_Release(&w);
f3:
    PyBuffer_Release(&sig);
f2:
    PyBuffer_Release(&pos);
f1:
    PyBuffer_Release(&grid);
    return NULL;
}

/* ------------------------------------------------------------------------------------------------- poisson */
/* xoshiro256** (Blackman & Vigna), seeded through splitmix64 */
typedef struct { uint64_t s[4]; } rng_t;

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static inline uint64_t next_u64(rng_t *g) {
    uint64_t *s = g->s;
    const uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

static inline double uniform(rng_t *g) { return (double)(next_u64(g) >> 11) * 0x1.0p-53; }  /* [0, 1) */

static void seed_rng(rng_t *g, uint64_t seed) {
    for (int i = 0; i < 4; i++) {
        uint64_t z = (seed += 0x9e3779b97f4a7c15ULL);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        g->s[i] = z ^ (z >> 31);
    }
}

/* the count whose CDF first reaches u: sequential inversion from 0 (about mean + 1 steps) */
static inline double invert_from_zero(double u, double lam) {
    double p = exp(-lam), cdf = p;
    long k = 0;
    while (u > cdf && k < 1000) {  /* the cap only guards against the CDF's rounding short of 1 */
        k++;
        p *= lam / k;
        cdf += p;
    }
    return (double)k;
}

/* below a mean of 10: inversion from 0 (one uniform) */
static inline double poisson_small(rng_t *g, double lam) { return invert_from_zero(uniform(g), lam); }

/* log k! for small k, made when the module loads (lgamma costs as much as the rest of a draw) */
#define LOG_FACTORIALS 1024
static double log_factorial[LOG_FACTORIALS];

static inline double log_fact(double k) { return k < LOG_FACTORIALS ? log_factorial[(int)k] : lgamma(k + 1); }

/* from a mean of 10: transformed rejection with squeeze, PTRS (W. Hoermann, Insurance: Mathematics and Economics
 * 12, 39-45, 1993), about 1.1 pairs of uniforms per draw */
static inline double poisson_ptrs(rng_t *g, double lam) {
    const double b = 0.931 + 2.53 * sqrt(lam), a = -0.059 + 0.02483 * b;
    const double vr = 0.9277 - 3.6224 / (b - 2);
    for (;;) {
        const double u = uniform(g) - 0.5, v = uniform(g), us = 0.5 - fabs(u);
        const double k = floor((2 * a / us + b) * u + lam + 0.43);
        if (us >= 0.07 && v <= vr) return k;  /* the squeeze: most draws end here, without a logarithm */
        if (k < 0 || (us < 0.013 && v > us)) continue;
        const double log_alpha = log(1.1239 + 1.1328 / (b - 3.4));
        if (log(v) + log_alpha - log(a / (us * us) + b) <= -lam + k * log(lam) - log_fact(k)) return k;
    }
}

/* Rates tabulated once per image. An image's rates mostly lie in a narrow band (a micrograph's contrast is a few
 * percent), and a Poisson count of mean lam is the sum of independent counts of means base and lam - base. So the
 * band is cut into levels a step apart, each level's CDF tabulated once (searched from a guide table: about two
 * comparisons), and a pixel draws the count of the level just below its rate from that table plus the count of the
 * small rest by inversion, which is 0 without an exponential in most draws. At the TMV example's mean of 9.8 this
 * is about 4x faster than inverting from 0, whose ten steps' unpredictable branches cost more than the arithmetic.
 * Rates outside the band (at most 1% below it, 1% above) are drawn alone. */
typedef struct {
    long k_lo, n;   /* the counts tabulated: k_lo .. k_lo + n - 1 (beyond them: probability below 1e-30) */
    double *cdf;    /* P(X <= k_lo + i) */
    int32_t *guide; /* n entries: guide[j] = the first i with cdf[i] > j / n */
} level_t;

typedef struct {
    double lo, step;  /* level j's rate: lo + j * step */
    long count;       /* 0: no table (too few pixels, or rates too low to gain) */
    level_t *level;
    void *memory;
} levels_t;

#define TABLE_MIN_RATE 0.2      /* below it, inversion from 0 (about one step) costs what a table does */
#define TABLE_MAX_RATE 1e6      /* above it, a table passes 26 000 entries; PTRS costs the same at any rate */
#define TABLE_MIN_PIXELS 4096   /* tables of a few hundred entries pay off over thousands of draws */
#define TABLE_STEP 0.1          /* the rest's mean below 0.1: its count is 0 in over 90% of draws */
#define TABLE_MAX_STEP 1.0      /* a rest's mean up to 1: inversion over about two counts */
#define TABLE_MAX_LEVELS 256
#define BAND_BINS 4096

static inline long table_size(double lam, long *k_lo) {
    const double spread = 13 * sqrt(lam) + 20;  /* 13 standard deviations and more: tails below 1e-30 */
    *k_lo = lam > spread ? (long)floor(lam - spread) : 0;
    return (long)ceil(lam + spread + 20) - *k_lo + 1;
}

/* the band: from the lower edge of the histogram bin holding the positive rates' 1st percentile to the upper edge
 * of the one holding their 99th; [lo, hi] = [0, 0] when too few pixels qualify */
static void rate_band(const void *buf, int dbl, Py_ssize_t n, double *band_lo, double *band_hi) {
    *band_lo = *band_hi = 0.0;
    double lo = INFINITY, hi = 0.0;
    Py_ssize_t positive = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        const double lam = dbl ? ((const double *)buf)[i] : ((const float *)buf)[i];
        if (lam > 0 && lam <= TABLE_MAX_RATE) {
            positive++;
            if (lam < lo) lo = lam;
            if (lam > hi) hi = lam;
        }
    }
    if (positive < TABLE_MIN_PIXELS || hi < TABLE_MIN_RATE) return;
    if (hi == lo) {
        *band_lo = *band_hi = lo;
        return;
    }
    Py_ssize_t *count = calloc(BAND_BINS, sizeof *count);
    if (!count) return;  /* no tables: every pixel drawn alone */
    const double scale = BAND_BINS / (hi - lo);
    for (Py_ssize_t i = 0; i < n; i++) {
        const double lam = dbl ? ((const double *)buf)[i] : ((const float *)buf)[i];
        if (lam > 0 && lam <= TABLE_MAX_RATE) {
            const long b = (long)((lam - lo) * scale);
            count[b < BAND_BINS ? b : BAND_BINS - 1]++;
        }
    }
    const Py_ssize_t outside = positive / 100;
    Py_ssize_t below = 0, above = 0;
    int b_lo = 0, b_hi = BAND_BINS - 1;
    while (below + count[b_lo] <= outside) below += count[b_lo++];  /* ends inside: the counts sum past outside */
    while (above + count[b_hi] <= outside) above += count[b_hi--];
    free(count);
    *band_lo = lo + b_lo / scale;
    *band_hi = lo + (b_hi + 1) / scale;
}

static void free_levels(levels_t *t) {
    free(t->level);
    free(t->memory);
    t->level = NULL;
    t->memory = NULL;
    t->count = 0;
}

/* 0 on success (with or without tables), -1 when out of memory */
static int tabulate_levels(levels_t *t, const void *buf, int dbl, Py_ssize_t n) {
    t->count = 0;
    t->level = NULL;
    t->memory = NULL;
    double lo, hi;
    rate_band(buf, dbl, n, &lo, &hi);
    if (lo < TABLE_MIN_RATE) lo = TABLE_MIN_RATE;
    if (!(hi >= lo)) return 0;
    /* levels TABLE_STEP apart, fewer (and the rest's mean larger) where their tables would outgrow the image */
    long k_lo, per_level = table_size(hi, &k_lo);
    long count = (long)ceil((hi - lo) / TABLE_STEP) + 1;
    const long max_entries = n / 4 > 4096 ? n / 4 : 4096;
    if (count > TABLE_MAX_LEVELS) count = TABLE_MAX_LEVELS;
    if (count * per_level > max_entries) count = max_entries / per_level > 1 ? max_entries / per_level : 1;
    t->lo = lo;
    t->step = count > 1 ? (hi - lo) / (count - 1) : 1.0;
    if (t->step > TABLE_MAX_STEP) return 0;  /* a wide band at high rates: the rests would cost what PTRS does */
    long entries = 0;
    for (long j = 0; j < count; j++) entries += table_size(lo + j * t->step, &k_lo);
    t->level = malloc(count * sizeof *t->level);
    t->memory = malloc(entries * (sizeof(double) + sizeof(int32_t)));
    if (!t->level || !t->memory) {
        free_levels(t);
        return -1;
    }
    double *cdf = t->memory;
    int32_t *guide = (int32_t *)(cdf + entries);
    for (long j = 0; j < count; j++) {
        level_t *v = &t->level[j];
        const double lam = lo + j * t->step;
        v->n = table_size(lam, &v->k_lo);
        v->cdf = cdf;
        v->guide = guide;
        cdf += v->n;
        guide += v->n;
        const double log_lam = log(lam);
        double sum = 0.0;
        for (long i = 0; i < v->n; i++) {  /* each term from its logarithm: exp(-lam) alone underflows above 745 */
            const double k = (double)(v->k_lo + i);
            sum += exp(-lam + k * log_lam - log_fact(k));
            v->cdf[i] = sum;
        }
        for (long g = 0, i = 0; g < v->n; g++) {
            while (i < v->n - 1 && v->cdf[i] <= (double)g / v->n) i++;
            v->guide[g] = (int32_t)i;
        }
    }
    t->count = count;
    return 0;
}

static inline double draw_level(rng_t *g, const level_t *v) {
    const double u = uniform(g);
    long i = v->guide[(long)(u * v->n)];
    while (u >= v->cdf[i] && i < v->n - 1) i++;  /* u past the last entry (the sum's rounding): the top count */
    return (double)(v->k_lo + i);
}

/* a small rate's count: 0 whenever u < 1 - lam (<= exp(-lam)) without an exponential, else inversion from 0 */
static inline double poisson_rest(rng_t *g, double lam) {
    const double u = uniform(g);
    return u < 1 - lam ? 0.0 : invert_from_zero(u, lam);
}

static inline double poisson_alone(rng_t *g, double lam) {
    return !(lam > 0) ? 0.0 : lam < 10 ? poisson_small(g, lam) : poisson_ptrs(g, lam);
}

/* rate, out: (n,) float32 or float64 alike; a rate that is not > 0 (zero, negative, NaN) draws 0; tables: draw the
 * band most rates lie in through per-level tables (levels_t), else every pixel alone */
static PyObject *poisson(PyObject *self, PyObject *args) {
    PyObject *o_rate, *o_out;
    Py_ssize_t n;
    unsigned long long seed;
    int dbl, tables;
    if (!PyArg_ParseTuple(args, "OOnKpp", &o_rate, &o_out, &n, &seed, &dbl, &tables)) return NULL;
    const char *fmt = dbl ? "d" : "f";
    Py_buffer rate, out;
    if (get_buffer(o_rate, &rate, fmt, n, 0, "rate") < 0) return NULL;
    if (get_buffer(o_out, &out, fmt, n, 1, "out") < 0) {
        PyBuffer_Release(&rate);
        return NULL;
    }
    int failed = 0;
    levels_t t = {0};
    Py_BEGIN_ALLOW_THREADS
    if (tables) failed = tabulate_levels(&t, rate.buf, dbl, n);
    if (!failed) {
        rng_t g;
        seed_rng(&g, (uint64_t)seed);
        const double lo = t.lo, inv_step = 1.0 / t.step;
        for (Py_ssize_t i = 0; i < n; i++) {
            const double lam = dbl ? ((const double *)rate.buf)[i] : ((const float *)rate.buf)[i];
            double x;
            long j = t.count && lam >= lo ? (long)((lam - lo) * inv_step) : -1;
            if (j >= t.count) j = -1;
            else if (j >= 0 && lam < lo + j * t.step) j--;  /* the rounding of the division: the level below */
            if (j >= 0) {
                const double rest = lam - (lo + j * t.step);
                x = draw_level(&g, &t.level[j]) + (!(rest > 0) ? 0.0 : rest < 1 ? poisson_rest(&g, rest) : poisson_alone(&g, rest));
            } else {
                x = poisson_alone(&g, lam);
            }
            if (dbl) ((double *)out.buf)[i] = x;
            else ((float *)out.buf)[i] = (float)x;
        }
    }
    free_levels(&t);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&out);
    PyBuffer_Release(&rate);
    if (failed) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------------------------------- axis factors */
/* The per-atom factors of a separable structure factor along one axis, w_j exp(-B_j k^2 / 4) exp(-2 pi i k x_j):
 * torch forms them in seven passes over an (atoms x frequencies) array (the phase's cycles in float64, a remainder,
 * exponentials, cosines and sines). Here each atom walks the frequencies in runs of equal spacing and one sign,
 * from the run's smallest |k| outwards, by one complex product for the phase and two real ones for the
 * Gaussian (its ratio between neighbours is itself geometric), in float64; the values at a run's start are
 * computed directly. Walking outwards, the magnitudes only shrink, so none is lost to an underflow that a walk
 * towards k = 0 would carry on. */

typedef struct { Py_ssize_t start, len; int outward_from_end; } run_t;

#define AXIS_BLOCK 8

/* runs of k: equal spacing (to 1e-9 of the step) and one sign; each walked from its smallest |k| */
static Py_ssize_t split_runs(const double *k, Py_ssize_t nk, run_t *runs) {
    Py_ssize_t count = 0, q = 0;
    while (q < nk) {
        Py_ssize_t e = q + 1;
        if (e < nk && (k[e] >= 0) == (k[q] >= 0)) {
            const double step = k[e] - k[q], tol = 1e-9 * fabs(step);
            while (e + 1 < nk && (k[e + 1] >= 0) == (k[q] >= 0) && fabs(k[e + 1] - k[e] - step) <= tol) e++;
            e++;
        }
        runs[count].start = q;
        runs[count].len = e - q;
        runs[count].outward_from_end = fabs(k[e - 1]) < fabs(k[q]);
        count++;
        q = e;
    }
    return count;
}

/* coord, b, weight: (n,) float64 (weight empty: 1); k: (nk,) float64; out: (n, nk) complex as float pairs */
static PyObject *axis_factors(PyObject *self, PyObject *args) {
    PyObject *o_x, *o_b, *o_w, *o_k, *o_out;
    Py_ssize_t n, nk;
    int dbl, weighted;
    if (!PyArg_ParseTuple(args, "OOOOOnnpp", &o_x, &o_b, &o_w, &o_k, &o_out, &n, &nk, &weighted, &dbl)) return NULL;
    Py_buffer x, b, w, kb, out;
    if (get_buffer(o_x, &x, "d", n, 0, "coord") < 0) return NULL;
    if (get_buffer(o_b, &b, "d", n, 0, "b") < 0) goto fail1;
    if (get_buffer(o_w, &w, "d", weighted ? n : 0, 0, "weight") < 0) goto fail2;
    if (get_buffer(o_k, &kb, "d", nk, 0, "k") < 0) goto fail3;
    if (get_buffer(o_out, &out, dbl ? "d" : "f", n * nk * 2, 1, "out") < 0) goto fail4;
    run_t *runs = malloc((nk > 0 ? nk : 1) * sizeof *runs);
    if (!runs) {
        PyErr_NoMemory();
        goto fail5;
    }
    Py_BEGIN_ALLOW_THREADS
    const double *k = (const double *)kb.buf, *xs = (const double *)x.buf, *bs = (const double *)b.buf;
    const double *ws = (const double *)w.buf;
    const Py_ssize_t nruns = split_runs(k, nk, runs);
    const double two_pi = 2 * M_PI;
    /* AXIS_BLOCK atoms side by side: each walk is a chain of dependent products, so several chains at once keep
     * the multipliers busy (about 3x faster than one atom at a time) */
    for (Py_ssize_t j0 = 0; j0 < n; j0 += AXIS_BLOCK) {
        const int m = n - j0 < AXIS_BLOCK ? (int)(n - j0) : AXIS_BLOCK;
        for (Py_ssize_t r = 0; r < nruns; r++) {
            const run_t run = runs[r];
            const Py_ssize_t first = run.outward_from_end ? run.start + run.len - 1 : run.start;
            const Py_ssize_t dir = run.outward_from_end ? -1 : 1;
            const double k0 = k[first];
            const double d = run.len > 1 ? k[first + dir] - k0 : 0.0;  /* the step, signed along the walk */
            double pr[AXIS_BLOCK], pi_[AXIS_BLOCK], sr[AXIS_BLOCK], si[AXIS_BLOCK];
            double mag[AXIS_BLOCK], ratio[AXIS_BLOCK], ratio_step[AXIS_BLOCK];
            for (int a = 0; a < AXIS_BLOCK; a++) {
                const Py_ssize_t j = j0 + (a < m ? a : 0);  /* past the last atom: a copy, not written */
                const double xj = xs[j], bj = bs[j], wj = weighted ? ws[j] : 1.0;
                /* the start: exp(-2 pi i k0 x) from the cycles reduced to [0, 1) (precise however far x is) */
                const double c0 = k0 * xj - floor(k0 * xj), cd = d * xj - floor(d * xj);
                pr[a] = cos(two_pi * c0);
                pi_[a] = -sin(two_pi * c0);
                sr[a] = cos(two_pi * cd);
                si[a] = -sin(two_pi * cd);
                mag[a] = wj * exp(-bj * k0 * k0 / 4);
                ratio[a] = exp(-bj * (2 * k0 * d + d * d) / 4);  /* step t -> t + 1: exp(-B (2 k_t d + d^2) / 4) */
                ratio_step[a] = exp(-bj * d * d / 2);
            }
            for (Py_ssize_t t = 0, q = first; t < run.len; t++, q += dir) {
                for (int a = 0; a < AXIS_BLOCK; a++) {
                    if (a < m) {
                        const Py_ssize_t at = 2 * ((j0 + a) * nk + q);
                        if (dbl) {
                            ((double *)out.buf)[at] = mag[a] * pr[a];
                            ((double *)out.buf)[at + 1] = mag[a] * pi_[a];
                        } else {
                            ((float *)out.buf)[at] = (float)(mag[a] * pr[a]);
                            ((float *)out.buf)[at + 1] = (float)(mag[a] * pi_[a]);
                        }
                    }
                    const double tr = pr[a] * sr[a] - pi_[a] * si[a];
                    pi_[a] = pr[a] * si[a] + pi_[a] * sr[a];
                    pr[a] = tr;
                    mag[a] *= ratio[a];
                    ratio[a] *= ratio_step[a];
                }
            }
        }
    }
    Py_END_ALLOW_THREADS
    free(runs);
    PyBuffer_Release(&out);
    PyBuffer_Release(&kb);
    PyBuffer_Release(&w);
    PyBuffer_Release(&b);
    PyBuffer_Release(&x);
    Py_RETURN_NONE;
fail5:
    PyBuffer_Release(&out);
fail4:
    PyBuffer_Release(&kb);
fail3:
    PyBuffer_Release(&w);
fail2:
    PyBuffer_Release(&b);
fail1:
    PyBuffer_Release(&x);
    return NULL;
}

/* ------------------------------------------------------------------------------------------------- module */
static PyMethodDef methods[] = {
    {"spline_slices", spline_slices, METH_VARARGS,
     "spline_slices(vol, n, c, kxy, rot, offsets, weights, out, k, b, scale, centre): Fourier slices of copies"},
    {"poisson", poisson, METH_VARARGS, "poisson(rate, out, n, seed, float64, tables): exact Poisson draws"},
    {"axis_factors", axis_factors, METH_VARARGS,
     "axis_factors(coord, b, weight, k, out, n, nk, weighted, float64): w exp(-B k^2/4) exp(-2 pi i k x) per atom"},
    {"spread_gaussians", spread_gaussians, METH_VARARGS,
     "spread_gaussians(grid, d, pos, sigma, weight, half, n): add atoms' Gaussians into a periodic grid"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_native", "difftem's compiled CPU kernels", -1,
                                    methods};

PyMODINIT_FUNC PyInit__native(void) {
    for (int k = 0; k < LOG_FACTORIALS; k++) log_factorial[k] = lgamma(k + 1.0);
    return PyModule_Create(&module);
}
