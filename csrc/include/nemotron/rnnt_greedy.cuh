// Batched greedy RNN-T decoding of one step: device code on raw pointers (no torch headers).
//
// Reference (the executable specification): nemotron_engine/reference/decoder.py greedy_decode, and its
// host-sync-free batched twin nemotron_engine._ext.rnnt_greedy_ref. Per stream, frame-synchronous label looping:
// at frame t < length, logits = out(relu(f_t + pred)); k = argmax (first index on ties, NaN wins as in torch);
// blank -> next frame; else emit (k, frame_offset + t), embed k, one stacked-LSTM step (gates i, f, g, o;
// b_ih + b_hh), pred = joint.pred(h_top); after max_symbols labels on one frame, move on without a blank.
//
// Design: one thread block decodes G streams (G = 1, 2 or 4) in lock step, so every weight row it reads from L2
// serves G streams. Each iteration every live stream takes one greedy decision at its own frame; the LSTM phase
// runs for the streams that emitted. Matrix-vector products: warp w owns rows w, w + warps, ... (four at a time, or
// the four gates of one LSTM unit); its lanes stride over the rows (16-byte loads when sizes and pointers allow) and
// reduce with a shuffle butterfly. The state of the
// block's streams lives in shared memory as float; math in float; all control decisions are replicated in every
// thread, so control flow is block-uniform and every __syncthreads is reached by all threads.
//
// bfloat16: the kernel rounds to bfloat16 wherever the reference's bfloat16 tensors do (each linear's output,
// f + pred, every elementwise LSTM op, the logits before the argmax), so it differs from the reference only by the
// summation order inside the dot products.
//
// The same source compiles for the CPU under csrc/emu/cuda_emu.h (NEMOTRON_CUDA_EMU), which runs every CUDA thread
// as a fiber; tests/test_decoder_cuda.py uses it to check the kernel without a GPU.
#pragma once

#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>

#if !defined(NEMOTRON_CUDA_EMU)
#include <cooperative_groups.h>
#include <cuda_runtime.h>
#endif

namespace nemotron {

constexpr int kRnntMaxLayers = 8;
constexpr int kRnntMaxThreads = 512;
// Joint and projection rows a warp reduces at once: more weight loads in flight, one shuffle butterfly.
constexpr int kRnntRows = 4;

struct RnntGreedyParams {
  const void* f;               // [B, T, J] joint.enc(enc) incl. bias, pool dtype, contiguous
  const int64_t* lengths;      // [B] valid frames of each stream (clamped to [0, T])
  const int64_t* slots;        // [B] pool slot of each stream (distinct)
  const int64_t* frame_offset; // [B] global frame index of f[b, 0]
  void* h;                     // [L, S, H] LSTM hidden state pool, updated at slots
  void* c;                     // [L, S, H] LSTM cell state pool
  void* pred;                  // [S, J] joint.pred(h_top) for the last label
  int64_t* label;              // [S] last emitted label
  const void* embed;           // [V1, E]
  const void* w_ih[kRnntMaxLayers];  // [4H, E] (layer 0), [4H, H] above
  const void* w_hh[kRnntMaxLayers];  // [4H, H]
  const void* b_ih[kRnntMaxLayers];  // [4H]
  const void* b_hh[kRnntMaxLayers];  // [4H]
  const void* pred_w;          // [J, H]
  const void* pred_b;          // [J]
  const void* out_w;           // [V1, J]
  const void* out_b;           // [V1]
  int32_t* tokens;             // [B, max_out] emitted labels, the first counts[b] valid
  int32_t* frames;             // [B, max_out] global frame of each label
  int32_t* counts;             // [B] labels emitted; -1 where slots[b] is outside [0, S) (nothing is written)
  int64_t n_streams;           // B
  int64_t n_frames;            // T
  int64_t n_layers;            // L
  int64_t pool_size;           // S
  int64_t embed_dim;           // E
  int64_t hidden;              // H
  int64_t joint_hidden;        // J
  int64_t n_classes;           // V1 = V + 1
  int64_t blank;               // blank id, in [0, V1)
  int64_t max_symbols;         // >= 1
  int64_t max_out;             // T * max_symbols
};

// bfloat16 storage; all math is float.
struct bf16 {
  uint16_t bits;
};

struct alignas(16) F32x4 {
  float x, y, z, w;
};

struct alignas(8) U32x2 {
  uint32_t x, y;
};

__device__ __forceinline__ float bits_to_float(uint32_t u) {
  float v;
  memcpy(&v, &u, sizeof(v));
  return v;
}

// Element access and rounding for a storage type: load/store convert, round(v) is v rounded to the storage type.
template <typename T>
struct Num;

template <>
struct Num<float> {
  static __device__ __forceinline__ float load(const float* p) { return *p; }
  static __device__ __forceinline__ void store(float* p, float v) { *p = v; }
  static __device__ __forceinline__ float round(float v) { return v; }
  // 4 consecutive elements from a 16-byte aligned address
  static __device__ __forceinline__ void load4(const float* p, float (&o)[4]) {
    const F32x4 v = *reinterpret_cast<const F32x4*>(p);
    o[0] = v.x;
    o[1] = v.y;
    o[2] = v.z;
    o[3] = v.w;
  }
};

template <>
struct Num<bf16> {
  // Round to nearest even, NaN -> 0x7FC0: bit for bit torch's c10::BFloat16(float).
  static __device__ __forceinline__ uint16_t to_bits(float v) {
    uint32_t u;
    memcpy(&u, &v, sizeof(u));
    if (v != v) return 0x7FC0;
    return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
  }
  static __device__ __forceinline__ float load(const bf16* p) { return bits_to_float(uint32_t{p->bits} << 16); }
  static __device__ __forceinline__ void store(bf16* p, float v) { p->bits = to_bits(v); }
  static __device__ __forceinline__ float round(float v) { return bits_to_float(uint32_t{to_bits(v)} << 16); }
  // 4 consecutive elements from an 8-byte aligned address (little-endian: element 0 is the low half)
  static __device__ __forceinline__ void load4(const bf16* p, float (&o)[4]) {
    const U32x2 v = *reinterpret_cast<const U32x2*>(p);
    o[0] = bits_to_float(v.x << 16);
    o[1] = bits_to_float(v.x & 0xFFFF0000u);
    o[2] = bits_to_float(v.y << 16);
    o[3] = bits_to_float(v.y & 0xFFFF0000u);
  }
};

// Shared-memory layout, in floats. Per stream (P floats, every buffer 16-byte aligned):
//   xh [max(E, J)]  the embedded label during the LSTM phase, relu(f_t + pred) during the joint phase
//   pred [J]        joint.pred(h_top)
//   h, c, hn [L, HP] LSTM state and the step's new hidden state (HP = H rounded up to 4)
// then per block: best value [warps, G] (float) and best index [warps, G] (int) of each warp's argmax.
struct RnntSmemLayout {
  int64_t o_xh, o_pred, o_h, o_c, o_hn, hp, stride;
};

__host__ __device__ inline int64_t round_up4(int64_t n) {
  return (n + 3) / 4 * 4;
}

__host__ __device__ inline RnntSmemLayout rnnt_smem_layout(int64_t e, int64_t h, int64_t j, int64_t layers) {
  RnntSmemLayout s;
  s.hp = round_up4(h);
  s.o_xh = 0;
  s.o_pred = round_up4(e > j ? e : j);
  s.o_h = s.o_pred + round_up4(j);
  s.o_c = s.o_h + layers * s.hp;
  s.o_hn = s.o_c + layers * s.hp;
  s.stride = s.o_hn + layers * s.hp;
  return s;
}

inline int64_t rnnt_smem_bytes(int64_t e, int64_t h, int64_t j, int64_t layers, int streams_per_block, int warps) {
  const RnntSmemLayout s = rnnt_smem_layout(e, h, j, layers);
  return (streams_per_block * s.stride + 2 * int64_t{warps} * streams_per_block) * 4;
}

#if defined(NEMOTRON_CUDA_EMU)
__device__ inline unsigned char* rnnt_dynamic_smem() {
  return emu::shared_memory();
}
#else
__device__ __forceinline__ unsigned char* rnnt_dynamic_smem() {
  extern __shared__ __align__(16) unsigned char nemotron_rnnt_smem[];
  return nemotron_rnnt_smem;
}
#endif

// v[0..N) summed over the warp's 32 lanes; every lane gets the same (bit-identical) sums.
template <int N>
__device__ __forceinline__ void warp_allreduce(float* v) {
#if defined(NEMOTRON_CUDA_EMU)
  emu::warp_allreduce_xor(v, N);
#else
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) {
#pragma unroll
    for (int i = 0; i < N; ++i) v[i] += __shfl_xor_sync(0xffffffffu, v[i], m);
  }
#endif
}

// This lane's partial sums acc[r][i] = sum over its share of k of rows[r][k] * vecs[i][k], for the streams i in
// `mask` (the others stay 0). kVec: K % 4 == 0, rows aligned to 4 elements, vecs 16-byte aligned.
template <typename T, int R, int G, bool kVec>
__device__ __forceinline__ void warp_dots(const T* const (&rows)[R], const float* const (&vecs)[G], unsigned mask,
                                          int64_t K, int lane, float (&acc)[R][G]) {
#pragma unroll
  for (int r = 0; r < R; ++r) {
#pragma unroll
    for (int i = 0; i < G; ++i) acc[r][i] = 0.f;
  }
  if constexpr (kVec) {
#pragma unroll 2
    for (int64_t k = 4 * lane; k < K; k += 128) {
      float b_w[R][4];
#pragma unroll
      for (int r = 0; r < R; ++r) Num<T>::load4(rows[r] + k, b_w[r]);
#pragma unroll
      for (int i = 0; i < G; ++i) {
        if (mask & (1u << i)) {
          const F32x4 b_x = *reinterpret_cast<const F32x4*>(vecs[i] + k);
#pragma unroll
          for (int r = 0; r < R; ++r) {
            acc[r][i] += b_w[r][0] * b_x.x;
            acc[r][i] += b_w[r][1] * b_x.y;
            acc[r][i] += b_w[r][2] * b_x.z;
            acc[r][i] += b_w[r][3] * b_x.w;
          }
        }
      }
    }
  } else {
#pragma unroll 4
    for (int64_t k = lane; k < K; k += 32) {
      float b_w[R];
#pragma unroll
      for (int r = 0; r < R; ++r) b_w[r] = Num<T>::load(rows[r] + k);
#pragma unroll
      for (int i = 0; i < G; ++i) {
        if (mask & (1u << i)) {
          const float b_x = vecs[i][k];
#pragma unroll
          for (int r = 0; r < R; ++r) acc[r][i] += b_w[r] * b_x;
        }
      }
    }
  }
}

// torch.argmax order: NaN beats every number (first NaN wins), then larger, then the lower index on ties.
__device__ __forceinline__ bool argmax_better(float a, int ia, float b, int ib) {
  if (a != a) return b == b || ia < ib;
  if (b != b) return false;
  return a > b || (a == b && ia < ib);
}

// torch's CUDA sigmoid: 1 / (1 + exp(-x)) in float.
__device__ __forceinline__ float sigmoid_f(float x) {
  return 1.0f / (1.0f + expf(-x));
}

// Per-stream control of the G streams decoded together, identical in every thread that holds it (32-bit: the
// launcher bounds B, S, T * max_symbols, V1 and frame numbers below 2^31).
template <int G>
struct StreamCtl {
  int i_b[G], slot[G], last[G], len[G], t[G], n_sym[G], count[G], offset[G];
  unsigned valid;  // streams with a slot inside the pool
  unsigned live;   // streams with frames left

  // streams first .. first + G - 1 of the step
  __device__ __forceinline__ void init(const RnntGreedyParams& p, int64_t first) {
    valid = 0;
    live = 0;
#pragma unroll
    for (int i = 0; i < G; ++i) {
      i_b[i] = static_cast<int>(first) + i;
      slot[i] = -1;
      last[i] = 0;
      len[i] = 0;
      t[i] = 0;
      n_sym[i] = 0;
      count[i] = 0;
      offset[i] = 0;
      if (i_b[i] < p.n_streams) {
        const int64_t s = p.slots[i_b[i]];
        if (s >= 0 && s < p.pool_size) {
          valid |= 1u << i;
          slot[i] = static_cast<int>(s);
          const int64_t n = p.lengths[i_b[i]];
          len[i] = static_cast<int>(n < 0 ? 0 : (n > p.n_frames ? p.n_frames : n));
          offset[i] = static_cast<int>(p.frame_offset[i_b[i]]);
          last[i] = static_cast<int>(p.label[slot[i]]);
          if (len[i] > 0) live |= 1u << i;
        }
      }
    }
  }

  // The greedy decision of live stream i on label k: blank moves to the next frame; any other label is emitted (the
  // thread with `writer` set writes it) and, after max_symbols labels on one frame, also moves on. True if emitted.
  __device__ __forceinline__ bool decide(const RnntGreedyParams& p, int i, int k, bool writer) {
    bool emitted = false;
    if (k == p.blank) {
      ++t[i];
      n_sym[i] = 0;
    } else {
      emitted = true;
      if (writer) {
        p.tokens[i_b[i] * p.max_out + count[i]] = k;
        p.frames[i_b[i] * p.max_out + count[i]] = offset[i] + t[i];
      }
      ++count[i];
      last[i] = k;
      if (++n_sym[i] == p.max_symbols) {
        ++t[i];
        n_sym[i] = 0;
      }
    }
    if (t[i] >= len[i]) live &= ~(1u << i);
    return emitted;
  }

  // counts[b] for the step's streams among these: labels emitted, -1 for a slot outside the pool (one thread)
  __device__ __forceinline__ void write_counts(const RnntGreedyParams& p) const {
#pragma unroll
    for (int i = 0; i < G; ++i) {
      if (i_b[i] < p.n_streams) p.counts[i_b[i]] = (valid & (1u << i)) ? count[i] : -1;
    }
  }
};

// (best, idx) = the argmax of itself and (b, bi) in torch's order
__device__ __forceinline__ void argmax_fold(float b, int bi, float& best, int& idx) {
  if (argmax_better(b, bi, best, idx)) {
    best = b;
    idx = bi;
  }
}

// The calling warp's argmax per stream (streams in `mask`) over the joint rows v = first, first + stride, ... < V1:
// logit = round(out_w[v] . vecs[i] + out_b[v]); R rows per pass (rows past the end repeat the pass's first, unused).
template <typename T, int R, int G, bool kVec>
__device__ __forceinline__ void joint_argmax_rows(const RnntGreedyParams& p, const float* const (&vecs)[G],
                                                  unsigned mask, int64_t first, int64_t stride, int lane,
                                                  float (&best)[G], int (&idx)[G]) {
  const T* p_out_w = static_cast<const T*>(p.out_w);
  const T* p_out_b = static_cast<const T*>(p.out_b);
  const int64_t V1 = p.n_classes, J = p.joint_hidden;
#pragma unroll
  for (int i = 0; i < G; ++i) {
    best[i] = -INFINITY;
    idx[i] = INT_MAX;
  }
  for (int64_t v0 = first; v0 < V1; v0 += R * stride) {
    const T* rows[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int64_t v = v0 + r * stride;
      rows[r] = p_out_w + (v < V1 ? v : v0) * J;
    }
    float acc[R][G];
    warp_dots<T, R, G, kVec>(rows, vecs, mask, J, lane, acc);
    warp_allreduce<R * G>(&acc[0][0]);
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int64_t v = v0 + r * stride;
      if (v < V1) {
        const float bias = Num<T>::load(p_out_b + v);
#pragma unroll
        for (int i = 0; i < G; ++i) {
          if (mask & (1u << i)) argmax_fold(Num<T>::round(acc[r][i] + bias), static_cast<int>(v), best[i], idx[i]);
        }
      }
    }
  }
}

// joint.pred rows v = first, first + stride, ... < J of the streams in `mask`: dst[i][v] = round(pred_w[v] .
// vecs[i] + pred_b[v]), written by lane 0; R rows per pass.
template <typename T, int R, int G, bool kVec>
__device__ __forceinline__ void pred_rows(const RnntGreedyParams& p, const float* const (&vecs)[G],
                                          float* const (&dst)[G], unsigned mask, int64_t first, int64_t stride,
                                          int lane) {
  const T* p_pred_w = static_cast<const T*>(p.pred_w);
  const T* p_pred_b = static_cast<const T*>(p.pred_b);
  const int64_t J = p.joint_hidden, H = p.hidden;
  for (int64_t v0 = first; v0 < J; v0 += R * stride) {
    const T* rows[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int64_t v = v0 + r * stride;
      rows[r] = p_pred_w + (v < J ? v : v0) * H;
    }
    float acc[R][G];
    warp_dots<T, R, G, kVec>(rows, vecs, mask, H, lane, acc);
    warp_allreduce<R * G>(&acc[0][0]);
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int64_t v = v0 + r * stride;
      if (v < J && lane == 0) {
        const float bias = Num<T>::load(p_pred_b + v);
#pragma unroll
        for (int i = 0; i < G; ++i) {
          if (mask & (1u << i)) dst[i][v] = Num<T>::round(acc[r][i] + bias);
        }
      }
    }
  }
}

// The four gates (i, f, g, o) of hidden unit u of LSTM layer l for the streams in `mask`, from its input x_in
// (K_in = E for layer 0, H above) and h_in: F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh), each rounded to the
// storage type. Lane i returns stream i's gates (the other lanes' values are unused).
template <typename T, int G, bool kVec>
__device__ __forceinline__ void lstm_gates(const RnntGreedyParams& p, int64_t l, int64_t u,
                                           const float* const (&x_in)[G], const float* const (&h_in)[G],
                                           unsigned mask, int lane, float (&gate)[4]) {
  const int64_t H = p.hidden, K_in = l == 0 ? p.embed_dim : H;
  const T* p_wih = static_cast<const T*>(p.w_ih[l]);
  const T* p_whh = static_cast<const T*>(p.w_hh[l]);
  const T* p_bih = static_cast<const T*>(p.b_ih[l]);
  const T* p_bhh = static_cast<const T*>(p.b_hh[l]);
  // rows u, H + u, 2H + u, 3H + u: gates i, f, g, o of hidden unit u
  const T* rows_ih[4] = {p_wih + u * K_in, p_wih + (H + u) * K_in, p_wih + (2 * H + u) * K_in,
                         p_wih + (3 * H + u) * K_in};
  const T* rows_hh[4] = {p_whh + u * H, p_whh + (H + u) * H, p_whh + (2 * H + u) * H, p_whh + (3 * H + u) * H};
  float acc[2][4][G];
  warp_dots<T, 4, G, kVec>(rows_ih, x_in, mask, K_in, lane, acc[0]);
  warp_dots<T, 4, G, kVec>(rows_hh, h_in, mask, H, lane, acc[1]);
  warp_allreduce<8 * G>(&acc[0][0][0]);
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    const float b_i = Num<T>::load(p_bih + q * H + u);
    const float b_h = Num<T>::load(p_bhh + q * H + u);
    float a_ih = 0.f, a_hh = 0.f;
#pragma unroll
    for (int i = 0; i < G; ++i) {
      if (lane == i) {
        a_ih = acc[0][q][i];
        a_hh = acc[1][q][i];
      }
    }
    gate[q] = Num<T>::round(__fadd_rn(Num<T>::round(a_ih + b_i), Num<T>::round(a_hh + b_h)));
  }
}

// The LSTM cell from its gates: c1 = sigmoid(f) * c + sigmoid(i) * tanh(g); h1 = sigmoid(o) * tanh(c1), op by op
// and rounded to the storage type as torch does.
template <typename T>
__device__ __forceinline__ void lstm_cell(const float (&gate)[4], float c_old, float& c1, float& h1) {
  const float s_i = Num<T>::round(sigmoid_f(gate[0]));
  const float s_f = Num<T>::round(sigmoid_f(gate[1]));
  const float t_g = Num<T>::round(tanhf(gate[2]));
  const float s_o = Num<T>::round(sigmoid_f(gate[3]));
  c1 = Num<T>::round(__fadd_rn(Num<T>::round(__fmul_rn(s_f, c_old)), Num<T>::round(__fmul_rn(s_i, t_g))));
  h1 = Num<T>::round(__fmul_rn(s_o, Num<T>::round(tanhf(c1))));
}

// grid (ceil(B / G)), block (warps * 32), dynamic shared memory rnnt_smem_bytes(...): block i decodes streams
// i * G .. i * G + G - 1.
template <typename T, int G, bool kVec>
__global__ void __launch_bounds__(kRnntMaxThreads, 1) rnnt_greedy_kernel(const RnntGreedyParams p) {
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int n_threads = blockDim.x;
  const int n_warps = n_threads >> 5;
  const int64_t T_ = p.n_frames, L = p.n_layers, S = p.pool_size, E = p.embed_dim, H = p.hidden;
  const int64_t J = p.joint_hidden;
  const RnntSmemLayout lay = rnnt_smem_layout(E, H, J, L);

  float* s_base = reinterpret_cast<float*>(rnnt_dynamic_smem());
  float* s_best = s_base + G * lay.stride;                          // [warps, G]
  int* s_best_idx = reinterpret_cast<int*>(s_best + n_warps * G);  // [warps, G]
  float* s_stream[G];
#pragma unroll
  for (int i = 0; i < G; ++i) s_stream[i] = s_base + i * lay.stride;

  const T* p_f = static_cast<const T*>(p.f);
  const T* p_embed = static_cast<const T*>(p.embed);
  T* p_h = static_cast<T*>(p.h);
  T* p_c = static_cast<T*>(p.c);
  T* p_pred = static_cast<T*>(p.pred);

  StreamCtl<G> ctl;
  ctl.init(p, int64_t{blockIdx.x} * G);

  // Load the state of the block's streams.
#pragma unroll
  for (int i = 0; i < G; ++i) {
    if (ctl.valid & (1u << i)) {
      float* s = s_stream[i];
      for (int64_t o = tid; o < L * H; o += n_threads) {
        const int64_t l = o / H, u = o - l * H;
        const int64_t g = (l * S + ctl.slot[i]) * H + u;
        s[lay.o_h + l * lay.hp + u] = Num<T>::load(p_h + g);
        s[lay.o_c + l * lay.hp + u] = Num<T>::load(p_c + g);
      }
      for (int64_t o = tid; o < J; o += n_threads) {
        s[lay.o_pred + o] = Num<T>::load(p_pred + int64_t{ctl.slot[i]} * J + o);
      }
    }
  }
  __syncthreads();

  while (ctl.live) {
    const unsigned live = ctl.live;
    // 1. joint input: xh = relu(f_t + pred)
#pragma unroll
    for (int i = 0; i < G; ++i) {
      if (live & (1u << i)) {
        float* s = s_stream[i];
        const T* p_row = p_f + (int64_t{ctl.i_b[i]} * T_ + ctl.t[i]) * J;
        for (int64_t o = tid; o < J; o += n_threads) {
          const float x = Num<T>::round(__fadd_rn(Num<T>::load(p_row + o), s[lay.o_pred + o]));
          s[lay.o_xh + o] = x <= 0.f ? 0.f : x;  // torch.relu (NaN passes through)
        }
      }
    }
    __syncthreads();

    // 2. logits and each warp's argmax over its rows
    {
      const float* vecs[G];
#pragma unroll
      for (int i = 0; i < G; ++i) vecs[i] = s_stream[i] + lay.o_xh;
      float b_best[G];
      int b_idx[G];
      joint_argmax_rows<T, kRnntRows, G, kVec>(p, vecs, live, warp, n_warps, lane, b_best, b_idx);
      if (lane == 0) {
#pragma unroll
        for (int i = 0; i < G; ++i) {
          s_best[warp * G + i] = b_best[i];
          s_best_idx[warp * G + i] = b_idx[i];
        }
      }
    }
    __syncthreads();

    // 3. the block's argmax and the greedy decision, in every thread
    unsigned emit = 0;
    int k[G];
#pragma unroll
    for (int i = 0; i < G; ++i) {
      k[i] = 0;
      if (live & (1u << i)) {
        float best = -INFINITY;
        int idx = INT_MAX;
        for (int w = 0; w < n_warps; ++w) argmax_fold(s_best[w * G + i], s_best_idx[w * G + i], best, idx);
        k[i] = idx;
        if (ctl.decide(p, i, idx, tid == 0)) emit |= 1u << i;
      }
    }
    if (!emit) continue;

    // 4. embed the emitted labels into xh (the joint phase above is done with it)
#pragma unroll
    for (int i = 0; i < G; ++i) {
      if (emit & (1u << i)) {
        float* s = s_stream[i];
        for (int64_t o = tid; o < E; o += n_threads) s[lay.o_xh + o] = Num<T>::load(p_embed + int64_t{k[i]} * E + o);
      }
    }
    __syncthreads();

    // 5. the stacked LSTM step: layer l reads its input (xh, or hn of the layer below) and h[l]; writes c[l], hn[l]
    for (int64_t l = 0; l < L; ++l) {
      const float* x_in[G];
      const float* h_in[G];
#pragma unroll
      for (int i = 0; i < G; ++i) {
        x_in[i] = s_stream[i] + (l == 0 ? lay.o_xh : lay.o_hn + (l - 1) * lay.hp);
        h_in[i] = s_stream[i] + lay.o_h + l * lay.hp;
      }
      for (int64_t u = warp; u < H; u += n_warps) {
        float gate[4];
        lstm_gates<T, G, kVec>(p, l, u, x_in, h_in, emit, lane, gate);
#pragma unroll
        for (int i = 0; i < G; ++i) {
          if (lane == i && (emit & (1u << i))) {
            float* s = s_stream[i];
            lstm_cell<T>(gate, s[lay.o_c + l * lay.hp + u], s[lay.o_c + l * lay.hp + u], s[lay.o_hn + l * lay.hp + u]);
          }
        }
      }
      __syncthreads();
    }

    // 6. pred = joint.pred(h_top); h = hn
    {
      const float* vecs[G];
      float* dst[G];
#pragma unroll
      for (int i = 0; i < G; ++i) {
        vecs[i] = s_stream[i] + lay.o_hn + (L - 1) * lay.hp;
        dst[i] = s_stream[i] + lay.o_pred;
      }
      pred_rows<T, kRnntRows, G, kVec>(p, vecs, dst, emit, warp, n_warps, lane);
#pragma unroll
      for (int i = 0; i < G; ++i) {
        if (emit & (1u << i)) {
          float* s = s_stream[i];
          for (int64_t o = tid; o < L * H; o += n_threads) {
            const int64_t l = o / H, u = o - l * H;
            s[lay.o_h + l * lay.hp + u] = s[lay.o_hn + l * lay.hp + u];
          }
        }
      }
    }
    __syncthreads();
  }

  // Write back the state of the streams that emitted (the others are unchanged), and the counts.
#pragma unroll
  for (int i = 0; i < G; ++i) {
    if ((ctl.valid & (1u << i)) && ctl.count[i] > 0) {
      const float* s = s_stream[i];
      for (int64_t o = tid; o < L * H; o += n_threads) {
        const int64_t l = o / H, u = o - l * H;
        const int64_t g = (l * S + ctl.slot[i]) * H + u;
        Num<T>::store(p_h + g, s[lay.o_h + l * lay.hp + u]);
        Num<T>::store(p_c + g, s[lay.o_c + l * lay.hp + u]);
      }
      for (int64_t o = tid; o < J; o += n_threads) {
        Num<T>::store(p_pred + int64_t{ctl.slot[i]} * J + o, s[lay.o_pred + o]);
      }
      if (tid == 0) p.label[ctl.slot[i]] = ctl.last[i];
    }
  }
  if (tid == 0) ctl.write_counts(p);
}

// ---- The grid-wide variant: every block works on every stream ------------------------------------------------------
//
// Why: the kernel above gives each stream (or G streams) one block, so one SM reads every weight of the prediction
// network and joint (~30 MB fp32 for Nemotron) per emitted label; with few streams the rest of the GPU idles and a
// label costs about 0.5 ms (measured on an H100). Here the rows of every matrix-vector product are spread over the
// warps of the whole grid, which decodes up to G streams at a time in lock step; the phases that need a whole vector
// (the argmax over the classes, the LSTM input and state, pred) are separated by grid-wide barriers, so the kernel
// must be launched cooperatively (all blocks resident).
//
// Numerics: every dot product is the same warp_dots + warp_allreduce over the same lanes as in rnnt_greedy_kernel, and
// every rounding is the same, so both kernels give bit-identical results (tests/test_decoder_cuda.py checks it).
//
// Per emitting iteration: 1 barrier after the joint (block argmaxes published), 1 per LSTM layer, 1 after pred;
// an iteration where no stream emits has only the first. State between barriers lives in a float workspace in
// global memory (RnntGridWorkspace); reads of what another block wrote go through ld_cg (L2, not the SM's L1).

constexpr int kRnntGridMaxBlocks = 1024;
// Joint and projection rows a warp reduces at once. One: the grid has about as many warps as the joint has classes
// (132 SMs x 8 warps = 1056 against 1025), so with kRnntRows = 4 three of a warp's four rows would be padding.
constexpr int kRnntGridRows = 1;
// At most 256 threads per block: with 4 or 8 streams per group the kernel keeps 236-255 registers per thread
// (`python bench/ptxas_report.py --only decoder`), more than the 128 that 512 threads would leave.
constexpr int kRnntGridMaxThreads = 256;

// Workspace layout, in 4-byte words (HP, JP: H, J rounded up to 4):
//   h    [2, L, G, HP]  the LSTM hidden state of each stream, ping-pong (par[i] is the current one)
//   c    [L, G, HP]     the cell state; unit u's entries are read and written by the warp that owns u only
//   pred [G, JP]        joint.pred(h_top)
//   best [2, kRnntGridMaxBlocks, G] float, idx [2, kRnntGridMaxBlocks, G] int: each block's argmax, by iteration parity
struct RnntGridWorkspace {
  int64_t hp, jp, o_h, o_c, o_pred, o_best, o_idx, words;
};

__host__ __device__ inline RnntGridWorkspace rnnt_grid_workspace(int64_t h, int64_t j, int64_t layers, int64_t g) {
  RnntGridWorkspace w;
  w.hp = round_up4(h);
  w.jp = round_up4(j);
  w.o_h = 0;
  w.o_c = 2 * layers * g * w.hp;
  w.o_pred = w.o_c + layers * g * w.hp;
  w.o_best = w.o_pred + g * w.jp;
  w.o_idx = w.o_best + 2 * int64_t{kRnntGridMaxBlocks} * g;
  w.words = w.o_idx + 2 * int64_t{kRnntGridMaxBlocks} * g;
  return w;
}

// Shared memory per block, in floats: per stream x [XP] (the joint input, the embedded label or the layer below's
// new h) and hv [HP] (h of the layer being stepped, or h_top for pred), XP = max(E, J, H) rounded up to 4; then the
// warps' argmax [warps, G] float + [warps, G] int, and the grid's decision [G] int.
__host__ __device__ inline int64_t rnnt_grid_xp(int64_t e, int64_t h, int64_t j) {
  const int64_t m = e > j ? e : j;
  return round_up4(m > h ? m : h);
}

inline int64_t rnnt_grid_smem_bytes(int64_t e, int64_t h, int64_t j, int64_t g, int warps) {
  return (g * (rnnt_grid_xp(e, h, j) + round_up4(h)) + 2 * int64_t{warps} * g + g) * 4;
}

#if defined(NEMOTRON_CUDA_EMU)
__device__ inline void rnnt_grid_sync() {
  emu::grid_sync();
}
__device__ inline float ld_cg(const float* p) {
  return *p;
}
__device__ inline int ld_cg(const int* p) {
  return *p;
}
__device__ inline float shfl_xor(float v, int m) {
  return emu::shfl_xor(v, m);
}
__device__ inline int shfl_xor(int v, int m) {
  return emu::shfl_xor(v, m);
}
#else
__device__ __forceinline__ void rnnt_grid_sync() {
  cooperative_groups::this_grid().sync();
}
__device__ __forceinline__ float ld_cg(const float* p) {
  return __ldcg(p);
}
__device__ __forceinline__ int ld_cg(const int* p) {
  return __ldcg(p);
}
__device__ __forceinline__ float shfl_xor(float v, int m) {
  return __shfl_xor_sync(0xffffffffu, v, m);
}
__device__ __forceinline__ int shfl_xor(int v, int m) {
  return __shfl_xor_sync(0xffffffffu, v, m);
}
#endif

// The argmax of (best, idx) over the warp's lanes, in every lane. argmax_better is a total order on (value, index)
// pairs with distinct indices, so the butterfly's order does not change the winner.
__device__ __forceinline__ void warp_argmax(float& best, int& idx) {
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) {
    const float o_best = shfl_xor(best, m);
    const int o_idx = shfl_xor(idx, m);
    argmax_fold(o_best, o_idx, best, idx);
  }
}

// Cooperative launch: grid (P <= kRnntGridMaxBlocks blocks, all resident), block (warps * 32), dynamic shared memory
// rnnt_grid_smem_bytes(E, H, J, G, warps), ws: rnnt_grid_workspace(H, J, L, G).words words. The streams are taken G
// at a time; every block works on every group. Warp gw = blockIdx.x * warps + warp of the n_gw in the grid owns the
// rows gw, gw + n_gw, ... of each product (and hidden units gw, gw + n_gw, ... of each LSTM layer).
template <typename T, int G, bool kVec>
__global__ void __launch_bounds__(kRnntGridMaxThreads, 1) rnnt_greedy_grid_kernel(const RnntGreedyParams p, float* ws) {
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int n_threads = blockDim.x;
  const int n_warps = n_threads >> 5;
  const int blk = static_cast<int>(blockIdx.x);
  const int n_blocks = static_cast<int>(gridDim.x);
  const int64_t gw = int64_t{blk} * n_warps + warp, n_gw = int64_t{n_blocks} * n_warps;
  const int64_t gt = int64_t{blk} * n_threads + tid, n_gt = int64_t{n_blocks} * n_threads;
  const int64_t T_ = p.n_frames, L = p.n_layers, S = p.pool_size, E = p.embed_dim, H = p.hidden;
  const int64_t J = p.joint_hidden;
  const RnntGridWorkspace wl = rnnt_grid_workspace(H, J, L, G);
  const int64_t XP = rnnt_grid_xp(E, H, J), HP = wl.hp, JP = wl.jp;

  float* s_base = reinterpret_cast<float*>(rnnt_dynamic_smem());
  float* s_x[G];
  float* s_h[G];
#pragma unroll
  for (int i = 0; i < G; ++i) {
    s_x[i] = s_base + i * (XP + HP);
    s_h[i] = s_x[i] + XP;
  }
  float* s_best = s_base + G * (XP + HP);                           // [warps, G]
  int* s_best_idx = reinterpret_cast<int*>(s_best + n_warps * G);  // [warps, G]
  int* s_dec = s_best_idx + n_warps * G;                           // [G]

  float* w_h = ws + wl.o_h;
  float* w_c = ws + wl.o_c;
  float* w_pred = ws + wl.o_pred;
  float* w_best = ws + wl.o_best;
  int* w_idx = reinterpret_cast<int*>(ws + wl.o_idx);

  const T* p_f = static_cast<const T*>(p.f);
  const T* p_embed = static_cast<const T*>(p.embed);
  T* p_h = static_cast<T*>(p.h);
  T* p_c = static_cast<T*>(p.c);
  T* p_pred = static_cast<T*>(p.pred);

  for (int64_t b0 = 0; b0 < p.n_streams; b0 += G) {
    StreamCtl<G> ctl;
    ctl.init(p, b0);
    int par[G];  // the current half of each stream's h ping-pong
#pragma unroll
    for (int i = 0; i < G; ++i) par[i] = 0;

    // The group's state into the workspace (grid-strided).
#pragma unroll
    for (int i = 0; i < G; ++i) {
      if (ctl.live & (1u << i)) {
        for (int64_t o = gt; o < L * H; o += n_gt) {
          const int64_t l = o / H, u = o - l * H;
          const int64_t g = (l * S + ctl.slot[i]) * H + u;
          w_h[(l * G + i) * HP + u] = Num<T>::load(p_h + g);  // par[i] = 0
          w_c[(l * G + i) * HP + u] = Num<T>::load(p_c + g);
        }
        for (int64_t o = gt; o < J; o += n_gt) {
          w_pred[i * JP + o] = Num<T>::load(p_pred + int64_t{ctl.slot[i]} * J + o);
        }
      }
    }
    rnnt_grid_sync();

    int iter = 0;
    while (ctl.live) {
      const unsigned live = ctl.live;
      const int64_t ph = iter & 1;
      ++iter;
      // 1. joint input: x = relu(f_t + pred), in every block
#pragma unroll
      for (int i = 0; i < G; ++i) {
        if (live & (1u << i)) {
          const T* p_row = p_f + (int64_t{ctl.i_b[i]} * T_ + ctl.t[i]) * J;
          for (int64_t o = tid; o < J; o += n_threads) {
            const float x = Num<T>::round(__fadd_rn(Num<T>::load(p_row + o), ld_cg(w_pred + i * JP + o)));
            s_x[i][o] = x <= 0.f ? 0.f : x;  // torch.relu (NaN passes through)
          }
        }
      }
      __syncthreads();

      // 2. logits of this warp's rows; each warp's argmax, then the block's, published for the grid
      {
        const float* vecs[G];
#pragma unroll
        for (int i = 0; i < G; ++i) vecs[i] = s_x[i];
        float b_best[G];
        int b_idx[G];
        joint_argmax_rows<T, kRnntGridRows, G, kVec>(p, vecs, live, gw, n_gw, lane, b_best, b_idx);
        if (lane == 0) {
#pragma unroll
          for (int i = 0; i < G; ++i) {
            s_best[warp * G + i] = b_best[i];
            s_best_idx[warp * G + i] = b_idx[i];
          }
        }
      }
      __syncthreads();
      if (tid < G && (live & (1u << tid))) {
        float best = -INFINITY;
        int idx = INT_MAX;
        for (int w = 0; w < n_warps; ++w) argmax_fold(s_best[w * G + tid], s_best_idx[w * G + tid], best, idx);
        w_best[(ph * kRnntGridMaxBlocks + blk) * G + tid] = best;
        w_idx[(ph * kRnntGridMaxBlocks + blk) * G + tid] = idx;
      }
      rnnt_grid_sync();

      // 3. the grid's argmax (warp i % warps reduces stream i over the blocks), then the greedy decision in every
      // thread
      for (int i = warp; i < G; i += n_warps) {
        if (live & (1u << i)) {
          float best = -INFINITY;
          int idx = INT_MAX;
          for (int q = lane; q < n_blocks; q += 32) {
            argmax_fold(ld_cg(w_best + (ph * kRnntGridMaxBlocks + q) * G + i),
                        ld_cg(w_idx + (ph * kRnntGridMaxBlocks + q) * G + i), best, idx);
          }
          warp_argmax(best, idx);
          if (lane == 0) s_dec[i] = idx;
        }
      }
      __syncthreads();
      unsigned emit = 0;
      int k[G];
#pragma unroll
      for (int i = 0; i < G; ++i) {
        k[i] = 0;
        if (live & (1u << i)) {
          k[i] = s_dec[i];
          if (ctl.decide(p, i, k[i], gt == 0)) emit |= 1u << i;
        }
      }
      if (!emit) continue;

      // 4. the stacked LSTM step, one layer between two barriers: every block loads the layer's input (the embedded
      // label, or the new h of the layer below) and h; the owner warp of unit u writes c and the new h of u
      for (int64_t l = 0; l < L; ++l) {
#pragma unroll
        for (int i = 0; i < G; ++i) {
          if (emit & (1u << i)) {
            if (l == 0) {
              for (int64_t o = tid; o < E; o += n_threads) s_x[i][o] = Num<T>::load(p_embed + int64_t{k[i]} * E + o);
            } else {
              const float* src = w_h + (((1 - par[i]) * L + l - 1) * G + i) * HP;
              for (int64_t o = tid; o < H; o += n_threads) s_x[i][o] = ld_cg(src + o);
            }
            const float* cur = w_h + ((par[i] * L + l) * G + i) * HP;
            for (int64_t o = tid; o < H; o += n_threads) s_h[i][o] = ld_cg(cur + o);
          }
        }
        __syncthreads();
        const float* x_in[G];
        const float* h_in[G];
#pragma unroll
        for (int i = 0; i < G; ++i) {
          x_in[i] = s_x[i];
          h_in[i] = s_h[i];
        }
        for (int64_t u = gw; u < H; u += n_gw) {
          float gate[4];
          lstm_gates<T, G, kVec>(p, l, u, x_in, h_in, emit, lane, gate);
#pragma unroll
          for (int i = 0; i < G; ++i) {
            if (lane == i && (emit & (1u << i))) {
              float* c_u = w_c + (l * G + i) * HP + u;
              float c1, h1;
              lstm_cell<T>(gate, ld_cg(c_u), c1, h1);
              *c_u = c1;
              w_h[(((1 - par[i]) * L + l) * G + i) * HP + u] = h1;
            }
          }
        }
        rnnt_grid_sync();
      }

      // 5. pred = joint.pred(h_top) of the streams that emitted; their new h becomes the current one
#pragma unroll
      for (int i = 0; i < G; ++i) {
        if (emit & (1u << i)) {
          const float* top = w_h + (((1 - par[i]) * L + L - 1) * G + i) * HP;
          for (int64_t o = tid; o < H; o += n_threads) s_h[i][o] = ld_cg(top + o);
        }
      }
      __syncthreads();
      {
        const float* vecs[G];
        float* dst[G];
#pragma unroll
        for (int i = 0; i < G; ++i) {
          vecs[i] = s_h[i];
          dst[i] = w_pred + i * JP;
        }
        pred_rows<T, kRnntGridRows, G, kVec>(p, vecs, dst, emit, gw, n_gw, lane);
      }
#pragma unroll
      for (int i = 0; i < G; ++i) {
        if (emit & (1u << i)) par[i] = 1 - par[i];
      }
      rnnt_grid_sync();
    }

    // Write back the state of the streams that emitted (the others are unchanged), and the counts.
#pragma unroll
    for (int i = 0; i < G; ++i) {
      if ((ctl.valid & (1u << i)) && ctl.count[i] > 0) {
        for (int64_t o = gt; o < L * H; o += n_gt) {
          const int64_t l = o / H, u = o - l * H;
          const int64_t g = (l * S + ctl.slot[i]) * H + u;
          Num<T>::store(p_h + g, ld_cg(w_h + ((par[i] * L + l) * G + i) * HP + u));
          Num<T>::store(p_c + g, ld_cg(w_c + (l * G + i) * HP + u));
        }
        for (int64_t o = gt; o < J; o += n_gt) {
          Num<T>::store(p_pred + int64_t{ctl.slot[i]} * J + o, ld_cg(w_pred + i * JP + o));
        }
        if (gt == 0) p.label[ctl.slot[i]] = ctl.last[i];
      }
    }
    if (gt == 0) ctl.write_counts(p);
    // No barrier before the next group: its loads into the workspace (above) touch element o of stream i in the
    // same thread that has just written it back here.
  }
}

}  // namespace nemotron
