"""Character-level language model: Embedding -> LSTM -> Linear."""

import numpy as np

from pyengine.embedding import Embedding
from pyengine.linear import Linear
from pyengine.module import Module, no_grad
from pyengine.rnn import LSTM

__all__ = ["CharLM", "char_lm"]


class CharLM(Module):
    """Predicts the next character id at every position of a sequence.

    Args:
        vocab_size: number of distinct characters V.
        embed_dim: size of the character embeddings.
        hidden_size: LSTM hidden size.
        num_layers: stacked LSTM layers.
        dropout: dropout between LSTM layers (training only).
        dtype: float32 (default) or float64.

    Shape: ids (B, T) integers in [0, V) -> logits (B, T, V).
    Children (state_dict prefixes): ``embedding``, ``lstm``, ``head``.
    """

    def __init__(self, vocab_size, embed_dim=32, hidden_size=128, num_layers=1,
                 dropout=0.0, dtype=np.float32):
        super().__init__()
        self.embedding = Embedding(vocab_size, embed_dim, dtype=dtype)
        self.lstm = LSTM(embed_dim, hidden_size, num_layers, batch_first=True,
                         dropout=dropout, dtype=dtype)
        self.head = Linear(hidden_size, vocab_size, dtype=dtype)
        self.state = None

    def forward(self, ids, state=None):
        """Logits for every position; the final (h_n, c_n) is kept in ``self.state``."""
        emb = self.embedding(ids)
        out, self.state = self.lstm(emb, state)
        return self.head(out)

    def backward(self, grad_out, input_grad=False):
        """Back through head, LSTM and embedding; ids have no gradient (returns None)."""
        g = self.head.backward(grad_out)
        g = self.lstm.backward(g)
        self.embedding.backward(g)
        return None

    def sample(self, prompt_ids, length, temperature=1.0, rng=None):
        """Generate `length` ids after `prompt_ids` (a non-empty sequence of ints).

        The next id is drawn from softmax(logits / temperature); a low
        temperature gives safer, more repetitive text.
        """
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0. Received: temperature={temperature}")
        rng = np.random.default_rng() if rng is None else rng
        ids = [int(i) for i in prompt_ids]
        if not ids:
            raise ValueError("sample needs at least one prompt id")
        with no_grad():
            logits = self.forward(np.asarray(ids)[None, :])
            state = self.state
            out = []
            for _ in range(length):
                z = logits[0, -1].astype(np.float64) / temperature
                p = np.exp(z - z.max())
                nxt = int(rng.choice(len(p), p=p / p.sum()))
                out.append(nxt)
                logits = self.forward(np.array([[nxt]]), state)
                state = self.state
        return out

    def extra_repr(self):
        return ""


def char_lm(vocab_size, embed_dim=32, hidden_size=128, num_layers=1, dropout=0.0,
            dtype=np.float32):
    """Build a CharLM (Embedding -> LSTM -> Linear); see CharLM for the arguments."""
    return CharLM(vocab_size, embed_dim, hidden_size, num_layers, dropout, dtype)
