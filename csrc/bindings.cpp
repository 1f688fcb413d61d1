// The only pybind11 module: nemotron_engine._C. One m.def per op; pointers and the CUDA stream are integers
// (tensor.data_ptr(), torch.cuda.current_stream().cuda_stream). Tensor-facing wrappers: nemotron_engine/_ext.py.
#include <pybind11/pybind11.h>

#include "ops.h"

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "nemotron_engine CUDA ops on raw device pointers; use the wrappers in nemotron_engine._ext";
  m.attr("DTYPE_FLOAT32") = int{nemotron::kFloat32};
  m.attr("DTYPE_BFLOAT16") = int{nemotron::kBFloat16};

  m.def("cuda_available", &nemotron::cuda_available, "True when the CUDA runtime sees at least one device.");
  m.def("device_count", &nemotron::device_count, "Number of CUDA devices; 0 when there is no driver or device.");
  m.def("cuda_archs", &nemotron::cuda_archs, "The CUDA architectures the module was compiled for, e.g. '80;90'.");
  m.def("fill_pages", &nemotron::fill_pages, "Set every element of the listed pages to value (fill_pages_ref).",
        py::arg("pool"), py::arg("dtype"), py::arg("num_pages"), py::arg("page_elems"), py::arg("page_ids"),
        py::arg("n_ids"), py::arg("value"), py::arg("skipped"), py::arg("stream"),
        py::call_guard<py::gil_scoped_release>());
  m.def("write_rows", &nemotron::write_rows, "Scatter rows into their stream's pages (write_rows_ref).",
        py::arg("pool"), py::arg("dtype"), py::arg("num_pages"), py::arg("page_size"), py::arg("row_elems"),
        py::arg("src"), py::arg("n_rows"), py::arg("src_row_stride"), py::arg("stream_idx"), py::arg("frame_pos"),
        py::arg("page_table"), py::arg("n_streams"), py::arg("pages_per_stream"), py::arg("page_table_stride"),
        py::arg("skipped"), py::arg("stream"), py::call_guard<py::gil_scoped_release>());
}
