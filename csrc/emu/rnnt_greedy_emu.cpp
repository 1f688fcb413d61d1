// The RNN-T greedy kernel (csrc/include/nemotron/rnnt_greedy.cuh) compiled for the CPU under cuda_emu.h, behind a
// C entry point for ctypes. Built and called by tests/test_decoder_cuda.py:
//   g++ -std=c++17 -O1 -fno-strict-aliasing -shared -fPIC -Icsrc/include -Icsrc/emu csrc/emu/rnnt_greedy_emu.cpp
#include "cuda_emu.h"

#include <cstdio>
#include <limits>

#include "nemotron/rnnt_greedy.cuh"

namespace {

template <typename T, int G, bool kVec>
void run(const nemotron::RnntGreedyParams& p, unsigned threads, unsigned schedule) {
  const unsigned grid = static_cast<unsigned>((p.n_streams + G - 1) / G);
  const size_t smem = static_cast<size_t>(
      nemotron::rnnt_smem_bytes(p.embed_dim, p.hidden, p.joint_hidden, p.n_layers, G, static_cast<int>(threads / 32)));
  emu::launch(grid, threads, smem, [&] { nemotron::rnnt_greedy_kernel<T, G, kVec>(p); }, schedule);
}

template <typename T, int G>
void run_vec(const nemotron::RnntGreedyParams& p, bool vec, unsigned threads, unsigned schedule) {
  if (vec) {
    run<T, G, true>(p, threads, schedule);
  } else {
    run<T, G, false>(p, threads, schedule);
  }
}

template <typename T>
void run_g(const nemotron::RnntGreedyParams& p, int g, bool vec, unsigned threads, unsigned schedule) {
  switch (g) {
    case 1: run_vec<T, 1>(p, vec, threads, schedule); break;
    case 2: run_vec<T, 2>(p, vec, threads, schedule); break;
    case 4: run_vec<T, 4>(p, vec, threads, schedule); break;
    default: throw std::runtime_error("streams_per_block must be 1, 2 or 4");
  }
}

template <typename T, int G, bool kVec>
void run_grid(const nemotron::RnntGreedyParams& p, unsigned threads, unsigned blocks, unsigned schedule) {
  const nemotron::RnntGridWorkspace wl = nemotron::rnnt_grid_workspace(p.hidden, p.joint_hidden, p.n_layers, G);
  std::vector<float> ws(static_cast<size_t>(wl.words), std::numeric_limits<float>::quiet_NaN());
  const size_t smem = static_cast<size_t>(
      nemotron::rnnt_grid_smem_bytes(p.embed_dim, p.hidden, p.joint_hidden, G, static_cast<int>(threads / 32)));
  emu::launch_cooperative(blocks, threads, smem,
                          [&] { nemotron::rnnt_greedy_grid_kernel<T, G, kVec>(p, ws.data()); }, schedule);
}

template <typename T, int G>
void run_grid_vec(const nemotron::RnntGreedyParams& p, bool vec, unsigned threads, unsigned blocks,
                  unsigned schedule) {
  if (vec) {
    run_grid<T, G, true>(p, threads, blocks, schedule);
  } else {
    run_grid<T, G, false>(p, threads, blocks, schedule);
  }
}

template <typename T>
void run_grid_g(const nemotron::RnntGreedyParams& p, int g, bool vec, unsigned threads, unsigned blocks,
                unsigned schedule) {
  if (blocks < 1 || blocks > nemotron::kRnntGridMaxBlocks) throw std::runtime_error("bad grid size");
  switch (g) {
    case 1: run_grid_vec<T, 1>(p, vec, threads, blocks, schedule); break;
    case 2: run_grid_vec<T, 2>(p, vec, threads, blocks, schedule); break;
    case 4: run_grid_vec<T, 4>(p, vec, threads, blocks, schedule); break;
    case 8: run_grid_vec<T, 8>(p, vec, threads, blocks, schedule); break;
    default: throw std::runtime_error("streams per group must be 1, 2, 4 or 8");
  }
}

}  // namespace

// sizes: B, T, L, S, E, H, J, V1, blank, max_symbols, max_out
// ptrs: f, lengths, slots, frame_offset, h, c, pred, label, embed, pred_w, pred_b, out_w, out_b, tokens, frames,
//       counts, then w_ih[L], w_hh[L], b_ih[L], b_hh[L]
// dtype: 0 float32, 1 bfloat16. vec: use the 4-element load path (the caller checks sizes and alignment).
// Returns 0, or -1 with a message in err.
// grid_blocks == 0: rnnt_greedy_kernel with streams_per_block; grid_blocks >= 1: rnnt_greedy_grid_kernel on that many
// blocks, launched cooperatively, streams_per_block streams per group.
extern "C" int nemotron_rnnt_greedy_emu(const int64_t* sizes, const uintptr_t* ptrs, int dtype, int streams_per_block,
                                        int vec, int threads, int grid_blocks, int schedule, char* err, int err_len) {
  try {
    nemotron::RnntGreedyParams p{};
    p.n_streams = sizes[0];
    p.n_frames = sizes[1];
    p.n_layers = sizes[2];
    p.pool_size = sizes[3];
    p.embed_dim = sizes[4];
    p.hidden = sizes[5];
    p.joint_hidden = sizes[6];
    p.n_classes = sizes[7];
    p.blank = sizes[8];
    p.max_symbols = sizes[9];
    p.max_out = sizes[10];
    if (p.n_layers < 1 || p.n_layers > nemotron::kRnntMaxLayers) throw std::runtime_error("bad layer count");
    p.f = reinterpret_cast<const void*>(ptrs[0]);
    p.lengths = reinterpret_cast<const int64_t*>(ptrs[1]);
    p.slots = reinterpret_cast<const int64_t*>(ptrs[2]);
    p.frame_offset = reinterpret_cast<const int64_t*>(ptrs[3]);
    p.h = reinterpret_cast<void*>(ptrs[4]);
    p.c = reinterpret_cast<void*>(ptrs[5]);
    p.pred = reinterpret_cast<void*>(ptrs[6]);
    p.label = reinterpret_cast<int64_t*>(ptrs[7]);
    p.embed = reinterpret_cast<const void*>(ptrs[8]);
    p.pred_w = reinterpret_cast<const void*>(ptrs[9]);
    p.pred_b = reinterpret_cast<const void*>(ptrs[10]);
    p.out_w = reinterpret_cast<const void*>(ptrs[11]);
    p.out_b = reinterpret_cast<const void*>(ptrs[12]);
    p.tokens = reinterpret_cast<int32_t*>(ptrs[13]);
    p.frames = reinterpret_cast<int32_t*>(ptrs[14]);
    p.counts = reinterpret_cast<int32_t*>(ptrs[15]);
    for (int64_t l = 0; l < p.n_layers; ++l) {
      p.w_ih[l] = reinterpret_cast<const void*>(ptrs[16 + l]);
      p.w_hh[l] = reinterpret_cast<const void*>(ptrs[16 + p.n_layers + l]);
      p.b_ih[l] = reinterpret_cast<const void*>(ptrs[16 + 2 * p.n_layers + l]);
      p.b_hh[l] = reinterpret_cast<const void*>(ptrs[16 + 3 * p.n_layers + l]);
    }
    if (p.n_streams == 0) return 0;
    if (grid_blocks > 0) {
      if (dtype == 0) {
        run_grid_g<float>(p, streams_per_block, vec != 0, static_cast<unsigned>(threads),
                          static_cast<unsigned>(grid_blocks), static_cast<unsigned>(schedule));
      } else {
        run_grid_g<nemotron::bf16>(p, streams_per_block, vec != 0, static_cast<unsigned>(threads),
                                   static_cast<unsigned>(grid_blocks), static_cast<unsigned>(schedule));
      }
      return 0;
    }
    if (dtype == 0) {
      run_g<float>(p, streams_per_block, vec != 0, static_cast<unsigned>(threads), static_cast<unsigned>(schedule));
    } else {
      run_g<nemotron::bf16>(p, streams_per_block, vec != 0, static_cast<unsigned>(threads),
                            static_cast<unsigned>(schedule));
    }
    return 0;
  } catch (const std::exception& e) {
    std::snprintf(err, static_cast<size_t>(err_len), "%s", e.what());
    return -1;
  }
}
