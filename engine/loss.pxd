# Loss kernels: fused softmax cross-entropy, NLL, MSE, BCE-with-logits.
#
# Forward entries write a per-row (class losses) or per-element (MSE, BCE)
# loss where the caller passes a buffer, and return the total through
# `loss_sum` (and, for the class losses, the total weight of the targets that
# count through `weight_sum`: the divisor of a 'mean' reduction). Totals are
# accumulated per fixed chunk in double and combined in chunk order, so they
# are bitwise identical for any thread count.
#
# Backward entries take the upstream gradient as either one scalar `scale`
# ('mean': 1 / divisor, 'sum': 1) or a per-row / per-element array `grad`
# (reduction 'none'; NULL when absent) times `scale`.
#
# Class targets are int64 in [0, C) or equal to ignore_index (that row then
# contributes nothing: zero loss, zero weight, zero gradient). A target out of
# range makes the entry return ENGINE_EINDEX (the outputs are then undefined);
# callers check labels first to report which one. Other errors: ENGINE_EBADARG
# (negative size, NULL buffer), ENGINE_ENOMEM (partial-sum buffer).

from cython cimport floating
from libc.stdint cimport int64_t


# Shape and options of a class-target loss over N rows of C classes.
cdef struct ClassLossParams:
    Py_ssize_t N
    Py_ssize_t C
    int64_t ignore_index
    double label_smoothing       # cross-entropy only; 0 <= label_smoothing <= 1


# One pass per row: prob[i] = softmax(logits[i]) (max subtracted) and, with
# w = weight (NULL: all ones), eps = label_smoothing, lse = log-sum-exp(logits[i]),
#   row_loss[i] = (1 - eps) w[t] (lse - x[t]) + eps / C * sum_c w[c] (lse - x[c])
# (torch's CrossEntropyLoss with label smoothing). weight_sum = sum of w[t] over
# the rows that count. prob rows are written for every row, ignored ones too.
cdef int softmax_cross_entropy_forward(const ClassLossParams* p,
                                       const floating* logits,
                                       const int64_t* target,
                                       const floating* weight,
                                       floating* prob, floating* row_loss,
                                       double* loss_sum,
                                       double* weight_sum) noexcept nogil

# d logits = g * (prob * ((1 - eps) w[t] + eps W / C) - (1 - eps) w[t] onehot(t)
#                 - eps / C * w),  W = sum(w), g = scale * grad[i] (or scale).
# With eps = 0 and no weight this is Caffe's SoftmaxWithLoss: (p - onehot) * g.
# grad_logits may be prob itself (in place).
cdef int softmax_cross_entropy_backward(const ClassLossParams* p,
                                        const floating* prob,
                                        const int64_t* target,
                                        const floating* weight,
                                        const floating* grad, double scale,
                                        floating* grad_logits) noexcept nogil

# NLL on log-probabilities: row_loss[i] = -w[t] logp[i, t].
cdef int nll_forward(const ClassLossParams* p, const floating* logp,
                     const int64_t* target, const floating* weight,
                     floating* row_loss, double* loss_sum,
                     double* weight_sum) noexcept nogil

# grad_logp = 0 except grad_logp[i, t] = -w[t] g.
cdef int nll_backward(const ClassLossParams* p, const int64_t* target,
                      const floating* weight, const floating* grad,
                      double scale, floating* grad_logp) noexcept nogil

# Squared error over n elements: loss[k] = (pred[k] - target[k])^2 (loss may be NULL).
cdef int mse_forward(const floating* pred, const floating* target, Py_ssize_t n,
                     floating* loss, double* loss_sum) noexcept nogil

# grad_pred = 2 (pred - target) g.
cdef int mse_backward(const floating* pred, const floating* target, Py_ssize_t n,
                      const floating* grad, double scale,
                      floating* grad_pred) noexcept nogil

# Binary cross-entropy on logits x with targets y, stable for any x:
#   loss = w ((1 - y) softplus(x) + pos_weight y softplus(-x))
# (torch's value, summed without cancellation), softplus(+-x) = max(+-x, 0) +
# log1p(exp(-|x|)). weight and pos_weight are
# per-element (n values, broadcast by the caller) or NULL.
cdef int bce_with_logits_forward(const floating* x, const floating* y,
                                 const floating* weight,
                                 const floating* pos_weight, Py_ssize_t n,
                                 floating* loss, double* loss_sum) noexcept nogil

# grad_x = w (l sigmoid(x) - pos_weight y) g, l = 1 + (pos_weight - 1) y
# (= w (sigmoid(x) - y) g without pos_weight).
cdef int bce_with_logits_backward(const floating* x, const floating* y,
                                  const floating* weight,
                                  const floating* pos_weight, Py_ssize_t n,
                                  const floating* grad, double scale,
                                  floating* grad_x) noexcept nogil
