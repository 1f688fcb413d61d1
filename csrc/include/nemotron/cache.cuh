// Paged stream cache operations: device code and launchers on raw pointers (no torch headers).
//
// The pool is one contiguous buffer of pages. A stream's logical frame f lives in page
// page_table[stream, (f // page_size) % pages_per_stream] at row f % page_size (DESIGN.md, "The paged stream
// cache"), so the attention window slides by overwriting rows, never by copying.
//
// References (the executable specification, nemotron_engine/_ext.py):
//   fill_pages_kernel  <-> fill_pages_ref
//   write_rows_kernel  <-> write_rows_ref
//
// Out-of-range indices are skipped, never written: a page id outside [0, num_pages), a stream index outside
// [0, n_streams), a negative frame position, or a page-table entry outside [0, num_pages) (e.g. -1 for "no page").
// When `skipped` is not null, the number of skipped page ids / rows is added to *skipped, so a caller can check it
// later without a host sync in the step.
#pragma once

#include <cstdint>
#include <cstring>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "nemotron/static_switch.h"

namespace nemotron {

struct FillPagesParams {
  void* pool;                // [num_pages, page_elems], float32 or bfloat16
  const int32_t* page_ids;   // [n_ids]
  int32_t* skipped;          // [1] or nullptr: += number of out-of-range page ids
  int64_t num_pages;
  int64_t page_elems;
  int64_t n_ids;
  float value;
};

struct WriteRowsParams {
  void* pool;                  // [num_pages, page_size, row_elems]
  const void* src;             // [n_rows, row_elems], rows src_row_stride elements apart, same dtype as pool
  const int32_t* stream_idx;   // [n_rows]
  const int64_t* frame_pos;    // [n_rows] logical frame index of each row
  const int32_t* page_table;   // [n_streams, pages_per_stream], rows page_table_stride elements apart
  int32_t* skipped;            // [1] or nullptr: += number of rows that were not written
  int64_t num_pages;
  int64_t page_size;
  int64_t row_elems;
  int64_t n_rows;
  int64_t src_row_stride;
  int64_t n_streams;
  int64_t pages_per_stream;
  int64_t page_table_stride;
};

// 16-byte register block: the unit of the vectorized paths.
template <typename T>
struct alignas(16) Vec16 {
  static constexpr int kElems = 16 / sizeof(T);
  T x[kElems];
};

template <typename T>
__device__ __forceinline__ T from_float(float v);

template <>
__device__ __forceinline__ float from_float<float>(float v) {
  return v;
}

// Round to nearest even with NaN -> 0x7FC0, bit for bit what torch does (c10::BFloat16(float)); the PTX
// conversion would give a different NaN pattern.
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  uint32_t u;
  memcpy(&u, &v, sizeof(u));
  __nv_bfloat16_raw raw;
  if (v != v) {
    raw.x = 0x7FC0;
  } else {
    raw.x = static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
  }
  return __nv_bfloat16(raw);
}

inline bool is_aligned_16(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

// grid (n_ids, blocks per page): block (i_id, i_chunk) fills a strided share of page page_ids[i_id].
template <typename T, bool kVec>
__global__ void fill_pages_kernel(const FillPagesParams params) {
  const int64_t i_id = blockIdx.x;
  const int64_t page = params.page_ids[i_id];
  if (page < 0 || page >= params.num_pages) {
    if (params.skipped != nullptr && blockIdx.y == 0 && threadIdx.x == 0) atomicAdd(params.skipped, 1);
    return;
  }
  T* p_page = static_cast<T*>(params.pool) + page * params.page_elems;
  const T b_value = from_float<T>(params.value);
  const int64_t o_start = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  const int64_t step = static_cast<int64_t>(gridDim.y) * blockDim.x;
  if constexpr (kVec) {
    Vec16<T> b_vec;
#pragma unroll
    for (int i = 0; i < Vec16<T>::kElems; ++i) b_vec.x[i] = b_value;
    Vec16<T>* p_vec = reinterpret_cast<Vec16<T>*>(p_page);
    const int64_t n_vec = params.page_elems / Vec16<T>::kElems;
    for (int64_t o = o_start; o < n_vec; o += step) p_vec[o] = b_vec;
  } else {
    for (int64_t o = o_start; o < params.page_elems; o += step) p_page[o] = b_value;
  }
}

// grid (n_rows): block i_row copies src row i_row into its (page, row-in-page) slot.
template <typename T, bool kVec>
__global__ void write_rows_kernel(const WriteRowsParams params) {
  const int64_t i_row = blockIdx.x;
  const int64_t i_stream = params.stream_idx[i_row];
  const int64_t frame = params.frame_pos[i_row];
  int64_t page = -1;
  if (i_stream >= 0 && i_stream < params.n_streams && frame >= 0) {
    const int64_t i_slot = (frame / params.page_size) % params.pages_per_stream;
    page = params.page_table[i_stream * params.page_table_stride + i_slot];
  }
  if (page < 0 || page >= params.num_pages) {
    if (params.skipped != nullptr && threadIdx.x == 0) atomicAdd(params.skipped, 1);
    return;
  }
  T* p_dst = static_cast<T*>(params.pool) + (page * params.page_size + frame % params.page_size) * params.row_elems;
  const T* p_src = static_cast<const T*>(params.src) + i_row * params.src_row_stride;
  if constexpr (kVec) {
    Vec16<T>* p_dst_vec = reinterpret_cast<Vec16<T>*>(p_dst);
    const Vec16<T>* p_src_vec = reinterpret_cast<const Vec16<T>*>(p_src);
    const int64_t n_vec = params.row_elems / Vec16<T>::kElems;
    for (int64_t o = threadIdx.x; o < n_vec; o += blockDim.x) p_dst_vec[o] = p_src_vec[o];
  } else {
    for (int64_t o = threadIdx.x; o < params.row_elems; o += blockDim.x) p_dst[o] = p_src[o];
  }
}

// The vectorized path needs every page start 16-byte aligned: an aligned pool and a page size in bytes that is a
// multiple of 16.
template <typename T>
void launch_fill_pages(const FillPagesParams& params, cudaStream_t stream) {
  constexpr int kThreads = 256;
  const bool vec = is_aligned_16(params.pool) && params.page_elems % Vec16<T>::kElems == 0;
  const int64_t work = vec ? params.page_elems / Vec16<T>::kElems : params.page_elems;
  const int64_t chunks = (work + kThreads - 1) / kThreads;
  const int64_t grid_y = chunks < 1 ? 1 : (chunks < 65535 ? chunks : 65535);  // gridDim.y <= 65535
  const dim3 grid(static_cast<unsigned>(params.n_ids), static_cast<unsigned>(grid_y));
  BOOL_SWITCH(vec, kVec, [&] { fill_pages_kernel<T, kVec><<<grid, kThreads, 0, stream>>>(params); });
}

// The vectorized path needs 16-byte aligned rows on both sides.
template <typename T>
void launch_write_rows(const WriteRowsParams& params, cudaStream_t stream) {
  constexpr int kThreads = 128;
  const bool vec = is_aligned_16(params.pool) && is_aligned_16(params.src) &&
                   params.row_elems % Vec16<T>::kElems == 0 && params.src_row_stride % Vec16<T>::kElems == 0;
  const dim3 grid(static_cast<unsigned>(params.n_rows));
  BOOL_SWITCH(vec, kVec, [&] { write_rows_kernel<T, kVec><<<grid, kThreads, 0, stream>>>(params); });
}

}  // namespace nemotron
