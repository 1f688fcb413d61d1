// Launcher of the batched greedy RNN-T decoder: argument checks, kernel (per-stream or grid-wide) and
// streams-per-block choice, dtype / G / vector-path dispatch, launch, launch-error check. Device code: csrc/include/nemotron/rnnt_greedy.cuh. Reference:
// nemotron_engine/reference/decoder.py greedy_decode (wrappers: nemotron_engine/_ext.py rnnt_greedy and
// rnnt_greedy_ref).
#include <cuda_runtime.h>

#include "check.h"
#include "nemotron/rnnt_greedy.cuh"
#include "ops.h"

namespace nemotron {

namespace {

void check_rnnt_launch() {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    throw std::runtime_error(str("nemotron_engine._C: rnnt_greedy launch failed: ", cudaGetErrorName(err), ": ",
                                 cudaGetErrorString(err), " (module built for CUDA archs ", cuda_archs(), ")"));
  }
}

bool aligned_to(const void* p, int64_t bytes) {
  return reinterpret_cast<std::uintptr_t>(p) % static_cast<std::uintptr_t>(bytes) == 0;
}

int threads_for(int g) {
  // One stream per block runs where streams are few: more warps keep more weight rows in flight.
  return g == 1 ? 512 : 256;
}

template <typename T, int G, bool kVec>
void launch(const RnntGreedyParams& p, int threads, int64_t smem, cudaStream_t stream) {
  auto kernel = rnnt_greedy_kernel<T, G, kVec>;
  if (smem > 48 * 1024) {
    NEMOTRON_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(smem)),
                        str("rnnt_greedy: cudaFuncSetAttribute(MaxDynamicSharedMemorySize=", smem, ")"));
  }
  const unsigned grid = static_cast<unsigned>((p.n_streams + G - 1) / G);
  kernel<<<grid, threads, static_cast<size_t>(smem), stream>>>(p);
}

// The scalar path (sizes not multiples of 4, or unaligned weights) is built for one stream per block only: no
// shipped model needs it, and each instantiation costs compile time.
template <typename T>
void dispatch(const RnntGreedyParams& p, int g, bool vec, int threads, int64_t smem, cudaStream_t stream) {
  if (!vec) {
    NEMOTRON_CHECK(g == 1, "rnnt_greedy: the scalar path runs one stream per block, got ", g);
    launch<T, 1, false>(p, threads, smem, stream);
    return;
  }
  switch (g) {
    case 1: launch<T, 1, true>(p, threads, smem, stream); break;
    case 2: launch<T, 2, true>(p, threads, smem, stream); break;
    case 4: launch<T, 4, true>(p, threads, smem, stream); break;
    default: NEMOTRON_CHECK(false, "rnnt_greedy: unsupported streams per block: ", g, " (supported: 1, 2, 4)");
  }
}


// A cooperative launch of the grid-wide kernel on `blocks` blocks (0: one per SM).
template <typename T, int G, bool kVec>
void launch_grid(const RnntGreedyParams& p, float* ws, int blocks, int threads, int sms, int64_t smem,
                cudaStream_t stream) {
  auto kernel = rnnt_greedy_grid_kernel<T, G, kVec>;
  if (smem > 48 * 1024) {
    NEMOTRON_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(smem)),
                        str("rnnt_greedy: cudaFuncSetAttribute(MaxDynamicSharedMemorySize=", smem, ")"));
  }
  int per_sm = 0;
  NEMOTRON_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads,
                                                                     static_cast<size_t>(smem)),
                      "rnnt_greedy: cudaOccupancyMaxActiveBlocksPerMultiprocessor");
  const int64_t resident = int64_t{per_sm} * sms;
  const int64_t limit = resident < kRnntGridMaxBlocks ? resident : kRnntGridMaxBlocks;
  if (blocks == 0) blocks = static_cast<int>(sms < limit ? sms : limit);
  NEMOTRON_CHECK(blocks >= 1 && blocks <= limit, "rnnt_greedy: grid_blocks=", blocks, " is outside [1, ", limit,
                 "]: ", per_sm, " block(s) of ", threads, " threads and ", smem, " bytes of shared memory fit on each of ",
                 sms, " SMs, and a cooperative launch needs every block resident (at most ", kRnntGridMaxBlocks, ")");
  RnntGreedyParams params = p;
  void* args[] = {&params, &ws};
  NEMOTRON_CUDA_CHECK(cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), dim3(blocks), dim3(threads),
                                                  args, static_cast<size_t>(smem), stream),
                      "rnnt_greedy: cudaLaunchCooperativeKernel");
}

// As dispatch(): the scalar path is built for one stream per group only.
template <typename T>
void dispatch_grid(const RnntGreedyParams& p, float* ws, int g, bool vec, int blocks, int threads, int sms,
                  int64_t smem, cudaStream_t stream) {
  if (!vec) {
    NEMOTRON_CHECK(g == 1, "rnnt_greedy: the scalar path runs one stream per group, got ", g);
    launch_grid<T, 1, false>(p, ws, blocks, threads, sms, smem, stream);
    return;
  }
  switch (g) {
    case 1: launch_grid<T, 1, true>(p, ws, blocks, threads, sms, smem, stream); break;
    case 2: launch_grid<T, 2, true>(p, ws, blocks, threads, sms, smem, stream); break;
    case 4: launch_grid<T, 4, true>(p, ws, blocks, threads, sms, smem, stream); break;
    case 8: launch_grid<T, 8, true>(p, ws, blocks, threads, sms, smem, stream); break;
    default: NEMOTRON_CHECK(false, "rnnt_greedy: unsupported streams per group: ", g, " (supported: 1, 2, 4, 8)");
  }
}

}  // namespace

int64_t rnnt_grid_workspace_bytes(int64_t layers, int64_t hidden, int64_t joint_hidden, int64_t streams_per_group) {
  NEMOTRON_CHECK(layers >= 1 && layers <= kRnntMaxLayers && hidden >= 1 && joint_hidden >= 1,
                 "rnnt_grid_workspace_bytes: need 1 <= layers <= ", kRnntMaxLayers, ", hidden >= 1, joint_hidden >= 1; got ",
                 layers, ", ", hidden, ", ", joint_hidden);
  NEMOTRON_CHECK(streams_per_group == 1 || streams_per_group == 2 || streams_per_group == 4 ||
                     streams_per_group == 8,
                 "rnnt_grid_workspace_bytes: streams_per_group must be 1, 2, 4 or 8, got ", streams_per_group);
  return rnnt_grid_workspace(hidden, joint_hidden, layers, streams_per_group).words * 4;
}

int rnnt_greedy(std::uintptr_t f, std::uintptr_t lengths, std::uintptr_t slots, std::uintptr_t frame_offset,
                std::uintptr_t h, std::uintptr_t c, std::uintptr_t pred, std::uintptr_t label, std::uintptr_t embed,
                const std::vector<std::uintptr_t>& w_ih, const std::vector<std::uintptr_t>& w_hh,
                const std::vector<std::uintptr_t>& b_ih, const std::vector<std::uintptr_t>& b_hh,
                std::uintptr_t pred_w, std::uintptr_t pred_b, std::uintptr_t out_w, std::uintptr_t out_b,
                std::uintptr_t tokens, std::uintptr_t frames, std::uintptr_t counts, int dtype, int64_t n_streams,
                int64_t n_frames, int64_t pool_size, int64_t embed_dim, int64_t hidden, int64_t joint_hidden,
                int64_t n_classes, int64_t blank, int64_t max_symbols, int64_t streams_per_block,
                std::uintptr_t stream, const std::string& kernel, std::uintptr_t workspace, int64_t workspace_bytes,
                int64_t grid_blocks, int64_t threads) {
  ensure_cuda();
  NEMOTRON_CHECK(kernel == "blocked" || kernel == "grid", "rnnt_greedy: kernel must be 'blocked' or 'grid', got '",
                 kernel, "'");
  const bool grid = kernel == "grid";
  if (grid) {
    NEMOTRON_CHECK(streams_per_block == 0 || streams_per_block == 1 || streams_per_block == 2 ||
                       streams_per_block == 4 || streams_per_block == 8,
                   "rnnt_greedy: with kernel 'grid', streams_per_block (streams per group) must be 0 (auto), 1, 2, 4 "
                   "or 8, got ", streams_per_block);
    NEMOTRON_CHECK(grid_blocks >= 0 && grid_blocks <= kRnntGridMaxBlocks, "rnnt_greedy: grid_blocks must be 0 "
                   "(auto) or in [1, ", kRnntGridMaxBlocks, "], got ", grid_blocks);
    NEMOTRON_CHECK(threads == 0 || (threads >= 32 && threads <= kRnntGridMaxThreads && threads % 32 == 0),
                   "rnnt_greedy: threads must be 0 (auto) or a multiple of 32 in [32, ", kRnntGridMaxThreads,
                   "], got ", threads);
  } else {
    NEMOTRON_CHECK(streams_per_block == 0 || streams_per_block == 1 || streams_per_block == 2 ||
                       streams_per_block == 4,
                   "rnnt_greedy: streams_per_block must be 0 (auto), 1, 2 or 4, got ", streams_per_block);
  }

  const int64_t layers = static_cast<int64_t>(w_ih.size());
  NEMOTRON_CHECK(layers >= 1 && layers <= kRnntMaxLayers, "rnnt_greedy: 1 to ", kRnntMaxLayers,
                 " LSTM layers are supported, got ", layers);
  NEMOTRON_CHECK(static_cast<int64_t>(w_hh.size()) == layers && static_cast<int64_t>(b_ih.size()) == layers &&
                     static_cast<int64_t>(b_hh.size()) == layers,
                 "rnnt_greedy: w_ih, w_hh, b_ih, b_hh must list one pointer per layer, got ", w_ih.size(), ", ",
                 w_hh.size(), ", ", b_ih.size(), ", ", b_hh.size());
  NEMOTRON_CHECK(n_streams >= 0 && n_frames >= 0, "rnnt_greedy: sizes must be >= 0, got n_streams=", n_streams,
                 ", n_frames=", n_frames);
  NEMOTRON_CHECK(pool_size >= 1 && embed_dim >= 1 && hidden >= 1 && joint_hidden >= 1 && n_classes >= 1,
                 "rnnt_greedy: sizes must be >= 1, got pool_size=", pool_size, ", embed_dim=", embed_dim,
                 ", hidden=", hidden, ", joint_hidden=", joint_hidden, ", n_classes=", n_classes);
  NEMOTRON_CHECK(blank >= 0 && blank < n_classes, "rnnt_greedy: blank id ", blank, " is outside [0, n_classes=",
                 n_classes, ")");
  NEMOTRON_CHECK(max_symbols >= 1, "rnnt_greedy: max_symbols must be >= 1, got ", max_symbols);
  NEMOTRON_CHECK(n_frames * max_symbols < (int64_t{1} << 31) && n_streams < (int64_t{1} << 31) &&
                     n_classes < (int64_t{1} << 31) && pool_size < (int64_t{1} << 31),
                 "rnnt_greedy: too large: n_frames * max_symbols=", n_frames * max_symbols, ", n_streams=",
                 n_streams, ", n_classes=", n_classes, ", pool_size=", pool_size, " (each must be < 2^31)");
  NEMOTRON_CHECK(dtype == kFloat32 || dtype == kBFloat16, "rnnt_greedy: unsupported dtype code ", dtype,
                 " (supported: ", int{kFloat32}, "=float32, ", int{kBFloat16}, "=bfloat16)");
  // nothing to launch; the pointers may be null
  if (n_streams == 0) return streams_per_block == 0 ? 1 : static_cast<int>(streams_per_block);

  NEMOTRON_CHECK(lengths != 0 && slots != 0 && frame_offset != 0 && counts != 0 && label != 0 && h != 0 && c != 0 &&
                     pred != 0,
                 "rnnt_greedy: null pointer among lengths, slots, frame_offset, counts, label, h, c, pred");
  NEMOTRON_CHECK(embed != 0 && pred_w != 0 && pred_b != 0 && out_w != 0 && out_b != 0,
                 "rnnt_greedy: null weight pointer (embed, pred_w, pred_b, out_w or out_b)");
  for (int64_t l = 0; l < layers; ++l) {
    NEMOTRON_CHECK(w_ih[l] != 0 && w_hh[l] != 0 && b_ih[l] != 0 && b_hh[l] != 0,
                   "rnnt_greedy: null LSTM weight pointer in layer ", l);
  }
  NEMOTRON_CHECK(n_frames == 0 || (f != 0 && tokens != 0 && frames != 0),
                 "rnnt_greedy: null pointer among f, tokens, frames");

  RnntGreedyParams p{};
  p.f = reinterpret_cast<const void*>(f);
  p.lengths = reinterpret_cast<const int64_t*>(lengths);
  p.slots = reinterpret_cast<const int64_t*>(slots);
  p.frame_offset = reinterpret_cast<const int64_t*>(frame_offset);
  p.h = reinterpret_cast<void*>(h);
  p.c = reinterpret_cast<void*>(c);
  p.pred = reinterpret_cast<void*>(pred);
  p.label = reinterpret_cast<int64_t*>(label);
  p.embed = reinterpret_cast<const void*>(embed);
  for (int64_t l = 0; l < layers; ++l) {
    p.w_ih[l] = reinterpret_cast<const void*>(w_ih[l]);
    p.w_hh[l] = reinterpret_cast<const void*>(w_hh[l]);
    p.b_ih[l] = reinterpret_cast<const void*>(b_ih[l]);
    p.b_hh[l] = reinterpret_cast<const void*>(b_hh[l]);
  }
  p.pred_w = reinterpret_cast<const void*>(pred_w);
  p.pred_b = reinterpret_cast<const void*>(pred_b);
  p.out_w = reinterpret_cast<const void*>(out_w);
  p.out_b = reinterpret_cast<const void*>(out_b);
  p.tokens = reinterpret_cast<int32_t*>(tokens);
  p.frames = reinterpret_cast<int32_t*>(frames);
  p.counts = reinterpret_cast<int32_t*>(counts);
  p.n_streams = n_streams;
  p.n_frames = n_frames;
  p.n_layers = layers;
  p.pool_size = pool_size;
  p.embed_dim = embed_dim;
  p.hidden = hidden;
  p.joint_hidden = joint_hidden;
  p.n_classes = n_classes;
  p.blank = blank;
  p.max_symbols = max_symbols;
  p.max_out = n_frames * max_symbols;

  // The 4-element load path: every weight row starts 4 elements aligned.
  const int64_t elem = dtype == kFloat32 ? 4 : 2;
  bool vec = embed_dim % 4 == 0 && hidden % 4 == 0 && joint_hidden % 4 == 0 && aligned_to(p.pred_w, 4 * elem) &&
             aligned_to(p.out_w, 4 * elem);
  for (int64_t l = 0; l < layers; ++l) vec = vec && aligned_to(p.w_ih[l], 4 * elem) && aligned_to(p.w_hh[l], 4 * elem);

  int device = 0, sms = 0, smem_optin = 0;
  NEMOTRON_CUDA_CHECK(cudaGetDevice(&device), "rnnt_greedy: cudaGetDevice");
  NEMOTRON_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device),
                      "rnnt_greedy: cudaDeviceGetAttribute(MultiProcessorCount)");
  NEMOTRON_CUDA_CHECK(cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
                      "rnnt_greedy: cudaDeviceGetAttribute(MaxSharedMemoryPerBlockOptin)");
  const auto cuda_stream = reinterpret_cast<cudaStream_t>(stream);

  if (grid) {
    // Auto: the smallest group that holds every stream, at most 8 (then the groups run one after another).
    int g = static_cast<int>(streams_per_block);
    if (g == 0) g = n_streams <= 1 ? 1 : (n_streams <= 2 ? 2 : (n_streams <= 4 ? 4 : 8));
    if (!vec) g = 1;
    const int n_threads = threads == 0 ? kRnntGridMaxThreads : static_cast<int>(threads);
    const int64_t need = rnnt_grid_workspace(hidden, joint_hidden, layers, g).words * 4;
    NEMOTRON_CHECK(workspace != 0 && workspace % 4 == 0, "rnnt_greedy: the grid kernel's workspace must be a 4-byte "
                   "aligned device pointer, got ", workspace);
    NEMOTRON_CHECK(workspace_bytes >= need, "rnnt_greedy: the workspace has ", workspace_bytes, " bytes, ", g,
                   " stream(s) per group need ", need, " (rnnt_grid_workspace_bytes)");
    int coop = 0;
    NEMOTRON_CUDA_CHECK(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, device),
                        "rnnt_greedy: cudaDeviceGetAttribute(CooperativeLaunch)");
    if (coop == 0) {
      throw std::runtime_error(str("nemotron_engine._C: rnnt_greedy: device ", device, " does not support "
                                   "cooperative launches; use kernel 'blocked'"));
    }
    const int64_t smem = rnnt_grid_smem_bytes(embed_dim, hidden, joint_hidden, g, n_threads / 32);
    NEMOTRON_CHECK(smem <= smem_optin, "rnnt_greedy: ", g, " stream(s) per group need ", smem, " bytes of shared "
                   "memory, the device allows ", smem_optin, " per block; use fewer streams_per_block");
    float* ws = reinterpret_cast<float*>(workspace);
    if (dtype == kFloat32) {
      dispatch_grid<float>(p, ws, g, vec, static_cast<int>(grid_blocks), n_threads, sms, smem, cuda_stream);
    } else {
      dispatch_grid<bf16>(p, ws, g, vec, static_cast<int>(grid_blocks), n_threads, sms, smem, cuda_stream);
    }
    check_rnnt_launch();
    return g;
  }

  // Auto: the fewest streams per block that still give every SM at most one block; sharing a block shares each
  // weight read from L2 among its streams.
  int g = vec ? static_cast<int>(streams_per_block) : 1;
  if (g == 0) {
    g = n_streams <= sms ? 1 : (n_streams <= 2 * int64_t{sms} ? 2 : 4);
    while (g > 1 && rnnt_smem_bytes(embed_dim, hidden, joint_hidden, layers, g, threads_for(g) / 32) > smem_optin) {
      g /= 2;
    }
  }
  const int n_threads = threads_for(g);
  const int64_t smem = rnnt_smem_bytes(embed_dim, hidden, joint_hidden, layers, g, n_threads / 32);
  NEMOTRON_CHECK(smem <= smem_optin, "rnnt_greedy: the decoder state of ", g, " stream(s) needs ", smem,
                 " bytes of shared memory, the device allows ", smem_optin, " per block (embed_dim=", embed_dim,
                 ", hidden=", hidden, ", joint_hidden=", joint_hidden, ", layers=", layers,
                 "); use fewer streams_per_block");
  if (dtype == kFloat32) {
    dispatch<float>(p, g, vec, n_threads, smem, cuda_stream);
  } else {
    dispatch<bf16>(p, g, vec, n_threads, smem, cuda_stream);
  }
  check_rnnt_launch();
  return g;
}

}  // namespace nemotron
