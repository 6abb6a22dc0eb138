// The Python module l1ext._C: importing it registers the operators (the static initialisers of
// every file of the extension), and it offers one function, the fast call path of the functional
// API.
//
// Why: at box-regression sizes (a few thousand elements) a loss is dispatch-bound. Calling
// torch.ops.l1ext.<op> from Python builds the argument stack through OpOverload.__call__ and the
// generic schema parser (about 0.9 us on a 2-core Xeon), and the torch-compatible argument handling
// of l1ext/functional.py costs another 2 us of Python. loss_fast serves the common call (plain
// tensors of the same size, dtype and device, a reduction string, a number beta/delta) in C++ and
// answers None for anything else, which functional.py then handles in full. It calls the same
// operators through the dispatcher, so autograd, autocast, vmap and dispatch modes see exactly
// what a torch.ops call would give them.
#include <Python.h>
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <ATen/PythonTorchFunctionTLS.h>
#include <torch/csrc/utils/pybind.h>

#include "loss_kind.h"

namespace l1ext {
namespace python {
namespace {

using at::Tensor;
using LossSig = Tensor(const Tensor&, const Tensor&, int64_t, double);

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

// loss_fast(kind, input, target, reduction, param) -> Tensor or None.
// kind: 0 L1 (param unused), 1 Smooth L1 (param = beta), 2 Huber (param = delta).
PyObject* loss_fast(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 5) {
    PyErr_SetString(PyExc_TypeError, "loss_fast(kind, input, target, reduction, param)");
    return nullptr;
  }
  const long kind_value = PyLong_AsLong(args[0]);
  if (kind_value == -1 && PyErr_Occurred()) return nullptr;
  PyObject* input_obj = args[1];
  PyObject* target_obj = args[2];
  // Plain tensors only (or Parameters), and no __torch_function__ mode: subclasses, DTensor and
  // modes take functional.py's path, which dispatches them as torch does.
  if (!THPVariable_CheckExact(input_obj) || !THPVariable_CheckExact(target_obj) ||
      at::impl::torch_function_mode_enabled()) {
    Py_RETURN_NONE;
  }
  const int64_t reduction = reduction_of(args[3]);
  if (reduction < 0) Py_RETURN_NONE;
  LossKind kind = static_cast<LossKind>(kind_value);
  double param = 0.0;
  if (kind != LossKind::L1) {
    // Only valid parameters: the errors for others are raised on functional.py's path.
    if (!number_of(args[4], &param) || !(param >= 0.0)) Py_RETURN_NONE;
    if (param == 0.0) {
      if (kind != LossKind::SmoothL1) Py_RETURN_NONE;
      kind = LossKind::L1;  // beta == 0 is exactly L1, as torch routes it
    }
  }
  const Tensor& input = THPVariable_Unpack(input_obj);
  const Tensor& target = THPVariable_Unpack(target_obj);
  // Same size (else torch warns and broadcasts), same kernel dtype (else torch promotes), same
  // device with l1ext kernels, strided layout.
  if (input.layout() != at::kStrided || target.layout() != at::kStrided ||
      input.scalar_type() != target.scalar_type() || !kernel_dtype(input.scalar_type()) ||
      input.device() != target.device() || !kernel_device(input.device()) ||
      !input.sizes().equals(target.sizes())) {
    Py_RETURN_NONE;
  }
  Tensor out;
  {
    pybind11::gil_scoped_release no_gil;
    out = kind == LossKind::L1 ? l1_loss_op().call(input, target, reduction)
                               : loss_op(kind).call(input, target, reduction, param);
  }
  return THPVariable_Wrap(std::move(out));
  END_HANDLE_TH_ERRORS
}

PyMethodDef methods[] = {
    {"loss_fast", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&loss_fast)),
     METH_FASTCALL, "loss_fast(kind, input, target, reduction, param) -> Tensor | None"},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};

}  // namespace
}  // namespace python
}  // namespace l1ext

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&l1ext::python::module_def); }
