/* The fast path's CPU loops (see native_kernels.py): the same arithmetic as fused_step.py, one
 * loop per stage, with the next rows' cache lines prefetched.
 *
 * A step reads and writes rows at random in tables of tens of megabytes, so each row is a cache
 * miss, and a loop that only asks for a row when it reaches it waits for memory on every rating
 * (half of the time of inductor's version of these loops). Here every loop asks for the rows of
 * the rating PREFETCH_AHEAD places ahead, so the misses of several ratings overlap.
 *
 * Built as plain C (no Python or torch headers), loaded with ctypes, which releases the GIL for
 * each call: the step's two Python threads run these loops side by side. Each call is
 * single-threaded and runs in a fixed order, so results are the same on every run.
 */
#include <math.h>
#include <stdint.h>

#define PREFETCH_AHEAD 8
#define LANES 16 /* partial sums of a dot product: one 512-bit vector of floats, or two of 256 */

static inline void prefetch_row(const float *row, int64_t dim, int for_write) {
    const char *bytes = (const char *)row;
    for (int64_t at = 0; at < dim * (int64_t)sizeof(float); at += 64) {
        if (for_write) {
            __builtin_prefetch(bytes + at, 1, 3);
        } else {
            __builtin_prefetch(bytes + at, 0, 3);
        }
    }
}

/* a . b in LANES independent partial sums (vectorised without reassociating), then the tail. */
static inline float dot(const float *restrict a, const float *restrict b, int64_t dim) {
    float lanes[LANES] = {0};
    int64_t k = 0;
    for (; k + LANES <= dim; k += LANES) {
        for (int j = 0; j < LANES; j++) {
            lanes[j] += a[k + j] * b[k + j];
        }
    }
    float tail = 0.0f;
    for (; k < dim; k++) {
        tail += a[k] * b[k];
    }
    float sum = 0.0f;
    for (int j = 0; j < LANES; j++) {
        sum += lanes[j];
    }
    return sum + tail;
}

/* Returns the first position whose index is outside [0, rows), or -1. */
int64_t lmf_first_bad_index(const int64_t *restrict index, int64_t count, int64_t rows) {
    for (int64_t b = 0; b < count; b++) {
        if (index[b] < 0 || index[b] >= rows) {
            return b;
        }
    }
    return -1;
}

/* For `count` ratings: copies row index[r][b] of each of the `tables` tables (2 or 3) into
 * out[r] + b * dim and writes their dot products to gram[b] (tables x tables, row-major). */
void lmf_gather_gram(int64_t tables, const float *const *table, const int64_t *const *index,
                     float *const *out, float *restrict gram, int64_t count, int64_t dim) {
    for (int64_t b = 0; b < count; b++) {
        if (b + PREFETCH_AHEAD < count) {
            for (int64_t r = 0; r < tables; r++) {
                prefetch_row(table[r] + index[r][b + PREFETCH_AHEAD] * dim, dim, 0);
            }
        }
        const float *rows[3];
        for (int64_t r = 0; r < tables; r++) {
            const float *restrict source = table[r] + index[r][b] * dim;
            float *restrict target = out[r] + b * dim;
            for (int64_t k = 0; k < dim; k++) {
                target[k] = source[k];
            }
            rows[r] = target;
        }
        float *cell = gram + b * tables * tables;
        for (int64_t r = 0; r < tables; r++) {
            for (int64_t s = r; s < tables; s++) {
                float value = dot(rows[r], rows[s], dim);
                cell[r * tables + s] = value;
                cell[s * tables + r] = value;
            }
        }
    }
}

/* A factor table's step (fused_step.factor_table_update): rating b moves row rows[b] along
 * d[b] * other[b] + c_b * own[b]. Row-wise Adagrad (`adagrad` != 0) first adds every rating's
 * mean square |gradient|^2 / dim (from the Gram products) into the row accumulators, then steps
 * each rating by -lr / (sqrt(accumulator) + eps); SGD steps by -lr. c_b is c_per_rating[b], or
 * c when that is NULL; with has_c == 0 there is no penalty (d_dot and own_sq are then unused). */
void lmf_factor_update(float *restrict table, float *restrict accumulator, const int64_t *restrict rows,
                       const float *restrict own, const float *restrict other, const float *restrict d,
                       const float *restrict c_per_rating, float c, int32_t has_c,
                       const float *restrict d_square, const float *restrict d_dot,
                       const float *restrict other_sq, const float *restrict own_sq, float lr, float eps,
                       int32_t adagrad, int64_t count, int64_t dim) {
    if (adagrad) {
        for (int64_t b = 0; b < count; b++) {
            float square = d_square[b] * other_sq[b];
            if (has_c) {
                float c_b = c_per_rating ? c_per_rating[b] : c;
                square = square + 2.0f * c_b * d_dot[b] + c_b * c_b * own_sq[b];
            }
            accumulator[rows[b]] += square / (float)dim;
        }
    }
    for (int64_t b = 0; b < count; b++) {
        if (b + PREFETCH_AHEAD < count) {
            prefetch_row(table + rows[b + PREFETCH_AHEAD] * dim, dim, 1);
        }
        float factor = adagrad ? -lr / (sqrtf(accumulator[rows[b]]) + eps) : -lr;
        float along_other = factor * d[b];
        float *restrict row = table + rows[b] * dim;
        const float *restrict other_row = other + b * dim;
        if (has_c) {
            float along_own = factor * (c_per_rating ? c_per_rating[b] : c);
            const float *restrict own_row = own + b * dim;
            for (int64_t k = 0; k < dim; k++) {
                row[k] += along_other * other_row[k] + along_own * own_row[k];
            }
        } else {
            for (int64_t k = 0; k < dim; k++) {
                row[k] += along_other * other_row[k];
            }
        }
    }
}

/* A 1-D bias table's step (fused_step.bias_table_update): gradient d[b] + c_b * looked_up[b]. */
void lmf_bias_update(float *restrict table, float *restrict accumulator, const int64_t *restrict rows,
                     const float *restrict looked_up, const float *restrict d,
                     const float *restrict c_per_rating, float c, int32_t has_c, float lr, float eps,
                     int32_t adagrad, int64_t count) {
    if (adagrad) {
        for (int64_t b = 0; b < count; b++) {
            float gradient = has_c ? d[b] + (c_per_rating ? c_per_rating[b] : c) * looked_up[b] : d[b];
            accumulator[rows[b]] += gradient * gradient;
        }
    }
    for (int64_t b = 0; b < count; b++) {
        float gradient = has_c ? d[b] + (c_per_rating ? c_per_rating[b] : c) * looked_up[b] : d[b];
        float factor = adagrad ? -lr / (sqrtf(accumulator[rows[b]]) + eps) : -lr;
        table[rows[b]] += factor * gradient;
    }
}

/* SVD++'s lagged term (fused_implicit.accumulate): G[user[b]] += d[b] * q[b] + c * z[b]. */
void lmf_implicit_accumulate(float *restrict gradient, const int64_t *restrict user, const float *restrict d,
                             const float *restrict item_rows, const float *restrict implicit_rows, float c,
                             int64_t count, int64_t dim) {
    for (int64_t b = 0; b < count; b++) {
        if (b + PREFETCH_AHEAD < count) {
            prefetch_row(gradient + user[b + PREFETCH_AHEAD] * dim, dim, 1);
        }
        float *restrict row = gradient + user[b] * dim;
        const float *restrict q = item_rows + b * dim;
        if (c != 0.0f) {
            const float *restrict z = implicit_rows + b * dim;
            for (int64_t k = 0; k < dim; k++) {
                row[k] += d[b] * q[k] + c * z[k];
            }
        } else {
            for (int64_t k = 0; k < dim; k++) {
                row[k] += d[b] * q[k];
            }
        }
    }
}
