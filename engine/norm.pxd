# Batch normalisation over (N, C, S) arrays: S = 1 for (N, C) input, L for
# (N, C, L), H*W for (N, C, H, W). Per-channel statistics are reduced by one
# thread per channel (or per fixed block of channels when S == 1) in a fixed
# order, in double precision, so results are identical for any thread count.

from cython cimport floating


# Training-mode forward: batch statistics.
#   save_mean[c] = mean of x[:, c, :];  save_invstd[c] = 1 / sqrt(biased var + eps)
#   y = (x - mean) * (weight * invstd) + bias      (weight/bias NULL: 1 and 0)
#   running_mean/var (both NULL, or both given) += factor * (batch - running),
#   with the UNBIASED batch variance, as torch. Needs N*S >= 2.
cdef int batchnorm_forward_train(const floating* x, const floating* weight,
                                 const floating* bias, floating* y,
                                 floating* save_mean, floating* save_invstd,
                                 floating* running_mean, floating* running_var,
                                 Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                                 double eps, double factor) noexcept nogil

# Eval-mode forward: y = (x - running_mean) * weight / sqrt(running_var + eps) + bias.
cdef int batchnorm_forward_eval(const floating* x, const floating* weight,
                                const floating* bias, floating* y,
                                const floating* running_mean,
                                const floating* running_var,
                                Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                                double eps) noexcept nogil

# Backward given the mean and invstd the forward normalised with.
#   batch_stats: they were this batch's statistics (training mode), so the
#   gradient flows through them; otherwise they were constants (eval mode).
#   grad_weight/grad_bias (may be NULL) are ACCUMULATED into (+=).
#   grad_x may be NULL (no input gradient); otherwise it is overwritten.
cdef int batchnorm_backward(const floating* grad_y, const floating* x,
                            const floating* weight, const floating* mean,
                            const floating* invstd, floating* grad_x,
                            floating* grad_weight, floating* grad_bias,
                            Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                            bint batch_stats) noexcept nogil
