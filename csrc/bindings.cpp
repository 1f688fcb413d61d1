// The only pybind11 module: nemotron_engine._C. One m.def per op; pointers and the CUDA stream are integers
// (tensor.data_ptr(), torch.cuda.current_stream().cuda_stream). Tensor-facing wrappers: nemotron_engine/_ext.py.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "ops.h"

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "nemotron_engine CUDA ops on raw device pointers; use the wrappers in nemotron_engine._ext";
  m.attr("DTYPE_FLOAT32") = int{nemotron::kFloat32};
  m.attr("DTYPE_BFLOAT16") = int{nemotron::kBFloat16};

  m.def("cuda_available", &nemotron::cuda_available, "True when the CUDA runtime sees at least one device.");
  m.def("device_count", &nemotron::device_count, "Number of CUDA devices; 0 when there is no driver or device.");
  m.def("cuda_archs", &nemotron::cuda_archs, "The CUDA architectures the module was compiled for, e.g. '80;90'.");
  m.def("rnnt_greedy", &nemotron::rnnt_greedy,
        "Batched greedy RNN-T decoding of one step, pool state updated in place (greedy_decode / rnnt_greedy_ref); "
        "kernel 'blocked' or 'grid' (a cooperative launch, with a workspace); returns the streams per block used.",
        py::arg("f"), py::arg("lengths"), py::arg("slots"), py::arg("frame_offset"), py::arg("h"), py::arg("c"),
        py::arg("pred"), py::arg("label"), py::arg("embed"), py::arg("w_ih"), py::arg("w_hh"), py::arg("b_ih"),
        py::arg("b_hh"), py::arg("pred_w"), py::arg("pred_b"), py::arg("out_w"), py::arg("out_b"), py::arg("tokens"),
        py::arg("frames"), py::arg("counts"), py::arg("dtype"), py::arg("n_streams"), py::arg("n_frames"),
        py::arg("pool_size"), py::arg("embed_dim"), py::arg("hidden"), py::arg("joint_hidden"), py::arg("n_classes"),
        py::arg("blank"), py::arg("max_symbols"), py::arg("streams_per_block"), py::arg("stream"),
        py::arg("kernel") = "blocked", py::arg("workspace") = 0, py::arg("workspace_bytes") = 0,
        py::arg("grid_blocks") = 0, py::arg("threads") = 0, py::call_guard<py::gil_scoped_release>());
  m.def("rnnt_grid_workspace_bytes", &nemotron::rnnt_grid_workspace_bytes,
        "Bytes of workspace rnnt_greedy needs with kernel='grid'.", py::arg("layers"), py::arg("hidden"),
        py::arg("joint_hidden"), py::arg("streams_per_group"));
}
