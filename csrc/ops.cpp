// Every lvmfast operator schema, in one place. Kernels register through
// TORCH_LIBRARY_IMPL in csrc/cpu/ and csrc/cuda/; Triton kernels register from
// Python (lvmfast/triton/) through torch.library; autograd and fake (meta)
// implementations are registered in lvmfast/ops/.
#include <Python.h>
#include <torch/library.h>

// An empty Python module, so that `import lvmfast._C` loads this library and runs the
// registrations below (the ops are reached through torch.ops.lvmfast, not through this module).
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}

TORCH_LIBRARY(lvmfast, m) {
  // ---- mixture family: log-density of a mixture of diagonal Gaussians ----
  // z: (..., L); means, logvars: (K, L); logits: (K,). Returns z.shape[:-1].
  m.def("log_mog(Tensor z, Tensor means, Tensor logvars, Tensor logits) -> Tensor");
  // Recomputes responsibilities from `out` (the forward result); saves nothing of size (..., K).
  // Returns (grad_z, grad_means, grad_logvars, grad_logits).
  m.def(
      "log_mog_backward(Tensor grad, Tensor z, Tensor means, Tensor logvars, Tensor logits, "
      "Tensor out) -> (Tensor, Tensor, Tensor, Tensor)");
  // The same two operators implemented by Triton kernels (CUDA only; CPU under TRITON_INTERPRET=1).
  m.def("log_mog_triton(Tensor z, Tensor means, Tensor logvars, Tensor logits) -> Tensor");
  m.def(
      "log_mog_triton_backward(Tensor grad, Tensor z, Tensor means, Tensor logvars, Tensor logits, "
      "Tensor out) -> (Tensor, Tensor, Tensor, Tensor)");
}
