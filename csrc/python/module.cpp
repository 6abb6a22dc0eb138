// The Python module l1ext._C: importing it registers the operators (the static initialisers of
// every file of the extension), and it offers the fast call path of the functional API.
//
// Why: at box-regression sizes (a few thousand elements) a loss is dispatch-bound. Calling
// torch.ops.l1ext.<op> from Python builds the argument stack through OpOverload.__call__ and the
// generic schema parser (about 0.9 us on a 2-core Xeon), and the torch-compatible argument handling
// of l1ext/functional.py costs another 2 us of Python. loss_fast serves the common call (plain
// tensors of the same size, dtype and device, a reduction string, a number beta/delta) in C++ and
// answers None for anything else, which functional.py then handles in full; the same for the
// detection-style weighted call (weight, avg_factor, loss_weight). It calls the same
// operators through the dispatcher, so autograd, autocast, vmap and dispatch modes see exactly
// what a torch.ops call would give them.
#include <Python.h>
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/jit/frontend/tracer.h>
#include <ATen/PythonTorchFunctionTLS.h>

#include <optional>
#include <vector>

#include "cpu/memory.h"
#include "loss_kind.h"
#include "weighted_glue.h"

namespace l1ext {
namespace python {
namespace {

using at::Tensor;
using LossSig = Tensor(const Tensor&, const Tensor&, int64_t, double);
using OptTensor = std::optional<Tensor>;
using WeightedSig = Tensor(const Tensor&, const Tensor&, const OptTensor&, const OptTensor&,
                           const OptTensor&, int64_t, double, std::optional<double>, double,
                           int64_t);

const c10::TypedOperatorHandle<Tensor(const Tensor&, const Tensor&, int64_t)>& l1_loss_op() {
  static const auto h = c10::Dispatcher::singleton()
                            .findSchemaOrThrow("l1ext::l1_loss", "")
                            .typed<Tensor(const Tensor&, const Tensor&, int64_t)>();
  return h;
}
const c10::TypedOperatorHandle<LossSig>& loss_op(LossKind kind) {
  static const auto smooth_l1 =
      c10::Dispatcher::singleton().findSchemaOrThrow("l1ext::smooth_l1_loss", "").typed<LossSig>();
  static const auto huber =
      c10::Dispatcher::singleton().findSchemaOrThrow("l1ext::huber_loss", "").typed<LossSig>();
  return kind == LossKind::SmoothL1 ? smooth_l1 : huber;
}

const c10::TypedOperatorHandle<WeightedSig>& weighted_loss_op() {
  static const auto h =
      c10::Dispatcher::singleton().findSchemaOrThrow("l1ext::weighted_loss", "").typed<WeightedSig>();
  return h;
}

// torch's reduction enum for 'none', 'mean', 'sum'; -1 for anything else (functional.py raises
// torch's error for it).
int64_t reduction_of(PyObject* s) {
  if (!PyUnicode_Check(s)) return -1;
  if (PyUnicode_CompareWithASCIIString(s, "mean") == 0) return 1;
  if (PyUnicode_CompareWithASCIIString(s, "sum") == 0) return 2;
  if (PyUnicode_CompareWithASCIIString(s, "none") == 0) return 0;
  return -1;
}

// A Python int or float as a double; false for anything else (bool, tensors, other numbers).
bool number_of(PyObject* o, double* out) {
  if (PyFloat_CheckExact(o)) {
    *out = PyFloat_AS_DOUBLE(o);
    return true;
  }
  if (PyLong_CheckExact(o)) {
    *out = PyLong_AsDouble(o);
    if (*out == -1.0 && PyErr_Occurred()) {
      PyErr_Clear();
      return false;
    }
    return true;
  }
  return false;
}

bool kernel_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf || t == at::kDouble;
}

bool kernel_device(const c10::Device& d) {
#if defined(L1EXT_WITH_CUDA)
  return d.is_cpu() || d.is_cuda();
#else
  return d.is_cpu();
#endif
}

// Releases the GIL around an operator call on n elements, as torch's bindings do, so other Python
// threads run meanwhile; not for small calls of a few microseconds, where releasing and taking it
// back costs a few percent of the call and frees nothing worth having.
class ReleaseGil {
 public:
  explicit ReleaseGil(int64_t n) : state_(n >= (int64_t(1) << 16) ? PyEval_SaveThread() : nullptr) {}
  ~ReleaseGil() {
    if (state_) PyEval_RestoreThread(state_);
  }
  ReleaseGil(const ReleaseGil&) = delete;
  ReleaseGil& operator=(const ReleaseGil&) = delete;

 private:
  PyThreadState* state_;
};

// A plain tensor (or Parameter) while no __torch_function__ mode is active: subclasses, DTensor
// and modes take functional.py's path, which dispatches them as torch does.
bool plain_tensor(PyObject* o) {
  return THPVariable_CheckExact(o) && !at::impl::torch_function_mode_enabled();
}

// Not while torch.jit.trace records: functional.py hands traced calls to the TorchScript twins,
// whose graphs broadcast and promote as torch's traced losses do.
bool tracing() { return torch::jit::tracer::isTracing(); }

// Strided operands of the same size (else torch warns and broadcasts) on the same device with
// l1ext kernels.
bool same_size_operands(const Tensor& input, const Tensor& target) {
  return input.layout() == at::kStrided && target.layout() == at::kStrided &&
         input.device() == target.device() && kernel_device(input.device()) &&
         input.sizes().equals(target.sizes());
}

// Operands the kernels take as they are: same_size_operands of the same kernel dtype (else torch
// promotes).
bool kernel_operands(const Tensor& input, const Tensor& target) {
  return same_size_operands(input, target) && input.scalar_type() == target.scalar_type() &&
         kernel_dtype(input.scalar_type());
}

// The loss's parameter when a valid number (unused for L1), else false: errors are raised on
// functional.py's path.
bool number_param(LossKind kind, PyObject* o, double* param) {
  *param = 0.0;
  if (kind == LossKind::L1) return true;
  return number_of(o, param) && valid_param(kind, *param);
}

Tensor plain_loss(LossKind kind, const Tensor& input, const Tensor& target, int64_t reduction,
                  double param) {
  if (kind == LossKind::SmoothL1 && param == 0.0) kind = LossKind::L1;  // as torch routes it
  const ReleaseGil no_gil(input.numel());
  return kind == LossKind::L1 ? l1_loss_op().call(input, target, reduction)
                              : loss_op(kind).call(input, target, reduction, param);
}

// torch's loss of operands of two dtypes (a bfloat16 prediction against a float32 target; an
// integer target), the same size, device and strided layout, outside autocast: both in the
// promoted dtype (the narrower cast, as functional.py's _cast), and a Huber loss back in the
// input's dtype (torch's huber_loss answers in it). A bool target (torch's Smooth L1 and Huber take
// it as 0 and 1, its L1 refuses it), an integer input and autocast take functional.py's path.
// (Saves that path's Python work: a float32 Huber of 4096 elements against a float64 target took
// 15 us there, torch's 6 us.)
std::optional<Tensor> promoted_loss(LossKind kind, const Tensor& input, const Tensor& target,
                                    int64_t reduction, double param) {
  const at::ScalarType a = input.scalar_type(), b = target.scalar_type();
  if (!(same_size_operands(input, target) && kernel_dtype(a) &&
        (kernel_dtype(b) || at::isIntegralType(b, /*includeBool=*/false)) &&
        !at::autocast::is_autocast_enabled(input.device().type()))) {
    return std::nullopt;
  }
  const at::ScalarType dtype = at::promote_types(a, b);
  const Tensor loss = plain_loss(kind, a == dtype ? input : input.to(dtype),
                                 b == dtype ? target : target.to(dtype), reduction, param);
  return kind == LossKind::Huber && dtype != a ? loss.to(a) : loss;
}

// The dtype the weighted operator answers in: the input's, float32 for a 16-bit input under
// autocast (csrc/autocast).
at::ScalarType operator_dtype(const Tensor& input) {
  const at::ScalarType t = input.scalar_type();
  const bool autocast = (t == at::kHalf || t == at::kBFloat16) &&
                        at::autocast::is_autocast_enabled(input.device().type());
  return autocast ? at::kFloat : t;
}

// Whether the operator's result has the dtype and shape of mmdetection's composition without the
// widening functional.py's _weighted and _as_divided_by apply (a weight of a wider dtype or one
// that may widen the loss's shape, a tensor avg_factor of a wider dtype or of one or more
// dimensions): those calls take its path.
bool needs_no_widening(const Tensor& input, const OptTensor& weight, const OptTensor& avg_tensor,
                       int64_t reduction) {
  const at::ScalarType out = operator_dtype(input);
  if (weight.has_value()) {
    if (c10::promoteTypes(out, weight->scalar_type()) != out) return false;
    // (a weight that may widen the loss's shape: more dimensions, or a size over a size of one)
    const int64_t d = input.dim(), wd = weight->dim();
    if (wd > d) return false;
    for (int64_t k = 1; k <= wd; ++k) {
      if (input.size(d - k) == 1 && weight->size(wd - k) != 1) return false;
    }
  }
  if (!avg_tensor.has_value() || reduction != 1) return true;
  const at::ScalarType a = avg_tensor->scalar_type();
  const at::ScalarType divisor = c10::isFloatingType(a) ? a : c10::get_default_dtype_as_scalartype();
  return avg_tensor->dim() == 0 && c10::promoteTypes(out, divisor) == out;
}

// The weighted convention of functional.py's _weighted, for a plain weight tensor or None,
// avg_factor None, a number or a plain tensor, loss_weight None or a number, where the
// operator's result needs no widening; null otherwise.
std::optional<Tensor> weighted_loss(LossKind kind, const Tensor& input, const Tensor& target,
                                    int64_t reduction, double param, const OptTensor& param_tensor,
                                    PyObject* weight_obj, PyObject* avg_obj,
                                    PyObject* loss_weight_obj) {
  // An empty reduced loss is a zero connected to the graph (functional.py builds it).
  if (reduction != 0 && input.numel() == 0) return std::nullopt;
  OptTensor weight;
  if (weight_obj != Py_None) {
    if (!plain_tensor(weight_obj)) return std::nullopt;
    const Tensor& w = THPVariable_Unpack(weight_obj);
    if (w.layout() != at::kStrided || w.device() != input.device()) return std::nullopt;
    weight = w;
  }
  OptTensor avg_tensor;
  std::optional<double> avg_value;
  if (avg_obj != Py_None) {
    if (reduction == 2) return std::nullopt;  // an error on functional.py's path
    double v;
    if (number_of(avg_obj, &v)) {
      avg_value = v;
    } else if (plain_tensor(avg_obj)) {
      avg_tensor = THPVariable_Unpack(avg_obj);
    } else {
      return std::nullopt;
    }
  }
  double loss_weight = 1.0;
  if (loss_weight_obj != Py_None && !number_of(loss_weight_obj, &loss_weight)) return std::nullopt;
  if (!needs_no_widening(input, weight, avg_tensor, reduction)) return std::nullopt;
  const ReleaseGil no_gil(input.numel());
  return weighted_loss_op().call(input, target, weight, param_tensor, avg_tensor,
                                 static_cast<int64_t>(kind), param, avg_value, loss_weight,
                                 reduction);
}

// quantile_loss's tau as a tensor the call may take here: a plain strided floating tensor on the
// input's device (on a CUDA device one the kernels read exactly and that needs no gradient). The
// operator checks its values (weighted_glue.h's check_param_tensor). Anything else takes
// functional.py's path.
bool served_tau(PyObject* o, const Tensor& input, Tensor* tau) {
  if (!plain_tensor(o)) return false;
  const Tensor& t = THPVariable_Unpack(o);
  if (t.layout() != at::kStrided || !kernel_dtype(t.scalar_type())) return false;
  *tau = t;
  if (t.device().is_cuda() && t.device() == input.device() && !t.requires_grad()) {
    return weighted::param_reaches_kernels_exactly(t.scalar_type(), operator_dtype(input));
  }
  return t.device().is_cpu() && input.device().is_cpu();
}

// quantile_loss(input, target, tau, reduction, weight, avg_factor, loss_weight) as functional.py
// computes it, for plain tensors of one dtype and device, a valid number tau or a tau tensor
// served_tau takes, a target of the input's size or, for quantiles tau (Q,) along an input
// (..., Q), of its size without the last dimension (or with it 1): one target for every quantile.
// Null for anything else (functional.py warns, broadcasts, raises).
std::optional<Tensor> quantile_loss(const Tensor& input, const Tensor& target, int64_t reduction,
                                    PyObject* tau_obj, PyObject* weight, PyObject* avg_factor,
                                    PyObject* loss_weight) {
  double tau_value = 0.0;
  OptTensor tau;
  Tensor tau_tensor;
  if (number_of(tau_obj, &tau_value)) {
    if (!valid_param(LossKind::Quantile, tau_value)) return std::nullopt;
  } else if (served_tau(tau_obj, input, &tau_tensor)) {
    tau = tau_tensor;
  } else {
    return std::nullopt;
  }
  Tensor y = target;
  if (!input.sizes().equals(target.sizes())) {
    // (quantiles along the last dimension: a tau of one or more dimensions)
    const int64_t q = tau.has_value() && tau->dim() > 0 ? tau->numel() : 0, d = input.dim();
    const bool multi = q > 0 && d >= 1 && input.size(-1) == q &&
                       (target.sizes().equals(input.sizes().slice(0, d - 1)) ||
                        (target.dim() == d && target.size(-1) == 1 &&
                         target.sizes().slice(0, d - 1).equals(input.sizes().slice(0, d - 1))));
    if (!multi) return std::nullopt;
    std::vector<int64_t> rows(input.sizes().begin(), input.sizes().end());
    rows.back() = 1;
    y = target.reshape(rows).expand(input.sizes());
  }
  if (!kernel_operands(input, y)) return std::nullopt;
  return weighted_loss(LossKind::Quantile, input, y, reduction, tau_value, tau, weight, avg_factor,
                       loss_weight);
}

// loss_fast(kind, input, target, reduction, param, weight, avg_factor, loss_weight)
// -> Tensor or None. kind: 0 L1 (param unused), 1 Smooth L1 (param = beta), 2 Huber (delta),
// 3 Quantile (tau, a number or a tensor; always the weighted convention).
// Without weight, avg_factor and loss_weight: torch's loss. With any of them: the weighted
// convention, except a weight alone for L1 and Huber, which keeps torch's own weight semantics
// (served by functional.py).
PyObject* loss_fast(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 8) {
    PyErr_SetString(PyExc_TypeError,
                    "loss_fast(kind, input, target, reduction, param, weight, avg_factor, "
                    "loss_weight)");
    return nullptr;
  }
  const long kind_value = PyLong_AsLong(args[0]);
  if (kind_value == -1 && PyErr_Occurred()) return nullptr;
  if (kind_value < 0 || kind_value > 3) {
    PyErr_SetString(PyExc_ValueError,
                    "loss_fast: kind must be 0 (L1), 1 (Smooth L1), 2 (Huber) or 3 (Quantile)");
    return nullptr;
  }
  const LossKind kind = static_cast<LossKind>(kind_value);
  PyObject *weight = args[5], *avg_factor = args[6], *loss_weight = args[7];
  if (!plain_tensor(args[1]) || !plain_tensor(args[2]) || tracing()) Py_RETURN_NONE;
  const int64_t reduction = reduction_of(args[3]);
  if (reduction < 0) Py_RETURN_NONE;
  const Tensor& input = THPVariable_Unpack(args[1]);
  const Tensor& target = THPVariable_Unpack(args[2]);
  std::optional<Tensor> out;
  if (kind == LossKind::Quantile) {
    out = quantile_loss(input, target, reduction, args[4], weight, avg_factor, loss_weight);
  } else {
    const bool plain = avg_factor == Py_None && loss_weight == Py_None;
    if (plain && weight != Py_None && kind != LossKind::SmoothL1) Py_RETURN_NONE;
    double param;
    if (!number_param(kind, args[4], &param)) Py_RETURN_NONE;
    if (!kernel_operands(input, target)) {
      if (plain && weight == Py_None) out = promoted_loss(kind, input, target, reduction, param);
      if (!out.has_value()) Py_RETURN_NONE;
      return THPVariable_Wrap(std::move(*out));
    }
    if (plain && weight == Py_None) {
      return THPVariable_Wrap(plain_loss(kind, input, target, reduction, param));
    }
    out = weighted_loss(kind, input, target, reduction, param, std::nullopt, weight, avg_factor,
                        loss_weight);
  }
  if (!out.has_value()) Py_RETURN_NONE;
  return THPVariable_Wrap(std::move(*out));
  END_HANDLE_TH_ERRORS
}

// l1ext.empty_cache(): frees the CPU output cache's idle memory (cpu/memory.cpp); returns its bytes.
PyObject* empty_cache(PyObject* /*module*/, PyObject* /*unused*/) {
  HANDLE_TH_ERRORS
  return PyLong_FromSize_t(cpu::empty_output_cache());
  END_HANDLE_TH_ERRORS
}

PyMethodDef methods[] = {
    {"loss_fast", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&loss_fast)),
     METH_FASTCALL,
     "loss_fast(kind, input, target, reduction, param, weight, avg_factor, loss_weight) "
     "-> Tensor | None"},
    {"empty_cache", &empty_cache, METH_NOARGS, "empty_cache() -> int"},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};

}  // namespace
}  // namespace python
}  // namespace l1ext

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&l1ext::python::module_def); }
