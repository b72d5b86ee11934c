# Fused in-place optimizer updates: one pass over each parameter buffer.
#
# Every entry updates `param` (and its state buffers) in place from `grad`,
# element by element, with the same operations in the same order as
# torch.optim's single-tensor (non-foreach) path. Hyperparameters and the
# step-dependent scalars (bias corrections) are computed by the caller in
# double precision and passed in a small struct; inside the kernel they are
# rounded to the parameter's type, as PyTorch does. Elements are cut into
# fixed chunks of CHUNK_ELEMS (independent of the thread count) and the
# chunks run under OpenMP. Each entry returns ENGINE_OK, or ENGINE_EBADARG
# for a negative size or a NULL pointer that is needed.

from cython cimport floating


cdef struct SGDParams:
    double lr
    double momentum          # 0 disables the momentum buffer (may be NULL)
    double dampening
    double weight_decay
    bint nesterov
    bint maximize
    bint init_buffer         # first step: buffer = d_p (no dampening), as torch


cdef struct RMSpropParams:
    double lr
    double alpha
    double eps
    double weight_decay
    double momentum          # > 0 uses momentum_buffer
    bint centered            # uses grad_avg
    bint maximize


cdef struct AdamParams:
    double lr
    double beta1
    double beta2
    double eps
    double weight_decay      # L2 added to the gradient (Adam) ...
    bint decoupled           # ... or decoupled decay p *= 1 - lr*wd (AdamW)
    bint amsgrad             # uses max_exp_avg_sq
    bint maximize
    double step_size         # lr / (1 - beta1**step)
    double bias_correction2_sqrt   # sqrt(1 - beta2**step)


# SGD with optional momentum / dampening / Nesterov / weight decay.
# momentum_buffer: n elements, only read/written when momentum != 0.
cdef int sgd_update(floating* param, const floating* grad,
                    floating* momentum_buffer, Py_ssize_t n,
                    const SGDParams* hp) noexcept nogil

# RMSprop. square_avg always; momentum_buffer when momentum > 0; grad_avg
# when centered (others may be NULL).
cdef int rmsprop_update(floating* param, const floating* grad,
                        floating* square_avg, floating* momentum_buffer,
                        floating* grad_avg, Py_ssize_t n,
                        const RMSpropParams* hp) noexcept nogil

# Adam / AdamW. exp_avg and exp_avg_sq always; max_exp_avg_sq when amsgrad.
cdef int adam_update(floating* param, const floating* grad,
                     floating* exp_avg, floating* exp_avg_sq,
                     floating* max_exp_avg_sq, Py_ssize_t n,
                     const AdamParams* hp) noexcept nogil
