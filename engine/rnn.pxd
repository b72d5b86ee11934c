# Recurrent layer kernels: Elman RNN (tanh / relu), LSTM and GRU, one layer
# and one direction per call, the whole time loop inside one nogil call.
#
# Layout (row-major, PyTorch's gate order and weight shapes):
#   x    (T, B, I)           input sequence, contiguous (I = rnn_dims.F)
#   w_ih (G*H, I), w_hh (G*H, H), b_ih, b_hh (G*H,) or NULL
#        G = 1 (RNN), 4 (LSTM: i, f, g, o), 3 (GRU: r, z, n)
#   h0, c0, h_n, c_n (B, H)  initial / final states (c only for the LSTM)
#   y    (T, B, ldy)         outputs: row (t, b) holds h_t in y[(t*B + b)*ldy : +H];
#                            ldy = 2H lets the two directions of a bidirectional
#                            layer write their halves of one (T, B, 2H) array
#                            (offset the pointer by H for the second half).
#
# Forward: the input projection of all T steps is one GEMM (or, float32 LSTM /
# Elman with batch >= 16, part of each step's GEMM); then per step one
# hidden GEMM and one fused gate kernel per chunk of batch rows (chunks fixed by
# the shapes, run in an OpenMP loop; float32 batches < 4 instead split each
# step's hidden units among the threads). With a training workspace `ws`
# (rnn_workspace_size elements) the gate activations and cell states are kept
# there for rnn_backward; with ws == NULL (inference) a per-call buffer is used.
#
# Backward: per step only dh = W_hh^T dG (plus the fused gate backward); the
# gate gradients of all steps stay in ws, and d_x, grad w_ih, grad w_hh are then
# each one GEMM with K = T*B. Weight and bias gradients ACCUMULATE (+=).
# Results are bitwise identical for every thread count.

from cython cimport floating

cdef enum:
    RNN_TANH = 0
    RNN_RELU = 1
    RNN_LSTM = 2
    RNN_GRU = 3

ctypedef struct rnn_dims:
    int mode          # RNN_TANH, RNN_RELU, RNN_LSTM or RNN_GRU
    Py_ssize_t T      # sequence length (>= 1)
    Py_ssize_t B      # batch size (>= 1)
    Py_ssize_t F      # input features (>= 1); not `I`, which complex.h defines
    Py_ssize_t H      # hidden size (>= 1)
    Py_ssize_t ldy    # row stride of y and d_y in elements (>= H)
    bint reverse      # process t = T-1 down to 0 (the reverse direction)

# Number of gates G of a mode (1, 4 or 3), 0 for an unknown mode.
cdef Py_ssize_t rnn_num_gates(int mode) noexcept nogil

# Elements of the training workspace a forward + backward pair needs.
cdef Py_ssize_t rnn_workspace_size(const rnn_dims* d) noexcept nogil

# Forward of one layer and direction. b_ih/b_hh may be NULL (no bias); h0 (and
# c0 for the LSTM) are required; c0 and c_n are ignored for other modes.
# ws: a training workspace of rnn_workspace_size(d) elements, or NULL.
cdef int rnn_forward(const rnn_dims* d, const floating* x,
                     const floating* w_ih, const floating* w_hh,
                     const floating* b_ih, const floating* b_hh,
                     const floating* h0, const floating* c0,
                     floating* y, floating* h_n, floating* c_n,
                     floating* ws) noexcept nogil

# Backward of one layer and direction, after rnn_forward with the same
# arguments and workspace (ws is consumed: it holds gate gradients afterwards).
# d_y: gradient of y (same layout and ldy); d_hn, d_cn: gradients of the final
# states or NULL (zero). d_x: NULL to skip, else written (accumulate_dx = 0) or
# added to (accumulate_dx = 1). d_h0 (and d_c0 for the LSTM): written, may be
# NULL. grad_*: added to; grad_b_* may be NULL.
cdef int rnn_backward(const rnn_dims* d, const floating* x,
                      const floating* w_ih, const floating* w_hh,
                      const floating* y, const floating* h0, const floating* c0,
                      floating* ws, const floating* d_y,
                      const floating* d_hn, const floating* d_cn,
                      floating* d_x, bint accumulate_dx,
                      floating* d_h0, floating* d_c0,
                      floating* grad_w_ih, floating* grad_w_hh,
                      floating* grad_b_ih, floating* grad_b_hh) noexcept nogil
