// MLA's absorbed decode in one pass over the packed latent cache (attnbench.variants.kernels.mla_native).
//
// Legend: B batch, M query rows of one sequence (heads and queries folded), E key width (C + G*R),
// C value width (the first C columns of a row), T keys of one block, W lanes of one vector register.
//
// Why a hand-written kernel: torch's fused CPU attention reads MLA's 16-head decode as GEMMs of
// 16 rows through a BLAS call per block, 97-113 GFLOP/s on a core that reaches 160-190 on a large
// sgemm, and an einsum form reads the cache once per product. Here each block of keys is read
// from memory once, its scores (a group of rows in one vector register per key) and its share of the
// output computed while it sits in L1/L2, with an online softmax (flash-decoding's recurrence) and
// software prefetches of the next block (on a 2-core Xeon they took 32k keys from 18.5 to 10.6 ms).
// The prefetches fill L2, not L1 (locality 2: prefetcht1 on x86): an L1 prefetch holds one of the
// core's few line-fill buffers until its line arrives, which caps the stream from memory; L2's queue
// is deeper. Side by side in one process (V2-Lite step, one thread, 2-core Xeon, 31 rounds): 4k keys
// 4.62 -> 4.48 ms a step, 32k 15.6 -> 14.4 ms.
//
// GCC/Clang vector extensions, not intrinsics: the same source compiles to AVX-512, AVX2 or NEON
// with -march=native. Rows are processed in groups of W (one vector register: 16 with AVX-512, 8
// with AVX2, 4 with SSE or NEON); a partial last group is padded with zero queries whose outputs
// are discarded. Groups of one sequence run inside the block loop, so a block comes from memory
// once and from L2 for every further group.
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace {

// The vector is the machine's register, and the register tiles are sized to its register file. A
// 16-float vector on AVX2 (2 registers each, 16 registers in all) made GCC spill the tiles to the
// stack: the kernel alone, 4k keys of a V2-Lite step, took 41 ms on a Zen 1 core (AVX2, 35 GFLOP/s
// sgemm), against 7.0 ms for torch's two GEMMs of the same products; with 8-float vectors and the
// tiles below, 5.2 ms (29 GFLOP/s).
#if defined(__AVX512F__)
constexpr int kLanes = 16;     // W; 32 registers
constexpr int kTileRows = 8;   // weighted_values' register tile: 8 rows x 2 vectors (16 accumulators)
constexpr int kTileCols = 2;
#elif defined(__AVX__)
constexpr int kLanes = 8;      // 16 registers
constexpr int kTileRows = 4;   // Zen 1, 4k keys: 4 x 2 5.25 ms, 2 x 4 5.46, 2 x 2 5.67, 8 x 1 5.85
constexpr int kTileCols = 2;
#else
constexpr int kLanes = 4;      // SSE (16 registers) or NEON (32)
constexpr int kTileRows = 4;
constexpr int kTileCols = 2;
#endif
static_assert(kLanes % kTileRows == 0, "a group's rows are whole tiles");
typedef float vec __attribute__((vector_size(4 * kLanes)));
typedef int32_t veci __attribute__((vector_size(4 * kLanes)));

constexpr int kBlock = 96;     // keys per block: 96 rows of 576 floats (221 KB) stay in L2
constexpr int kKeys = 8;       // keys whose scores accumulate together: 8 registers, FMA latency x ports
// Keys scored together for two groups at once (2·kPairKeys accumulators): Zen 1, two groups of 8,
// 4 keys 4.71 ms, 6 keys 4.77.
constexpr int kPairKeys = kLanes == 16 ? 8 : 4;
constexpr int kAhead = 64;     // rows ahead the scores' prefetch reaches (into the next block)
constexpr int kLine = 16;      // floats in a 64-byte cache line: one prefetch each

inline vec load(const float* p) { vec v; std::memcpy(&v, p, sizeof v); return v; }
inline void store(float* p, vec v) { std::memcpy(p, &v, sizeof v); }
inline vec splat(float x) { return vec{} + x; }

// exp(x) for x <= 0 (every argument here is a score minus its running maximum): 2^n * e^f with n the
// nearest integer to x*log2(e) and |f| <= ln(2)/2, e^f by its Taylor series to degree 7 (truncation
// below 1e-8, under float32's 6e-8 rounding). Below -87 it returns ~1.6e-38 (a key that far below the
// maximum weighs that instead of less: nothing beside the maximum's weight of 1). A score of -inf (a
// key the row does not see) never reaches it: attend_block gives that key the weight 0 itself.
inline vec exp_nonpositive(vec x) {
    x = x < -87.0f ? splat(-87.0f) : x;
    const vec t = x * 1.44269504088896341f;
    const float round = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer held in the low bits
    const vec shifted = t + round;
    const vec n = shifted - round;
    const vec f = (t - n) * 0.693147180559945309f;
    vec p = splat(1.0f / 5040);
    p = p * f + 1.0f / 720; p = p * f + 1.0f / 120; p = p * f + 1.0f / 24;
    p = p * f + 1.0f / 6; p = p * f + 0.5f; p = p * f + 1.0f; p = p * f + 1.0f;
    const veci n_i = (veci)shifted - 0x4B400000;
    return p * (vec)((n_i + 127) << 23);
}

struct Group {  // one group of W query rows: its queries, what each sees, its running softmax state
    const float* qT;  // [E][W], pre-scaled
    float* acc;       // [W][C]
    vec max, sum;
    vec limit;        // row m sees the sequence's keys [0, limit[m]) (a causal step of several queries)
    int64_t least;    // the smallest of them: blocks below it need no mask
};

// Scores of keys [0, n) of a block for P groups of rows at once: s[p·T + j] holds key j's score for
// group p's W rows. Keys keys at a time, each key's element broadcast once into an FMA with each
// group's query vector (two groups of 8 rows on AVX2, V2-Lite's 16 heads: half the broadcasts of
// one group at a time, the kernel 5.30 -> 4.71 ms at 4k keys on Zen 1); d runs a cache line at a
// time so that the next block's prefetch is one instruction per row and line, outside the FMAs
// (with the test inside the loop, and the rows' offsets spilled, the loop ran at half the rate).
template <int P, int Keys>
void scores(const Group* g, const float* kv, int n, int64_t stride, int E, float* s) {
    int j = 0;
    for (; j + Keys <= n; j += Keys) {
        const float* r = kv + j * stride;
        vec a[Keys][P];
#pragma GCC unroll 16
        for (int k = 0; k < Keys; k++)
#pragma GCC unroll 4
            for (int p = 0; p < P; p++) a[k][p] = vec{};
        int d = 0;
        for (; d + kLine <= E; d += kLine) {
#pragma GCC unroll 16
            for (int k = 0; k < Keys; k++) __builtin_prefetch(r + (k + kAhead) * stride + d, 0, 2);
#pragma GCC unroll 16
            for (int dd = 0; dd < kLine; dd++) {
                vec q[P];
#pragma GCC unroll 4
                for (int p = 0; p < P; p++) q[p] = load(g[p].qT + (d + dd) * kLanes);
#pragma GCC unroll 16
                for (int k = 0; k < Keys; k++) {
                    const float x = r[k * stride + d + dd];
#pragma GCC unroll 4
                    for (int p = 0; p < P; p++) a[k][p] += q[p] * x;
                }
            }
        }
        for (; d < E; d++) {
#pragma GCC unroll 16
            for (int k = 0; k < Keys; k++)
#pragma GCC unroll 4
                for (int p = 0; p < P; p++) a[k][p] += load(g[p].qT + d * kLanes) * r[k * stride + d];
        }
#pragma GCC unroll 16
        for (int k = 0; k < Keys; k++)
#pragma GCC unroll 4
            for (int p = 0; p < P; p++) store(s + p * kBlock * kLanes + (j + k) * kLanes, a[k][p]);
    }
    for (; j < n; j++) {
        const float* r = kv + j * stride;
        for (int p = 0; p < P; p++) {
            vec a = vec{};
            for (int d = 0; d < E; d++) a += load(g[p].qT + d * kLanes) * r[d];
            store(s + p * kBlock * kLanes + j * kLanes, a);
        }
    }
}

// acc[m0 .. m0+Rows)[c .. c+W*Cols) = acc * rescale + p^T V over the block's n keys: a register tile
// of Rows x Cols vectors, each key's Cols value vectors loaded once per tile.
template <int Rows, int Cols>
void weighted_values(Group& g, const float* kv, int n, int64_t stride, int C, const float* s,
                     const float* rescale, int m0, int c) {
    vec a[Rows][Cols];
#pragma GCC unroll 16
    for (int m = 0; m < Rows; m++)
#pragma GCC unroll 16
        for (int k = 0; k < Cols; k++) a[m][k] = load(g.acc + (m0 + m) * C + c + kLanes * k) * rescale[m0 + m];
#pragma GCC unroll 4
    for (int j = 0; j < n; j++) {
        const float* row = kv + j * stride + c;
        if (m0 == 0) {  // the next block's values, while this one computes (32k keys: 13.3 -> 10.6 ms)
#pragma GCC unroll 4
            for (int k = 0; k < Cols; k++)
                if (kLanes * k % kLine == 0) __builtin_prefetch(row + kBlock * stride + kLanes * k, 0, 2);
        }
        vec v[Cols];
#pragma GCC unroll 16
        for (int k = 0; k < Cols; k++) v[k] = load(row + kLanes * k);
        const float* p = s + j * kLanes + m0;
#pragma GCC unroll 16
        for (int m = 0; m < Rows; m++)
#pragma GCC unroll 16
            for (int k = 0; k < Cols; k++) a[m][k] += p[m] * v[k];
    }
#pragma GCC unroll 16
    for (int m = 0; m < Rows; m++)
#pragma GCC unroll 16
        for (int k = 0; k < Cols; k++) store(g.acc + (m0 + m) * C + c + kLanes * k, a[m][k]);
}

// The last C % W columns: as weighted_values<W, 1>, through zero-padded vectors (C = 10, say).
void value_tail(Group& g, const float* kv, int n, int64_t stride, int C, const float* s, const float* rescale, int c) {
    const size_t bytes = sizeof(float) * (C - c);
    vec a[kLanes];
    for (int m = 0; m < kLanes; m++) {
        vec x = vec{};
        std::memcpy(&x, g.acc + m * C + c, bytes);
        a[m] = x * rescale[m];
    }
    for (int j = 0; j < n; j++) {
        vec v = vec{};
        std::memcpy(&v, kv + j * stride + c, bytes);
        const float* p = s + j * kLanes;
        for (int m = 0; m < kLanes; m++) a[m] += p[m] * v;
    }
    for (int m = 0; m < kLanes; m++) std::memcpy(g.acc + m * C + c, &a[m], bytes);
}

// One block into a group's state, given its scores `s` (`scores`'s, overwritten): online softmax,
// then acc = acc * rescale + p^T V over the block. `key0`: the block's first key within its
// sequence, for the causal mask of several new queries.
void attend_block(Group& g, const float* kv, int n, int64_t key0, int64_t stride, int C, float* s) {
    const vec none = splat(-INFINITY);
    if (key0 + n > g.least) {  // a key here some row does not see: its score is -inf
        for (int j = 0; j < n; j++)
            store(s + j * kLanes, splat((float)(key0 + j)) < g.limit ? load(s + j * kLanes) : none);
    }
    vec max = g.max;
    for (int j = 0; j < n; j++) { const vec x = load(s + j * kLanes); max = x > max ? x : max; }
    // A row that has seen no key yet keeps max -inf: its rescale is 1 and its weights 0, not nan.
    const vec rescale = max == none ? splat(1.0f) : exp_nonpositive(g.max - max);
    vec sum = vec{};
    for (int j = 0; j < n; j++) {
        const vec x = load(s + j * kLanes);
        const vec p = x == none ? vec{} : exp_nonpositive(x - max);
        store(s + j * kLanes, p);
        sum += p;
    }
    g.max = max;
    g.sum = g.sum * rescale + sum;
    alignas(64) float r[kLanes];
    store(r, rescale);
    int c = 0;
    // AVX-512's 8 rows x 2 vectors: 4k keys 1.17 ms, 16 x 1 1.26, 4 x 4 1.28 (2-core Xeon)
    for (; c + kLanes * kTileCols <= C; c += kLanes * kTileCols) {
#pragma GCC unroll 4  // a constant m0 in each copy: the value prefetch's test `m0 == 0` is decided when compiled
        for (int m0 = 0; m0 < kLanes; m0 += kTileRows) weighted_values<kTileRows, kTileCols>(g, kv, n, stride, C, s, r, m0, c);
    }
    for (; c + kLanes <= C; c += kLanes) weighted_values<kLanes, 1>(g, kv, n, stride, C, s, r, 0, c);
    if (c < C) value_tail(g, kv, n, stride, C, s, r, c);
}

// A share of one sequence's keys: rows [r0, r1) of sequence b, counted along its segments in order.
struct Part {
    int b;
    int64_t r0, r1;
};

// The part's unnormalised state into `state` (per group: acc [W][C], then max [W] and sum [W]),
// its transposed, scaled queries into `qT` (per group [E][W]).
void attend_part(const Part& part, const float* q, int64_t q_stride, float scale, int M, int N, int E, int C,
                 const int64_t* seg_ptr, const int64_t* seg_len, const int64_t* seg_start, const int64_t* limit,
                 int64_t stride, float* qT, float* state) {
    const int groups = (M + kLanes - 1) / kLanes;
    std::vector<Group> gs(groups);
    for (int g = 0; g < groups; g++) {
        float* qg = qT + (int64_t)g * E * kLanes;
        for (int d = 0; d < E; d++)
            for (int m = 0; m < kLanes; m++) {
                const int row = g * kLanes + m;
                qg[d * kLanes + m] = row < M ? q[part.b * q_stride + (int64_t)row * E + d] * scale : 0.0f;
            }
        alignas(64) float lim[kLanes];
        int64_t least = INT64_MAX;
        for (int m = 0; m < kLanes; m++) {
            const int row = g * kLanes + m < M ? g * kLanes + m : M - 1;  // a padding row sees what the last one does
            const int64_t seen = limit[(int64_t)part.b * (M / N) + row / N];
            lim[m] = (float)seen;  // exact below 2^24 keys
            least = seen < least ? seen : least;
        }
        gs[g] = Group{qg, state + (int64_t)g * (kLanes * C + 2 * kLanes), splat(-INFINITY), vec{}, load(lim), least};
        std::memset(gs[g].acc, 0, sizeof(float) * kLanes * C);
    }
    alignas(64) float s[2 * kBlock * kLanes];  // two groups' scores
    int64_t seen = 0;  // rows of the sequence before segment i
    for (int64_t i = seg_start[part.b]; i < seg_start[part.b + 1] && seen < part.r1; seen += seg_len[i], i++) {
        const int64_t lo = part.r0 > seen ? part.r0 - seen : 0;
        const int64_t hi = part.r1 - seen < seg_len[i] ? part.r1 - seen : seg_len[i];
        const float* base = reinterpret_cast<const float*>(seg_ptr[i]);
        for (int64_t t0 = lo; t0 < hi; t0 += kBlock) {
            const int n = (int)(hi - t0 < kBlock ? hi - t0 : kBlock);
            const float* block = base + t0 * stride;
            int g = 0;
            for (; g + 2 <= groups; g += 2) {
                scores<2, kPairKeys>(&gs[g], block, n, stride, E, s);
                attend_block(gs[g], block, n, seen + t0, stride, C, s);
                attend_block(gs[g + 1], block, n, seen + t0, stride, C, s + kBlock * kLanes);
            }
            if (g < groups) {
                scores<1, kKeys>(&gs[g], block, n, stride, E, s);
                attend_block(gs[g], block, n, seen + t0, stride, C, s);
            }
        }
    }
    for (int g = 0; g < groups; g++) {
        store(gs[g].acc + kLanes * C, gs[g].max);
        store(gs[g].acc + kLanes * C + kLanes, gs[g].sum);
    }
}

// One sequence's parts (`count` of them, `per_part` floats apart from `state`) into its rows of
// `out` ([M][C]): each part's output weighted by exp(its max - the largest) and normalised by the
// weighted sums, as flash-decoding combines its splits.
void combine(const float* state, int count, int64_t per_part, int groups, int M, int E, int C, float* out) {
    for (int row = 0; row < M; row++) {
        const int g = row / kLanes, m = row % kLanes;
        auto part = [&](int k) {
            return state + k * per_part + (int64_t)groups * kLanes * E + (int64_t)g * (kLanes * C + 2 * kLanes);
        };
        const int max_at = kLanes * C + m, sum_at = kLanes * C + kLanes + m;
        float top = -INFINITY;
        for (int k = 0; k < count; k++) top = part(k)[max_at] > top ? part(k)[max_at] : top;
        float total = 0.0f;
        float* o = out + (int64_t)row * C;
        std::memset(o, 0, sizeof(float) * C);
        for (int k = 0; k < count; k++) {
            const float* st = part(k);
            // A part that saw no key has max -inf and sum 0: its weight is 0, not nan.
            const float w = st[sum_at] > 0.0f ? std::exp(st[max_at] - top) : 0.0f;
            total += w * st[sum_at];
            for (int c = 0; c < C; c++) o[c] += w * st[m * C + c];
        }
        // A sequence with no key gives zeros (its sum is 0), not 0/0.
        const float inv = total > 0.0f ? 1.0f / total : 0.0f;
        for (int c = 0; c < C; c++) o[c] *= inv;
    }
}

}  // namespace

// q: row m of sequence b at q + b*q_stride + m*E (E floats: [q_lat; q_rope in its key's slot]), the
// M = L*N rows of L queries of N heads each; query l of sequence b sees the sequence's keys
// [0, limit[b*L + l]) (its length in a one-token step; a causal step of several tokens gives each its
// own). out: [B][M][C]. Sequence b reads segments seg_start[b] .. seg_start[b+1]-1, segment i holding
// seg_len[i] rows of `stride` floats from seg_ptr[i] (a contiguous cache is one segment per
// sequence, a paged one a run of pages each); a row's first E floats are its key, its first C its
// value. Returns 0, or 1 if the scratch could not be allocated.
//
// Split-KV (flash-decoding) across `threads`: a sequence's keys are cut into parts, enough for every
// thread to have one when the batch is smaller than the thread count (none under 4 blocks); each
// part keeps its own softmax state, and the parts are combined by their maxima at the end. With one
// thread, or a batch as large as the thread count, each sequence is one part, read in one pass.
extern "C" int attnbench_mla_decode(const float* q, int64_t q_stride, float scale, float* out, int B, int M, int N,
                                    int E, int C, const int64_t* seg_ptr, const int64_t* seg_len,
                                    const int64_t* seg_start, const int64_t* limit, int64_t stride, int threads) {
    const int groups = (M + kLanes - 1) / kLanes;
    const int want = threads > B ? (threads + B - 1) / B : 1;  // parts per sequence
    std::vector<Part> parts;
    std::vector<int> first(B + 1, 0);
    for (int b = 0; b < B; b++) {
        int64_t rows = 0;
        for (int64_t i = seg_start[b]; i < seg_start[b + 1]; i++) rows += seg_len[i];
        int64_t n = rows / (4 * kBlock);
        n = n < 1 ? 1 : (n > want ? want : n);
        const int64_t blocks = (rows + kBlock - 1) / kBlock;
        for (int64_t k = 0; k < n; k++) {  // whole blocks to each part but the last
            const int64_t r0 = blocks * k / n * kBlock, r1 = k + 1 == n ? rows : blocks * (k + 1) / n * kBlock;
            parts.push_back(Part{b, r0, r1});
        }
        first[b + 1] = (int)parts.size();
    }
    // Scratch for a few parts per thread at a time, whatever the batch: 70 KB a part at 16 heads
    // (a batch of 100,000 sequences would otherwise ask for 7 GB the memory prediction can't see).
    const int64_t per_part = (int64_t)groups * kLanes * (E + C + 2);  // floats: queries, then state
    const int cap = (threads > 1 ? threads : 1) * 4 > want ? (threads > 1 ? threads : 1) * 4 : want;
    float* scratch = static_cast<float*>(std::aligned_alloc(64, sizeof(float) * per_part * cap));
    if (scratch == nullptr) return 1;
    for (int b0 = 0; b0 < B;) {
        int b1 = b0 + 1;  // sequences [b0, b1): whole sequences, at most `cap` parts
        while (b1 < B && first[b1 + 1] - first[b0] <= cap) b1++;
        const int k0 = first[b0], np = first[b1] - k0;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (threads > 1 && np > 1)
        for (int k = 0; k < np; k++) {
            float* qT = scratch + k * per_part;
            attend_part(parts[k0 + k], q, q_stride, scale, M, N, E, C, seg_ptr, seg_len, seg_start, limit, stride,
                        qT, qT + (int64_t)groups * kLanes * E);
        }
        for (int b = b0; b < b1; b++) combine(scratch + (int64_t)(first[b] - k0) * per_part, first[b + 1] - first[b],
                                              per_part, groups, M, E, C, out + (int64_t)b * M * C);
        b0 = b1;
    }
    std::free(scratch);
    return 0;
}
