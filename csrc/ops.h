// The ops bound in bindings.cpp. Plain C++ on integers: device pointers and the CUDA stream arrive as integers
// (torch's tensor.data_ptr() and torch.cuda.current_stream().cuda_stream), so no CUDA or torch header is needed here.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace nemotron {

// Element type codes shared with nemotron_engine/_ext.py (exported as _C.DTYPE_*).
enum DType : int {
  kFloat32 = 0,
  kBFloat16 = 1,
};

bool cuda_available();
int device_count();
// The -arch list the module was compiled for, e.g. "80;90".
std::string cuda_archs();

// Batched greedy RNN-T decoding of one step for every stream, state in the pool updated in place at slots.
// Reference: nemotron_engine/reference/decoder.py greedy_decode (nemotron_engine._ext.rnnt_greedy_ref).
// Returns the streams per block (or per group) it launched with.
int rnnt_greedy(std::uintptr_t f,             // [B, T, J] joint.enc(enc), dtype
                std::uintptr_t lengths,       // [B] int64
                std::uintptr_t slots,         // [B] int64, distinct
                std::uintptr_t frame_offset,  // [B] int64
                std::uintptr_t h,             // [L, S, H] dtype
                std::uintptr_t c,             // [L, S, H] dtype
                std::uintptr_t pred,          // [S, J] dtype
                std::uintptr_t label,         // [S] int64
                std::uintptr_t embed,         // [V1, E] dtype
                const std::vector<std::uintptr_t>& w_ih,  // L x [4H, E or H]
                const std::vector<std::uintptr_t>& w_hh,  // L x [4H, H]
                const std::vector<std::uintptr_t>& b_ih,  // L x [4H]
                const std::vector<std::uintptr_t>& b_hh,  // L x [4H]
                std::uintptr_t pred_w,        // [J, H]
                std::uintptr_t pred_b,        // [J]
                std::uintptr_t out_w,         // [V1, J]
                std::uintptr_t out_b,         // [V1]
                std::uintptr_t tokens,        // [B, T * max_symbols] int32
                std::uintptr_t frames,        // [B, T * max_symbols] int32
                std::uintptr_t counts,        // [B] int32
                int dtype,                    // DType of f, the state and the weights
                int64_t n_streams, int64_t n_frames, int64_t pool_size, int64_t embed_dim, int64_t hidden,
                int64_t joint_hidden, int64_t n_classes, int64_t blank, int64_t max_symbols,
                int64_t streams_per_block,    // 0: auto, or 1, 2, 4 ("grid": streams per group, also 8)
                std::uintptr_t stream,        // cudaStream_t
                // "blocked" (one block per stream, or per 2 or 4), or "grid": every block of the GPU on every stream
                // at once (rnnt_greedy_grid_kernel, a cooperative launch; up to 8 streams in lock step per group,
                // groups one after another), bit-identical results. "grid" only: a float workspace of at least
                // rnnt_grid_workspace_bytes(...) bytes (no initialisation needed), grid blocks (0: one per SM) and
                // threads per block (0: 256, the most).
                const std::string& kernel, std::uintptr_t workspace, int64_t workspace_bytes, int64_t grid_blocks,
                int64_t threads);

// Bytes of workspace rnnt_greedy needs with kernel "grid" (arithmetic only; no device needed).
int64_t rnnt_grid_workspace_bytes(int64_t layers, int64_t hidden, int64_t joint_hidden, int64_t streams_per_group);       // cudaStream_t

}  // namespace nemotron
