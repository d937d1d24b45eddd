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

  // ---- householder family: a chain of Householder reflections ----
  // z: (B, L); v: (B, T, L) per sample or (T, L) shared. Returns H_T ... H_1 z, (B, L).
  m.def("householder_flow(Tensor z, Tensor v) -> Tensor");
  // Walks the chain backwards from `out`, re-creating each z_{t-1} = H_t z_t (reflections are
  // involutions), so only v and out are saved. Returns (grad_z, grad_v); grad_v has v's shape.
  m.def("householder_flow_backward(Tensor grad, Tensor out, Tensor v) -> (Tensor, Tensor)");
  // The same two operators implemented by Triton kernels (CUDA only; CPU under TRITON_INTERPRET=1).
  m.def("householder_flow_triton(Tensor z, Tensor v) -> Tensor");
  m.def("householder_flow_triton_backward(Tensor grad, Tensor out, Tensor v) -> (Tensor, Tensor)");

  // ---- orthogonal family: Björck–Bowie orthonormalization ----
  // q: (..., D, M), M <= D. Each matrix iterates Q <- Q (3I - Q^T Q) / 2 until
  // ||Q^T Q - I||_F <= tol or max_steps; returns q's shape.
  m.def("bjorck_orthonormalize(Tensor q, int max_steps=30, float tol=1e-6) -> Tensor");
  // The unrolled gradient of the executed iterations. Only q is saved: the kernel re-runs the
  // forward per matrix (the same arithmetic, so the same step count) and walks it back.
  m.def("bjorck_orthonormalize_backward(Tensor grad, Tensor q, int max_steps, float tol) -> Tensor");

  // ---- sylvester family: one Sylvester flow step ----
  // z: (B, D); r1, r2: (B, M, M) or shared (M, M), upper triangles read; b: (B, M) or (M,);
  // q: (B, D, M) or (D, M), or None for Q = I (the reversal permutation when `reverse`).
  // Returns (z' = z + Q R1 tanh(R2 Q^T z + b), logdet) of shapes (B, D) and (B,).
  m.def(
      "sylvester_flow(Tensor z, Tensor r1, Tensor r2, Tensor b, Tensor? q=None, bool reverse=False) "
      "-> (Tensor, Tensor)");
  // Saves only the inputs: y, tanh and R1 h are recomputed. Returns (grad_z, grad_r1, grad_r2,
  // grad_b, grad_q), each of its input's shape (shared ones summed over the batch); grad_q is an
  // empty (0,) tensor when q is None. grad_r1, grad_r2 are exactly 0 below the diagonal.
  m.def(
      "sylvester_flow_backward(Tensor grad_out, Tensor grad_logdet, Tensor z, Tensor r1, Tensor r2, "
      "Tensor b, Tensor? q, bool reverse) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // The same two operators implemented by Triton kernels (CUDA only; CPU under TRITON_INTERPRET=1).
  m.def(
      "sylvester_flow_triton(Tensor z, Tensor r1, Tensor r2, Tensor b, Tensor? q=None, "
      "bool reverse=False) -> (Tensor, Tensor)");
  m.def(
      "sylvester_flow_triton_backward(Tensor grad_out, Tensor grad_logdet, Tensor z, Tensor r1, "
      "Tensor r2, Tensor b, Tensor? q, bool reverse) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");

  // ---- diffusion family: DDPM steps with one 0-based step t[b] per sample ----
  // x0, xt, eps_pred, noise: (B, ...); t: (B,) int64 in [0, T-1]; coefs: the (T, k) coefficient
  // table of lvmfast.diffusion.Schedule in the accumulation dtype (math: csrc/diffusion.h).
  // seed: (1,) int64 Philox key drawn from a torch.Generator; exactly one of noise and seed is
  // given, and without noise the kernel generates it (kernels/diffusion.cuh).
  // Returns (xt, generated noise), the latter an empty (0,) tensor when noise is given.
  m.def("q_sample(Tensor x0, Tensor t, Tensor coefs, Tensor? noise, Tensor? seed) -> (Tensor, Tensor)");
  // Returns (mean, variance) with variance of shape (B,).
  m.def("q_posterior(Tensor x0, Tensor xt, Tensor t, Tensor coefs) -> (Tensor, Tensor)");
  m.def("p_step(Tensor xt, Tensor eps_pred, Tensor t, Tensor coefs, Tensor? noise, Tensor? seed) -> Tensor");
  // The backward of all three (each is linear in its inputs): [coefs[t, c] * grad for c in columns].
  m.def("diffusion_backward(Tensor grad, Tensor t, Tensor coefs, int[] columns) -> Tensor[]");
  // x: any shape; coefs: (T, 2) rows [sqrt(1 - beta_i), sqrt(beta_i)]. Returns (T, *x.shape).
  m.def("forward_chain(Tensor x, Tensor coefs, Tensor seed) -> Tensor");
  // Regenerates the noise from the seed; saves only x and out. Returns (grad_x, grad_coefs).
  m.def(
      "forward_chain_backward(Tensor grad, Tensor x, Tensor coefs, Tensor seed, Tensor out) "
      "-> (Tensor, Tensor)");
  // The same operators implemented by Triton kernels (CUDA only; CPU under TRITON_INTERPRET=1;
  // their noise is Triton's own Philox stream, not the native one).
  m.def(
      "q_sample_triton(Tensor x0, Tensor t, Tensor coefs, Tensor? noise, Tensor? seed) "
      "-> (Tensor, Tensor)");
  m.def("q_posterior_triton(Tensor x0, Tensor xt, Tensor t, Tensor coefs) -> (Tensor, Tensor)");
  m.def(
      "p_step_triton(Tensor xt, Tensor eps_pred, Tensor t, Tensor coefs, Tensor? noise, "
      "Tensor? seed) -> Tensor");
  m.def("forward_chain_triton(Tensor x, Tensor coefs, Tensor seed) -> Tensor");
  m.def(
      "forward_chain_triton_backward(Tensor grad, Tensor x, Tensor coefs, Tensor seed, Tensor out) "
      "-> (Tensor, Tensor)");
}
